"""Batch segmentation as dask.distributed tasks on a LocalCluster of two workers."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("distributed")

from batch_helpers import save_tiny_model, write_stack  # noqa: E402
from distributed import Client, LocalCluster  # noqa: E402

from napari_unet import cli  # noqa: E402
from napari_unet.errors import Cancelled  # noqa: E402
from napari_unet.io.tiff import read_tiff  # noqa: E402
from napari_unet.prediction import cluster as cluster_mod  # noqa: E402
from napari_unet.prediction.batch import BatchOptions, batch_segment, file_sha256  # noqa: E402
from napari_unet.prediction.cluster import _segment_task, batch_segment_distributed  # noqa: E402


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("dist")
    model = save_tiny_model(folder / "m.pt")
    for i in range(4):
        write_stack(folder / "in" / f"s{i}.tif", (2, 40, 48), seed=i)
    (folder / "in" / "s9_broken.tif").write_bytes(b"broken")
    return model, folder / "in"


@pytest.fixture(scope="module")
def client():
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=":0") as lc:
        with Client(lc) as c:
            yield c


def test_local_cluster_matches_the_local_batch(tmp_path, inputs, client):
    model, folder = inputs
    loads = cluster_mod.LOADS
    events = []
    options = BatchOptions(instances=True)
    results = batch_segment_distributed(model, folder, tmp_path / "d", options, client, callback=events.append)
    assert [r.input.name for r in results] == ["s0.tif", "s1.tif", "s2.tif", "s3.tif", "s9_broken.tif"]
    assert [r.status for r in results] == ["done"] * 4 + ["failed"]
    assert "not a TIFF" in results[-1].reason
    assert len(events) == 5 and all(e.result is not None and e.n_files == 5 for e in events)
    assert cluster_mod.LOADS - loads <= 1  # in-process workers share one cached model
    local = batch_segment(model, folder, tmp_path / "l", options)
    assert [r.status for r in local] == [r.status for r in results]
    for i in range(4):
        for kind in ("labels", "instances"):
            a = np.asarray(read_tiff(tmp_path / "d" / f"s{i}_{kind}.tif").data)
            b = np.asarray(read_tiff(tmp_path / "l" / f"s{i}_{kind}.tif").data)
            np.testing.assert_array_equal(a, b)
    # resume works the same way: everything is skipped now
    again = batch_segment_distributed(model, folder, tmp_path / "d", options, client)
    assert [r.status for r in again] == ["skipped"] * 4 + ["failed"]


def test_cli_scheduler_address(tmp_path, inputs, client, capsys):
    model, folder = inputs
    code = cli.main(["segment", "-m", str(model), str(folder), "-o", str(tmp_path / "o"),
                     "--scheduler", client.scheduler.address])
    out, err = capsys.readouterr()
    assert code == 1, err  # the broken file fails; the others are done
    assert "Summary: 4 done, 0 skipped, 1 failed" in out and "dask cluster" in out
    assert (tmp_path / "o" / "s3_labels.tif").exists()


def test_cancel_stops_and_leaves_no_partial_files(tmp_path, inputs, client):
    model, folder = inputs
    out = tmp_path / "c"
    with pytest.raises(Cancelled) as info:
        batch_segment_distributed(model, folder, out, BatchOptions(), client, should_stop=lambda: True)
    assert info.value.results == []
    deadline = time.monotonic() + 30  # a task already running stops or finishes on its own
    while time.monotonic() < deadline and (client.processing() and any(client.processing().values())):
        time.sleep(0.2)
    time.sleep(0.5)
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []
    for labels in out.glob("*_labels.tif"):  # whatever exists is complete
        assert labels.with_name(labels.name.replace("_labels.tif", "_provenance.json")).exists()


def test_worker_refuses_a_different_model_file(tmp_path, inputs):
    model, folder = inputs
    result = _segment_task(str(model), "0" * 64, str(folder / "s0.tif"), str(tmp_path), BatchOptions())
    assert result.status == "failed" and "checksum mismatch" in result.reason
    assert file_sha256(model) != "0" * 64


def test_model_must_be_a_file_and_scheduler_reachable(tmp_path, inputs):
    from batch_helpers import tiny_model

    _, folder = inputs
    with pytest.raises(ValueError, match="checkpoint file"):
        batch_segment_distributed(tiny_model(), folder, tmp_path, BatchOptions(), client=None)


def test_two_worker_processes_load_the_model_once_each(tmp_path, inputs):
    """Real worker processes: tasks and results are pickled; each process keeps its model."""
    model, folder = inputs
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as lc:
        with Client(lc) as c:
            results = batch_segment_distributed(model, folder, tmp_path / "p", BatchOptions(), c)
            loads = c.run(lambda: __import__("napari_unet.prediction.cluster").prediction.cluster.LOADS)
    assert [r.status for r in results] == ["done"] * 4 + ["failed"]
    assert sorted(loads.values()) in ([1, 1], [0, 1])  # once per worker that got a task
