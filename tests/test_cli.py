"""The command line, end to end on small synthetic stacks (in-process, plus real subprocess smoke tests)."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import tifffile
from batch_helpers import SPACING, UNIT, save_tiny_model, write_stack

from napari_unet import cli
from napari_unet.io.tiff import read_tiff, write_tiff
from napari_unet.model.checkpoint import load_checkpoint
from napari_unet.synthetic import partial_annotation, synthetic_em_stack

QUICK_TRAIN = ["--preset", "tiny", "--iterations", "6", "--patch-size", "24", "--batch-size", "2"]


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def training_data(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("train")
    data = synthetic_em_stack((4, 64, 64), seed=5)
    write_tiff(folder / "image.tif", data.image, spacing=SPACING, unit=UNIT)
    write_tiff(folder / "labels.tif", partial_annotation(data.instances, [1, 2]).astype(np.uint16))
    return folder / "image.tif", folder / "labels.tif"


def test_help_reads_well(capsys):
    code, out, _ = run(capsys, "--help")
    assert code == 0 and "examples:" in out and "napari-unet demo" in out
    for command in ("train", "segment", "demo", "info"):
        code, out, _ = run(capsys, command, "--help")
        assert code == 0 and f"usage: napari-unet {command}" in out
    assert "--scheduler" in run(capsys, "segment", "--help")[1]
    code, _, err = run(capsys, "segment", "-o", "x")  # usage error: argparse's exit code 2
    assert code == 2 and "required" in err
    assert run(capsys)[0] == 2  # no command: help and usage error


def test_info(capsys):
    code, out, _ = run(capsys, "info")
    assert code == 0
    assert "napari-unet 0.1.0" in out and "torch" in out and "Devices: " in out and "cpu" in out


def test_train_then_segment_end_to_end(tmp_path, capsys, training_data):
    image, labels = training_data
    model = tmp_path / "model.pt"
    code, out, err = run(capsys, "train", image, labels, "-o", model, *QUICK_TRAIN, "--seed", "1")
    assert code == 0, err
    assert "Trained 6 iterations" in out and model.exists()
    trained = load_checkpoint(model)
    assert trained.training["settings"]["iterations"] == 6 and trained.config.depth == 2
    assert trained.annotation.balance == "auto" and not trained.annotation.balances
    # -o exists: refused before any training
    code, _, err = run(capsys, "train", image, labels, "-o", model, *QUICK_TRAIN)
    assert code == 1 and "--overwrite" in err
    # fine-tune from it, then resume
    tuned = tmp_path / "tuned.pt"
    code, out, err = run(capsys, "train", image, labels, "-o", tuned, "--from", model, "--iterations", "4",
                         "--patch-size", "24", "--batch-size", "2", "--class-balance", "on")
    assert code == 0 and "fine-tuning" in out, err
    assert load_checkpoint(tuned).training["settings"]["learning_rate"] == pytest.approx(3e-4)
    assert load_checkpoint(tuned).annotation.balance is True

    data = tmp_path / "data"
    write_stack(data / "stack.tif", (3, 50, 70), seed=1)
    write_stack(data / "slice.tif", (48, 52), seed=2)  # 2D
    write_stack(data / "odd.tif", (2, 19, 131), seed=3)  # odd sizes
    out_dir = tmp_path / "out"
    code, out, err = run(capsys, "segment", "-m", model, data, "-o", out_dir, "--instances", "--probabilities")
    assert code == 0, out + err
    assert "Summary: 3 done, 0 skipped, 0 failed" in out
    for name, shape in [("stack", (3, 50, 70)), ("slice", (48, 52)), ("odd", (2, 19, 131))]:
        for kind, dtype in [("labels", np.uint8), ("instances", np.uint16), ("probabilities", np.uint8)]:
            stack = read_tiff(out_dir / f"{name}_{kind}.tif")
            assert stack.data.shape == shape and stack.data.dtype == dtype, (name, kind)
            want = SPACING if len(shape) == 3 else SPACING[1:]
            assert stack.spacing == pytest.approx(want) and stack.unit == UNIT
        record = json.loads((out_dir / f"{name}_provenance.json").read_text())
        assert record["model"]["path"] == str(model.resolve())

    # resume: a second run skips everything, exit 0
    stamp = (out_dir / "stack_labels.tif").stat().st_mtime_ns
    code, out, _ = run(capsys, "segment", "-m", model, data, "-o", out_dir, "--instances", "--probabilities")
    assert code == 0 and "Summary: 0 done, 3 skipped, 0 failed" in out
    assert (out_dir / "stack_labels.tif").stat().st_mtime_ns == stamp
    # --overwrite redoes them
    code, out, _ = run(capsys, "segment", "-m", model, data / "stack.tif", "-o", out_dir, "--overwrite")
    assert code == 0 and "Summary: 1 done" in out
    assert (out_dir / "stack_labels.tif").stat().st_mtime_ns != stamp

    # a corrupt file in the folder: reported, the others still skipped/done, exit code 1
    (data / "broken.tif").write_bytes(b"II*\x00" + b"\xff" * 50)
    write_stack(data / "new.tif", (2, 40, 40), seed=4)
    code, out, err = run(capsys, "segment", "-m", model, data, "-o", out_dir)
    assert code == 1
    assert "Summary: 1 done, 3 skipped, 1 failed" in out
    failed = [line for line in out.splitlines() if line.strip().startswith("failed")]
    assert len(failed) == 1 and "broken.tif" in failed[0]
    assert (out_dir / "new_labels.tif").exists() and not (out_dir / "broken_labels.tif").exists()
    assert [p.name for p in out_dir.iterdir() if p.name.startswith(".")] == []


def test_errors_are_one_line(tmp_path, capsys):
    write_stack(tmp_path / "a.tif", (2, 32, 32))
    code, out, err = run(capsys, "segment", "-m", tmp_path / "missing.pt", tmp_path / "a.tif", "-o", tmp_path / "o")
    assert code == 1 and err.strip() == f"napari-unet: error: model file not found: {tmp_path / 'missing.pt'}"
    (tmp_path / "bad.pt").write_bytes(b"PK\x03\x04 definitely not a checkpoint")
    code, out, err = run(capsys, "segment", "-m", tmp_path / "bad.pt", tmp_path / "a.tif", "-o", tmp_path / "o")
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert "not a readable checkpoint" in err and "Traceback" not in err
    code, _, err = run(capsys, "segment", "-m", tmp_path / "bad.pt", tmp_path / "nope", "-o", tmp_path / "o")
    assert code == 1 and err.strip() == f"napari-unet: error: input not found: {tmp_path / 'nope'}"
    code, _, err = run(capsys, "train", tmp_path / "a.tif", tmp_path / "a.tif", "-o", tmp_path / "m.pt",
                       "--resume")
    assert code == 1 and "--resume needs --from" in err
    code, _, err = run(capsys, "-v", "segment", "-m", tmp_path / "bad.pt", tmp_path / "a.tif", "-o", tmp_path / "o")
    assert code == 1 and "Traceback" in err  # --verbose shows where it came from


def test_default_model_missing_is_a_clear_error(tmp_path, capsys, monkeypatch):
    import napari_unet.model.pretrained as pretrained

    monkeypatch.setattr(pretrained, "default_checkpoint", lambda: None)
    write_stack(tmp_path / "a.tif")
    code, _, err = run(capsys, "segment", "-m", "default", tmp_path / "a.tif", "-o", tmp_path / "o")
    assert code == 1 and "no pretrained default model" in err


def test_demo_quick(tmp_path, capsys):
    code, out, err = run(capsys, "demo", "--quick", "--outdir", tmp_path / "demo")
    assert code == 0, err
    assert "foreground IoU" in out and "adapted Rand error" in out and "Time:" in out
    names = {p.name for p in (tmp_path / "demo").iterdir()}
    assert {"demo_image.tif", "demo_image_labels.tif", "demo_figure.png", "demo_model.pt"} <= names
    labels = read_tiff(tmp_path / "demo" / "demo_image_labels.tif")
    assert labels.data.shape == (4, 64, 64) and labels.data.dtype == np.uint8
    from PIL import Image

    with Image.open(tmp_path / "demo" / "demo_figure.png") as fig:
        assert fig.size[0] > 3 * 64 and fig.size[1] > 2 * 64


def test_the_builtin_default_model_is_used_when_one_ships(tmp_path, capsys, monkeypatch, training_data):
    import napari_unet.model.pretrained as pretrained

    fake = save_tiny_model(tmp_path / "default.pt")
    monkeypatch.setattr(pretrained, "default_checkpoint", lambda: fake)
    image, labels = training_data
    code, out, err = run(capsys, "train", image, labels, "-o", tmp_path / "m.pt", "--iterations", "3",
                         "--patch-size", "24", "--batch-size", "2")
    assert code == 0 and "fine-tuning the built-in default model" in out, err
    code, out, err = run(capsys, "segment", "-m", "default", image, "-o", tmp_path / "o")
    assert code == 0, err
    record = json.loads((tmp_path / "o" / "image_provenance.json").read_text())
    assert record["model"]["path"] == str(fake.resolve())
    # the demo's synthetic cells are not EM: it trains from scratch either way
    code, out, err = run(capsys, "demo", "--quick", "--outdir", tmp_path / "demo")
    assert code == 0 and "trained from scratch" in out, err


def test_first_ctrl_c_calls_back_second_aborts():
    calls = []
    with pytest.raises(KeyboardInterrupt):
        with cli._ctrl_c(lambda: calls.append(1)) as state:
            signal.raise_signal(signal.SIGINT)
            assert calls == [1] and state["count"] == 1
            signal.raise_signal(signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


# ------------------------------------------------------------------ subprocesses


def _console_script() -> list[str]:
    exe = shutil.which("napari-unet")
    if exe is None:  # not installed as a script (e.g. PYTHONPATH checkout): the module form
        return [sys.executable, "-m", "napari_unet"]
    return [exe]


def test_console_script_segments_and_returns_exit_code(tmp_path):
    model = save_tiny_model(tmp_path / "m.pt")
    write_stack(tmp_path / "in" / "a.tif", (2, 32, 32))
    (tmp_path / "in" / "z_bad.tif").write_bytes(b"nope")
    proc = subprocess.run(
        [*_console_script(), "segment", "-m", str(model), str(tmp_path / "in"), "-o", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 1, proc.stderr
    assert "1 done, 0 skipped, 1 failed" in proc.stdout and "Traceback" not in proc.stderr
    assert tifffile.imread(tmp_path / "out" / "a_labels.tif").shape == (2, 32, 32)
    mod = subprocess.run([sys.executable, "-m", "napari_unet", "--version"], capture_output=True, text=True,
                         timeout=60)
    assert mod.returncode == 0 and mod.stdout.startswith("napari-unet ")


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT delivery to a child differs on Windows")
def test_ctrl_c_stops_training_and_keeps_the_model_so_far(tmp_path, training_data):
    image, labels = training_data
    model = tmp_path / "m.pt"
    proc = subprocess.Popen(
        [*_console_script(), "train", str(image), str(labels), "-o", str(model), "--preset", "tiny",
         "--iterations", "400", "--patch-size", "24", "--batch-size", "2"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()  # printed once training starts
        assert first.startswith("Training"), first + (proc.stderr.read() if proc.poll() is not None else "")
        assert proc.stderr is not None
        # without a terminal, progress is printed every 10% (here every 40 iterations):
        # wait for the first such line, so an iteration has really run however slow the machine
        for line in proc.stderr:
            if line.startswith("iteration "):
                break
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "Stopped at iteration" in out and "saved the model" in out
    trained = load_checkpoint(model)
    assert 0 < trained.training["iterations_run"] < 400
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def _bad_checkpoints(folder: Path) -> list[Path]:
    """Files an outside tester fed the CLI: each must be one clean error line."""
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "text.pt").write_text("this is a text file\nrenamed to .pt\n")
    (folder / "hello.pt").write_bytes(b"hello")
    good = torch.load(save_tiny_model(folder / "good.pt"), weights_only=True)
    broken = {
        "no_weights.pt": {k: v for k, v in good.items() if k != "state_dict"},
        "weights_list.pt": {**good, "state_dict": [1, 2, 3]},
        "training_list.pt": {**good, "training": [1]},
        "huge.pt": {**good, "model_config": {**good["model_config"], "depth": 6, "base_channels": 4096}},
    }
    for name, payload in broken.items():
        torch.save(payload, folder / name)
    return [folder / n for n in ("text.pt", "hello.pt", *broken)]


def test_bad_checkpoints_are_one_error_line(tmp_path, capsys, training_data):
    image, labels = training_data
    for bad in _bad_checkpoints(tmp_path / "bad"):
        for argv in (["segment", "-m", bad, image, "-o", tmp_path / "out"],
                     ["train", image, labels, "-o", tmp_path / "m.pt", "--from", bad],
                     ["train", image, labels, "-o", tmp_path / "m.pt", "--from", bad, "--resume"]):
            code, out, err = run(capsys, *argv)
            lines = err.strip().splitlines()
            assert code == 1, (argv, err)
            assert len(lines) == 1 and lines[0].startswith("napari-unet: error: "), err
            assert bad.name in lines[0] and "Traceback" not in err
    assert not (tmp_path / "m.pt").exists()


def test_resume_keeps_the_whole_recipe(tmp_path, capsys, training_data):
    from napari_unet import train
    from napari_unet.model.config import preset
    from napari_unet.model.normalization import Normalization
    from napari_unet.training.augment import AugmentConfig
    from napari_unet.training.trainer import TrainingConfig

    image, labels = training_data
    recipe = TrainingConfig(
        iterations=6, patch_size=24, batch_size=2, warmup=2, schedule="constant", val_every=3,
        augment=AugmentConfig(elastic=False, gamma=(0.9, 1.1), p_intensity=0.4),
        normalization=Normalization(p_low=2.0, p_high=98.0),
    )
    first = train(read_tiff(image).data, read_tiff(labels).data, replace(recipe, iterations=3),
                  model=preset("tiny"))
    first.save(tmp_path / "first.pt")
    code, out, err = run(capsys, "train", image, labels, "-o", tmp_path / "resumed.pt", "--from",
                         tmp_path / "first.pt", "--resume", "--iterations", "6")
    assert code == 0 and "resuming" in out, err
    assert load_checkpoint(tmp_path / "resumed.pt").training_config() == recipe  # augment included
    # explicit flags still win over the saved recipe
    code, out, err = run(capsys, "train", image, labels, "-o", tmp_path / "again.pt", "--from",
                         tmp_path / "first.pt", "--resume", "--iterations", "5", "--lr", "2e-4")
    assert code == 0, err
    again = load_checkpoint(tmp_path / "again.pt").training_config()
    assert again == replace(recipe, iterations=5, learning_rate=2e-4)


def test_resume_keeps_how_the_labels_were_read(tmp_path, capsys):
    stack = synthetic_em_stack((3, 64, 64), seed=5)
    scribbles = np.zeros(stack.image.shape, np.uint8)
    scribbles[1] = np.where(stack.instances[1] > 0, 2, 1)  # 1 = background, 2 = cells
    write_tiff(tmp_path / "img.tif", stack.image)
    write_tiff(tmp_path / "lab.tif", scribbles)
    first, second = tmp_path / "first.pt", tmp_path / "second.pt"
    code, _, err = run(capsys, "train", tmp_path / "img.tif", tmp_path / "lab.tif", "-o", first,
                       *QUICK_TRAIN, "--mode", "scribbles", "--class-balance", "off")
    assert code == 0, err
    code, _, err = run(capsys, "train", tmp_path / "img.tif", tmp_path / "lab.tif", "-o", second,
                       "--from", first, "--resume", "--iterations", "8")
    assert code == 0, err
    annotation = load_checkpoint(second).annotation
    assert annotation.mode == "scribbles" and annotation.balance is False


def test_train_input_slices_fine_tunes_a_2d_model_into_a_25d_one(tmp_path, capsys, training_data):
    image, labels = training_data
    flat, wide = tmp_path / "flat.pt", tmp_path / "wide.pt"
    assert run(capsys, "train", image, labels, "-o", flat, *QUICK_TRAIN)[0] == 0
    code, out, err = run(capsys, "train", image, labels, "-o", wide, "--from", flat, "--input-slices", "3",
                         "--iterations", "3", "--patch-size", "24", "--batch-size", "2")
    assert code == 0, err
    assert load_checkpoint(wide).config.input_slices == 3
    code, _, err = run(capsys, "train", image, labels, "-o", tmp_path / "x.pt", *QUICK_TRAIN,
                       "--input-slices", "2")
    assert code != 0 and "input_slices" in err
    code, _, err = run(capsys, "segment", "-m", wide, image, "-o", tmp_path / "out")
    assert code == 0, err
