"""Training: the loop and its state, the autoencoder and diffusion stages, losses, EMA, DDP."""
