"""Benchmark: one OME-Zarr volume on a dask LocalCluster of 1 and of 2 worker processes.

Writes a synthetic uint8 OME-Zarr volume of ``--gb`` GiB (slices of
``--shape`` pixels, written a block at a time, never held in memory), then
runs :func:`~napari_unet.prediction.volume.segment_volume` on a fresh
LocalCluster of 1 and then of 2 single-threaded worker processes and prints,
for each: throughput (MB/s of input, slices/s), peak RSS of each worker
(``VmHWM``, read in the workers) and the 2-worker/1-worker speed ratio.
The 2-worker outputs must be bit-identical to the 1-worker outputs (exit
status 1 and a loud message otherwise). ``--kill`` SIGKILLs one worker of the
2-worker run once a block is recorded (the nanny restarts it, dask reruns its
block; the outputs must still be identical).

Timings exclude the cluster start and the model load (warmed up in every
worker first). ``--model tiny`` is a small random network for quick runs;
speed does not depend on what a network has learned. Quick check:

    python benchmarks/bench_volume.py --gb 0.01 --shape 256 256 --model tiny
    python benchmarks/bench_volume.py --gb 2 --model tiny --kill --instances-3d   # 76 min on 2 cores
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np


def make_volume(path: Path, gb: float, shape_yx: tuple[int, int], chunk_z: int = 8) -> tuple[int, int, int]:
    """An OME-Zarr of at least ``gb`` GiB of uint8 synthetic EM, written ``chunk_z`` slices at a time."""
    from napari_unet.io.zarr_volume import create_ome_zarr
    from napari_unet.synthetic import synthetic_em_stack

    ny, nx = shape_yx
    nz = max(1, math.ceil(gb * 2**30 / (ny * nx)))
    array = create_ome_zarr(path, (nz, ny, nx), np.uint8, chunk_z=chunk_z, spacing=(40.0, 4.0, 4.0), unit="nm")
    base = synthetic_em_stack((chunk_z, ny, nx), seed=0).image
    for z0 in range(0, nz, chunk_z):
        n = min(chunk_z, nz - z0)
        array[z0: z0 + n] = np.roll(base[:n], shift=(z0 * 7) % ny, axis=1)  # varied, cheaply
    print(f"wrote {path}: {nz} x {ny} x {nx} uint8 ({nz * ny * nx / 1e6:.1f} MB)")
    return nz, ny, nx


def model_path(name: str, folder: Path) -> str:
    """``default`` (the shipped model), ``tiny`` (a small random net saved here) or a checkpoint path."""
    if name != "tiny":
        return name
    import torch

    from napari_unet.model.checkpoint import TrainedModel
    from napari_unet.model.config import preset
    from napari_unet.model.unet import UNet

    torch.manual_seed(0)
    return str(TrainedModel(UNet(preset("tiny"))).save(folder / "tiny.pt"))


def peak_rss_mb() -> float:
    """This process's peak resident memory in MB (Linux ``VmHWM``).

    Not ``ru_maxrss``: Linux carries that across fork and exec, so a dask
    worker spawned by a process that once held 1.6 GB reports 1.6 GB before it
    has done anything. ``VmHWM`` belongs to the process's own address space.
    """
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


def _killer(records: Path, total: int, client: Any, log: dict[str, Any], stop: threading.Event) -> None:
    """SIGKILL one worker once at least one block is recorded and some are still to do."""
    pids = list(client.run(os.getpid).values())
    while not stop.is_set():
        done = len(list(records.glob("*.json"))) if records.exists() else 0
        if done >= total:
            log["kill"] = "skipped: the run finished first"
            return
        if done >= 1:
            os.kill(pids[0], signal.SIGKILL)
            log["kill"] = f"killed worker pid {pids[0]} with {done}/{total} blocks recorded"
            return
        time.sleep(0.02)


def run(n_workers: int, model: str, source: Path, out: Path, args: argparse.Namespace,
        options: Any) -> dict[str, Any]:
    """One segment_volume on a fresh LocalCluster of ``n_workers`` single-threaded processes."""
    from distributed import Client, LocalCluster

    from napari_unet.io.zarr_volume import ZarrVolume, zarr_stem
    from napari_unet.prediction.batch import load_model
    from napari_unet.prediction.cluster import _worker_model
    from napari_unet.prediction.volume import segment_volume, volume_blocks

    shutil.rmtree(out, ignore_errors=True)
    _, identity = load_model(model)
    log: dict[str, Any] = {}
    with LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True,
                      dashboard_address=":0") as lc, Client(lc) as client:
        client.wait_for_workers(n_workers)
        client.run(_worker_model, identity["path"], identity["sha256"])  # load once, untimed
        stop = threading.Event()
        killer = None
        if args.kill and n_workers > 1:
            total = len(volume_blocks(ZarrVolume(source).shape, args.block_z, args.block_xy))
            killer = threading.Thread(target=_killer, daemon=True,
                                      args=(out / f"{zarr_stem(source)}_labels.zarr" / "napari_unet_blocks",
                                            total, client, log, stop))
            killer.start()
        t0 = time.perf_counter()
        result = segment_volume(model, source, out, settings=options, block_z=args.block_z,
                                block_xy=args.block_xy, client=client, instances_3d=args.instances_3d)
        seconds = time.perf_counter() - t0
        stop.set()
        if killer is not None:
            killer.join()
            client.wait_for_workers(n_workers, timeout=120)
        rss = sorted(client.run(peak_rss_mb).values())
    if result.status != "done":
        raise SystemExit(f"segment_volume ended with {result.status}: {result.reason}")
    return {"seconds": seconds, "rss_mb": rss, **log}


def compare(a: Path, b: Path, kinds: list[str], step: int) -> list[str]:
    """Kinds whose outputs differ between two runs (read ``step`` slices at a time)."""
    import zarr

    differ = []
    for kind in kinds:
        x, y = (zarr.open_array(str(p / f"vol_{kind}.zarr" / "0"), mode="r") for p in (a, b))
        if x.shape != y.shape or any(not np.array_equal(x[z: z + step], y[z: z + step])
                                     for z in range(0, x.shape[0], step)):
            differ.append(kind)
    return differ


def main(argv: list[str] | None = None) -> int:
    from napari_unet.prediction.batch import BatchOptions

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gb", type=float, default=2.0, help="input size in GiB (uint8)")
    p.add_argument("--shape", type=int, nargs=2, default=(1024, 1024), metavar=("Y", "X"))
    p.add_argument("--model", default="default", help="'default' (shipped), 'tiny' (random) or a .pt")
    p.add_argument("--block-z", type=int, default=16)
    p.add_argument("--block-xy", type=int, default=None)
    p.add_argument("--kill", action="store_true", help="SIGKILL one worker of the 2-worker run mid-run")
    p.add_argument("--instances-3d", action="store_true",
                   help="link the instances across slices (and blocks) into 3D objects")
    p.add_argument("--dir", type=Path, help="working folder (default: a temporary one, deleted)")
    args = p.parse_args(argv)
    folder = Path(tempfile.mkdtemp(prefix="bench_volume_")) if args.dir is None else args.dir
    folder.mkdir(parents=True, exist_ok=True)
    instances = args.block_xy is None  # xy blocks refuse instances
    options = BatchOptions(probabilities=True, instances=instances, overwrite=True)
    kinds = ["labels", "probabilities"] + (["instances"] if instances else [])
    try:
        source = folder / "vol.ome.zarr"
        nz, ny, nx = make_volume(source, args.gb, tuple(args.shape))
        model = model_path(args.model, folder)
        results = {n: run(n, model, source, folder / f"out{n}", args, options) for n in (1, 2)}
        for n, r in results.items():
            mb = nz * ny * nx / 1e6
            print(f"{n} worker(s): {r['seconds']:.2f} s, {mb / r['seconds']:.2f} MB/s, "
                  f"{nz / r['seconds']:.2f} slices/s, peak RSS per worker "
                  f"{', '.join(f'{v:.0f}' for v in r['rss_mb'])} MB" + (f"; {r['kill']}" if "kill" in r else ""))
        print(f"speed-up 2 workers / 1 worker: {results[1]['seconds'] / results[2]['seconds']:.2f}x")
        differ = compare(folder / "out1", folder / "out2", kinds, args.block_z)
        if differ:
            print(f"FAILED: the 2-worker outputs differ from the 1-worker outputs: {', '.join(differ)}",
                  file=sys.stderr)
            return 1
        print(f"2-worker outputs identical to 1-worker outputs ({', '.join(kinds)})")
        return 0
    finally:
        if args.dir is None:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
