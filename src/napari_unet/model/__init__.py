"""The network: its config, the U-Net, normalization, checkpoints and the shipped weights."""
