"""Dataset preparation: BraTS, OCT and plain folders into the prepared format."""
