"""Batch engine: outputs (shape, dtype, metadata, provenance), resume, bad inputs, cancel, streaming I/O."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import tifffile
from batch_helpers import SPACING, UNIT, save_tiny_model, tiny_model, write_stack

from napari_unet.errors import Cancelled
from napari_unet.io.tiff import TiffPageWriter, read_tiff, write_tiff, write_tiff_pages
from napari_unet.io.tiff_slices import TiffSlices
from napari_unet.prediction.batch import (
    BatchOptions,
    FileResult,
    batch_segment,
    batch_segment_steps,
    expand_inputs,
    file_sha256,
    output_paths,
    segment_file_steps,
)
from napari_unet.prediction.inference import predict


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("model") / "tiny.pt")


def _hidden(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.startswith(".")]


def _run(model, inputs, outdir, **options) -> list[FileResult]:
    return batch_segment(model, inputs, outdir, BatchOptions(**options))


# --------------------------------------------------------------------- inputs


def test_expand_inputs_files_folders_globs(tmp_path):
    for name in ["s10.tif", "s2.tif", "s1.TIFF", ".hidden.tif", "notes.txt"]:
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "deep.tif").write_bytes(b"x")
    got = expand_inputs([tmp_path, str(tmp_path / "s*.tif"), tmp_path / "s2.tif"])
    assert [p.name for p in got] == ["s1.TIFF", "s2.tif", "s10.tif"]  # natural order, no duplicates
    assert [p.name for p in expand_inputs(tmp_path / "notes.txt")] == ["notes.txt"]  # explicit: taken
    with pytest.raises(ValueError, match="input not found: .*missing.tif"):
        expand_inputs([tmp_path / "s1.TIFF", tmp_path / "missing.tif"])
    with pytest.raises(ValueError, match="no .tif/.tiff files"):
        expand_inputs([str(tmp_path / "*.png")])


def test_output_paths_follow_options(tmp_path):
    base = output_paths(Path("data/run 1.ome.tif"), tmp_path, BatchOptions())
    assert {k: p.name for k, p in base.items()} == {
        "labels": "run 1.ome_labels.tif",
        "provenance": "run 1.ome_provenance.json",
    }
    full = output_paths(Path("a.tiff"), tmp_path, BatchOptions(instances=True, probabilities=True))
    assert list(full) == ["labels", "instances", "probabilities", "provenance"]
    assert all(p.parent == tmp_path for p in full.values())
    with pytest.raises(ValueError, match="probability_dtype"):
        BatchOptions(probability_dtype="float64")


# -------------------------------------------------------------------- outputs


def test_outputs_shape_dtype_metadata_and_provenance(tmp_path, model_path):
    image = write_stack(tmp_path / "in" / "stack.tif", (3, 45, 61), seed=1)
    out = tmp_path / "out"
    results = _run(model_path, [tmp_path / "in"], out, instances=True, probabilities=True)
    assert [r.status for r in results] == ["done"]
    paths = output_paths(tmp_path / "in" / "stack.tif", out, BatchOptions(instances=True, probabilities=True))
    assert results[0].outputs == list(paths.values())
    expected = {"labels": np.uint8, "instances": np.uint16, "probabilities": np.uint8}
    for kind, dtype in expected.items():
        with tifffile.TiffFile(paths[kind]) as tif:
            assert tif.series[0].shape == image.shape  # no extra axis
            assert tif.series[0].dtype == dtype
            assert tif.pages[0].compression == tifffile.COMPRESSION.ADOBE_DEFLATE
        stack = read_tiff(paths[kind])
        assert stack.spacing == pytest.approx(SPACING) and stack.unit == UNIT
    labels = np.asarray(read_tiff(paths["labels"]).data)
    ref = predict(tiny_model(), image)  # the in-memory engine gives the same answer
    np.testing.assert_array_equal(labels, ref.semantic)
    inst = np.asarray(read_tiff(paths["instances"]).data)
    assert set(np.unique(inst[labels == 0])) == {0} and (inst[labels > 0] > 0).all()
    ids = [set(np.unique(s)) - {0} for s in inst]
    assert not ids[0] & ids[1] and not ids[1] & ids[2]  # unique across slices
    probs = np.asarray(read_tiff(paths["probabilities"]).data)
    expected_p = np.rint((1 - ref.probabilities[:, 0]) * 255)
    assert np.abs(probs.astype(int) - expected_p).max() <= 1
    record = json.loads(paths["provenance"].read_text())
    assert record["model"]["sha256"] == file_sha256(model_path)
    assert record["model"]["path"] == str(model_path.resolve())
    assert record["input"]["shape"] == [3, 45, 61]
    assert record["outputs"]["instances"]["dtype"] == "uint16"
    assert record["settings"]["instances"] is True and record["napari_unet_version"]
    assert record["timings"]["seconds"] > 0
    assert _hidden(out) == []


def test_2d_and_odd_sizes_and_float16_probabilities(tmp_path, model_path):
    write_stack(tmp_path / "in" / "flat.tif", (37, 41), seed=2)
    write_stack(tmp_path / "in" / "odd.tif", (1, 17, 333), seed=3, spacing=None)
    results = _run(model_path, tmp_path / "in", tmp_path / "out", probabilities=True, probability_dtype="float16")
    assert [r.status for r in results] == ["done", "done"], [r.reason for r in results]
    flat = read_tiff(tmp_path / "out" / "flat_labels.tif")
    assert flat.data.shape == (37, 41) and flat.spacing == pytest.approx(SPACING[1:])
    odd = read_tiff(tmp_path / "out" / "odd_probabilities.tif")
    assert odd.data.shape == (1, 17, 333) and odd.data.dtype == np.float16 and odd.spacing is None
    p = np.asarray(odd.data, dtype=np.float32)
    assert np.isfinite(p).all() and 0 <= p.min() and p.max() <= 1


def test_uncompressed_input_is_read_by_offset(tmp_path, model_path):
    image = write_stack(tmp_path / "raw.tif", (3, 40, 40), compression=None)
    with TiffSlices(tmp_path / "raw.tif") as reader:
        assert reader._mode == "offset"
        np.testing.assert_array_equal(reader[1], image[1])
        np.testing.assert_array_equal(reader[0, ::3, 1::2], image[0, ::3, 1::2])
        np.testing.assert_array_equal(np.asarray(reader), image)
    assert _run(model_path, tmp_path / "raw.tif", tmp_path / "out")[0].status == "done"
    # one IFD for the whole stack, as ImageJ writes files over 4 GB
    tifffile.imwrite(tmp_path / "ij.tif", image, imagej=True, truncate=True)
    with TiffSlices(tmp_path / "ij.tif") as reader:
        assert reader._mode == "offset" and reader.shape == image.shape
        np.testing.assert_array_equal(reader[2], image[2])


def test_many_instances_are_stored_as_uint32(tmp_path, model_path, monkeypatch):
    """Per-slice ids add up through the stack; past 65535 the file must be uint32."""
    import napari_unet.prediction.postprocess as post

    def many(foreground, **kwargs):
        return np.arange(1, foreground.size + 1, dtype=np.uint32).reshape(foreground.shape)

    monkeypatch.setattr(post, "instance_labels", many)
    write_stack(tmp_path / "s.tif", (3, 160, 160))  # 3 x 25600 ids > 65535
    assert _run(model_path, tmp_path / "s.tif", tmp_path / "out", instances=True)[0].status == "done"
    inst = read_tiff(tmp_path / "out" / "s_instances.tif")
    assert inst.data.dtype == np.uint32 and int(np.asarray(inst.data).max()) == 3 * 160 * 160
    assert inst.spacing == pytest.approx(SPACING)  # kept outside ImageJ's format too


# ------------------------------------------------------------ resume, overwrite


def test_second_run_skips_and_overwrite_redoes(tmp_path, model_path):
    write_stack(tmp_path / "in" / "a.tif")
    out = tmp_path / "out"
    assert _run(model_path, tmp_path / "in", out)[0].status == "done"
    labels = out / "a_labels.tif"
    stamp = labels.stat().st_mtime_ns
    again = _run(model_path, tmp_path / "in", out)
    assert again[0].status == "skipped" and labels.stat().st_mtime_ns == stamp
    # asking for more outputs writes only the missing ones and keeps the rest
    more = _run(model_path, tmp_path / "in", out, probabilities=True)
    assert more[0].status == "done" and (out / "a_probabilities.tif").exists()
    assert labels.stat().st_mtime_ns == stamp
    assert json.loads((out / "a_provenance.json").read_text())["kept_existing"] == ["a_labels.tif"]
    redo = _run(model_path, tmp_path / "in", out, overwrite=True)
    assert redo[0].status == "done" and labels.stat().st_mtime_ns != stamp


def test_outputs_in_the_input_folder_are_not_segmented_again(tmp_path, model_path):
    write_stack(tmp_path / "a.tif")
    assert _run(model_path, tmp_path, tmp_path)[0].status == "done"
    results = _run(model_path, tmp_path, tmp_path, overwrite=True)
    by_name = {r.input.name: r for r in results}
    assert by_name["a.tif"].status == "done"
    assert by_name["a_labels.tif"].status == "skipped" and "output of a.tif" in by_name["a_labels.tif"].reason


def test_same_names_in_two_folders_do_not_overwrite_each_other(tmp_path, model_path):
    write_stack(tmp_path / "x" / "s.tif")
    write_stack(tmp_path / "y" / "s.tif")
    results = _run(model_path, [tmp_path / "x", tmp_path / "y"], tmp_path / "out")
    assert [r.status for r in results] == ["done", "failed"]
    assert "same file name" in results[1].reason


# ------------------------------------------------------------------ bad inputs


def test_bad_inputs_fail_with_a_reason_and_the_batch_goes_on(tmp_path, model_path):
    src = tmp_path / "in"
    write_stack(src / "good.tif")
    (src / "garbage.tif").write_bytes(b"not a tiff at all" * 20)
    whole = write_stack(tmp_path / "whole.tif", (6, 48, 48))
    data = (tmp_path / "whole.tif").read_bytes()
    (src / "truncated.tif").write_bytes(data[: len(data) // 2])
    write_stack(tmp_path / "raw.tif", (6, 48, 48), compression=None)
    raw = (tmp_path / "raw.tif").read_bytes()
    (src / "truncated_raw.tif").write_bytes(raw[: len(raw) - 5000])
    tifffile.imwrite(src / "rgb.tif", np.zeros((40, 40, 3), np.uint8), photometric="rgb")
    write_tiff(src / "hyper.tif", np.zeros((2, 2, 32, 32), np.uint16))
    write_tiff(src / "small.tif", np.zeros((3, 8, 8), np.uint8))
    nan = whole.astype(np.float32)
    nan[4, 5, 5] = np.nan  # found at slice 4, after outputs were started
    write_tiff(src / "nan.tif", nan)
    results = {r.input.name: r for r in _run(model_path, src, tmp_path / "out", instances=True)}
    assert results.pop("good.tif").status == "done"
    reasons = {name: r.reason for name, r in results.items()}
    assert all(r.status == "failed" for r in results.values()), reasons
    assert "not a TIFF" in reasons["garbage.tif"]
    assert "truncated" in reasons["truncated.tif"] or "corrupt" in reasons["truncated.tif"]
    assert "truncated" in reasons["truncated_raw.tif"]
    assert "RGB" in reasons["rgb.tif"]
    assert "2D (Y, X) or 3D" in reasons["hyper.tif"]
    assert "too small" in reasons["small.tif"]
    assert "NaN" in reasons["nan.tif"]
    assert all("\n" not in r for r in reasons.values())
    left = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert left == ["good_instances.tif", "good_labels.tif", "good_provenance.json"]


def test_missing_default_model_is_a_clear_error(tmp_path, monkeypatch):
    import napari_unet.model.pretrained as pretrained

    monkeypatch.setattr(pretrained, "default_checkpoint", lambda: None)
    write_stack(tmp_path / "a.tif")
    with pytest.raises(ValueError, match="no pretrained default model"):
        _run("default", tmp_path / "a.tif", tmp_path / "out")


def test_bad_model_raises_before_any_work(tmp_path):
    write_stack(tmp_path / "a.tif")
    (tmp_path / "bad.pt").write_bytes(b"\x00" * 100)
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        _run(tmp_path / "bad.pt", tmp_path / "a.tif", tmp_path / "out")
    with pytest.raises(ValueError, match="model file not found"):
        _run(tmp_path / "nope.pt", tmp_path / "a.tif", tmp_path / "out")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


# ------------------------------------------------------------ progress, cancel


def test_progress_events_and_cancel_leave_no_partial_files(tmp_path, model_path):
    for name in ("a", "b"):
        write_stack(tmp_path / "in" / f"{name}.tif", (5, 40, 40))
    out = tmp_path / "out"
    events = []

    def stop() -> bool:  # cancel in the middle of the second file
        return sum(1 for e in events if e.path.name == "b.tif") >= 3

    steps = batch_segment_steps(model_path, tmp_path / "in", out, BatchOptions(instances=True, probabilities=True), stop)
    with pytest.raises(Cancelled) as info:
        for event in steps:
            events.append(event)
    first = [e for e in events if e.path.name == "a.tif"]
    assert [e.slices_done for e in first] == [0, 1, 2, 3, 4, 5, 5]
    assert first[-1].result is not None and first[-1].result.status == "done"
    assert all(e.n_files == 2 and e.slices_total == 5 for e in events)
    assert [r.input.name for r in info.value.results] == ["a.tif"]
    assert sorted(p.name for p in out.iterdir()) == [
        "a_instances.tif", "a_labels.tif", "a_probabilities.tif", "a_provenance.json"
    ]


def test_segment_file_steps_single_file(tmp_path):
    write_stack(tmp_path / "a.tif", (2, 32, 32))
    steps = segment_file_steps(tiny_model(), tmp_path / "a.tif", tmp_path / "out", BatchOptions())
    progress = []
    with pytest.raises(StopIteration) as stop:
        while True:
            progress.append(next(steps))
    assert progress == [(0, 2), (1, 2), (2, 2)]
    result = stop.value.value
    assert result.status == "done" and (tmp_path / "out" / "a_labels.tif").exists()
    record = json.loads((tmp_path / "out" / "a_provenance.json").read_text())
    assert record["model"]["path"] is None and len(record["model"]["weights_sha256"]) == 64


# ------------------------------------------------------------- streaming I/O


def test_page_writer_commit_abort_and_permissions(tmp_path):
    data = np.arange(3 * 20 * 30, dtype=np.uint16).reshape(3, 20, 30)
    target = tmp_path / "w.tif"
    with TiffPageWriter(target, data.shape, np.uint16, spacing=(2.0, 0.5, 0.25), unit="um") as w:
        for page in data:
            w.write(page)
        assert not target.exists() and len(_hidden(tmp_path)) == 1  # nothing under the final name yet
        w.commit()
    back = read_tiff(target)
    np.testing.assert_array_equal(np.asarray(back.data), data)
    assert back.spacing == pytest.approx((2.0, 0.5, 0.25)) and back.unit == "um"
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask

    with TiffPageWriter(tmp_path / "x.tif", data.shape, np.uint16) as w:
        w.write(data[0])  # leaving the block without commit() discards the file
    assert not (tmp_path / "x.tif").exists() and _hidden(tmp_path) == []
    with pytest.raises(FileExistsError):
        TiffPageWriter(target, data.shape, np.uint16)
    w = TiffPageWriter(tmp_path / "y.tif", data.shape, np.uint16)
    with pytest.raises(ValueError, match="page shape"):
        w.write(np.zeros((5, 5), np.uint16))
    with pytest.raises(ValueError, match="1 of 3 pages|0 of 3 pages"):
        w.commit()
    w.abort()
    assert _hidden(tmp_path) == []

    write_tiff_pages(tmp_path / "p.tif", iter(data), data.shape, np.uint16)
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "p.tif"), data)
