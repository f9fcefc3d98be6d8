"""bf16 prediction on the CPU: speed against float32, and whether accuracy holds.

CPUs with AVX-512-BF16 or AMX run oneDNN's bf16 convolutions much faster than
float32 ones. Before ``precision="auto"`` may choose bf16 on such CPUs, this
measures both sides of the trade:

Speed
    The same network and real EM slice predicted by ``TilePredictor`` in
    float32 and in bf16 (autocast), alternately, ``--repeats`` pairs (the order
    inside a pair alternates too); Mpx/s medians and the median of the per-pair
    ratios, which load from other jobs on a shared machine affects much less.
    Runs: the shipped model (default preset) on ISBI slice 25 (512 x 512)
    and Lucchi slice 25 (768 x 1024), the paper-size network (31 M
    parameters, random weights: speed only) on the ISBI slice; the CPU's
    default tile (256, rounded to 260) and batch (4).

Accuracy gate
    The figures BENCHMARKS.md reports, computed in both precisions:
    the shipped model on ISBI 2012 slices 20-29 (adapted Rand error of the
    cells grown by the *fill* instance method) and on Lucchi slices 20-39
    (foreground IoU) after fine-tuning the shipped model on Lucchi's painted
    slices 5 and 15 (``--lucchi-iterations``, float32 training as always on
    the CPU; 0 scores the shipped model as it is). Each metric may change by
    at most ``--gate`` (0.005); argmax agreement and the largest probability
    change are reported too. The script exits with status 1 when the gate
    fails.

Examples::

    python benchmarks/bench_cpu_bf16.py --out benchmarks/results/cpu_bf16.json
    python benchmarks/bench_cpu_bf16.py --quick      # synthetic data, seconds
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from eval_fewslice import (  # noqa: E402
    DEFAULT_DATA,
    N_TRAIN,
    choose_slices,
    isbi_metrics,
    load_dataset,
    lucchi_metrics,
    painted_labels,
)

#: Largest change of a reported metric that bf16 may cause.
GATE = 0.005
PRECISIONS = ("float32", "bfloat16")


def normalised(trained: Any, stack: np.ndarray) -> np.ndarray:
    """``stack`` normalised as the model's recorded method says (what ``predict`` does)."""
    low, high = trained.normalization.statistics(stack)
    return np.stack([trained.normalization.apply(s, low, high) for s in stack])


def speed(model: torch.nn.Module, image: np.ndarray, tile: int, batch: int, repeats: int) -> dict[str, Any]:
    """float32 vs bf16 on one slice, in alternating pairs; bf16's speed-up as the median ratio."""
    from napari_unet.prediction.overlap_tile import TilePredictor

    predictors = {p: TilePredictor(model, tile_size=tile, batch_size=batch, device="cpu", precision=p)
                  for p in PRECISIONS}
    outputs = {p: predictors[p].predict_slice(image) for p in PRECISIONS}  # warm-up: oneDNN kernels
    seconds: dict[str, list[float]] = {p: [] for p in PRECISIONS}
    for i in range(repeats):
        for p in PRECISIONS if i % 2 == 0 else PRECISIONS[::-1]:
            t0 = time.perf_counter()
            predictors[p].predict_slice(image)
            seconds[p].append(time.perf_counter() - t0)
    mpx = image.size / 1e6
    ratios = [a / b for a, b in zip(seconds["float32"], seconds["bfloat16"])]
    f32, bf16 = outputs["float32"], outputs["bfloat16"]
    return {
        "tile": predictors["float32"].tile_size, "batch": batch, "slice": list(image.shape),
        "tiles_per_slice": predictors["float32"].n_tiles(image.shape), "pairs": repeats,
        **{f"{p}_mpx_s": round(mpx / statistics.median(seconds[p]), 4) for p in PRECISIONS},
        **{f"{p}_s": [round(s, 3) for s in seconds[p]] for p in PRECISIONS},
        "speedup": round(statistics.median(ratios), 3),
        "argmax_agreement": float(np.mean(f32.argmax(0) == bf16.argmax(0))),
        "max_abs_dp": float(np.abs(f32 - bf16).max()),
    }


def _agreement(a: Any, b: Any) -> dict[str, float]:
    """How far bf16's prediction ``b`` is from float32's ``a``."""
    dp = np.abs(a.probabilities - b.probabilities)
    return {"argmax_agreement": float(np.mean(a.semantic == b.semantic)),
            "max_abs_dp": float(dp.max()), "mean_abs_dp": float(dp.mean())}


def accuracy_isbi(trained: Any, image: np.ndarray, fg: np.ndarray) -> dict[str, Any]:
    """Adapted Rand error of *fill* cells (and pixel error) in both precisions."""
    import napari_unet

    preds, rows = {}, {}
    for p in PRECISIONS:
        t0 = time.perf_counter()
        preds[p] = napari_unet.predict(trained, image, instances=True, instance_method="fill", precision=p)
        seconds = time.perf_counter() - t0
        are = isbi_metrics(fg, np.asarray(preds[p].instances))["are"]
        rows[p] = {"are_fill": are, "pixel_error": float(np.mean(fg != (preds[p].semantic == 1))),
                   "predict_s": round(seconds, 1)}
    return {**rows, **_agreement(preds["float32"], preds["bfloat16"]),
            "delta": {"are_fill": rows["bfloat16"]["are_fill"] - rows["float32"]["are_fill"]}}


def accuracy_lucchi(trained: Any, image: np.ndarray, fg: np.ndarray) -> dict[str, Any]:
    """Foreground IoU (and Dice) in both precisions."""
    import napari_unet

    preds, rows = {}, {}
    for p in PRECISIONS:
        t0 = time.perf_counter()
        preds[p] = napari_unet.predict(trained, image, precision=p)
        seconds = time.perf_counter() - t0
        rows[p] = {**lucchi_metrics(fg, preds[p].semantic == 1), "predict_s": round(seconds, 1)}
    return {**rows, **_agreement(preds["float32"], preds["bfloat16"]),
            "delta": {"iou": rows["bfloat16"]["iou"] - rows["float32"]["iou"]}}


def finetune(trained: Any, image: np.ndarray, fg: np.ndarray, iterations: int, seed: int) -> Any:
    """The shipped model fine-tuned on Lucchi's painted slices 5 and 15 (float32, as training is)."""
    from napari_unet.training.trainer import Trainer, TrainingConfig

    labels = painted_labels(fg, choose_slices(2), N_TRAIN)
    config = TrainingConfig(iterations=iterations, learning_rate=3e-4, seed=seed, device="cpu")
    trainer = Trainer(image[:N_TRAIN], labels, config, init=trained)
    for _ in trainer:
        pass
    return trainer.result


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="data folder (default: ../shared/data)")
    ap.add_argument("--repeats", type=int, default=5, help="timed float32/bf16 pairs per network")
    ap.add_argument("--tile", type=int, default=256, help="output tile edge (the CPU default)")
    ap.add_argument("--batch", type=int, default=4, help="tiles per forward pass (the default)")
    ap.add_argument("--lucchi-iterations", type=int, default=100,
                    help="fine-tuning iterations on Lucchi before scoring (0: the shipped model as is)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--gate", type=float, default=GATE, help="largest metric change allowed (default 0.005)")
    ap.add_argument("--skip-speed", action="store_true", help="only the accuracy gate")
    ap.add_argument("--skip-accuracy", action="store_true", help="only the speed comparison")
    ap.add_argument("--out", type=Path, default=None, help="write the report as JSON here")
    ap.add_argument("--quick", action="store_true", help="synthetic data and small sizes (a smoke test)")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the comparison; returns the report, or exits with status 1 when the gate fails."""
    args = parse_args(argv)
    import napari_unet
    from napari_unet import devices
    from napari_unet.model.config import preset
    from napari_unet.model.pretrained import default_checkpoint
    from napari_unet.model.unet import UNet

    shipped = napari_unet.load_checkpoint(default_checkpoint())
    torch.manual_seed(args.seed)
    report: dict[str, Any] = {
        "cpu_native_bf16": devices.cpu_native_bf16(),
        "auto_precision_on_cpu": devices.dtype_name(devices.prediction_dtype(torch.device("cpu"), "auto")),
        "torch": torch.__version__, "threads": torch.get_num_threads(),
        "host": {"machine": platform.machine(), "python": platform.python_version()},
        "data": "synthetic" if args.quick else "real EM (ISBI 2012, Lucchi)",
        "gate": args.gate,
    }
    if args.quick:
        from napari_unet.synthetic import synthetic_em_stack

        stack = synthetic_em_stack((2, 96, 112), seed=11)
        other = synthetic_em_stack((2, 96, 112), seed=12)
        isbi_img, isbi_eval, isbi_fg = stack.image, stack.image, stack.foreground
        lucchi_eval, lucchi_fg, lucchi_model = other.image, other.foreground, shipped
        slices = {"synthetic": stack.image[:1]}
        runs = [("default (shipped)", shipped.model, "synthetic"),
                ("tiny (random)", UNet(preset("tiny")), "synthetic")]
        tile, repeats = 64, 1
    else:
        isbi_img, isbi_all_fg = load_dataset("isbi", args.data)
        isbi_eval, isbi_fg = isbi_img[N_TRAIN:], isbi_all_fg[N_TRAIN:]
        slices = {"ISBI slice 25": isbi_img[N_TRAIN + 5 : N_TRAIN + 6]}
        if not args.skip_speed:
            slices["Lucchi slice 25"] = load_dataset("lucchi", args.data)[0][N_TRAIN + 5 : N_TRAIN + 6]
        runs = [("default (shipped)", shipped.model, "ISBI slice 25"),
                ("default (shipped)", shipped.model, "Lucchi slice 25"),
                ("paper (random weights)", UNet(preset("paper")), "ISBI slice 25")]
        tile, repeats = args.tile, args.repeats

    if not args.skip_speed:
        report["speed"] = {}
        for name, net, where in runs:
            row = speed(net, normalised(shipped, slices[where])[0], tile, args.batch, repeats)
            report["speed"][f"{name}, {where}"] = row
            print(json.dumps({"network": name, "image": where, **row}), flush=True)

    failures: list[str] = []
    if not args.skip_accuracy:
        isbi = accuracy_isbi(shipped, isbi_eval, isbi_fg)
        print(json.dumps({"isbi": isbi}), flush=True)
        if not args.quick:
            lucchi_img, lucchi_all_fg = load_dataset("lucchi", args.data)
            lucchi_model = shipped
            if args.lucchi_iterations > 0:
                t0 = time.perf_counter()
                lucchi_model = finetune(shipped, lucchi_img, lucchi_all_fg, args.lucchi_iterations, args.seed)
                print(f"fine-tuned {args.lucchi_iterations} iterations in {time.perf_counter() - t0:.0f} s",
                      flush=True)
            lucchi_eval, lucchi_fg = lucchi_img[N_TRAIN:], lucchi_all_fg[N_TRAIN:]
        lucchi = accuracy_lucchi(lucchi_model, lucchi_eval, lucchi_fg)
        lucchi["model"] = (f"shipped, fine-tuned {args.lucchi_iterations} iterations on slices 5, 15"
                           if lucchi_model is not shipped else "shipped, as is")
        print(json.dumps({"lucchi": lucchi}), flush=True)
        report["accuracy"] = {"isbi_slices_20_29" if not args.quick else "isbi_like": isbi,
                              "lucchi_slices_20_39" if not args.quick else "lucchi_like": lucchi}
        for name, part in report["accuracy"].items():
            for metric, delta in part["delta"].items():
                if not abs(delta) <= args.gate:
                    failures.append(f"{name} {metric} changed by {delta:+.4f} (gate {args.gate})")
        report["gate_passed"] = not failures

    print()
    for name, row in report.get("speed", {}).items():
        print(f"{name:40} float32 {row['float32_mpx_s']:.3f} Mpx/s  bf16 {row['bfloat16_mpx_s']:.3f} Mpx/s  "
              f"x{row['speedup']:.2f}  argmax agreement {row['argmax_agreement']:.4f}")
    for name, part in report.get("accuracy", {}).items():
        (metric, delta), = part["delta"].items()
        print(f"{name:40} {metric} float32 {part['float32'][metric]:.4f}  bf16 {part['bfloat16'][metric]:.4f}  "
              f"delta {delta:+.4f}  argmax agreement {part['argmax_agreement']:.5f}  "
              f"max |dp| {part['max_abs_dp']:.4f}")
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    if failures:
        print("accuracy gate FAILED: " + "; ".join(failures), file=sys.stderr)
        raise SystemExit(1)
    return report


if __name__ == "__main__":
    main()
