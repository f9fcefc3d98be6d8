"""3D instances: 2D objects linked across slices by overlap, the same for any z-block layout."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from napari_unet.prediction.link_z import link_components, link_stack, overlap_edges


def _square(shape: tuple[int, int], y: int, x: int, size: int, value: int, out: np.ndarray | None = None):
    out = np.zeros(shape, np.uint32) if out is None else out
    out[y:y + size, x:x + size] = value
    return out


def test_overlap_edges_link_large_overlaps_and_keep_marginal_touches_apart():
    lower = _square((20, 20), 0, 0, 10, 1)
    _square((20, 20), 12, 12, 6, 2, lower)
    upper = _square((20, 20), 1, 1, 10, 3)  # 81 of 100 px over object 1
    _square((20, 20), 11, 11, 8, 4, upper)  # covers all of object 2 (small object inside a big one)
    _square((20, 20), 0, 11, 4, 5, upper)  # touches nothing
    edges = overlap_edges(lower, upper, 0.5)
    assert edges.dtype == np.uint32 and edges.tolist() == [[1, 3], [2, 4]]
    # two objects sharing a thin rim: 10 of 100 px, far below half of the smaller one
    rim = _square((20, 20), 9, 0, 10, 7)
    assert overlap_edges(lower, rim, 0.5).tolist() == []
    assert overlap_edges(lower, rim, 0.1).tolist() == [[1, 7]]
    assert overlap_edges(lower, np.zeros_like(lower), 0.5).shape == (0, 2)
    with pytest.raises(ValueError, match="fraction"):
        overlap_edges(lower, upper, 0.0)


def test_link_components_merges_a_branch_and_numbers_by_smallest_id():
    # 1-3, 2-3 (a Y: two objects merging upwards), 4 alone, 5-6
    table = link_components(6, np.array([[5, 6], [2, 3], [1, 3]], np.uint32))
    assert table.dtype == np.uint32 and table.tolist() == [0, 1, 1, 1, 2, 3, 3]
    # 3D ids follow each group's smallest 2D id, whatever the edges' order
    table = link_components(4, np.array([[3, 4]]))
    assert table.tolist() == [0, 1, 2, 3, 3]
    assert link_components(3, np.zeros((0, 2))).tolist() == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="outside"):
        link_components(2, np.array([[1, 3]]))


def test_link_stack_spanning_object_branch_and_first_appearance():
    shape = (12, 12)
    z0 = _square(shape, 0, 0, 4, 1)
    _square(shape, 6, 6, 4, 2, z0)  # left arm of a Y
    _square(shape, 6, 0, 4, 3, z0)  # an object of one slice only
    z1 = _square(shape, 0, 0, 4, 4)  # continues object 1
    _square(shape, 6, 6, 5, 5, z1)  # the Y's stem, over object 2 ...
    z2 = _square(shape, 1, 1, 4, 6)  # continues 1 -> 4 (9 of 16 px)
    _square(shape, 7, 7, 5, 7, z2)
    _square(shape, 0, 8, 3, 8, z2)  # a new object, higher up
    z1[9:12, 9:12] = 5
    stack = np.stack([z0, z1, z2])
    out = link_stack(stack)
    assert out.dtype == np.uint32
    assert set(np.unique(out[stack == 1])) == set(np.unique(out[stack == 4])) == set(np.unique(out[stack == 6])) == {1}
    assert out[stack == 2][0] == out[stack == 5][0] == out[stack == 7][0] == 2
    assert out[stack == 3][0] == 3 and out[stack == 8][0] == 4  # numbered by first appearance
    assert out.max() == 4 and (out[stack == 0] == 0).all()
    # a Y: two objects of one slice merging into one in the next
    y = np.zeros((2, 4, 8), np.uint32)
    y[0, :, 0:3], y[0, :, 5:8], y[1, :, 0:8] = 1, 2, 3
    assert np.unique(link_stack(y)).tolist() == [0, 1]


# --- z-blocked zarr volumes -------------------------------------------------------------------

@pytest.fixture(scope="module")
def vol(tmp_path_factory) -> dict:
    zarr = pytest.importorskip("zarr")
    pytest.importorskip("ome_zarr")
    from batch_helpers import save_tiny_model

    from napari_unet.prediction.batch import BatchOptions
    from napari_unet.prediction.volume import segment_volume
    from napari_unet.synthetic import synthetic_em_stack

    folder = tmp_path_factory.mktemp("link")
    image = synthetic_em_stack((7, 64, 64), seed=3).image
    source = folder / "v.zarr"
    zarr.create_array(str(source), data=image, chunks=(2, 64, 64), zarr_format=3)
    model = save_tiny_model(folder / "m.pt")
    options = BatchOptions(instances=True)
    segment_volume(model, source, folder / "plain", settings=options, block_z=7)
    flat = _read(folder / "plain")
    return {"folder": folder, "source": source, "model": model, "options": options,
            "flat": flat, "expected": link_stack(flat)}


def _read(outdir: Path, kind: str = "instances") -> np.ndarray:
    import zarr

    return zarr.open_array(str(outdir / f"v_{kind}.zarr" / "0"), mode="r")[:]


def test_3d_ids_do_not_depend_on_the_block_layout(tmp_path, vol):
    from napari_unet.prediction.batch import BatchOptions
    from napari_unet.prediction.volume import segment_volume

    expected = vol["expected"]
    assert vol["flat"].max() > expected.max() > 1  # objects were linked, and several remain
    for block_z in (2, 3, 7):
        out = tmp_path / f"b{block_z}"
        # instances off in the settings: instances_3d turns them on
        result = segment_volume(vol["model"], vol["source"], out, settings=BatchOptions(),
                                block_z=block_z, instances_3d=True)
        assert result.status == "done"
        np.testing.assert_array_equal(_read(out), expected)
        np.testing.assert_array_equal(_read(out, "labels"), _read(vol["folder"] / "plain", "labels"))
        prov = json.loads((out / "v_provenance.json").read_text())
        assert prov["instances"]["count"] == int(expected.max())
        assert prov["instances"]["count_2d"] == int(vol["flat"].max())
        assert prov["instances"]["labelling"].startswith("3D") and ">= 0.5" in prov["instances"]["labelling"]
        assert not list(out.glob(".*raw.zarr"))
    with pytest.raises(ValueError, match="3D instances cannot be computed with xy blocks"):
        segment_volume(vol["model"], vol["source"], tmp_path / "x", block_xy=32, instances_3d=True)
    with pytest.raises(ValueError, match="fraction"):
        segment_volume(vol["model"], vol["source"], tmp_path / "x", instances_3d=True, link_overlap=1.5)


def test_fingerprint_of_2d_runs_is_unchanged_and_3d_runs_differ(vol):
    from napari_unet.prediction.volume import _fingerprint

    args = ({"sha256": "x"}, vol["options"], "v.zarr", 0, (7, 64, 64), 3)
    plain = _fingerprint(*args)
    assert _fingerprint(*args, None, None) == plain
    assert len({plain, _fingerprint(*args, None, 0.5), _fingerprint(*args, None, 0.6)}) == 3


def test_interrupted_finish_resumes_to_the_same_ids(tmp_path, vol, monkeypatch):
    from napari_unet.prediction import volume as volume_mod
    from napari_unet.prediction.volume import segment_volume

    out, calls = tmp_path / "r", []
    original = volume_mod.offset_block

    def dies_after_one_block(*args):
        if calls:
            raise OSError("worker lost")
        calls.append(args[1])
        original(*args)

    monkeypatch.setattr(volume_mod, "offset_block", dies_after_one_block)
    with pytest.raises(OSError, match="worker lost"):
        segment_volume(vol["model"], vol["source"], out, settings=vol["options"], block_z=3, instances_3d=True)
    assert calls == [0] and not (out / "v_provenance.json").exists()
    monkeypatch.setattr(volume_mod, "offset_block", original)
    # the first block's output already holds 3D ids; the finish reads only the scratch ids
    result = segment_volume(vol["model"], vol["source"], out, settings=vol["options"], block_z=3,
                            instances_3d=True)
    assert result.status == "done"
    np.testing.assert_array_equal(_read(out), vol["expected"])
    (out / "v_provenance.json").unlink()
    with pytest.raises(ValueError, match="another model, settings or block size"):
        segment_volume(vol["model"], vol["source"], out, settings=vol["options"], block_z=3)


def test_two_worker_cluster_matches_local_and_the_cli_flag(tmp_path, vol, capsys):
    pytest.importorskip("distributed")
    from distributed import Client, LocalCluster

    from napari_unet import cli
    from napari_unet.io.tiff import write_tiff
    from napari_unet.prediction.volume import segment_volume

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=":0") as lc:
        with Client(lc) as client:
            result = segment_volume(vol["model"], vol["source"], tmp_path / "d", settings=vol["options"],
                                    block_z=2, client=client, instances_3d=True)
    assert result.status == "done"
    np.testing.assert_array_equal(_read(tmp_path / "d"), vol["expected"])
    assert json.loads((tmp_path / "d" / "v_provenance.json").read_text())["settings"]["distributed"]
    code = cli.main(["segment", "-m", str(vol["model"]), str(vol["source"]), "-o", str(tmp_path / "c"),
                     "--block-z", "4", "--instances-3d"])
    assert code == 0
    np.testing.assert_array_equal(_read(tmp_path / "c"), vol["expected"])
    prov = json.loads((tmp_path / "c" / "v_provenance.json").read_text())
    assert prov["instances"]["labelling"].startswith("3D") and prov["settings"]["instances"]
    write_tiff(tmp_path / "s.tif", np.zeros((2, 16, 16), np.uint8))
    capsys.readouterr()
    code = cli.main(["segment", "-m", str(vol["model"]), str(tmp_path / "s.tif"), "-o", str(tmp_path / "t"),
                     "--instances-3d"])
    assert code == 1 and "--instances-3d is for zarr volumes only" in capsys.readouterr().err
    assert not (tmp_path / "t").exists()
