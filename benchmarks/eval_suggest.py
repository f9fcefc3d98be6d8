"""Which slice to paint next: the model's suggestion vs. evenly spaced vs. random.

Issue 11 section 3. Protocol (no peeking at evaluation slices):

* Pool = slices 0-19 (ISBI 2012 and Lucchi, as in ``eval_fewslice.py``);
  evaluation slices: ISBI 20-29 (ARE of the *fill* instances, lower is better),
  Lucchi 20-39 (foreground IoU over the volume, higher is better). Nothing is
  chosen on, or predicted for a choice from, the evaluation slices.
* Start: k = 1 and k = 2 evenly spaced painted slices of the pool
  (``eval_fewslice.choose_slices``: [10] and [5, 15]); painted = the ground
  truth of those whole slices. Fine-tune the shipped default model on them
  (learning rate ``FINETUNE_LEARNING_RATE``, the engine's other training
  defaults, ``--iterations`` for every run, weights of the last iteration; the
  validation pass is switched off, which does not change the returned weights).
* Add ONE slice, then fine-tune again *from the shipped model* on the k + 1
  slices (same iterations, same training seed) and evaluate:

  - ``suggest``: ``napari_unet.suggest_slices`` with the k-slice model on the
    pool only (``image[:20]``, entropy, default diversity);
    ``suggest_div0`` / ``suggest_tta`` (``--extra``): diversity=0 / method="tta";
  - ``even``: the k + 1 evenly spaced slices of the pool (``choose_slices(k+1)``;
    this moves the painted slices rather than adding one: k=1 -> [5, 15],
    k=2 -> [3, 10, 16]);
  - ``random``: one slice drawn uniformly from the unpainted pool
    (``--random-seeds`` draws, training seed fixed).

  ``base`` rows are the k-slice models themselves. ``suggest`` and ``even`` are
  retrained with each of ``--seeds`` (the suggestion comes from the base model
  of the same training seed), giving a seed spread.
* Correction cost of the added slice (rows ``suggest*`` and ``random``): the
  k-slice model predicts that slice alone, ``copy_prediction`` copies it into
  the annotation, and we count the pixels a user must change to reach the
  ground truth. ISBI (dense mode): the copy is the instances = 4-connected
  components of the predicted foreground (membrane 0), the truth likewise;
  after optimal one-to-one matching of ids (Hungarian on overlaps, 0 stays 0)
  a pixel must change when its copied id is not the truth's id. From scratch a
  user paints every foreground (cell) pixel (``scratch_px``; ``slice_px`` is
  the whole slice). Lucchi: pixels whose foreground/background state differs;
  from scratch: all mitochondrion pixels.

Rows are appended to ``--out`` (JSON) as they finish; a rerun with the same
``--out`` skips rows already there (resumable). Command used for BENCHMARKS.md::

    python benchmarks/eval_suggest.py --datasets isbi lucchi --iterations 40 \\
        --seeds 0 --random-seeds 0 1 2 --out suggest.json
    python benchmarks/eval_suggest.py --quick      # synthetic smoke run, seconds

(~1 h on the shared 2-core CPU; ``--seeds 0 1`` adds a second training seed to
base/suggest/even, ``--extra suggest_div0 suggest_tta`` the extra arms.)
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from skimage.measure import label as cc_label

sys.path.insert(0, str(Path(__file__).resolve().parent))
from eval_fewslice import (  # noqa: E402
    DEFAULT_DATA,
    choose_slices,
    isbi_metrics_both,
    load_dataset,
    lucchi_metrics,
    painted_labels,
)

N_POOL = 20


def correction_pixels(gt_fg: np.ndarray, pred_fg: np.ndarray, instances: bool) -> int:
    """Pixels of one slice a user must change to turn the copied prediction into the truth.

    ``instances``: ids are 4-connected components of each mask, matched one to one
    (maximum total overlap, background 0 fixed to 0); otherwise foreground/background
    disagreement.
    """
    if not instances:
        return int(np.count_nonzero(gt_fg != pred_fg))
    from scipy.optimize import linear_sum_assignment

    g = cc_label(gt_fg, connectivity=1)
    p = cc_label(pred_fg, connectivity=1)
    ng, npred = int(g.max()), int(p.max())
    cont = np.zeros((ng + 1, npred + 1), dtype=np.int64)
    np.add.at(cont, (g.ravel(), p.ravel()), 1)
    agree = int(cont[0, 0])
    if ng and npred:
        rows, cols = linear_sum_assignment(-cont[1:, 1:])
        agree += int(cont[1:, 1:][rows, cols].sum())
    return int(g.size - agree)


def train(image: np.ndarray, fg: np.ndarray, zs: list[int], seed: int, args: argparse.Namespace) -> Any:
    """Fine-tune (or, --quick, train the tiny preset) on the whole painted slices ``zs`` of the pool."""
    import napari_unet
    from napari_unet.model.config import FINETUNE_LEARNING_RATE
    from napari_unet.training.trainer import Trainer, TrainingConfig

    labels = painted_labels(fg, zs, args.n_pool)
    extra: dict[str, Any] = {"seed": seed, "val_every": 10**9}
    if args.quick:
        extra.update(patch_size=32, batch_size=1)
        trainer = Trainer(image[: args.n_pool], labels, TrainingConfig(iterations=args.iterations, **extra),
                          model=napari_unet.preset("tiny"))
    else:
        from napari_unet.prediction.batch import resolve_model_path

        init = napari_unet.load_checkpoint(resolve_model_path("default"))
        config = TrainingConfig(iterations=args.iterations, learning_rate=FINETUNE_LEARNING_RATE, **extra)
        trainer = Trainer(image[: args.n_pool], labels, config, init=init)
    for _ in trainer:
        pass
    return trainer.result


def foreground(model: Any, image: np.ndarray, slices: list[int] | None = None) -> np.ndarray:
    import napari_unet

    pred = napari_unet.predict(model, image, probabilities=False, slices=slices)
    return np.asarray(pred.semantic) == 1


def evaluate(model: Any, image: np.ndarray, fg: np.ndarray, dataset: str, args: argparse.Namespace) -> float:
    ev = slice(args.n_pool, image.shape[0])
    pred = foreground(model, image[ev])
    if dataset == "lucchi":
        return lucchi_metrics(fg[ev], pred)["iou"]
    return isbi_metrics_both(fg[ev], pred)["fill_are"]


def correction(model: Any, image: np.ndarray, fg: np.ndarray, zs: list[int], z: int,
               dataset: str, args: argparse.Namespace) -> dict[str, int]:
    """Correction cost of slice ``z`` copied from the k-slice model's prediction (pool only)."""
    import napari_unet

    pool = image[: args.n_pool]
    labels = painted_labels(fg, zs, args.n_pool)
    pred_fg = foreground(model, pool, [z])
    dense = dataset != "lucchi"
    if dense:
        inst = cc_label(pred_fg, connectivity=1).astype(np.int32)
        fix = napari_unet.copy_prediction(labels.astype(np.int32), inst, [z])
    else:
        fix = napari_unet.copy_prediction(labels, pred_fg.astype(np.uint8), [z], mode="scribbles")
    copied = np.asarray(fix.slices[z])
    copied_fg = copied > 0 if dense else copied == 2  # scribbles: background 1, class k -> k + 1
    return {"correct_px": correction_pixels(fg[z], copied_fg, dense),
            "scratch_px": int(fg[z].sum()), "slice_px": int(fg[z].size)}


def key(row: dict[str, Any]) -> str:
    return f"{row['dataset']}|{row['k']}|{row['arm']}|{row['train_seed']}|{row.get('random_seed')}"


def run_dataset(dataset: str, k: int, image: np.ndarray, fg: np.ndarray, args: argparse.Namespace,
                done: dict[str, dict[str, Any]], emit: Any) -> None:
    """All arms of one dataset for ``k`` painted slices (rows already in ``done`` are skipped)."""
    import napari_unet

    def fit_eval(arm: str, zs: list[int], seed: int, **more: Any) -> tuple[Any, dict[str, Any]]:
        row = {"dataset": dataset, "k": k, "arm": arm, "slices": sorted(zs), "train_seed": seed, **more}
        t0 = time.perf_counter()
        model = train(image, fg, sorted(zs), seed, args)
        row["train_s"] = round(time.perf_counter() - t0, 1)
        t1 = time.perf_counter()
        row["metric"] = evaluate(model, image, fg, dataset, args)
        row["eval_s"] = round(time.perf_counter() - t1, 1)
        return model, row

    base_zs = choose_slices(k, args.n_pool)
    for s_i, seed in enumerate(args.seeds):
        arms = ["suggest", *args.extra]
        wanted = [{"dataset": dataset, "k": k, "arm": a, "train_seed": seed} for a in arms + ["base"]]
        if k + 1 not in args.k:
            wanted.append({"dataset": dataset, "k": k, "arm": "even", "train_seed": seed})
        if s_i == 0:
            wanted += [{"dataset": dataset, "k": k, "arm": "random", "train_seed": seed, "random_seed": r}
                       for r in args.random_seeds]
        if all(key(w) in done for w in wanted):
            continue
        base, row = fit_eval("base", base_zs, seed)
        if key(row) not in done:
            emit(row)
        even = {"dataset": dataset, "k": k - 1, "arm": "even", "train_seed": seed}
        if k - 1 in args.k and key(even) not in done:
            # the k evenly spaced slices are the "even" arm of k - 1: same run, reused
            emit({**row, "k": k - 1, "arm": "even", "reused": f"base k={k}"})
        for arm in arms:
            if key({"dataset": dataset, "k": k, "arm": arm, "train_seed": seed}) in done:
                continue
            kw = {"diversity": 0.0} if arm == "suggest_div0" else {}
            kw.update({"method": "tta"} if arm == "suggest_tta" else {})
            t0 = time.perf_counter()
            (z, score), = napari_unet.suggest_slices(base, image[: args.n_pool],
                                                     painted_labels(fg, base_zs, args.n_pool), n=1,
                                                     z_range=(0, args.n_pool), **kw)
            suggest_s = round(time.perf_counter() - t0, 1)
            cost = correction(base, image, fg, base_zs, z, dataset, args)
            _, row = fit_eval(arm, base_zs + [z], seed, added=z, score=score, suggest_s=suggest_s, **cost)
            emit(row)
        even = {"dataset": dataset, "k": k, "arm": "even", "train_seed": seed}
        if k + 1 not in args.k and key(even) not in done:  # else: the base run of k + 1 is this arm
            _, row = fit_eval("even", choose_slices(k + 1, args.n_pool), seed)
            emit(row)
        # random draws: only with the first training seed (its base model gives the correction cost)
        if s_i == 0:
            unpainted = [z for z in range(args.n_pool) if z not in base_zs]
            for r in args.random_seeds:
                if key({"dataset": dataset, "k": k, "arm": "random", "train_seed": seed,
                        "random_seed": r}) in done:
                    continue
                z = random.Random(1000 * k + r).choice(unpainted)
                cost = correction(base, image, fg, base_zs, z, dataset, args)
                _, row = fit_eval("random", base_zs + [z], seed, added=z, random_seed=r, **cost)
                emit(row)


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One line per (dataset, k, arm): mean, spread (max - min) and n of the metric."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["dataset"], r["k"], r["arm"]), []).append(r)
    out = []
    for (ds, k, arm), rs in groups.items():
        m = np.array([r["metric"] for r in rs])
        slices = sorted({tuple(r["slices"]) for r in rs})
        corr = [r["correct_px"] / r["scratch_px"] for r in rs if "correct_px" in r and r["scratch_px"]]
        out.append({"dataset": ds, "k": k, "arm": arm, "slices": [list(s) for s in slices],
                    "mean": float(m.mean()), "spread": float(m.max() - m.min()), "n": len(rs),
                    "train_s": float(np.mean([r["train_s"] for r in rs])),
                    "correct_over_scratch": float(np.mean(corr)) if corr else None})
    return out


def print_table(rows: list[dict[str, Any]], iterations: int) -> None:
    for ds in sorted({r["dataset"] for r in rows}):
        name = {"isbi": "ARE fill (lower better)", "lucchi": "IoU (higher better)"}.get(ds, "ARE fill")
        print(f"\n{ds}: {name}, {iterations} iterations per fine-tune")
        print(f"{'k':>2} {'arm':13} {'slices':28} {'mean':>7} {'spread':>7} {'n':>2} {'train_s':>8} {'fix/scratch':>11}")
        for s in summarize([r for r in rows if r["dataset"] == ds]):
            sl = " ".join(str(x) for x in s["slices"])[:28]
            c = "-" if s["correct_over_scratch"] is None else f"{s['correct_over_scratch']:.2f}"
            print(f"{s['k']:>2} {s['arm']:13} {sl:28} {s['mean']:7.4f} {s['spread']:7.4f} {s['n']:>2}"
                  f" {s['train_s']:8.1f} {c:>11}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help=f"data folder (default {DEFAULT_DATA})")
    ap.add_argument("--datasets", nargs="+", choices=("isbi", "lucchi"), default=["isbi", "lucchi"])
    ap.add_argument("--k", type=int, nargs="+", default=[1, 2], help="painted slices before the added one")
    ap.add_argument("--iterations", type=int, default=40, help="fine-tuning iterations of every run")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0], help="training seeds (suggest, even, base)")
    ap.add_argument("--random-seeds", type=int, nargs="+", default=[0, 1, 2], help="draws of the random arm")
    ap.add_argument("--extra", nargs="*", default=[], choices=("suggest_div0", "suggest_tta"),
                    help="extra suggestion arms: diversity=0, method='tta'")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--quick", action="store_true", help="tiny synthetic stack, tiny model (smoke run)")
    ap.add_argument("--out", type=Path, default=None, help="JSON of all rows, written as rows finish")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    import torch

    args = parse_args(argv)
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        return _run(args)
    finally:
        torch.set_num_threads(threads)


def _run(args: argparse.Namespace) -> dict[str, Any]:
    args.n_pool = N_POOL
    report: dict[str, Any] = {"protocol": "eval_suggest.py docstring", "host": {
        "machine": platform.machine(), "python": platform.python_version(), "threads": args.threads}}
    rows: list[dict[str, Any]] = []
    if args.out and args.out.exists():
        rows = json.loads(args.out.read_text()).get("rows", [])
    done = {key(r): r for r in rows}

    if args.quick:
        from napari_unet.synthetic import synthetic_em_stack

        stack = synthetic_em_stack((6, 40, 40), seed=0)
        data = {"synthetic": (stack.image, stack.foreground)}
        args.n_pool, args.iterations, args.k = 4, 1, [1]
        args.random_seeds = args.random_seeds[:2]
    else:
        data = {}

    def emit(row: dict[str, Any]) -> None:
        rows.append(row)
        done[key(row)] = row
        print(json.dumps(row), flush=True)
        if args.out:
            report.update(iterations=args.iterations, rows=rows, summary=summarize(rows))
            args.out.write_text(json.dumps(report, indent=2))

    t0 = time.perf_counter()
    if not args.quick:
        data = {ds: load_dataset(ds, args.data) for ds in args.datasets}
    for k in args.k:  # k = 1 of every dataset first, so that a cut run has both datasets
        for ds, (image, fg) in data.items():
            run_dataset(ds, k, image, fg, args, done, emit)
    report.update(iterations=args.iterations, rows=rows, summary=summarize(rows),
                  total_s=round(time.perf_counter() - t0, 1))
    if args.out:
        args.out.write_text(json.dumps(report, indent=2))
    print_table(rows, args.iterations)
    return report


if __name__ == "__main__":
    main()
