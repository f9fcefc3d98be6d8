"""Training throughput of the engine (iterations/s, patches/s) on synthetic EM data.

Measures the real training loop (sampling + augmentation in the prefetch
thread, forward, weighted loss, backward, AdamW) after a warm-up, for one
model preset and patch size. Example::

    python benchmarks/bench_training.py --preset default --patch 128 --iterations 30
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch

from napari_unet import Trainer, TrainingConfig, preset
from napari_unet.synthetic import partial_annotation, synthetic_em_stack


def measure(preset_name: str = "default", patch: int = 128, batch_size: int = 4, iterations: int = 30,
            warmup: int = 5, device: str = "auto", shape: tuple[int, int, int] = (6, 256, 256)) -> dict[str, Any]:
    """Train ``warmup + iterations`` steps on a synthetic stack and time the last ``iterations - 1``.

    Returns iterations/s, patches/s, output Mpx/s and the trainer's summary
    (device, input/output patch edges, parameters).
    """
    data = synthetic_em_stack(shape, seed=0)
    labels = partial_annotation(data.instances, [1, 3])
    total = iterations + warmup
    cfg = TrainingConfig(
        iterations=total, patch_size=patch, batch_size=batch_size, val_every=10**9, device=device,
    )
    trainer = Trainer(data.image, labels, cfg, model=preset(preset_name))
    t_start = t_end = None
    for event in trainer:
        if event.iteration == warmup and not event.done:
            t_start = time.perf_counter()
        if event.iteration == total - 1 and not event.done:
            t_end = time.perf_counter()
            trainer.cancel()  # stop cleanly (the loop releases its thread and memory)
    if t_start is None or t_end is None:
        raise RuntimeError("training stopped before the timed iterations ran")
    n = total - 1 - warmup
    dt = (t_end - t_start) / n
    s = trainer.summary()
    return {
        "preset": preset_name, "parameters_M": round(s["parameters"] / 1e6, 2), "device": s["device"],
        "threads": torch.get_num_threads(), "input_size": s["input_size"], "output_size": s["output_size"],
        "batch_size": batch_size, "timed_iterations": n, "iterations_s": 1 / dt,
        "patches_s": batch_size / dt, "output_mpx_s": batch_size * s["output_size"] ** 2 / dt / 1e6,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="default")
    ap.add_argument("--patch", type=int, default=128, help="output patch edge (default 128)")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--iterations", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--quick", action="store_true", help="tiny model and data (smoke run)")
    args = ap.parse_args(argv)
    if args.quick:
        args.preset, args.patch, args.iterations, args.warmup = "tiny", 32, 6, 2
    r = measure(args.preset, args.patch, args.batch_size, args.iterations, args.warmup, args.device,
                (4, 96, 96) if args.quick else (6, 256, 256))
    print(f"preset={r['preset']} params={r['parameters_M']:.2f}M device={r['device']} threads={r['threads']}")
    print(f"patch: input {r['input_size']}px -> output {r['output_size']}px, batch {r['batch_size']}")
    print(f"{r['iterations_s']:.2f} iterations/s, {r['patches_s']:.1f} patches/s, "
          f"{r['output_mpx_s']:.3f} output Mpx/s  ({r['timed_iterations']} timed iterations)")
    return r


if __name__ == "__main__":
    main()
