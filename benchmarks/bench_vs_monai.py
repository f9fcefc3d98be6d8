"""Prediction speed: napari-unet's overlap-tile predictor vs MONAI's sliding window.

Same network weights, same input stack, same precision, one process. Three
set-ups run alternately on the whole stack, each with its own tuned tile edge
and batch size (best of ``--tiles`` x ``--batch`` on one slice):

* **napari-unet** (:class:`~napari_unet.prediction.overlap_tile.TilePredictor`). For a
  valid-padding U-Net every output pixel is predicted once, from its real
  context: the slice is mirror-padded by the network's margin, tile origins
  sit on the pooling grid (multiples of ``2 ** depth``) and output tiles abut,
  so the result is one whole-slice pass of the network.
* **MONAI, same output** (the headline row): ``monai.inferers.
  sliding_window_inference`` set up so that it computes exactly what the
  network computes on the whole slice. A valid-padding network returns a
  smaller output than its input, while MONAI wants a window's output the size
  of the window, so:

  - the stack is mirror-padded by the margin ``m`` in front and, at the end,
    by whatever makes ``padded length - window`` a multiple of the stride;
  - windows are a legal network input (``roi = tile + 2 m``) and the stride
    is ``tile`` rounded down to a multiple of ``2 ** depth``: every window
    origin is on the pooling grid (MONAI starts windows at ``i * stride`` and
    moves the last one back to end at the image's end, which the padding
    makes a multiple of the stride too), and consecutive output tiles abut
    or overlap by less than ``2 ** depth`` px;
  - the predictor returns the network's ``tile``-sized softmax inside a zero
    frame of width ``m``, and the weight map (``roi_weight_map``) is 1 on the
    tile and 0 on the frame, so a frame never dilutes a neighbour's output
    and overlapping output pixels (identical values) are averaged;
  - the padding is cut off at the end.

  MONAI's window stride comes from ``int(roi * (1 - overlap))``; the overlap
  passed is chosen so that this is exactly the stride, and the window origins
  are checked with MONAI's own ``dense_patch_slices`` before any run.
  The two outputs are then compared on the whole stack in float32 (TF32
  disabled on CUDA): the script stops with exit code 1 if they differ by more
  than ``--tolerance`` (1e-4), so "same output" is printed only when it was
  verified. On CUDA the timed runs use bf16 autocast for both tools; their
  outputs then differ by bf16 rounding only.
* **MONAI defaults** (second row, different output): overlap 0.25 (MONAI's
  default) and Gaussian blending (``sigma_scale`` 0.125; MONAI's own default
  mode is ``"constant"``, Gaussian is what its tutorials use), with the same
  real-context trick (stack padded by the margin once, tile-sized softmax in a
  zero frame, Gaussian on the tile and zero on the frame). Output tiles
  overlap by 0.25 of a tile, so window origins fall off the pooling grid and
  a U-Net's output is not invariant to such shifts: its output differs from
  the network's whole-slice answer (max difference and argmax agreement are
  printed in its row label). A naive variant (every window mirror-padded on
  its own) is measured for agreement only.

Agreement with one whole-slice forward pass (the exact answer) is measured on
the first slice for all of them. Megapixels/s count output pixels of the
stack. Each repeat runs the tools back to back; the median of the per-repeat
ratios is the figure to quote on a shared machine.

On CUDA the script also measures the bf16 matrix-multiply ceiling of the GPU
(8192^3 GEMMs) and reports the network's useful arithmetic rate (FLOPs per
output pixel of one whole-slice pass, counted by ``torch.utils.flop_counter``,
x output pixels/s) as a fraction of it, and the share of the prediction time
spent outside the network (a bare forward loop over the same number of tiles).

Example::

    python benchmarks/bench_vs_monai.py --checkpoint src/napari_unet/model/weights/em_membranes_default.pt \\
        --slices 2 --tiles 388 516 --batch 1 2 --repeats 3
    python benchmarks/bench_vs_monai.py --preset paper --device cuda --slices 16
    python benchmarks/bench_vs_monai.py --quick
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

# the larger of the two real stacks (768 x 1024 slices): closer to the image
# sizes users segment than ISBI's 512 x 512, where one tile covers a slice
DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "lucchi_epfl_mito" / "image.tif"
TOLERANCE = 1e-4

#: the three set-ups, in the order they run in each repeat
TOOLS = ("ours", "monai_same", "monai_defaults")


class NotSameOutput(RuntimeError):
    """MONAI's same-output set-up did not reproduce napari-unet's output."""


def load_stack(path: Path | None, n: int, synthetic_shape: tuple[int, int] | None = None) -> np.ndarray:
    """``n`` normalised float32 slices of a real EM stack, or of a synthetic one
    of ``synthetic_shape`` (Y, X) when that is given."""
    if synthetic_shape is not None:
        from napari_unet.synthetic import synthetic_em_stack

        img = synthetic_em_stack((n, *synthetic_shape), seed=0).image
    else:
        import tifffile

        assert path is not None
        img = tifffile.imread(path)[:n]
    img = np.asarray(img, dtype=np.float32)
    return (img - img.mean()) / (img.std() + 1e-6)


def autocast(device: torch.device, amp: bool = True) -> contextlib.AbstractContextManager:
    """The same mixed precision for all tools: bf16 on CUDA when ``amp``, none on CPU."""
    if device.type == "cuda" and amp:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@contextlib.contextmanager
def full_precision(device: torch.device) -> Iterator[None]:
    """True float32 on CUDA (no TF32 convolutions or matmuls), for the output checks."""
    if device.type != "cuda":
        yield
        return
    old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def legal_tile(model: torch.nn.Module, tile: int) -> int:
    """The output edge of the smallest legal network input whose output covers ``tile``."""
    g = model.geometry
    return int(g.output_size(g.input_size_for_output(int(tile))))


def whole_pass(model: torch.nn.Module, stack: np.ndarray, device: torch.device,
               amp: bool = False) -> np.ndarray:
    """The exact answer: one forward pass per mirror-padded slice, ``(Z, C, Y, X)``."""
    g = model.geometry
    m = g.margin
    Z, Y, X = stack.shape
    iy, ix = g.input_size_for_output(Y), g.input_size_for_output(X)
    out = []
    with torch.inference_mode(), autocast(device, amp):
        for sl in stack:
            padded = np.pad(sl, ((m, iy - Y - m), (m, ix - X - m)), mode="reflect")
            x = torch.from_numpy(np.ascontiguousarray(padded))[None, None].to(device)
            out.append(torch.softmax(model(x).float(), 1)[0, :, :Y, :X].cpu().numpy())
    return np.stack(out)


def run_ours(model: torch.nn.Module, stack: np.ndarray, tile: int, batch: int,
             device: torch.device, amp: bool = True) -> np.ndarray:
    from napari_unet.prediction.overlap_tile import TilePredictor

    predictor = TilePredictor(model, tile_size=tile, batch_size=batch, device=device, amp=amp)
    return predictor.predict(stack)


def _framed_predictor(model: torch.nn.Module, m: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """MONAI predictor for a valid network: the softmax in the middle of a zero frame."""
    def predictor(x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        p = torch.softmax(model(x).float(), 1)
        return F.pad(p, (m, m, m, m))
    return predictor


def _to_device(padded: np.ndarray, device: torch.device) -> torch.Tensor:
    x = torch.from_numpy(np.ascontiguousarray(padded))[:, None]
    if device.type == "cuda":
        x = x.pin_memory().to(device, non_blocking=True)
    return x


def same_output_plan(model: torch.nn.Module, shape: tuple[int, int], tile: int) -> dict[str, Any]:
    """Window, stride, overlap and end padding that put MONAI's windows on the pooling grid.

    Returns ``roi`` (window edge, a legal input), ``tile`` (its output edge),
    ``stride`` (a multiple of ``2 ** depth``, at most ``tile``), the ``overlap``
    to pass to MONAI (per axis) and the mirror padding ``pad_after`` per axis
    (``margin`` in front).
    """
    g = model.geometry
    m, d = g.margin, g.divisor
    t = legal_tile(model, tile)
    roi = t + 2 * m
    stride = (t // d) * d
    if stride < 1:
        raise ValueError(f"tile {t} is smaller than the pooling grid step {d}")
    pads, overlaps = [], []
    for length in shape:
        n = max(0, math.ceil((length - t) / stride))
        padded_len = roi + n * stride  # so that padded length - roi is a multiple of the stride
        pads.append(padded_len - length - m)
        # MONAI's stride is int(roi * (1 - overlap)): aim half a pixel above the wanted one
        overlaps.append(1.0 - (stride + 0.5) / roi)
    return {"roi": roi, "tile": t, "stride": stride, "margin": m, "overlap": tuple(overlaps),
            "pad_after": tuple(pads)}


def check_plan_on_grid(model: torch.nn.Module, shape: tuple[int, int], plan: dict[str, Any]) -> None:
    """Ask MONAI itself where its windows go; every origin must be on the pooling grid
    and the output tiles must cover the image without a gap."""
    from monai.data.utils import dense_patch_slices

    d = model.geometry.divisor
    size = tuple(n + plan["margin"] + p for n, p in zip(shape, plan["pad_after"]))
    roi = (plan["roi"], plan["roi"])
    # MONAI's documented stride: int(roi * (1 - overlap)), or the whole axis when roi fills it
    interval = tuple(r if r == n else int(r * (1 - o)) for r, n, o in zip(roi, size, plan["overlap"]))
    if any(i != plan["stride"] for i, r, n in zip(interval, roi, size) if r != n):
        raise NotSameOutput(f"MONAI would stride {interval}, not {plan['stride']}")
    for axis, n in enumerate(shape):
        starts = sorted({s[axis].start for s in dense_patch_slices(size, roi, interval)})
        if any(s % d for s in starts):
            raise NotSameOutput(f"MONAI windows off the {d}-px pooling grid: {starts}")
        ends = [s + plan["tile"] for s in starts]
        if starts[0] != 0 or ends[-1] < n or any(b > e for b, e in zip(starts[1:], ends)):
            raise NotSameOutput(f"MONAI output tiles leave gaps: starts {starts}, tile {plan['tile']}")


def run_monai_same(model: torch.nn.Module, stack: np.ndarray, tile: int, batch: int,
                   device: torch.device, amp: bool = True) -> np.ndarray:
    """MONAI sliding window set up to give the network's exact output (module docstring)."""
    from monai.inferers import sliding_window_inference

    Z, Y, X = stack.shape
    plan = same_output_plan(model, (Y, X), tile)
    m, t, roi = plan["margin"], plan["tile"], plan["roi"]
    weight = torch.zeros((roi, roi), device=device)
    weight[m:m + t, m:m + t] = 1.0
    padded = np.pad(stack, ((0, 0), (m, plan["pad_after"][0]), (m, plan["pad_after"][1])), mode="reflect")
    x = _to_device(padded, device)
    with torch.inference_mode(), autocast(device, amp):
        out = sliding_window_inference(
            x, (roi, roi), batch, _framed_predictor(model, m), overlap=plan["overlap"],
            mode="constant", roi_weight_map=weight, device=device)
    return out[:, :, m:m + Y, m:m + X].float().cpu().numpy()


def run_monai_defaults(model: torch.nn.Module, stack: np.ndarray, tile: int, batch: int,
                       device: torch.device, amp: bool = True) -> np.ndarray:
    """MONAI sliding window, overlap 0.25 and Gaussian blending of the output tiles."""
    from monai.data.utils import compute_importance_map
    from monai.inferers import sliding_window_inference

    m = model.geometry.margin
    tile = legal_tile(model, tile)
    roi = tile + 2 * m
    weight = torch.zeros((roi, roi), device=device)
    weight[m:m + tile, m:m + tile] = compute_importance_map(
        (tile, tile), mode="gaussian", sigma_scale=0.125, device=device)
    overlap = 1.0 - 0.75 * tile / roi  # output tiles overlap by 0.25
    x = _to_device(np.pad(stack, ((0, 0), (m, m), (m, m)), mode="reflect"), device)
    with torch.inference_mode(), autocast(device, amp):
        out = sliding_window_inference(
            x, (roi, roi), batch, _framed_predictor(model, m), overlap=overlap,
            mode="gaussian", roi_weight_map=weight, padding_mode="reflect", device=device)
    return out[:, :, m:-m, m:-m].float().cpu().numpy()


def run_monai_naive(model: torch.nn.Module, stack: np.ndarray, tile: int, batch: int,
                    device: torch.device, amp: bool = True) -> np.ndarray:
    """What a first attempt looks like: every window mirror-padded on its own."""
    from monai.inferers import sliding_window_inference

    m = model.geometry.margin
    tile = legal_tile(model, tile)

    def predictor(x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(model(F.pad(x, (m, m, m, m), mode="reflect")).float(), 1)

    x = _to_device(stack, device)
    with torch.inference_mode(), autocast(device, amp):
        out = sliding_window_inference(x, (tile, tile), batch, predictor, overlap=0.25,
                                       mode="gaussian", padding_mode="reflect")
    return out.float().cpu().numpy()


RUNNERS: dict[str, Callable[..., np.ndarray]] = {
    "ours": run_ours, "monai_same": run_monai_same, "monai_defaults": run_monai_defaults,
}
LABELS = {
    "ours": "napari-unet TilePredictor",
    "monai_same": "MONAI sliding_window_inference, on-grid windows",
    "monai_defaults": "MONAI sliding_window_inference, overlap 0.25, Gaussian",
}


def timed(fn: Callable[[], Any], device: torch.device) -> float:
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def tune(name: str, fn: Callable, model: torch.nn.Module, one: np.ndarray, tiles: list[int],
         batches: list[int], device: torch.device, log: Callable[[str], None] = print) -> tuple[int, int]:
    """Best (tile, batch) of a tool on one slice (each measured after a warm-up run)."""
    best: tuple[float, int, int] | None = None
    for tile in tiles:
        for batch in batches:
            fn(model, one, tile, batch, device)  # warm-up: kernels for new shapes
            t = timed(lambda t=tile, b=batch: fn(model, one, t, b, device), device)
            log(f"  tune {name:14} tile {tile:4} batch {batch:2}: {t:.3f} s")
            if best is None or t < best[0]:
                best = (t, tile, batch)
    assert best is not None
    return best[1], best[2]


def network_flops(model: torch.nn.Module, shape: tuple[int, int], device: torch.device) -> float:
    """FLOPs of the network per output pixel of one whole-slice pass (the least any
    tiling can compute), counted by torch (on a meta copy where possible: no arithmetic)."""
    from torch.utils.flop_counter import FlopCounterMode

    g = model.geometry
    iy, ix = (g.input_size_for_output(n) for n in shape)
    oy, ox = g.output_size(iy), g.output_size(ix)
    counter = FlopCounterMode(display=False)
    try:
        meta = copy.deepcopy(model).to("meta")
        with torch.no_grad(), counter:
            meta(torch.empty((1, 1, iy, ix), device="meta"))
    except Exception:  # older torch without meta support for some op: count a real pass
        counter = FlopCounterMode(display=False)
        with torch.inference_mode(), counter:
            model(torch.zeros((1, 1, iy, ix), device=device))
    return counter.get_total_flops() / (oy * ox)


def bf16_ceiling(device: torch.device, n: int = 8192, repeats: int = 50) -> float:
    """Measured bf16 matrix-multiply rate (FLOP/s) of the GPU: the ceiling."""
    a = torch.randn((n, n), device=device, dtype=torch.bfloat16)
    b = torch.randn((n, n), device=device, dtype=torch.bfloat16)
    c = torch.empty((n, n), device=device, dtype=torch.bfloat16)
    for _ in range(5):
        torch.matmul(a, b, out=c)
    sync(device)
    t0 = time.perf_counter()
    for _ in range(repeats):
        torch.matmul(a, b, out=c)
    sync(device)
    rate = 2 * n**3 * repeats / (time.perf_counter() - t0)
    del a, b, c
    return rate


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


def _diff(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    d = np.abs(a - b)
    return {"max_abs_diff": float(d.max()), "mean_abs_diff": float(d.mean()),
            "argmax_agreement": float((a.argmax(1) == b.argmax(1)).mean())}


def compare(model: torch.nn.Module, stack: np.ndarray, tiles: list[int], batches: list[int],
            repeats: int, device: torch.device, tolerance: float = TOLERANCE,
            log: Callable[[str], None] = print) -> dict[str, Any]:
    """Tune, check and time the three set-ups; returns the summary (see the module docstring).

    Raises :class:`NotSameOutput` when MONAI's same-output set-up differs from
    napari-unet by more than ``tolerance`` (then nothing is timed).
    """
    if model.geometry.padding != "valid":
        raise ValueError("this comparison is written for valid-padding networks (the presets)")
    Z, Y, X = stack.shape
    mpx = Z * Y * X / 1e6
    one = stack[:1]

    tuned = {name: tune(name, RUNNERS[name], model, one, tiles, batches, device, log) for name in TOOLS}
    check_plan_on_grid(model, (Y, X), same_output_plan(model, (Y, X), tuned["monai_same"][0]))

    # agreement with the exact answer on one slice, and the same-output check on the whole
    # stack; both in float32 (no bf16 autocast, no TF32 on CUDA)
    with full_precision(device):
        exact = whole_pass(model, one, device)
        first = {name: RUNNERS[name](model, one, *tuned[name], device, amp=False) for name in TOOLS}
        naive = run_monai_naive(model, one, *tuned["monai_defaults"], device, amp=False)
        full = {name: RUNNERS[name](model, stack, *tuned[name], device, amp=False) for name in TOOLS}
    agreement = {f"{name}_vs_exact_max": float(np.abs(p - exact).max()) for name, p in first.items()}
    agreement["monai_naive_vs_exact_max"] = float(np.abs(naive - exact).max())
    agreement["monai_naive_vs_exact_mean"] = float(np.abs(naive - exact).mean())
    same = _diff(full["ours"], full["monai_same"]) | {"tolerance": tolerance, "precision": "float32"}
    same["verified"] = same["max_abs_diff"] <= tolerance
    defaults = _diff(full["ours"], full["monai_defaults"])
    log(json.dumps({"agreement_one_slice": agreement, "same_output_stack": same,
                    "defaults_vs_ours_stack": defaults}))
    del first, full, exact, naive
    if not same["verified"]:
        raise NotSameOutput(
            f"MONAI's on-grid set-up differs from napari-unet by {same['max_abs_diff']:.3g} "
            f"(> {tolerance:g}; argmax agreement {100 * same['argmax_agreement']:.2f} %)")

    times: dict[str, list[float]] = {name: [] for name in TOOLS}
    for _ in range(repeats):
        for name in TOOLS:
            fn = RUNNERS[name]
            times[name].append(timed(lambda: fn(model, stack, *tuned[name], device), device))
    med = {k: statistics.median(v) for k, v in times.items()}

    def ratio(other: str) -> dict[str, float]:
        return {"speedup": med[other] / med["ours"],
                "speedup_paired_median": statistics.median(
                    m / o for o, m in zip(times["ours"], times[other]))}

    flops_px = network_flops(model, (Y, X), device)
    result: dict[str, Any] = {
        "parameters_M": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
        "stack": list(stack.shape), "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda"
        else platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(), "torch": torch.__version__,
        "precision_timed": "bf16 autocast" if device.type == "cuda" else "float32",
        **{name: {"tile": tuned[name][0], "batch": tuned[name][1], "median_s": med[name],
                  "mpx_s": mpx / med[name], "times": times[name]} for name in TOOLS},
        # headline: against the set-up that gives the same output
        **ratio("monai_same"),
        "same_output": same,
        "defaults": ratio("monai_defaults") | defaults,
        "agreement": agreement,
        "gflop_per_output_px": flops_px / 1e9,
        "useful_tflop_s": flops_px * Z * Y * X / med["ours"] / 1e12,
    }
    try:
        import monai

        result["monai"] = monai.__version__
    except ImportError:  # pragma: no cover - the runners above needed it
        pass
    if device.type == "cuda":
        from napari_unet.prediction.overlap_tile import TilePredictor

        ceiling = bf16_ceiling(device)
        t_ours, b_ours = tuned["ours"]
        predictor = TilePredictor(model, tile_size=t_ours, device=device)
        n_tiles = predictor.n_tiles((Y, X)) * Z
        net_s = network_only(model, predictor.tile_size, b_ours, -(-n_tiles // b_ours), device)
        result.update(
            bf16_ceiling_tflop_s=ceiling / 1e12,
            fraction_of_ceiling=flops_px * Z * Y * X / med["ours"] / ceiling,
            fraction_of_ceiling_monai_same=flops_px * Z * Y * X / med["monai_same"] / ceiling,
            share_outside_network=max(0.0, 1.0 - net_s / med["ours"]))
    return result


def summary_table(result: dict[str, Any]) -> str:
    """The comparison as a markdown table (rows: same output, then MONAI defaults)."""
    same, dflt = result["same_output"], result["defaults"]
    rows = [
        ("same output (verified: max diff "
         f"{same['max_abs_diff']:.1e} <= {same['tolerance']:g})", "ours", ""),
        ("", "monai_same", f"x{result['speedup_paired_median']:.2f} "
         f"(ratio of medians x{result['speedup']:.2f})"),
        (f"MONAI defaults (different output: max diff {dflt['max_abs_diff']:.2f}, "
         f"argmax agreement {100 * dflt['argmax_agreement']:.1f}%)", "monai_defaults",
         f"x{dflt['speedup_paired_median']:.2f} (ratio of medians x{dflt['speedup']:.2f})"),
    ]
    lines = ["| row | tool | tile, batch | median s | output Mpx/s | napari-unet speed-up |",
             "|---|---|---|---|---|---|"]
    for label, name, speed in rows:
        r = result[name]
        lines.append(f"| {label} | {LABELS[name]} | {r['tile']}, {r['batch']} | {r['median_s']:.3f} "
                     f"| {r['mpx_s']:.3f} | {speed} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the comparison; prints a summary and returns it (``--out`` writes JSON).

    Exits with code 1 when the same-output set-up does not reproduce napari-unet's output.
    """
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="EM stack (default ../shared/data/...)")
    ap.add_argument("--preset", default="default", help="network size (default, paper, ...)")
    ap.add_argument("--checkpoint", type=Path, default=None, help="trained weights (default: random)")
    ap.add_argument("--slices", type=int, default=4)
    ap.add_argument("--tiles", type=int, nargs="+", default=[260, 388, 516],
                    help="output tile edges to try for every tool")
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--tolerance", type=float, default=TOLERANCE,
                    help="largest |difference| of the same-output row's softmax (default 1e-4)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch intra-op threads (default: torch's); 1 is steadier on a shared CPU")
    ap.add_argument("--quick", action="store_true", help="tiny synthetic run (smoke test)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)

    import napari_unet
    from napari_unet.devices import resolve_device
    from napari_unet.model.unet import UNet

    if args.quick:
        args.preset, args.slices, args.tiles, args.batch, args.repeats = "tiny", 2, [36], [2], 1
        args.checkpoint = None
    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.checkpoint:
        model = napari_unet.load_checkpoint(args.checkpoint).model
        name = f"{args.checkpoint.stem} ({model.config.base_channels} base channels)"
    else:
        model = UNet(napari_unet.preset(args.preset))
        name = args.preset
    model = model.float().to(device).eval()
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    stack = load_stack(args.data, args.slices, (96, 96) if args.quick else None)
    print(f"{name}: {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters, "
          f"margin {model.geometry.margin}; stack {stack.shape}; device {device}; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)
    try:
        result = compare(model, stack, args.tiles, args.batch, args.repeats, device, args.tolerance,
                         log=lambda s: print(s, flush=True))
    except NotSameOutput as exc:
        print(f"NOT the same output: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    result = {"network": name, "preset": None if args.checkpoint else args.preset,
              "checkpoint": args.checkpoint.name if args.checkpoint else None, **result}
    print()
    print(summary_table(result))
    extra = ""
    if "fraction_of_ceiling" in result:
        extra = (f"; {100 * result['fraction_of_ceiling']:.1f} % of the measured bf16 ceiling "
                 f"({result['bf16_ceiling_tflop_s']:.0f} TFLOP/s), "
                 f"{100 * result['share_outside_network']:.0f} % of the time outside the network")
    print(f"\nuseful rate {result['useful_tflop_s']:.3f} TFLOP/s "
          f"({1e6 * result['gflop_per_output_px']:.0f} kFLOP per output pixel){extra}")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
