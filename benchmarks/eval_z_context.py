"""Does the third dimension help? Foreground probabilities smoothed along z, scored.

A 2D network segments every slice alone. On a near-isotropic volume
(FIB-SEM, 5 nm voxels) neighbouring slices show the same objects, so the
slice's foreground probability averaged with its neighbours' (a Gaussian of
``sigma`` slices along z) removes slice-to-slice noise; on serial sections
(ISBI, 50 nm) neighbours differ and it should not help. The script predicts
every slice of the dataset once with ``--model`` and scores each ``--sigmas``
value on the dev or eval slices. It also prints the two correlations the
engine's default compares (adjacent slices vs. pixels one step apart in y/x,
see :func:`napari_unet.prediction.z_context.z_similarity`).

Example::

    python benchmarks/eval_z_context.py --dataset lucchi --k 5 --model lucchi_k5.pt --split dev
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import eval_fewslice as fs  # noqa: E402


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", choices=("isbi", "lucchi"), default="lucchi")
    ap.add_argument("--data", type=Path, default=fs.DEFAULT_DATA)
    ap.add_argument("--model", required=True)
    ap.add_argument("--k", type=int, default=5, help="painted slices the model was trained on")
    ap.add_argument("--split", choices=("dev", "eval"), default="dev")
    ap.add_argument("--sigmas", type=float, nargs="+", default=[0, 0.5, 0.75, 1.0, 1.5, 2.0])
    ap.add_argument("--thresholds", type=float, nargs="+", default=[0.5],
                    help="foreground probability thresholds to score (each with every sigma); each row "
                         "also gives the painted slices' foreground Dice at that threshold")
    ap.add_argument("--orthoplanes", action="store_true", help="also score the xz/yz views and their means")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)

    import napari_unet
    from napari_unet.prediction.z_context import smooth_stack, z_similarity

    image, fg = fs.load_dataset(args.dataset, args.data)
    zs = fs.choose_slices(args.k, fs.N_TRAIN)
    scored = fs.scored_slices(args.split, zs, fs.N_TRAIN, image.shape[0])
    similarity = z_similarity(image)
    print(json.dumps({"dataset": args.dataset, **similarity}), flush=True)
    t0 = time.perf_counter()
    pred = napari_unet.predict(args.model, image, probabilities=True, z_smoothing=0)  # raw: smoothed below
    print(json.dumps({"network_s_xy": round(time.perf_counter() - t0, 1)}), flush=True)
    p = np.asarray(pred.probabilities)[:, 1]
    metric = fs.isbi_metrics_both if args.dataset == "isbi" else fs.lucchi_metrics
    rows = []
    for sigma in args.sigmas:
        q = smooth_stack(p, sigma)  # the engine's own smoothing (weights, window, mirroring)
        for threshold in args.thresholds:
            row: dict[str, Any] = {"sigma_z": sigma}
            if args.thresholds != [0.5]:  # the default run's rows stay as they were
                row["threshold"] = threshold
                row["painted_dice"] = round(_dice(fg[zs] > 0, q[zs] > threshold), 4)
            row.update({k: round(v, 4) for k, v in metric(fg[scored], q[scored] > threshold).items()})
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.orthoplanes:
        rows += orthoplane_rows(args.model, image, p, lambda q: metric(fg[scored], q[scored] > 0.5))
    report = {"dataset": args.dataset, "model": args.model, "split": args.split, "scored": scored,
              "similarity": similarity, "results": rows}
    if args.out:
        args.out.write_text(json.dumps(report, indent=2))
    return report


def _dice(truth: np.ndarray, pred: np.ndarray) -> float:
    """Foreground Dice (what a threshold chosen on the painted pixels would maximise)."""
    return float(2 * np.count_nonzero(truth & pred) / max(1, np.count_nonzero(truth) + np.count_nonzero(pred)))


def _view(model: str, image: np.ndarray, axes: tuple[int, int, int]) -> tuple[np.ndarray, float]:
    """Foreground probability of ``image`` predicted plane by plane in the view whose
    plane index is ``axes[0]``, back in (Z, Y, X) order; and the seconds it took."""
    import napari_unet

    t0 = time.perf_counter()
    view = np.ascontiguousarray(image.transpose(axes))
    q = np.asarray(napari_unet.predict(model, view, probabilities=True, z_smoothing=0).probabilities)[:, 1]
    return q.transpose(np.argsort(axes)), time.perf_counter() - t0


def orthoplane_rows(model: str, image: np.ndarray, xy: np.ndarray, score: Any) -> list[dict[str, Any]]:
    """Score the xz and yz views alone and averaged with the xy view ``xy``."""
    from napari_unet.prediction.z_context import smooth_stack

    xz, t_xz = _view(model, image, (1, 0, 2))
    yz, t_yz = _view(model, image, (2, 0, 1))
    print(json.dumps({"network_s_xz": round(t_xz, 1), "network_s_yz": round(t_yz, 1)}), flush=True)
    views = {"xz": xz, "yz": yz, "mean(xy, xz)": (xy + xz) / 2, "mean(xy, xz, yz)": (xy + xz + yz) / 3,
             "mean(2 xy, xz, yz)": (2 * xy + xz + yz) / 4,
             "mean(xy, xz, yz), sigma 2": smooth_stack((xy + xz + yz) / 3, 2.0)}
    rows = []
    for name, q in views.items():
        row = {"view": name, **{k: round(v, 4) for k, v in score(q).items()}}
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


if __name__ == "__main__":
    main()
