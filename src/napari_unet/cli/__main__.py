"""``python -m napari_unet.cli`` runs the command line, as the single-file module did."""

import sys

from napari_unet.cli import main

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
