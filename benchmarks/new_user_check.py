"""A new user's first command, and a picture of what it gives.

Runs, as a user would type it, ``napari-unet segment -m default STACK -o OUT
--instances --probabilities`` on a stack the shipped model has never seen (by
default the ISBI 2012 *challenge test* volume, which has no public labels),
then draws three slices: the image, the predicted cell probability and the
instance outlines over the image. The figure is for a human to judge; there
is no ground truth to score against.

Example::

    python benchmarks/new_user_check.py --png docs/benchmarks/new_user_check.png
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

DEFAULT_STACK = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "isbi2012" / "test_image.tif"


def main(argv: list[str] | None = None) -> Path:
    """Segment ``--stack`` with the shipped model through the CLI and save the figure."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stack", type=Path, default=DEFAULT_STACK)
    ap.add_argument("--model", default="default")
    ap.add_argument("--slices", type=int, nargs="+", default=None, help="z of the slices to draw")
    ap.add_argument("--png", type=Path, default=Path("new_user_check.png"))
    args = ap.parse_args(argv)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import tifffile
    from skimage.segmentation import find_boundaries

    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "napari_unet", "segment", "-m", args.model, str(args.stack),
               "-o", tmp, "--instances", "--probabilities"]
        print("$ napari-unet " + " ".join(cmd[3:]), flush=True)
        subprocess.run(cmd, check=True)
        stem = args.stack.stem
        image = tifffile.imread(args.stack)
        prob = tifffile.imread(Path(tmp) / f"{stem}_probabilities.tif")
        inst = tifffile.imread(Path(tmp) / f"{stem}_instances.tif")
    if image.ndim == 2:
        image, prob, inst = image[None], prob[None], inst[None]
    zs = args.slices or sorted({0, image.shape[0] // 2, image.shape[0] - 1})
    fig, axes = plt.subplots(len(zs), 3, figsize=(9, 3 * len(zs)), squeeze=False)
    for row, z in zip(axes, zs):
        outline = find_boundaries(inst[z], mode="inner")
        overlay = np.dstack([image[z]] * 3).astype(np.float32) / 255.0
        overlay[outline] = (1.0, 0.85, 0.0)
        n = len(np.unique(inst[z])) - 1
        for ax, img, title in zip(
            row,
            (image[z], prob[z], overlay),
            (f"z={z}: image", "cell probability", f"{n} cells (outlines)"),
        ):
            ax.imshow(img, cmap="gray" if img.ndim == 2 else None)
            ax.set_title(title, fontsize=9)
            ax.axis("off")
    fig.tight_layout()
    args.png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.png, dpi=80)
    print(f"wrote {args.png}")
    return args.png


if __name__ == "__main__":
    main()
