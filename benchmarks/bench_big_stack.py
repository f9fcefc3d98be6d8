"""Benchmark: batch segmentation of a stack larger than memory; peak RSS and throughput.

Creates (or reuses) an uncompressed BigTIFF of ``--size-gb`` GiB of uint8
synthetic EM slices, written slice by slice (never held in memory), then runs
the batch engine on it in a child process, once per ``--runs`` entry, and
reports for each run the child's peak resident memory (``ru_maxrss``), its
RSS as the run goes on (flat = memory does not grow with depth) and the
throughput in megapixels per second.

A run of N slices stops the batch after N slices through its cancel hook
(so it also checks that a cancelled file leaves no output behind); ``all``
segments the whole stack and writes the outputs (deleted afterwards unless
``--keep``). The model has random weights: speed and memory do not depend on
what a network has learned.

On a 2-core CPU a U-Net segments about 0.5-1.5 Mpx/s, so a whole 4 GiB stack
takes hours; compare a short and a long partial run instead, e.g.:

    python benchmarks/bench_big_stack.py --size-gb 4 --preset default --runs 2,12
    python benchmarks/bench_big_stack.py --size-gb 4 --preset tiny --runs 4,100
    python benchmarks/bench_big_stack.py --size-gb 4 --shape 256 256 --preset tiny --runs all

The stack is deleted at the end unless ``--keep`` (reuse it with ``--path``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np


def make_stack(path: Path, size_gib: float, shape_yx: tuple[int, int]) -> tuple[int, int, int]:
    """Write an uncompressed BigTIFF of at least ``size_gib`` GiB, one slice at a time."""
    import tifffile

    from napari_unet.synthetic import synthetic_em_stack

    ny, nx = shape_yx
    nz = math.ceil(size_gib * 2**30 / (ny * nx))
    shape = (nz, ny, nx)
    if path.exists():
        with tifffile.TiffFile(path) as tif:
            if tif.series[0].shape == shape and tif.series[0].dtype == np.uint8:
                print(f"reusing {path} {shape} ({path.stat().st_size / 2**30:.2f} GiB)")
                return shape
    print(f"writing {path}: {nz} slices of {ny} x {nx} uint8 ({nz * ny * nx / 2**30:.2f} GiB) ...")
    t0 = time.perf_counter()
    block = synthetic_em_stack((8, ny, nx), seed=0).image  # varied by shifting, below

    def slices():
        for z in range(nz):
            yield np.roll(block[z % 8], ((z * 37) % ny, (z * 53) % nx), axis=(0, 1))

    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, slices(), shape=shape, dtype=np.uint8, bigtiff=True, photometric="minisblack",
                     metadata={"axes": "ZYX", "spacing": 40.0, "unit": "nm"}, resolution=(0.25, 0.25))
    print(f"  written in {time.perf_counter() - t0:.0f} s")
    return shape


def _rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def child(args: argparse.Namespace) -> None:
    """Segment ``args.input`` (up to ``args.max_slices`` slices) and print one JSON line."""
    import torch

    from napari_unet.errors import Cancelled
    from napari_unet.prediction.batch import BatchOptions, batch_segment_steps

    if args.threads:
        torch.set_num_threads(args.threads)
    limit = None if args.max_slices == "all" else int(args.max_slices)
    options = BatchOptions(
        instances=not args.labels_only, probabilities=not args.labels_only, tile_size=args.tile,
        batch_size=args.batch_size, device=args.device, overwrite=True,
    )
    samples: list[tuple[int, int]] = []  # (slices done, rss bytes)
    state = {"done": 0, "total": 0, "t_first": None}
    stop_sampler = threading.Event()
    peak_sampled = [0]

    def sampler() -> None:
        while not stop_sampler.wait(0.05):
            peak_sampled[0] = max(peak_sampled[0], _rss_bytes())

    threading.Thread(target=sampler, daemon=True).start()
    t0 = time.perf_counter()
    status = "done"
    steps = batch_segment_steps(args.model, [args.input], args.outdir, options,
                                should_stop=lambda: limit is not None and state["done"] >= limit)
    try:
        for event in steps:
            if event.result is not None:
                status = event.result.status + (f": {event.result.reason}" if event.result.reason else "")
                continue
            state["total"] = event.slices_total
            if event.slices_done == 0:
                state["t_first"] = time.perf_counter()  # model loaded, statistics taken
            elif event.slices_done != state["done"]:
                state["done"] = event.slices_done
                samples.append((event.slices_done, _rss_bytes()))
    except Cancelled:
        status = "stopped after the requested slices (cancelled, temporary files removed)"
    t_end = time.perf_counter()
    stop_sampler.set()
    leftovers = [p.name for p in Path(args.outdir).iterdir() if p.name.startswith(".")]
    done = state["done"]
    ny, nx = args.yx
    slice_seconds = t_end - (state["t_first"] or t0)
    milestones = {}
    for frac in (0.0, 0.25, 0.5, 0.75, 1.0):
        if samples:
            n, rss = samples[min(len(samples) - 1, int(round(frac * (len(samples) - 1))))]
            milestones[f"after {n} slices"] = round(rss / 2**20, 1)
    print(json.dumps({
        "status": status,
        "slices": done,
        "slices_total": state["total"],
        "seconds_total": round(t_end - t0, 2),
        "seconds_startup": round((state["t_first"] or t0) - t0, 2),
        "mpx_per_s": round(done * ny * nx / 1e6 / max(slice_seconds, 1e-9), 3),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "peak_rss_sampled_mib": round(peak_sampled[0] / 2**20, 1),
        "rss_mib": milestones,
        "temporary_files_left": leftovers,
        "torch_threads": torch.get_num_threads(),
    }))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--size-gb", type=float, default=4.0, help="stack size in GiB (default 4)")
    parser.add_argument("--shape", type=int, nargs=2, default=(2048, 2048), metavar=("Y", "X"),
                        help="slice size (default 2048 2048)")
    parser.add_argument("--path", type=Path, help="where to create or find the stack")
    parser.add_argument("--keep", action="store_true", help="keep the stack and outputs afterwards")
    parser.add_argument("--preset", default="default", help="network size (default: default)")
    parser.add_argument("--model", type=Path, help="a checkpoint instead of a random --preset network")
    parser.add_argument("--runs", default="4,all",
                        help="comma-separated slice counts per run, 'all' = whole stack (default 4,all)")
    parser.add_argument("--max-slices", help=argparse.SUPPRESS)  # child only
    parser.add_argument("--tile", type=int, help="prediction tile (default: engine's)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--labels-only", action="store_true", help="skip instances and probabilities")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--make", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--input", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--outdir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--yx", type=int, nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    if args.make:
        shape = make_stack(args.input, args.size_gb, tuple(args.shape))
        if not args.model.exists():
            import torch

            from napari_unet.model.checkpoint import TrainedModel
            from napari_unet.model.config import preset
            from napari_unet.model.unet import UNet

            torch.manual_seed(0)
            TrainedModel(UNet(preset(args.preset))).save(args.model)
        print(json.dumps({"shape": shape}))
        return

    work = Path(tempfile.mkdtemp(prefix="napari-unet-bench-"))
    stack = args.path or work / "big_stack.tif"
    try:
        # the stack and the model are made in a child too: Linux carries a process's
        # peak RSS across fork+exec into ru_maxrss, so this parent must stay small
        model = args.model or work / f"{args.preset}.pt"
        make = [sys.executable, __file__, "--make", "--input", str(stack), "--size-gb", str(args.size_gb),
                "--shape", *map(str, args.shape), "--preset", args.preset, "--model", str(model)]
        made = subprocess.run(make, capture_output=True, text=True)
        print(made.stdout.rstrip())
        if made.returncode != 0:
            raise SystemExit(f"creating the stack failed: {made.stderr[-2000:]}")
        shape = tuple(json.loads(made.stdout.strip().splitlines()[-1])["shape"])
        print(f"stack {shape} uint8 = {math.prod(shape) / 2**30:.2f} GiB; model {model}; "
              f"{os.cpu_count()} CPUs; parent peak RSS "
              f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
        reports = []
        for run in args.runs.split(","):
            outdir = work / f"out_{run}"
            outdir.mkdir(exist_ok=True)
            cmd = [sys.executable, __file__, "--child", "--input", str(stack), "--outdir", str(outdir),
                   "--model", str(model), "--max-slices", run, "--yx", *map(str, shape[1:]),
                   "--batch-size", str(args.batch_size), "--device", args.device]
            cmd += ["--tile", str(args.tile)] if args.tile else []
            cmd += ["--threads", str(args.threads)] if args.threads else []
            cmd += ["--labels-only"] if args.labels_only else []
            before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                print(proc.stderr[-3000:])
                raise SystemExit(f"run {run} failed")
            report = json.loads(proc.stdout.strip().splitlines()[-1])
            after = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
            report["peak_rss_children_mib"] = round(after / 1024, 1) if after > before else None
            outputs = sorted(outdir.iterdir())
            report["outputs"] = {p.name: round(p.stat().st_size / 2**20, 1) for p in outputs}
            report["run"] = run
            reports.append(report)
            print(f"\nrun {run}: {report['slices']} of {report['slices_total']} slices "
                  f"({report['slices'] * shape[1] * shape[2] / 1e6:.0f} Mpx) in {report['seconds_total']} s "
                  f"(startup incl. statistics {report['seconds_startup']} s); "
                  f"{report['mpx_per_s']} Mpx/s; peak RSS {report['peak_rss_mib']} MiB; "
                  f"RSS {report['rss_mib']}; {report['status']}; "
                  f"temporary files left: {report['temporary_files_left'] or 'none'}")
            if report["outputs"]:
                print(f"  outputs (MiB): {report['outputs']}")
            if not args.keep:
                shutil.rmtree(outdir, ignore_errors=True)
        print("\n" + json.dumps({"stack_shape": shape, "preset": args.preset, "runs": reports}, indent=1))
    finally:
        if not args.keep:
            if args.path is not None and stack.exists():
                stack.unlink()
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
