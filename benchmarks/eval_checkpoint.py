"""Score a trained checkpoint on held-out real EM slices, with and without TTA
and with each instance method (the post-processing ablation): connected
components, the engine's seeded watershed, and "fill" (components grown over
the predicted membrane until they touch, along the network's probability).

ISBI 2012: slices 20-29 (adapted Rand error, VI, pixel error; see
``eval_fewslice.py``). Lucchi: slices 20-39 (foreground IoU and Dice).

Example::

    python benchmarks/eval_checkpoint.py --checkpoint default --dataset isbi --tta both
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from eval_fewslice import (  # noqa: E402
    DEFAULT_DATA,
    ISBI_KEYS,
    LUCCHI_KEYS,
    N_TRAIN,
    isbi_metrics,
    load_dataset,
    lucchi_metrics,
    predict_foreground,
)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    """Print (and return) one row per (TTA, instance method) combination."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default="default", help="checkpoint path or 'default' (the shipped model)")
    ap.add_argument("--dataset", choices=("isbi", "lucchi"), default="isbi")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--tta", choices=("off", "on", "both"), default="both")
    ap.add_argument("--instances", nargs="+", default=["components", "watershed", "fill"],
                    choices=("components", "watershed", "fill"))
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)


    import napari_unet
    from napari_unet.prediction.batch import resolve_model_path

    model = napari_unet.load_checkpoint(resolve_model_path(args.checkpoint))
    image, fg = load_dataset(args.dataset, args.data)
    eval_sl = slice(N_TRAIN, image.shape[0])
    metric_fn, keys = (isbi_metrics, ISBI_KEYS) if args.dataset == "isbi" else (lucchi_metrics, LUCCHI_KEYS)
    methods = args.instances if args.dataset == "isbi" else ["components"]
    rows = []
    for tta in {"off": [False], "on": [True], "both": [False, True]}[args.tta]:
        pixel_error = None
        for method in methods:
            t0 = time.perf_counter()
            pred = predict_foreground(model, image[eval_sl], tta, method)
            metrics = metric_fn(fg[eval_sl], pred)
            if "pixel_error" in metrics:
                # a property of the semantic prediction, the same for every instance method
                # ("fill" labels membrane pixels too, which is not a classification error)
                pixel_error = metrics["pixel_error"] = pixel_error or metrics["pixel_error"]
            row = {"dataset": args.dataset, "tta": tta, "instances": method,
                   **{k: round(v, 4) for k, v in metrics.items()},
                   "predict_s": round(time.perf_counter() - t0, 1)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    print()
    print(f"{'tta':5} {'instances':10} " + " ".join(f"{k:>11}" for k in keys))
    for r in rows:
        print(f"{str(r['tta']):5} {r['instances']:10} " + " ".join(f"{r[k]:>11.4f}" for k in keys))
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2) + "\n")
    return rows


if __name__ == "__main__":
    main()
