"""Train the shipped EM membrane model on ISBI 2012 slices 0-19 (never 20-29).

The result is the package's default starting point for fine-tuning
(``napari_unet/model/weights/em_membranes_default.pt``, float16 weights) plus a JSON
file with the numbers its model card quotes: settings, training time and the
few-slice metrics on the held-out slices 20-29 (see ``eval_fewslice.py``).

Example::

    python benchmarks/train_pretrained.py --iterations 4000 --snapshots snapshots/
    python benchmarks/train_pretrained.py --quick --out /tmp/m.pt   # smoke run
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from eval_fewslice import (  # noqa: E402
    DEFAULT_DATA,
    ISBI_KEYS,
    N_TRAIN,
    isbi_metrics,
    load_dataset,
    snapshot,
)

PACKAGE_MODEL = Path(__file__).resolve().parents[1] / "src" / "napari_unet" / "model" / "weights" / "em_membranes_default.pt"


def evaluate(trained: Any, image: np.ndarray, fg: np.ndarray, eval_sl: slice) -> dict[str, float]:
    """ISBI metrics of ``trained`` on the evaluation slices (foreground = cells)."""
    import napari_unet

    pred = napari_unet.predict(trained, image[eval_sl], probabilities=False)
    return isbi_metrics(fg[eval_sl], np.asarray(pred.semantic) == 1)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Train, save the float16 checkpoint, evaluate, write ``<out>.json``."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--iterations", type=int, default=4000)
    ap.add_argument("--preset", default="default")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=PACKAGE_MODEL)
    ap.add_argument("--snapshots", type=Path, default=None,
                    help="also save (and evaluate) a checkpoint every --every iterations here")
    ap.add_argument("--every", type=int, default=1000)
    ap.add_argument("--select", choices=("final", "best"), default="final",
                    help="ship the weights at the end of the schedule (default) or the engine's "
                         "best-validation-Dice weights")
    ap.add_argument("--class-balance", choices=("on", "off"), default="on",
                    help="the paper's w_c class balancing; the shipped model was trained with it "
                    "(the engine's dense default is now off)")
    ap.add_argument("--quick", action="store_true", help="synthetic stack, tiny model, a few iterations")
    args = ap.parse_args(argv)

    import napari_unet
    from napari_unet.model.checkpoint import save_checkpoint
    from napari_unet.training.annotations import AnnotationSettings
    from napari_unet.training.trainer import Trainer, TrainingConfig

    annotation = AnnotationSettings(balance=args.class_balance == "on")

    if args.quick:
        stack = napari_unet.synthetic_em_stack((6, 64, 64), seed=args.seed)
        image, fg, n_train = stack.image, stack.foreground, 4
        args.preset, args.iterations = "tiny", 3
        cfg = TrainingConfig(iterations=3, patch_size=32, batch_size=2, seed=args.seed, annotation=annotation)
    else:
        image, fg = load_dataset("isbi", args.data)
        n_train = N_TRAIN
        cfg = TrainingConfig(iterations=args.iterations, seed=args.seed, annotation=annotation)
    eval_sl = slice(n_train, image.shape[0])
    labels = np.where(fg[:n_train], 255, 0).astype(np.uint8)

    trainer = Trainer(image[:n_train], labels, cfg, model=napari_unet.preset(args.preset))
    curve: list[dict[str, Any]] = []
    final = None
    t0 = time.perf_counter()
    for ev in trainer:
        if ev.iteration == ev.total and not ev.done:
            final = snapshot(trainer)
        if args.snapshots and ev.iteration % args.every == 0 and not ev.done:
            args.snapshots.mkdir(parents=True, exist_ok=True)
            snap = snapshot(trainer)
            save_checkpoint(snap, args.snapshots / f"it{ev.iteration:05d}.pt", include_optimizer=False)
            row = {"iteration": ev.iteration, "elapsed_s": round(time.perf_counter() - t0, 1),
                   "loss": round(ev.loss, 4), **evaluate(snap, image, fg, eval_sl)}
            curve.append(row)
            print(json.dumps(row), flush=True)
        elif ev.iteration % 100 == 0 or ev.done:
            print(f"it {ev.iteration}/{ev.total} loss {ev.loss:.4f} "
                  f"val {ev.val_metric} {ev.patches_per_s:.1f} patch/s", flush=True)
    train_s = time.perf_counter() - t0
    trained = trainer.result
    assert trained is not None
    if args.select == "final" and final is not None:
        from napari_unet.model.checkpoint import TrainedModel

        training = dict(trained.training, iteration=ev.total, best_val_dice=None,
                        selection="final weights at the end of the schedule")
        trained = TrainedModel(model=final.model, normalization=trained.normalization,
                               annotation=trained.annotation, class_names=trained.class_names,
                               training=training)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(trained, args.out, half=True, include_optimizer=False)

    metrics = evaluate(trained, image, fg, eval_sl)
    report = {
        "checkpoint": args.out.name, "size_bytes": args.out.stat().st_size,
        "dataset": "synthetic" if args.quick else "ISBI 2012 training volume",
        "train_slices": f"0-{n_train - 1}", "eval_slices": f"{eval_sl.start}-{eval_sl.stop - 1}",
        "preset": args.preset, "training": cfg.to_dict() | {"annotation": None, "normalization": None},
        "iteration": trained.training.get("iteration"), "selection": args.select,
        "train_s": round(train_s, 1),
        "eval": {k: round(metrics[k], 4) for k in ISBI_KEYS}, "curve": curve,
        "host": {"machine": platform.machine(), "python": platform.python_version()},
    }
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(json.dumps(report["eval"]))
    return report


if __name__ == "__main__":
    main()
