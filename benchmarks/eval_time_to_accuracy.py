"""Accuracy against wall time of training: how good is the model after 30 s, 1, 2, 5 minutes?

Trains napari-unet on k painted slices (as ``eval_fewslice.py``: evenly spaced
among slices 0-19) and copies the weights when the training clock passes each
mark (``--marks``, seconds of training; copying and everything after the run
are off the clock). The copies are scored after the run, so scoring never
slows training. A run that ends before a mark is scored with its final model
at the later marks (a user would be looking at it by then).

Lucchi: foreground IoU; ISBI: adapted Rand error of the "fill" instances
(``fill_are``) and of plain components (``are``). ``--split dev`` scores the
unpainted slices among 0-19 (choose settings here); ``--split far`` paints
among 0-9 and scores 10-19 (a development split whose slices lie 1-10 slices
from a painted one, nearer the evaluation slices' 2-21 than the dev split's
1-2); ``--split eval`` the
evaluation slices (Lucchi 20-39, ISBI 20-29), reported once.

``--set KEY=VALUE`` changes one TrainingConfig field (numbers, true/false,
strings), e.g. ``--set amp=false`` or ``--set iterations=300``.

Example::

    python benchmarks/eval_time_to_accuracy.py --dataset lucchi --k 5 --init default \\
        --split dev --label defaults --out results/tta_lucchi_defaults.json
    python benchmarks/eval_time_to_accuracy.py --quick   # synthetic smoke run, seconds
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import eval_fewslice as fs  # noqa: E402

# "far" development split: paint among 0-9, score 10-19 (1-10 slices from a
# painted one; the evaluation slices 20-39 are 2-21 slices from slice 18).
FAR_PAINT_AMONG = 10


def painted_and_scored(split: str, k: int, among: int | None, n_train: int,
                       n_total: int) -> tuple[list[int], list[int]]:
    """The painted slices (``k`` evenly spaced among ``0..among-1``) and the scored ones."""
    among = among or (FAR_PAINT_AMONG if split == "far" else n_train)
    if not 1 <= among <= n_train:
        raise ValueError(f"--paint-among must be in 1..{n_train}, got {among}")
    zs = fs.choose_slices(k, among)
    if split == "far":
        if among >= n_train:
            raise ValueError(f"--split far needs --paint-among below {n_train}")
        return zs, list(range(among, n_train))
    return zs, fs.scored_slices(split, zs, n_train, n_total)


def parse_value(text: str) -> Any:
    """``--set`` values: int, float, true/false/none, else the string."""
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if low == "none":
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", choices=("isbi", "lucchi"), default="lucchi")
    ap.add_argument("--data", type=Path, default=fs.DEFAULT_DATA)
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--init", default="default",
                    help="checkpoint to fine-tune ('default': the shipped model; 'none': from scratch)")
    ap.add_argument("--preset", default="default", help="network preset when training from scratch")
    ap.add_argument("--marks", type=float, nargs="+", default=[30, 60, 120, 300])
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--split", choices=("dev", "far", "eval"), default="dev")
    ap.add_argument("--paint-among", type=int, default=None, metavar="N",
                    help="paint the k slices among 0..N-1 (default: all of 0-19); with --split far "
                         "the score is on slices N-19, a development split further from the painted "
                         "slices (default N: 10)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--label", default="run")
    ap.add_argument("--quick", action="store_true", help="tiny synthetic stack and model (smoke run)")
    ap.add_argument("--freeze-encoder", type=float, default=0.0, metavar="FRACTION",
                    help="experiment: keep the encoder and bottom fixed for this share of the run "
                         "(iterations or time budget), training the decoder and head alone; "
                         "not an engine setting (no gain measured, BENCHMARKS section 9)")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--save", type=Path, default=None, help="save the last mark's model here (.pt)")
    return ap.parse_args(argv)


def build_trainer(image: np.ndarray, labels: np.ndarray, args: argparse.Namespace,
                  overrides: dict[str, Any]) -> Any:
    """The Trainer a user gets from the panel's defaults, plus ``overrides``."""
    import napari_unet
    from napari_unet.model.config import FINETUNE_LEARNING_RATE
    from napari_unet.training.trainer import Trainer, TrainingConfig

    init = None
    extra: dict[str, Any] = {}
    if args.init and args.init != "none":
        from napari_unet.prediction.batch import resolve_model_path

        init = napari_unet.load_checkpoint(resolve_model_path(args.init))
        extra["learning_rate"] = FINETUNE_LEARNING_RATE
    config = TrainingConfig(**{**extra, **overrides})
    return Trainer(image, labels, config, init=init,
                   model=None if init is not None else napari_unet.preset(args.preset))


def train_with_marks(trainer: Any, marks: list[float]) -> tuple[list[dict[str, Any]], float, int]:
    """Run ``trainer``; copy its weights as the training clock passes each mark.

    Returns (snapshots, training seconds, iterations run).
    """
    pending = sorted(marks)
    snaps: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    paused = 0.0
    last_it = 0
    for ev in trainer:
        last_it = ev.iteration
        now = time.perf_counter()
        clock = now - t0 - paused
        while pending and clock >= pending[0] and not ev.done:
            snaps.append({"mark_s": pending.pop(0), "train_s": clock, "iteration": ev.iteration,
                          "model": fs.snapshot(trainer)})
        paused += time.perf_counter() - now
        if not pending:
            trainer.cancel()
    train_s = time.perf_counter() - t0 - paused
    final = trainer.result
    for mark in pending:  # the run ended first: the user has its final model by then
        snaps.append({"mark_s": mark, "train_s": train_s, "iteration": last_it, "model": final,
                      "finished": True})
    return snaps, train_s, last_it


def freeze_encoder_for(fraction: float) -> None:
    """Patch the training loop so the encoder and bottom stay fixed for ``fraction`` of the
    run. Their steps then cost no backward pass: 2.3x faster steps measured on the CPU."""
    from napari_unet.training import loop

    original = loop.TrainingRun.iteration

    def iteration(run: Any, it: int) -> Any:
        frozen = max(it / run.trainer.config.iterations, run.time_fraction()) < fraction
        if getattr(run, "_frozen", None) != frozen:
            for part in (run.model.encoder, run.model.bottom):
                for p in part.parameters():
                    p.requires_grad_(not frozen)
            run._frozen = frozen
        return original(run, it)

    loop.TrainingRun.iteration = iteration


def time_hard_pixels() -> list[float]:
    """Record the seconds of each refresh of the hard pixels (``hard_fraction``), on the
    training clock (the loop waits for them)."""
    from napari_unet.training import loop

    seconds: list[float] = []
    original = loop.refreshed_pools

    def timed(*args: Any, **kwargs: Any) -> Any:
        t = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            seconds.append(round(time.perf_counter() - t, 2))

    loop.refreshed_pools = timed
    return seconds


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.freeze_encoder > 0:
        freeze_encoder_for(args.freeze_encoder)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    overrides = {}
    for item in args.overrides:
        key, _, value = item.partition("=")
        overrides[key] = parse_value(value)
    if args.quick:
        from napari_unet.synthetic import synthetic_em_stack

        stack = synthetic_em_stack((6, 64, 64), seed=0)
        image, fg, n_train, zs = stack.image, stack.foreground, 4, [1]
        args.init, args.preset, args.marks = "none", "tiny", [0.5, 2.0]
        overrides = {"patch_size": 32, "batch_size": 2, "iterations": 6, **overrides}
        scored = [0, 2, 3]
        metric, dataset = fs.lucchi_metrics, "synthetic"
    else:
        image, fg = fs.load_dataset(args.dataset, args.data)
        n_train, dataset = fs.N_TRAIN, args.dataset
        zs, scored = painted_and_scored(args.split, args.k, args.paint_among, n_train, image.shape[0])
        metric = fs.isbi_metrics_both if args.dataset == "isbi" else fs.lucchi_metrics
    labels = fs.painted_labels(fg, zs, n_train)
    hard_s = time_hard_pixels()
    t_start = time.perf_counter()
    trainer = build_trainer(image[:n_train], labels, args, overrides)
    setup_s = time.perf_counter() - t_start
    snaps, train_s, iterations = train_with_marks(trainer, args.marks)
    rows = []
    for snap in snaps:
        t = time.perf_counter()
        pred = fs.predict_foreground(snap["model"], image[scored], False, "components")
        row = {"label": args.label, "mark_s": snap["mark_s"], "train_s": round(snap["train_s"], 1),
               "iteration": snap["iteration"], "finished": snap.get("finished", False),
               **{k: round(v, 4) for k, v in metric(fg[scored], pred).items()},
               "predict_s": round(time.perf_counter() - t, 1)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    report = {
        "dataset": dataset, "k": args.k, "painted": zs, "split": args.split, "scored_slices": scored,
        "init": args.init, "preset": None if args.init not in (None, "none") else args.preset,
        "overrides": overrides, "config": trainer.config.to_dict(), "label": args.label,
        "freeze_encoder": args.freeze_encoder,
        "setup_s": round(setup_s, 2), "train_s": round(train_s, 1), "iterations": iterations,
        "hard_pixels_s": hard_s,
        "threads": args.threads, "load_average": os.getloadavg(),
        "host": {"machine": platform.machine(), "python": platform.python_version(),
                 "cpus": os.cpu_count()},
        "results": rows,
    }
    if args.save:
        snaps[-1]["model"].save(args.save)
    if args.out:
        args.out.write_text(json.dumps(report, indent=2, default=str))
    return report


if __name__ == "__main__":
    main()
