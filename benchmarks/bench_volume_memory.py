"""Benchmark: a dask worker's peak memory does not grow with the volume.

Segments synthetic OME-Zarr volumes of the same slice size and growing depth
(``--slices``, e.g. 64, 256 and 1024 slices: 16x more data) with the same
``--block-z`` on a fresh LocalCluster of ``--workers`` single-threaded
processes, and prints per volume: the time, each worker's peak resident
memory (``VmHWM``, read in the worker: ``ru_maxrss`` would report the peak of
the process that spawned it), the largest worker RSS sampled every 0.5 s
while blocks are predicted and during the finish passes, and the client's peak while the run lasted (it
holds the 3D-link table with ``--instances-3d``; its peak is reset before each
run through ``/proc/self/clear_refs``). Exits 1 when the largest volume's
worker peak exceeds the smallest's by more than ``--tolerance`` (default 25 %),
i.e. when a worker's memory grows with the volume rather than the block.

    python benchmarks/bench_volume_memory.py --slices 64 256 1024 --shape 512 512 --instances-3d
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench_volume import make_volume, model_path, peak_rss_mb


def current_rss_mb() -> float:
    """This process's resident memory now, in MB (Linux ``VmRSS``)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status (Linux only)")


def _sample(client: Any, records: Path, total: int, phases: dict[str, float], stop: threading.Event) -> None:
    """Every 0.5 s: the largest worker RSS, kept per phase (blocks until all are recorded, then finish)."""
    while not stop.wait(0.5):
        try:
            rss = max(client.run(current_rss_mb).values())
        except Exception:  # the cluster is closing
            return
        done = len(list(records.glob("*.json"))) if records.exists() else 0
        phase = "blocks" if done < total else "finish"
        phases[phase] = max(phases.get(phase, 0.0), rss)


def _reset_peak() -> None:
    """Reset this process's VmHWM to its current RSS (Linux >= 4.0)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def run(nz: int, args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    """One volume of ``nz`` slices on a fresh cluster; times and peaks."""
    from distributed import Client, LocalCluster

    from napari_unet.io.zarr_volume import zarr_stem
    from napari_unet.prediction.batch import BatchOptions, load_model
    from napari_unet.prediction.cluster import _worker_model
    from napari_unet.prediction.volume import segment_volume, volume_blocks

    ny, nx = args.shape
    source, out = folder / f"vol{nz}.ome.zarr", folder / f"out{nz}"
    make_volume(source, nz * ny * nx / 2**30 * 0.999999, (ny, nx))
    model = model_path(args.model, folder)
    _, identity = load_model(model)
    options = BatchOptions(probabilities=True, instances=True, overwrite=True)
    import dask

    profile = {"distributed.worker.profile.enabled": args.profile}
    with dask.config.set(profile), LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True,
                                                dashboard_address=":0") as lc, Client(lc) as client:
        client.wait_for_workers(args.workers)
        client.run(_worker_model, identity["path"], identity["sha256"])
        idle = sorted(client.run(peak_rss_mb).values())
        _reset_peak()
        phases: dict[str, float] = {}
        stop = threading.Event()
        sampler = threading.Thread(target=_sample, daemon=True, args=(
            client, out / f"{zarr_stem(source)}_labels.zarr" / "napari_unet_blocks",
            len(volume_blocks((nz, ny, nx), args.block_z, None)), phases, stop))
        sampler.start()
        t0 = time.perf_counter()
        result = segment_volume(model, source, out, settings=options, block_z=args.block_z,
                                client=client, instances_3d=args.instances_3d)
        seconds = time.perf_counter() - t0
        stop.set()
        sampler.join()
        client_peak = peak_rss_mb()
        workers = sorted(client.run(peak_rss_mb).values())
    if result.status != "done":
        raise SystemExit(f"segment_volume ended with {result.status}: {result.reason}")
    shutil.rmtree(source, ignore_errors=True)
    shutil.rmtree(out, ignore_errors=True)
    return {"nz": nz, "mb": nz * ny * nx / 1e6, "seconds": seconds, "idle": idle,
            "workers": workers, "client": client_peak, "phases": phases}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--slices", type=int, nargs="+", default=[64, 256, 1024])
    p.add_argument("--shape", type=int, nargs=2, default=(512, 512), metavar=("Y", "X"))
    p.add_argument("--block-z", type=int, default=16)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--model", default="tiny", help="'default' (shipped), 'tiny' (random) or a .pt")
    p.add_argument("--instances-3d", action="store_true")
    p.add_argument("--no-profile", dest="profile", action="store_false",
                   help="turn off dask's statistical profiler in the workers (its history grows "
                        "with the run's duration, up to 1000 one-second cycles)")
    p.add_argument("--tolerance", type=float, default=0.25)
    p.add_argument("--dir", type=Path, help="working folder (default: a temporary one, deleted)")
    args = p.parse_args(argv)
    folder = Path(tempfile.mkdtemp(prefix="bench_volume_memory_")) if args.dir is None else args.dir
    folder.mkdir(parents=True, exist_ok=True)
    try:
        rows = [run(nz, args, folder) for nz in sorted(args.slices)]
    finally:
        if args.dir is None:
            shutil.rmtree(folder, ignore_errors=True)
    print(f"\nblock: {args.block_z} x {args.shape[0]} x {args.shape[1]}; {args.workers} workers; "
          f"instances_3d={args.instances_3d}; worker profiler {'on' if args.profile else 'off'}")
    print("| slices | input MB | time (s) | worker peak after model load (MB) | worker peak after the run (MB) "
          "| largest worker RSS sampled: blocks / finish (MB) | client peak during the run (MB) |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        sampled = " / ".join(f"{r['phases'][k]:.0f}" if k in r["phases"] else "-" for k in ("blocks", "finish"))
        print(f"| {r['nz']} | {r['mb']:.0f} | {r['seconds']:.1f} | {', '.join(f'{v:.0f}' for v in r['idle'])} "
              f"| {', '.join(f'{v:.0f}' for v in r['workers'])} | {sampled} | {r['client']:.0f} |")
    small, large = max(rows[0]["workers"]), max(rows[-1]["workers"])
    growth = large / small - 1
    print(f"worker peak, largest / smallest volume ({rows[-1]['nz']} / {rows[0]['nz']} slices): "
          f"{large:.0f} / {small:.0f} MB ({growth:+.1%})")
    if growth > args.tolerance:
        print(f"FAILED: a worker's peak grew by more than {args.tolerance:.0%} with the volume", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
