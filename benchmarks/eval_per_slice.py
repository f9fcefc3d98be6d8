"""Where does a model go wrong? Lucchi IoU, precision and recall slice by slice.

The evaluation slices of Lucchi score about 0.1 IoU below the development
slices. This script says whether that gap is spread over the stack or sits in
a few slices, and draws the errors of chosen slices (green: found, red:
missed, blue: false) so one can see what is missed. It predicts the whole
40-slice stack once, as a user would, with the engine's defaults (z smoothing
included unless ``--z-smoothing 0``). It chooses nothing: it explains a figure.

Example::

    python benchmarks/eval_time_to_accuracy.py --dataset lucchi --k 5 --split far \\
        --set iterations=1000 --set time_limit_s=300 --save lucchi_far.pt
    python benchmarks/eval_per_slice.py --model lucchi_far.pt --show 14 32 \\
        --figure docs/benchmarks/lucchi_errors_by_slice.png
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import eval_fewslice as fs  # noqa: E402

#: slice ranges scored together: development (all of it, and the far split's scored
#: slices), the evaluation slices in three parts (the middle one scored lowest), all
#: evaluation slices
RANGES = ((0, 20), (10, 20), (20, 29), (29, 37), (37, 40), (20, 40))


def slice_scores(truth: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """IoU, precision and recall of a foreground mask (one slice or a range of slices)."""
    inter = float(np.logical_and(truth, pred).sum())
    return {"iou": fs.lucchi_metrics(truth, pred)["iou"],
            "precision": inter / float(pred.sum()) if pred.any() else 1.0,
            "recall": inter / float(truth.sum()) if truth.any() else 1.0}


#: objects smaller than this (pixels, one slice) count as small in :func:`recall_by_kind`
SMALL_OBJECT_PX = 1500


def recall_by_kind(truth: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """Recall of objects cut by the image edge, of whole ones, and of small whole ones.

    Per slice, each 8-connected object of ``truth`` is *edge* if it touches the
    slice's border (only part of it is in the image) and *small* if it is whole
    and under :data:`SMALL_OBJECT_PX`; ``missed_at_edge`` is the edge objects'
    share of all missed pixels.
    """
    from skimage.measure import label
    from skimage.segmentation import clear_border

    found = {"edge": [0, 0], "inner": [0, 0], "small": [0, 0]}
    for t, p in zip(truth.reshape(-1, *truth.shape[-2:]), pred.reshape(-1, *pred.shape[-2:])):
        inner = clear_border(label(t, connectivity=2))
        sizes = np.bincount(inner.ravel())
        small = (sizes[inner] < SMALL_OBJECT_PX) & (inner > 0)
        for kind, mask in (("edge", t & (inner == 0)), ("inner", inner > 0), ("small", small)):
            found[kind][0] += int(mask.sum())
            found[kind][1] += int((mask & p).sum())
    out = {f"recall_{k}": (hit / n if n else 1.0) for k, (n, hit) in found.items()}
    missed = sum(n - hit for k, (n, hit) in found.items() if k != "small")
    out["missed_at_edge"] = (found["edge"][0] - found["edge"][1]) / missed if missed else 0.0
    return out


def error_overlay(image: np.ndarray, truth: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """RGB uint8: found pixels tinted green, missed ones red, false ones blue."""
    rgb = np.repeat(image[..., None].astype(np.float32), 3, axis=-1)
    for mask, colour, alpha in ((truth & pred, (0, 255, 0), 0.3), (truth & ~pred, (255, 0, 0), 0.6),
                                (pred & ~truth, (0, 0, 255), 0.6)):
        rgb[mask] = rgb[mask] * (1 - alpha) + np.array(colour, np.float32) * alpha
    return rgb.astype(np.uint8)


def draw(path: Path, rows: list[dict[str, Any]], image: np.ndarray, truth: np.ndarray,
         pred: np.ndarray, show: list[int], painted: list[int]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(4 * max(len(show), 2), 6.5))
    grid = fig.add_gridspec(2, max(len(show), 1), height_ratios=(1, 1.6))
    ax = fig.add_subplot(grid[0, :])
    z = [r["z"] for r in rows]
    for key in ("iou", "precision", "recall"):
        ax.plot(z, [r[key] for r in rows], "o-" if key == "iou" else ".--", label=key)
    for p in painted:
        ax.axvline(p, color="0.8", lw=3, zorder=0)
    ax.set_xlabel("slice (grey bars: painted)")
    ax.set_ylim(0.5, 1.0)
    ax.legend(loc="lower left", ncol=3)
    for i, s in enumerate(show):
        a = fig.add_subplot(grid[1, i])
        a.imshow(error_overlay(image[s], truth[s], pred[s])[::2, ::2])
        a.set_title(f"slice {s}: IoU {slice_scores(truth[s], pred[s])['iou']:.2f}")
        a.axis("off")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", type=Path, default=fs.DEFAULT_DATA)
    ap.add_argument("--painted", type=int, nargs="*", default=[1, 3, 5, 7, 9],
                    help="slices the model was trained on (marked in the figure); default: the far split's")
    ap.add_argument("--z-smoothing", type=float, default=None, help="default: the engine's choice")
    ap.add_argument("--show", type=int, nargs="*", default=[], help="slices to draw with their errors")
    ap.add_argument("--figure", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)

    import napari_unet

    image, truth = fs.load_dataset("lucchi", args.data)
    kwargs = {} if args.z_smoothing is None else {"z_smoothing": args.z_smoothing}
    pred = np.asarray(napari_unet.predict(args.model, image, **kwargs).semantic) > 0
    rows = [{"z": z, **{k: round(v, 4) for k, v in slice_scores(truth[z], pred[z]).items()}}
            for z in range(image.shape[0])]
    for r in rows:
        print(json.dumps(r))
    ranges = []
    for lo, hi in ((lo, hi) for lo, hi in RANGES if hi <= image.shape[0]):
        scores = slice_scores(truth[lo:hi], pred[lo:hi]) | recall_by_kind(truth[lo:hi], pred[lo:hi])
        ranges.append({"slices": f"{lo}-{hi - 1}", **{k: round(v, 4) for k, v in scores.items()}})
        print(json.dumps(ranges[-1]))
    if args.figure:
        draw(args.figure, rows, image, truth, pred, args.show, args.painted)
    if args.out:
        args.out.write_text(json.dumps({"model": Path(args.model).name, "painted": args.painted,
                                        "z_smoothing": args.z_smoothing, "slices": rows,
                                        "ranges": ranges}, indent=2))
    return rows


if __name__ == "__main__":
    main()
