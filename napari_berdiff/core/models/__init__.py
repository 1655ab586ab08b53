"""The networks (binary autoencoder, U-Net), their configs, checkpoints and export."""
