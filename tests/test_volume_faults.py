"""A volume run on a cluster whose worker is killed (SIGKILL) mid-run still gives the exact result.

The nanny restarts the dead worker and dask reruns the block it held; blocks
write only their own chunks and their record last, so a rerun block simply
overwrites what the killed one left. The kill is made deterministic by a hook
installed in the workers: the first block to start runs, every other block
waits for a "go" file, so when the first record appears the other blocks are
provably held (one of them by the worker that is then killed).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("distributed")

import zarr  # noqa: E402
from batch_helpers import save_tiny_model  # noqa: E402
from distributed import Client, LocalCluster  # noqa: E402

from napari_unet.prediction.batch import BatchOptions  # noqa: E402
from napari_unet.prediction.volume import segment_volume  # noqa: E402
from napari_unet.synthetic import synthetic_em_stack  # noqa: E402

OPTIONS = BatchOptions(instances=True, probabilities=True, threshold=0.5)
KINDS = ("labels", "instances", "probabilities")


def _install_gate(gate: str) -> None:
    """Runs in each worker: the first block anywhere runs, the others wait for ``gate/go``."""
    import os
    import time
    from pathlib import Path

    from napari_unet.prediction import volume

    original = volume.predict_block

    def gated(engine, job, z0, z1, should_stop=None, **kw):  # type: ignore[no-untyped-def]
        try:
            os.close(os.open(os.path.join(gate, "first"), os.O_CREAT | os.O_EXCL))
        except FileExistsError:  # not the first block: say who holds it, then wait
            Path(gate, f"held-{z0}-{os.getpid()}").touch()
            deadline = time.monotonic() + 90
            while not os.path.exists(os.path.join(gate, "go")) and time.monotonic() < deadline:
                time.sleep(0.05)
        return original(engine, job, z0, z1, should_stop, **kw)

    volume.predict_block = gated


def _killer(gate: Path, records: Path, worker_pids: set[int], log: dict) -> None:
    """When one block is recorded, SIGKILL a worker that holds a waiting block, then open the gate."""
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            done = list(records.glob("*.json")) if records.exists() else []
            held = [int(p.name.rsplit("-", 1)[1]) for p in gate.glob("held-*")]
            held = [pid for pid in held if pid in worker_pids]
            if done and held:
                log["records_at_kill"] = len(done)
                log["killed"] = held[0]
                os.kill(held[0], signal.SIGKILL)
                break
            time.sleep(0.02)
    except BaseException as exc:  # surfaced by the test
        log["error"] = exc
    finally:
        (gate / "go").touch()


def test_sigkilled_worker_mid_run_gives_bit_identical_outputs(tmp_path):
    image = synthetic_em_stack((12, 64, 64), seed=3).image
    source = tmp_path / "vol.zarr"
    zarr.create_array(str(source), data=image, chunks=(2, 64, 64), zarr_format=3)
    model = save_tiny_model(tmp_path / "m.pt")
    segment_volume(model, source, tmp_path / "local", settings=OPTIONS, block_z=2)
    gate = tmp_path / "gate"
    gate.mkdir()
    out = tmp_path / "killed"
    log: dict = {}
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as lc:
        with Client(lc) as client:
            client.wait_for_workers(2, timeout=120)
            client.run(_install_gate, str(gate))
            pids = set(client.run(os.getpid).values())
            thread = threading.Thread(target=_killer, daemon=True,
                                      args=(gate, out / "vol_labels.zarr" / "napari_unet_blocks", pids, log))
            thread.start()
            result = segment_volume(model, source, out, settings=OPTIONS, block_z=2, client=client)
            thread.join(timeout=30)
            client.wait_for_workers(2, timeout=120)  # the nanny has brought the dead one back
            after = set(client.run(os.getpid).values())
    assert "error" not in log, log.get("error")
    assert log.get("killed") in pids and log["records_at_kill"] == 1  # killed with 5 of 6 blocks to go
    assert log["killed"] not in after
    assert result.status == "done"
    for kind in KINDS:
        local = zarr.open_array(str(tmp_path / "local" / f"vol_{kind}.zarr" / "0"))[:]
        np.testing.assert_array_equal(zarr.open_array(str(out / f"vol_{kind}.zarr" / "0"))[:], local)
    assert len(list((out / "vol_labels.zarr" / "napari_unet_blocks").glob("*.json"))) == 6
