"""Files: TIFF stacks, atomic writes, saving with a rescue path."""
