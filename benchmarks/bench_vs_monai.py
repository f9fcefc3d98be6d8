"""Prediction speed: napari-unet's overlap-tile predictor vs MONAI's sliding window.

Same network weights, same input stack, same precision, one process.

* **napari-unet**: :class:`~napari_unet.overlap_tile.TilePredictor`. For a
  valid-padding U-Net every output pixel is predicted once, from its full
  real context (tiles abut; the margin is read from the neighbouring image).
* **MONAI**: ``monai.inferers.sliding_window_inference`` with overlap 0.25 and
  Gaussian blending. MONAI's windows must return an output of the window's
  size, so a valid-padding network is given its context the only way that
  keeps every output pixel exact: the stack is mirror-padded by the margin
  once, each window is ``tile + 2 * margin`` wide, the predictor returns the
  network's ``tile``-sized softmax in the middle of a zero frame, and the
  Gaussian importance map (``sigma_scale`` 0.125 of the tile) is zero on that
  frame. The window overlap is chosen so that the *output* tiles overlap by
  0.25. A naive alternative (mirror-pad every window on its own) is measured
  for agreement only: it gives border pixels mirrored, not real, context.

Both outputs are compared with one whole-slice forward pass of the network
(the exact answer) before any timing. The tile edge and the batch size of
each tool are tuned on one slice (best of ``--tiles`` x ``--batch``), then
the two tools run alternately ``--repeats`` times on the whole stack; medians
and the ratio are printed. Megapixels/s count output pixels of the stack.

On CUDA both run under the same autocast (bf16) and the script also measures
the bf16 matrix-multiply ceiling of the GPU and reports the network's useful
arithmetic rate (FLOPs per output pixel of one whole-slice pass x pixels/s)
as a fraction of it, and the share of time spent outside the network.

Example::

    python benchmarks/bench_vs_monai.py --preset default --slices 4
    python benchmarks/bench_vs_monai.py --preset paper --slices 2 --tiles 388 516
    python benchmarks/bench_vs_monai.py --quick
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

# the larger of the two real stacks (768 x 1024 slices): closer to the image
# sizes users segment than ISBI's 512 x 512, where one tile covers a slice
DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "lucchi_epfl_mito" / "image.tif"


def load_stack(path: Path, n: int, quick: bool) -> np.ndarray:
    """``n`` normalised float32 slices of a real EM stack (or a synthetic one)."""
    if quick:
        from napari_unet.synthetic import synthetic_em_stack

        img = synthetic_em_stack((n, 96, 96), seed=0).image
    else:
        import tifffile

        img = tifffile.imread(path)[:n]
    img = np.asarray(img, dtype=np.float32)
    return (img - img.mean()) / (img.std() + 1e-6)


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """The same mixed precision for both tools: bf16 on CUDA, none on CPU."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def whole_pass(model: torch.nn.Module, stack: np.ndarray, device: torch.device) -> np.ndarray:
    """The exact answer: one forward pass per mirror-padded slice, ``(Z, C, Y, X)``."""
    g = model.geometry
    m = g.margin
    Z, Y, X = stack.shape
    iy, ix = g.input_size_for_output(Y), g.input_size_for_output(X)
    out = []
    with torch.inference_mode(), autocast(device):
        for sl in stack:
            padded = np.pad(sl, ((m, iy - Y - m), (m, ix - X - m)), mode="reflect")
            x = torch.from_numpy(np.ascontiguousarray(padded))[None, None].to(device)
            out.append(torch.softmax(model(x).float(), 1)[0, :, :Y, :X].cpu().numpy())
    return np.stack(out)


def run_ours(model: torch.nn.Module, stack: np.ndarray, tile: int, batch: int,
             device: torch.device) -> np.ndarray:
    from napari_unet.overlap_tile import TilePredictor

    predictor = TilePredictor(model, tile_size=tile, batch_size=batch, device=device, amp=True)
    return predictor.predict(stack)


def _context_predictor(model: torch.nn.Module, m: int) -> Callable[[torch.Tensor], torch.Tensor]:
    def predictor(x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        p = torch.softmax(model(x).float(), 1)
        return F.pad(p, (m, m, m, m))
    return predictor


def run_monai(model: torch.nn.Module, stack: np.ndarray, tile: int, batch: int,
              device: torch.device) -> np.ndarray:
    """MONAI sliding window with real context (see the module docstring)."""
    from monai.data.utils import compute_importance_map
    from monai.inferers import sliding_window_inference

    m = model.geometry.margin
    roi = tile + 2 * m
    weight = torch.zeros((roi, roi), device=device)
    weight[m:m + tile, m:m + tile] = compute_importance_map(
        (tile, tile), mode="gaussian", sigma_scale=0.125, device=device)
    overlap = 1.0 - 0.75 * tile / roi  # output tiles overlap by 0.25
    padded = np.pad(stack, ((0, 0), (m, m), (m, m)), mode="reflect")
    x = torch.from_numpy(padded)[:, None]
    if device.type == "cuda":
        x = x.pin_memory().to(device, non_blocking=True)
    with torch.inference_mode(), autocast(device):
        out = sliding_window_inference(
            x, (roi, roi), batch, _context_predictor(model, m), overlap=overlap,
            mode="gaussian", roi_weight_map=weight, padding_mode="reflect", device=device)
    return out[:, :, m:-m, m:-m].float().cpu().numpy()


def run_monai_naive(model: torch.nn.Module, stack: np.ndarray, tile: int, batch: int,
                    device: torch.device) -> np.ndarray:
    """What a first attempt looks like: every window mirror-padded on its own."""
    from monai.inferers import sliding_window_inference

    m = model.geometry.margin

    def predictor(x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(model(F.pad(x, (m, m, m, m), mode="reflect")).float(), 1)

    x = torch.from_numpy(stack)[:, None].to(device)
    with torch.inference_mode(), autocast(device):
        out = sliding_window_inference(x, (tile, tile), batch, predictor, overlap=0.25,
                                       mode="gaussian", padding_mode="reflect")
    return out.float().cpu().numpy()


def timed(fn: Callable[[], Any], device: torch.device) -> float:
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def tune(name: str, fn: Callable, model: torch.nn.Module, one: np.ndarray, tiles: list[int],
         batches: list[int], device: torch.device) -> tuple[int, int]:
    """Best (tile, batch) of a tool on one slice (each measured after a warm-up run)."""
    best: tuple[float, int, int] | None = None
    for tile in tiles:
        for batch in batches:
            fn(model, one, tile, batch, device)  # warm-up: kernels for new shapes
            t = timed(lambda t=tile, b=batch: fn(model, one, t, b, device), device)
            print(f"  tune {name:6} tile {tile:4} batch {batch}: {t:.3f} s", flush=True)
            if best is None or t < best[0]:
                best = (t, tile, batch)
    assert best is not None
    return best[1], best[2]


def network_flops(model: torch.nn.Module, tile: int, device: torch.device) -> float:
    """FLOPs of the network per output pixel, counted by torch on one tile."""
    from torch.utils.flop_counter import FlopCounterMode

    g = model.geometry
    size = g.input_size_for_output(tile)
    out = size - 2 * g.margin
    x = torch.zeros((1, 1, size, size), device=device)
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        model(x)
    return counter.get_total_flops() / out**2


def bf16_ceiling(device: torch.device, n: int = 8192, repeats: int = 20) -> float:
    """Measured bf16 matrix-multiply rate (FLOP/s) of the GPU: the ceiling."""
    a = torch.randn((n, n), device=device, dtype=torch.bfloat16)
    b = torch.randn((n, n), device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    sync(device)
    t0 = time.perf_counter()
    for _ in range(repeats):
        a @ b
    sync(device)
    return 2 * n**3 * repeats / (time.perf_counter() - t0)


def network_only(model: torch.nn.Module, tile: int, batch: int, n_batches: int,
                 device: torch.device) -> float:
    """Seconds of ``n_batches`` bare forward passes (no I/O, copies or stitching)."""
    size = model.geometry.input_size_for_output(tile)
    x = torch.randn((batch, 1, size, size), device=device)
    if device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), autocast(device):
        model(x)
        sync(device)
        t0 = time.perf_counter()
        for _ in range(n_batches):
            model(x)
        sync(device)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the comparison; prints a summary and returns it (``--out`` writes JSON)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help=f"EM stack (default {DEFAULT_DATA})")
    ap.add_argument("--preset", default="default", help="network size (default, paper, ...)")
    ap.add_argument("--checkpoint", type=Path, default=None, help="trained weights (default: random)")
    ap.add_argument("--slices", type=int, default=4)
    ap.add_argument("--tiles", type=int, nargs="+", default=[260, 388, 516],
                    help="output tile edges to try for both tools")
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--quick", action="store_true", help="tiny synthetic run (smoke test)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)

    import napari_unet
    from napari_unet.devices import resolve_device
    from napari_unet.model import UNet

    if args.quick:
        args.preset, args.slices, args.tiles, args.batch, args.repeats = "tiny", 2, [36], [2], 1
    device = resolve_device(args.device)
    torch.manual_seed(0)
    if args.checkpoint:
        model = napari_unet.load_checkpoint(args.checkpoint).model
    else:
        model = UNet(napari_unet.preset(args.preset))
    model = model.to(device).eval()
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    if model.geometry.padding != "valid":
        sys.exit("this comparison is written for valid-padding networks (the presets)")
    stack = load_stack(args.data, args.slices, args.quick)
    Z, Y, X = stack.shape
    mpx = Z * Y * X / 1e6
    print(f"{args.preset}: {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters, "
          f"margin {model.geometry.margin}; stack {stack.shape}; device {device}; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)

    # agreement first: both against the exact whole-slice answer
    exact = whole_pass(model, stack[:1], device)
    t_ours, b_ours = tune("ours", run_ours, model, stack[:1], args.tiles, args.batch, device)
    t_mon, b_mon = tune("monai", run_monai, model, stack[:1], args.tiles, args.batch, device)
    p_ours = run_ours(model, stack[:1], t_ours, b_ours, device)
    p_mon = run_monai(model, stack[:1], t_mon, b_mon, device)
    p_naive = run_monai_naive(model, stack[:1], t_mon, b_mon, device)
    agreement = {
        "ours_vs_exact_max": float(np.abs(p_ours - exact).max()),
        "monai_vs_exact_max": float(np.abs(p_mon - exact).max()),
        "ours_vs_monai_max": float(np.abs(p_ours - p_mon).max()),
        "ours_vs_monai_mean": float(np.abs(p_ours - p_mon).mean()),
        "monai_naive_vs_exact_max": float(np.abs(p_naive - exact).max()),
        "monai_naive_vs_exact_mean": float(np.abs(p_naive - exact).mean()),
        "argmax_agreement": float((p_ours.argmax(1) == p_mon.argmax(1)).mean()),
    }
    print(json.dumps(agreement), flush=True)

    times: dict[str, list[float]] = {"ours": [], "monai": []}
    for _ in range(args.repeats):
        times["ours"].append(timed(lambda: run_ours(model, stack, t_ours, b_ours, device), device))
        times["monai"].append(timed(lambda: run_monai(model, stack, t_mon, b_mon, device), device))
    med = {k: statistics.median(v) for k, v in times.items()}
    flops_px = network_flops(model, t_ours, device)
    result: dict[str, Any] = {
        "preset": args.preset, "parameters_M": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
        "stack": list(stack.shape), "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
        or platform.machine(),
        "threads": torch.get_num_threads(), "torch": torch.__version__,
        "ours": {"tile": t_ours, "batch": b_ours, "median_s": med["ours"], "mpx_s": mpx / med["ours"],
                 "times": times["ours"]},
        "monai": {"tile": t_mon, "batch": b_mon, "median_s": med["monai"], "mpx_s": mpx / med["monai"],
                  "times": times["monai"]},
        "speedup": med["monai"] / med["ours"],
        # each repeat runs the two back to back: the median of their ratios is what a
        # shared machine's changing load disturbs least
        "speedup_paired_median": statistics.median(m / o for o, m in zip(times["ours"], times["monai"])),
        "agreement": agreement,
        "gflop_per_output_px": flops_px / 1e9,
        "useful_tflop_s": flops_px * Z * Y * X / med["ours"] / 1e12,
    }
    if device.type == "cuda":
        from napari_unet.overlap_tile import TilePredictor

        ceiling = bf16_ceiling(device)
        n_tiles = TilePredictor(model, tile_size=t_ours, device=device).n_tiles((Y, X)) * Z
        net_s = network_only(model, t_ours, b_ours, -(-n_tiles // b_ours), device)
        result.update(bf16_ceiling_tflop_s=ceiling / 1e12,
                      fraction_of_ceiling=flops_px * Z * Y * X / med["ours"] / ceiling,
                      share_outside_network=max(0.0, 1.0 - net_s / med["ours"]))
    print(f"ours : tile {t_ours} batch {b_ours}: {med['ours']:.3f} s  {mpx / med['ours']:.3f} Mpx/s")
    print(f"MONAI: tile {t_mon} batch {b_mon}: {med['monai']:.3f} s  {mpx / med['monai']:.3f} Mpx/s")
    print(f"speed-up over MONAI: x{result['speedup']:.2f} (ratio of medians), "
          f"x{result['speedup_paired_median']:.2f} (median of paired ratios); "
          f"useful rate {result['useful_tflop_s']:.3f} TFLOP/s")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
