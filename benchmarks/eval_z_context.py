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
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)

    import napari_unet
    from napari_unet.prediction.z_context import smooth_stack, z_similarity

    image, fg = fs.load_dataset(args.dataset, args.data)
    zs = fs.choose_slices(args.k, fs.N_TRAIN)
    scored = fs.scored_slices(args.split, zs, fs.N_TRAIN, image.shape[0])
    similarity = z_similarity(image)
    print(json.dumps({"dataset": args.dataset, **similarity}), flush=True)
    pred = napari_unet.predict(args.model, image, probabilities=True, z_smoothing=0)  # raw: smoothed below
    p = np.asarray(pred.probabilities)[:, 1]
    metric = fs.isbi_metrics_both if args.dataset == "isbi" else fs.lucchi_metrics
    rows = []
    for sigma in args.sigmas:
        q = smooth_stack(p, sigma)  # the engine's own smoothing (weights, window, mirroring)
        row = {"sigma_z": sigma, **{k: round(v, 4) for k, v in metric(fg[scored], q[scored] > 0.5).items()}}
        rows.append(row)
        print(json.dumps(row), flush=True)
    report = {"dataset": args.dataset, "model": args.model, "split": args.split, "scored": scored,
              "similarity": similarity, "results": rows}
    if args.out:
        args.out.write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
