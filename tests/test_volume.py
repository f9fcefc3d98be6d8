"""One OME-Zarr volume in z-blocks: here or on a LocalCluster, with bit-identical outputs."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("distributed")
pytest.importorskip("ome_zarr")

import zarr  # noqa: E402
from batch_helpers import save_tiny_model  # noqa: E402
from distributed import Client, LocalCluster  # noqa: E402

from napari_unet import cli  # noqa: E402
from napari_unet._reader import napari_get_zarr_reader  # noqa: E402
from napari_unet.io.tiff import read_tiff, write_tiff  # noqa: E402
from napari_unet.io.zarr_volume import ZarrVolume, create_ome_zarr  # noqa: E402
from napari_unet.prediction import volume as volume_mod  # noqa: E402
from napari_unet.prediction.batch import BatchOptions, batch_segment  # noqa: E402
from napari_unet.prediction.volume import segment_volume  # noqa: E402
from napari_unet.synthetic import synthetic_em_stack  # noqa: E402

OPTIONS = BatchOptions(instances=True, probabilities=True, threshold=0.5)
KINDS = ("labels", "instances", "probabilities")


def _write_input(path: Path, image: np.ndarray) -> None:
    """A 2-level OME-Zarr 0.4 (zarr v2) written by ome-zarr itself, as a microscope export would be."""
    from ome_zarr.format import FormatV04
    from ome_zarr.writer import write_image

    group = zarr.open_group(str(path), mode="w", zarr_format=2)
    write_image(image, group, scale_factors=[2], fmt=FormatV04(), axes="zyx",
                scale={"z": 40.0, "y": 4.0, "x": 4.0}, axes_units=dict.fromkeys("zyx", "nanometer"),
                storage_options={"chunks": (3, 48, 48)})


def _read(outdir: Path, kind: str) -> np.ndarray:
    return zarr.open_array(str(outdir / f"vol_{kind}.zarr" / "0"), mode="r")[:]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("vol")
    image = synthetic_em_stack((12, 96, 96), seed=1).image
    _write_input(folder / "vol.ome.zarr", image)
    model = save_tiny_model(folder / "m.pt")
    local = folder / "local"
    result = segment_volume(model, folder / "vol.ome.zarr", local, settings=OPTIONS, block_z=4)
    return {"folder": folder, "image": image, "model": model, "local": local, "result": result}


def test_local_run_matches_the_tiff_batch_and_a_two_worker_cluster(tmp_path, data):
    assert data["result"].status == "done"
    local = data["local"]
    write_tiff(tmp_path / "vol.tif", data["image"])  # StackPrediction's own slice-by-slice numbering
    batch_segment(data["model"], tmp_path / "vol.tif", tmp_path / "t", OPTIONS)
    for kind in KINDS:
        tiff = np.asarray(read_tiff(tmp_path / "t" / f"vol_{kind}.tif").data)
        np.testing.assert_array_equal(_read(local, kind).astype(tiff.dtype), tiff)
    assert _read(local, "instances").max() > 10  # many objects: the offsets matter
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=":0") as lc:
        with Client(lc) as client:
            out = tmp_path / "d"
            result = segment_volume(data["model"], data["folder"] / "vol.ome.zarr", out,
                                    settings=OPTIONS, block_z=4, client=client)
            code = cli.main(["segment", "-m", str(data["model"]), str(data["folder"] / "vol.ome.zarr"),
                             "-o", str(tmp_path / "c"), "--block-z", "6",
                             "--scheduler", client.scheduler.address])
    assert result.status == "done" and code == 0
    for kind in KINDS:
        np.testing.assert_array_equal(_read(out, kind), _read(local, kind))
    prov = json.loads((out / "vol_provenance.json").read_text())
    assert prov["settings"]["distributed"] and prov["settings"]["blocks"] == 3
    # "auto" 3D smoothing was on (a near-isotropic stack): blocks read their neighbours'
    # slices, and still match the TIFF batch and the local run bit for bit
    assert prov["settings"]["z_smoothing"] == 2.0
    assert prov["instances"]["count"] == int(_read(local, "instances").max())
    assert not list(out.glob(".*raw.zarr"))  # the scratch ids are gone
    assert zarr.open_array(str(out / "vol_labels.zarr" / "0")).chunks[0] == 4
    cli_prov = json.loads((tmp_path / "c" / "vol_provenance.json").read_text())
    assert cli_prov["settings"]["distributed"] and cli_prov["settings"]["blocks"] == 2


def test_cancelled_run_resumes_and_redoes_a_block_whose_record_is_gone(tmp_path, data, monkeypatch):
    from napari_unet.errors import Cancelled

    out, source = tmp_path / "r", data["folder"] / "vol.ome.zarr"
    blocks_dir = out / "vol_labels.zarr" / "napari_unet_blocks"
    with pytest.raises(Cancelled):  # stopped in the second block, once the first is recorded
        segment_volume(data["model"], source, out, settings=OPTIONS, block_z=4,
                       should_stop=lambda: blocks_dir.is_dir() and any(blocks_dir.iterdir()))
    records = sorted((out / "vol_labels.zarr" / "napari_unet_blocks").iterdir())
    assert [r.name for r in records] == ["000000000-000000004.json"]
    records[0].unlink()  # a lost record: that block is predicted again
    zarr.open_array(str(out / "vol_labels.zarr" / "0"), mode="r+")[0:4] = 7
    done = []
    original = volume_mod.predict_block
    monkeypatch.setattr(volume_mod, "predict_block",
                        lambda e, j, z0, z1, s=None, **kw: done.append(z0) or original(e, j, z0, z1, s, **kw))
    result = segment_volume(data["model"], source, out, settings=OPTIONS, block_z=4)
    assert result.status == "done" and done == [0, 4, 8]
    for kind in KINDS:
        np.testing.assert_array_equal(_read(out, kind), _read(data["local"], kind))
    again = segment_volume(data["model"], source, out, settings=OPTIONS, block_z=4)
    assert again.status == "skipped"
    (out / "vol_provenance.json").unlink()
    with pytest.raises(ValueError, match="another model, settings or block size"):
        segment_volume(data["model"], source, out, settings=OPTIONS, block_z=3)


def test_scale_round_trips_and_the_napari_reader_sees_it(tmp_path, data):
    source = ZarrVolume(data["folder"] / "vol.ome.zarr")
    assert source.spacing == (40.0, 4.0, 4.0) and source.unit == "nanometer"
    half = ZarrVolume(data["folder"] / "vol.ome.zarr", level=1)
    assert half.shape == (12, 48, 48) and half.spacing == (40.0, 8.0, 8.0)
    assert half[3, ::4, ::4].shape == (12, 12) and half[2:5].shape == (3, 48, 48)
    out = ZarrVolume(data["local"] / "vol_labels.zarr")
    assert out.spacing == (40.0, 4.0, 4.0) and out.unit == "nanometer" and out.dtype == np.uint8
    reader = napari_get_zarr_reader(str(data["local"] / "vol_instances.zarr"))
    (layer_data, kwargs, kind), = reader(str(data["local"] / "vol_instances.zarr"))
    assert kind == "labels" and kwargs["scale"] == (40.0, 4.0, 4.0)
    assert kwargs["units"] == ("nanometer",) * 3 and layer_data.shape == (12, 96, 96)
    assert napari_get_zarr_reader(str(tmp_path)) is None


def test_nan_region_is_named_and_plain_zarr_v3_works(tmp_path, data):
    image = data["image"][:6].astype(np.float32)
    image[5, 10:20, 10:20] = np.nan
    zarr.create_array(str(tmp_path / "f.zarr"), data=image, chunks=(2, 96, 96), zarr_format=3)
    with pytest.raises(ValueError, match=r"f\.zarr.*NaN.*slice 5"):
        segment_volume(data["model"], tmp_path / "f.zarr", tmp_path / "o", block_z=2)
    plain = tmp_path / "p.zarr"
    zarr.create_array(str(plain), data=data["image"][:6], chunks=(2, 96, 96), zarr_format=3)
    assert ZarrVolume(plain).spacing is None
    code = cli.main(["segment", "-m", str(data["model"]), str(plain), "-o", str(tmp_path / "c"),
                     "--block-z", "3"])
    assert code == 0
    assert ZarrVolume(tmp_path / "c" / "p_labels.zarr").shape == (6, 96, 96)
    created = create_ome_zarr(tmp_path / "x.zarr", (5, 20, 30), np.uint16, chunk_z=2,
                              spacing=(1.0, 0.5, 0.5), unit="um")
    assert created.chunks == (2, 20, 30) and ZarrVolume(tmp_path / "x.zarr").unit == "micrometer"


def test_xy_blocks_match_whole_slices_bit_for_bit(tmp_path, data):
    """2x2 (and ragged 3x3) xy windows over several tiles per slice: same bits as whole slices."""
    image = data["image"][:4]
    source = tmp_path / "xy.zarr"
    zarr.create_array(str(source), data=image, chunks=(2, 50, 50), zarr_format=3)
    options = BatchOptions(probabilities=True, uncertainty=True, threshold=0.5, tile_size=40)
    whole, tiled = tmp_path / "w", tmp_path / "x"
    segment_volume(data["model"], source, whole, settings=options, block_z=2)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=":0") as lc:
        with Client(lc) as client:
            result = segment_volume(data["model"], source, tiled, settings=options, block_z=3,
                                    block_xy=48, client=client)
    local = segment_volume(data["model"], source, tmp_path / "l", settings=options, block_z=4, block_xy=33)
    assert result.status == local.status == "done"
    for kind in ("labels", "probabilities", "uncertainty"):
        expected = zarr.open_array(str(whole / f"xy_{kind}.zarr" / "0"))[:]
        for out in (tiled, tmp_path / "l"):
            np.testing.assert_array_equal(zarr.open_array(str(out / f"xy_{kind}.zarr" / "0"))[:], expected)
    assert zarr.open_array(str(tiled / "xy_labels.zarr" / "0")).chunks == (3, 48, 48)
    records = list((tiled / "xy_labels.zarr" / "napari_unet_blocks").iterdir())
    assert len(records) == 2 * 2 * 2  # two z-blocks of 2x2 windows
    prov = json.loads((tiled / "xy_provenance.json").read_text())
    assert prov["settings"]["block_xy"] == 48 and prov["settings"]["blocks"] == 8
    with pytest.raises(ValueError, match="instances cannot be computed with xy blocks"):
        segment_volume(data["model"], source, tmp_path / "i", settings=OPTIONS, block_xy=48)


def _held_until(flag: str) -> str:
    """A task that waits for the file ``flag`` (at most 60 s)."""
    import os
    import time

    deadline = time.monotonic() + 60
    while not os.path.exists(flag) and time.monotonic() < deadline:
        time.sleep(0.02)
    return "late"


def test_finished_results_are_released_while_other_tasks_run(tmp_path):
    """A worker must not hold every task's result until the last task ends (the edge
    lists of a 3D-instance finish would make its memory grow with the volume)."""
    import threading

    from distributed import wait

    from napari_unet.prediction.volume import _wait_all

    flag = str(tmp_path / "go")
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=":0") as lc, \
            Client(lc) as client:
        early = [client.submit(np.full, 1000, i, pure=False) for i in range(3)]
        keys = {f.key for f in early}
        futures = [*early, client.submit(_held_until, flag, pure=False)]
        wait(early)  # finished (and known to the scheduler) before the wait starts
        del early
        out: dict = {}
        waiter = threading.Thread(target=lambda: out.update(results=_wait_all(client, futures, None)))
        waiter.start()
        try:
            deadline = time.monotonic() + 30
            held = keys
            while held and time.monotonic() < deadline:
                held = keys & set(client.run_on_scheduler(lambda dask_scheduler: list(dask_scheduler.tasks)))
                time.sleep(0.05)
            assert not held, "the finished tasks' results were kept while another task ran"
        finally:
            Path(flag).touch()
            waiter.join(60)
    results = out["results"]
    assert [int(r[0]) for r in results[:3]] == [0, 1, 2] and results[3] == "late"
