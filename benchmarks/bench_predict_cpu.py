"""Benchmark: overlap-tile prediction on the CPU, per tile size, vs one whole-slice pass.

A valid-padding U-Net loses ``margin`` pixels of context on each side of
every tile, so small tiles waste most of their work on context: the useful
fraction is ``t**2 / (t + 2*margin)**2``. This measures throughput
(megapixels of output per second) for a few output tile sizes and compares it
with a single pass over the whole mirror-padded slice, which is the upper
bound on speed but needs memory proportional to the slice.

Torch runs on ``--threads`` intra-op threads (default 1, for comparable
numbers on a shared machine). Example:

    PYTHONPATH=src python benchmarks/bench_predict_cpu.py --preset small --size 1024
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from napari_unet.model.config import PRESETS, preset
from napari_unet.model.unet import UNet
from napari_unet.prediction.overlap_tile import TilePredictor


def whole_pass(model: UNet, image: np.ndarray) -> np.ndarray:
    """One forward pass over the whole mirror-padded slice (the reference)."""
    g, (Y, X) = model.geometry, image.shape
    m = g.margin
    iy, ix = g.input_size_for_output(Y), g.input_size_for_output(X)
    padded = np.pad(image, ((m, iy - Y - m), (m, ix - X - m)), mode="reflect")
    with torch.inference_mode():
        logits = model(torch.from_numpy(np.ascontiguousarray(padded))[None, None])
    return torch.softmax(logits, dim=1)[0, :, :Y, :X].numpy()


def timed(fn, repeats: int) -> float:
    fn()  # warm-up: oneDNN builds its kernels for each new shape
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="small", choices=sorted(PRESETS))
    parser.add_argument("--size", type=int, default=768, help="slice edge in pixels")
    parser.add_argument("--tiles", type=int, nargs="+", default=[64, 128, 256, 512])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = UNet(preset(args.preset)).eval()
    image = np.random.default_rng(0).normal(size=(args.size, args.size)).astype(np.float32)
    mpx = args.size**2 / 1e6
    print(
        f"preset {args.preset}: depth {model.config.depth}, margin {model.margin} px, "
        f"{model.n_parameters() / 1e6:.2f} M parameters; slice {args.size}^2, "
        f"{args.threads} thread(s)"
    )

    reference = whole_pass(model, image)
    t_ref = timed(lambda: whole_pass(model, image), args.repeats)
    print(f"{'whole slice, one pass':>28}: {t_ref:7.3f} s  {mpx / t_ref:6.3f} Mpx/s")

    for tile in args.tiles:
        predictor = TilePredictor(model, tile_size=tile, batch_size=args.batch, device="cpu")
        t = predictor.tile_size
        useful = t**2 / (t + 2 * model.margin) ** 2
        seconds = timed(lambda p=predictor: p.predict_slice(image), args.repeats)
        diff = np.abs(predictor.predict_slice(image) - reference).max()
        print(
            f"{f'tile {t} ({predictor.n_tiles(image.shape)} tiles)':>28}: {seconds:7.3f} s  "
            f"{mpx / seconds:6.3f} Mpx/s  useful {useful:5.1%}  "
            f"x{seconds / t_ref:5.2f} of one pass  max |diff| {diff:.1e}"
        )


if __name__ == "__main__":
    main()
