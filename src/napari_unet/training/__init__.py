"""Training: painted slices to samples, weight maps and losses, the training loop."""
