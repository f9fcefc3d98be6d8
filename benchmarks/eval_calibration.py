"""Is the predicted foreground too large or too small? IoU against the threshold.

Fine-tunes the shipped model on k painted Lucchi slices (as
``eval_fewslice.py --dataset lucchi --init default`` does) with or without the
paper's class balancing ``w_c`` and scores the foreground probability of the
evaluation slices at several thresholds, with precision and recall at 0.5.

A model whose IoU peaks well above 0.5 predicts too much foreground: its
probabilities follow the up-weighted class prior of training, not the data's.
This is the measurement behind the engine's ``balance="auto"`` default.

Example::

    python benchmarks/eval_calibration.py --balance on off --iterations 400 --k 5
    python benchmarks/eval_calibration.py --quick      # synthetic smoke run, seconds
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
from eval_fewslice import DEFAULT_DATA, N_TRAIN, choose_slices, load_dataset, painted_labels  # noqa: E402

THRESHOLDS = (0.3, 0.5, 0.7, 0.8, 0.9, 0.95)


def scores(prob: np.ndarray, gt: np.ndarray) -> dict[str, float]:
    """IoU at each threshold, precision and recall at 0.5."""
    out: dict[str, float] = {}
    for th in THRESHOLDS:
        m = prob > th
        union = np.count_nonzero(m | gt)
        out[f"iou@{th}"] = np.count_nonzero(m & gt) / union if union else 1.0
    m = prob > 0.5
    tp = np.count_nonzero(m & gt)
    out["precision@0.5"] = tp / max(1, np.count_nonzero(m))
    out["recall@0.5"] = tp / max(1, np.count_nonzero(gt))
    return out


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--iterations", type=int, default=400)
    ap.add_argument("--balance", nargs="+", choices=("on", "off"), default=["on", "off"])
    ap.add_argument("--loss", default="weighted_ce", choices=("weighted_ce", "ce", "dice", "dice_ce"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="tiny synthetic stack and model (smoke run)")
    ap.add_argument("--out", type=Path, default=None, help="write results as JSON here")
    args = ap.parse_args(argv)

    import napari_unet
    from napari_unet.model.config import FINETUNE_LEARNING_RATE
    from napari_unet.model.pretrained import default_checkpoint
    from napari_unet.training.annotations import AnnotationSettings
    from napari_unet.training.trainer import Trainer, TrainingConfig

    extra: dict[str, Any] = {}
    if args.quick:
        stack = napari_unet.synthetic_em_stack((6, 64, 64), seed=args.seed)
        image, fg, n_train, k = stack.image, stack.foreground, 4, 1
        init, model = None, napari_unet.preset("tiny")
        args.iterations = 3
        extra = {"patch_size": 32, "batch_size": 2, "val_every": 10**9}
    else:
        image, fg = load_dataset("lucchi", args.data)
        n_train, k = N_TRAIN, args.k
        init, model = napari_unet.load_checkpoint(default_checkpoint()), None
        extra = {"learning_rate": FINETUNE_LEARNING_RATE}
    zs = choose_slices(k, n_train)
    labels = painted_labels(fg, zs, n_train)
    rows = []
    for balance in args.balance:
        cfg = TrainingConfig(iterations=args.iterations, loss=args.loss, seed=args.seed,
                             annotation=AnnotationSettings(balance=balance == "on"), **extra)
        t0 = time.perf_counter()
        trainer = Trainer(image[:n_train], labels, cfg, init=init, model=model)
        for _ in trainer:
            pass
        train_s = time.perf_counter() - t0
        pred = napari_unet.predict(trainer.result, image[n_train:], probabilities=True)
        row = {"k": k, "slices": zs, "iterations": args.iterations, "loss": args.loss,
               "balance": balance, **scores(pred.foreground_probability, fg[n_train:]),
               "train_s": round(train_s, 1)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.out:
        args.out.write_text(json.dumps({"dataset": "synthetic" if args.quick else "lucchi",
                                        "eval_slices": f"{n_train}-{image.shape[0] - 1}",
                                        "results": rows}, indent=2))
    return rows


if __name__ == "__main__":
    main()
