"""Training throughput of the engine (iterations/s, patches/s) on synthetic EM data.

Measures the real training loop (sampling + augmentation in the prefetch
thread, forward, weighted loss, backward, AdamW) after a warm-up, for one
model preset and patch size. Example::

    python benchmarks/bench_training.py --preset default --patch 128 --iterations 30
"""

from __future__ import annotations

import argparse
import time

import torch

from napari_unet import Trainer, TrainingConfig, preset
from napari_unet.synthetic import partial_annotation, synthetic_em_stack


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="default")
    ap.add_argument("--patch", type=int, default=128, help="output patch edge (default 128)")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--iterations", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--quick", action="store_true", help="tiny model and data (smoke run)")
    args = ap.parse_args()
    if args.quick:
        args.preset, args.patch, args.iterations, args.warmup = "tiny", 32, 6, 2

    shape = (6, 256, 256) if not args.quick else (4, 96, 96)
    data = synthetic_em_stack(shape, seed=0)
    labels = partial_annotation(data.instances, [1, 3])
    total = args.iterations + args.warmup
    cfg = TrainingConfig(
        iterations=total, patch_size=args.patch, batch_size=args.batch_size,
        val_every=10**9, device=args.device,
    )
    trainer = Trainer(data.image, labels, cfg, model=preset(args.preset))
    t_start = None
    for event in trainer:
        if event.iteration == args.warmup and not event.done:
            t_start = time.perf_counter()
        if event.iteration == total - 1 and not event.done:
            t_end = time.perf_counter()
            trainer.cancel()  # stop cleanly (the loop releases its thread and memory)
    n = total - 1 - args.warmup
    dt = (t_end - t_start) / n
    s = trainer.summary()
    print(f"preset={args.preset} params={s['parameters'] / 1e6:.2f}M device={s['device']} "
          f"threads={torch.get_num_threads()}")
    print(f"patch: input {s['input_size']}px -> output {s['output_size']}px, batch {args.batch_size}")
    print(f"{1 / dt:.2f} iterations/s, {args.batch_size / dt:.1f} patches/s, "
          f"{args.batch_size * s['output_size'] ** 2 / dt / 1e6:.3f} output Mpx/s  ({n} timed iterations)")


if __name__ == "__main__":
    main()
