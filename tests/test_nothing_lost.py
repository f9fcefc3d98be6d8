"""Nothing is lost and nothing is left over (issue 12): a trained model survives a bad
output path or a full disk, a second Ctrl-C aborts cleanly, and the hidden temporary
files of a killed run are cleaned up by the next one."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from batch_helpers import tiny_model, write_stack

from napari_unet import cli
from napari_unet.io import _saving
from napari_unet.io._atomic import host_tag, remove_stale_temps, temp_beside, temp_name
from napari_unet.io._saving import (
    DestinationError,
    DestinationExists,
    ModelNotSaved,
    check_destination,
    describe_write_error,
    save_with_fallback,
)
from napari_unet.io.tiff import write_tiff
from napari_unet.model.checkpoint import load_checkpoint
from napari_unet.prediction.batch import BatchOptions, batch_segment
from napari_unet.synthetic import partial_annotation, synthetic_em_stack

QUICK_TRAIN = ["--preset", "tiny", "--iterations", "6", "--patch-size", "24", "--batch-size", "2"]
posix_only = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals and pids")


def _hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def run(capsys, *argv: object) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def training_data(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("train")
    data = synthetic_em_stack((4, 64, 64), seed=5)
    write_tiff(folder / "image.tif", data.image)
    write_tiff(folder / "labels.tif", partial_annotation(data.instances, [1, 2]).astype(np.uint16))
    return folder / "image.tif", folder / "labels.tif"


def full_disk(monkeypatch, folder: Path) -> list[Path]:
    """torch.save into ``folder`` writes a few bytes, then fails as on a full disk."""
    real_save = torch.save
    attempts: list[Path] = []

    def save(obj, f, *args, **kwargs):
        target = Path(f)
        if target.parent.resolve() == folder.resolve():
            attempts.append(target)
            with open(target, "wb") as fh:
                fh.write(b"PK\x03\x04" + bytes(4096))  # a part of a zip, as torch writes it
            raise RuntimeError("[enforce fail at inline_container.cc:783] . unexpected pos 25856 vs 25752")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    return attempts


# ------------------------------------------------------------ the destination


def test_check_destination_refuses_what_cannot_be_written(tmp_path):
    (tmp_path / "notadir").write_text("x")
    with pytest.raises(DestinationError, match="notadir is a file, not a folder"):
        check_destination(tmp_path / "notadir" / "model.pt")
    with pytest.raises(DestinationError, match="notadir is a file"):
        check_destination(tmp_path / "notadir" / "deeper" / "model.pt")
    (tmp_path / "folder").mkdir()
    with pytest.raises(DestinationError, match="is a folder"):
        check_destination(tmp_path / "folder", overwrite=True)
    (tmp_path / "old.pt").write_bytes(b"x")
    with pytest.raises(DestinationExists):
        check_destination(tmp_path / "old.pt")
    assert check_destination(tmp_path / "old.pt", overwrite=True) == tmp_path / "old.pt"
    # a missing folder is fine (created when saving) and not created by the check
    assert check_destination(tmp_path / "new" / "sub" / "model.pt").name == "model.pt"
    assert not (tmp_path / "new").exists()
    with pytest.raises(DestinationError, match="free"):
        check_destination(tmp_path / "m.pt", need_bytes=2**62)
    assert _hidden(tmp_path) == []  # the write probes are gone


def test_check_destination_tries_a_real_write(tmp_path, monkeypatch):
    """Permissions, read-only disks and ACLs all answer the probe (even for root)."""
    real_open = os.open

    def read_only(path, flags, *args):
        if flags & os.O_CREAT:
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", read_only)
    with pytest.raises(DestinationError, match="cannot write in .*Read-only file system"):
        check_destination(tmp_path / "model.pt")


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root writes anywhere")
def test_check_destination_unwritable_folder(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        with pytest.raises(DestinationError, match="Permission denied"):
            check_destination(locked / "model.pt")
    finally:
        locked.chmod(0o755)


def test_a_failed_write_leaves_no_temp_and_the_model_goes_elsewhere(tmp_path, monkeypatch):
    full = tmp_path / "full"
    full.mkdir()
    attempts = full_disk(monkeypatch, full)
    model = tiny_model()
    saved = save_with_fallback(model, full / "m.pt", fallback_folders=[full, tmp_path / "rescue"])
    assert len(attempts) == 2  # the requested path, then the first fallback (same full disk)
    assert saved.rescued and saved.requested == full / "m.pt"
    assert saved.path.parent == tmp_path / "rescue" and saved.path.name.startswith("napari-unet-rescued-")
    assert "disk may be full" in saved.reason and "unexpected pos" in saved.reason
    assert load_checkpoint(saved.path).config == model.config
    assert list(full.iterdir()) == []  # neither the final name nor a hidden temporary


def test_when_nothing_takes_the_model_it_says_so(tmp_path, monkeypatch):
    full = tmp_path / "full"
    full.mkdir()
    full_disk(monkeypatch, full)
    with pytest.raises(ModelNotSaved, match="could not save the model anywhere"):
        save_with_fallback(tiny_model(), full / "m.pt", fallback_folders=[full])
    assert list(full.iterdir()) == []


def test_write_errors_are_explained():
    assert "disk is full" in describe_write_error(OSError(errno.ENOSPC, "No space left on device"))
    assert "permission denied" in describe_write_error(PermissionError(errno.EACCES, "Permission denied"))
    assert "folder" in describe_write_error(IsADirectoryError(errno.EISDIR, "Is a directory"))


# ------------------------------------------------------------------- the CLI


def test_cli_checks_the_output_before_training(tmp_path, capsys, monkeypatch):
    import napari_unet.training.trainer as training

    def no_training(*args, **kwargs):
        raise AssertionError("trained although the output cannot be written")

    monkeypatch.setattr(training.Trainer, "__init__", no_training)
    monkeypatch.chdir(tmp_path)
    Path("notadir").write_text("x")
    Path("folder").mkdir()
    cases = [
        (["-o", "notadir/model.pt"], "notadir is a file, not a folder"),
        (["-o", "folder", "--overwrite"], "is a folder; give a file name"),
    ]
    for extra, message in cases:
        code, out, err = run(capsys, "train", "img.tif", "lab.tif", *extra, "--preset", "tiny")
        assert code == 1 and message in err, err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    real_open = os.open

    def unwritable(path, flags, *args):
        if flags & os.O_CREAT:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", unwritable)
    code, _, err = run(capsys, "train", "img.tif", "lab.tif", "-o", "sub/model.pt", "--preset", "tiny")
    assert code == 1 and "cannot write in" in err and "Permission denied" in err


def test_cli_refuses_a_disk_without_room_before_training(tmp_path, capsys, monkeypatch, training_data):
    image, labels = training_data
    usage = _saving.shutil.disk_usage(tmp_path)
    monkeypatch.setattr(_saving.shutil, "disk_usage", lambda p: usage._replace(free=1000))
    code, out, err = run(capsys, "train", image, labels, "-o", tmp_path / "m.pt", *QUICK_TRAIN)
    assert code == 1 and "free on its disk" in err and "Training" not in out


def test_cli_full_disk_at_the_end_keeps_the_model(tmp_path, capsys, monkeypatch, training_data):
    image, labels = training_data
    out_dir, here = tmp_path / "out", tmp_path / "here"
    out_dir.mkdir()
    here.mkdir()
    monkeypatch.chdir(here)
    full_disk(monkeypatch, out_dir)
    code, out, err = run(capsys, "train", image, labels, "-o", out_dir / "model.pt", *QUICK_TRAIN)
    assert code == 1, err
    assert "Trained 6 iterations" in out and "Traceback" not in err
    rescued = list(here.glob("napari-unet-rescued-*.pt"))
    assert len(rescued) == 1
    assert f"could not save the model to {out_dir / 'model.pt'}" in err and "disk may be full" in err
    assert str(rescued[0]) in err
    assert load_checkpoint(rescued[0]).training["iterations_run"] == 6
    assert list(out_dir.iterdir()) == []


def test_cli_training_that_fails_midway_keeps_the_validated_model(
    tmp_path, capsys, monkeypatch, training_data
):
    from napari_unet.training import trainer as training

    image, labels = training_data
    step = training.Trainer._step

    def diverge_late(self, *args, **kwargs):
        if self.kept is not None:  # after the first validation: the run "diverges"
            raise FloatingPointError("training diverged at iteration 5 (loss nan)")
        return step(self, *args, **kwargs)

    monkeypatch.setattr(training.Trainer, "_step", diverge_late)
    out = tmp_path / "model.pt"
    code, _, err = run(capsys, "train", image, labels, "-o", out, *QUICK_TRAIN, "--iterations", "12")
    assert code == 1 and "Traceback" not in err
    assert "diverged" in err and str(out) in err
    kept = load_checkpoint(out)
    assert "diverged" in kept.training["stopped_by_error"]


def test_save_model_never_replaces_a_file_the_user_did_not_name(tmp_path):
    from napari_unet.io._saving import DestinationExists, check_destination

    other = tmp_path / "mito.pt"
    other.write_bytes(b"someone's model")
    chosen = tmp_path / "mito.v2"  # the panel completes this to mito.v2.pt, not mito.pt
    path = chosen if chosen.suffix == ".pt" else chosen.with_name(chosen.name + ".pt")
    assert path.name == "mito.v2.pt"
    with pytest.raises(DestinationExists):
        check_destination(other, overwrite=other == chosen)


# ------------------------------------------------------------- second Ctrl-C


def _press() -> None:
    """What a Ctrl-C does: the SIGINT handler, called in the main thread."""
    handler = signal.getsignal(signal.SIGINT)
    assert callable(handler)
    handler(signal.SIGINT, None)


def _two_presses_in_one_c_call() -> None:
    """Two SIGINTs that arrive while the main thread is busy in C (here: joining a thread):
    Python runs its handler once for both; the wakeup fd still counts two."""

    def send_two() -> None:
        for _ in range(2):
            signal.pthread_kill(threading.get_ident(), signal.SIGINT)

    sender = threading.Thread(target=send_two)
    sender.start()
    sender.join()


class PressingBar:
    """Stands in for the tqdm bar; presses Ctrl-C as the training reaches iteration 2."""

    disable = True

    def __init__(self, presses, **kwargs) -> None:
        self.n = 0
        self.presses = presses

    def __enter__(self) -> PressingBar:
        return self

    def __exit__(self, *exc) -> None:
        pass

    def set_postfix(self, *args, **kwargs) -> None:
        pass

    def update(self, k: int) -> None:
        self.n += k
        if self.n == 2:
            self.presses()


def _wakeup_fd() -> int:
    fd = signal.set_wakeup_fd(-1)
    signal.set_wakeup_fd(fd)
    return fd


def _producers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if "_producer" in t.name and t.is_alive()]


@posix_only
@pytest.mark.parametrize("second", ["same moment", "coalesced", "final validation", "cleanup"])
def test_second_ctrl_c_aborts_without_saving(tmp_path, capsys, monkeypatch, training_data, second):
    import napari_unet.devices as devices
    import napari_unet.training.trainer as training

    image, labels = training_data
    unraisable: list[object] = []
    released: list[object] = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    if second == "same moment":
        presses = lambda: (_press(), _press())  # noqa: E731
    elif second == "coalesced":
        presses = _two_presses_in_one_c_call
    else:
        presses = _press
    monkeypatch.setattr(cli, "_bar", lambda **kw: PressingBar(presses, **kw))
    if second == "final validation":  # after the first press the trainer validates once more
        real_validate = training.Trainer._validate

        def validate(self):
            if self.cancelled:
                _press()
            return real_validate(self)

        monkeypatch.setattr(training.Trainer, "_validate", validate)
    if second == "cleanup":  # the trainer's finally: the press used to be printed and ignored there
        real_release = devices.release_memory

        def release(dev):
            _press()
            real_release(dev)
            released.append(dev)  # the press did not cut the trainer's cleanup short

        monkeypatch.setattr(devices, "release_memory", release)

    model = tmp_path / "m.pt"
    before = _producers()  # another test's abandoned trainer is not this one's to judge
    wakeup = _wakeup_fd()
    code, out, err = run(capsys, "train", image, labels, "-o", model, *QUICK_TRAIN)
    assert code == 130, out + err
    assert err.strip().splitlines()[-1] == "napari-unet: aborted"
    assert "Traceback" not in err and "Exception ignored" not in err and unraisable == []
    assert not model.exists() and _hidden(tmp_path) == []
    assert [t for t in _producers() if t not in before] == []  # the batch thread was stopped
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert _wakeup_fd() == wakeup  # given back
    assert len(released) == (second == "cleanup")


@posix_only
def test_second_ctrl_c_in_a_real_process(tmp_path, training_data):
    """Real signals, 30 ms apart (inside one training iteration), to the console script."""
    image, labels = training_data
    model = tmp_path / "m.pt"
    proc = subprocess.Popen(
        [sys.executable, "-m", "napari_unet", "train", str(image), str(labels), "-o", str(model),
         "--preset", "tiny", "--iterations", "60", "--patch-size", "24", "--batch-size", "2"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stderr is not None
        for line in proc.stderr:  # without a terminal: a progress line every 6 iterations
            if line.startswith("iteration "):
                break
        proc.send_signal(signal.SIGINT)
        time.sleep(0.03)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1] == "napari-unet: aborted" and "Traceback" not in err
    assert not model.exists() and _hidden(tmp_path) == []


# ------------------------------------------------------ stale temporary files


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _temp(final: Path, pid: int, host: str | None = None, age_s: float = 0.0) -> Path:
    tmp = final.parent / f".{final.name}.{host or host_tag()}-{pid}-0123abcd.part"
    tmp.write_bytes(b"partial")
    if age_s:
        then = time.time() - age_s
        os.utime(tmp, (then, then))
    return tmp


def test_temp_names_say_who_writes_them(tmp_path):
    name = temp_name(tmp_path / "a_labels.tif")
    assert name.startswith(f".a_labels.tif.{host_tag()}-{os.getpid()}-") and name.endswith(".part")
    tmp = temp_beside(tmp_path / "a_labels.tif")
    assert tmp.exists() and remove_stale_temps(tmp_path / "a_labels.tif") == []  # ours: alive


@posix_only
def test_remove_stale_temps_keeps_live_writers(tmp_path):
    final = tmp_path / "a_labels.tif"
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        dead = _temp(final, _dead_pid())
        of_a_u16 = tmp_path / (dead.name + ".u16")  # the uint16 re-encoding of a temporary
        of_a_u16.write_bytes(b"x")
        live = _temp(final, sleeper.pid)
        mine = _temp(final, os.getpid())
        elsewhere = _temp(final, _dead_pid(), host="f00dcafe" if host_tag() != "f00dcafe" else "0badf00d")
        old_elsewhere = _temp(final, 12345, host="0badcafe" if host_tag() != "0badcafe" else "f00dbabe",
                              age_s=2 * 86400)
        legacy_old = tmp_path / ".a_labels.tif.0123456789ab.part"
        legacy_old.write_bytes(b"x")
        os.utime(legacy_old, (time.time() - 2 * 86400,) * 2)
        legacy_new = tmp_path / ".a_labels.tif.4242.part"
        legacy_new.write_bytes(b"x")
        other_output = _temp(tmp_path / "b_labels.tif", _dead_pid())
        not_ours = tmp_path / ".a_labels.tif.notes"
        not_ours.write_bytes(b"x")

        removed = remove_stale_temps(final)
        assert sorted(removed) == sorted([dead, of_a_u16, old_elsewhere, legacy_old])
        for kept in (live, mine, elsewhere, legacy_new, other_output, not_ours):
            assert kept.exists(), kept.name
        assert remove_stale_temps(tmp_path / "missing" / "x.tif") == []
    finally:
        sleeper.kill()
        sleeper.wait()


@posix_only
def test_a_rerun_cleans_what_a_killed_run_left(tmp_path):
    write_stack(tmp_path / "in" / "a.tif", (2, 32, 32))
    model = tiny_model().save(tmp_path / "m.pt")
    out = tmp_path / "out"
    out.mkdir()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        stale = [_temp(out / "a_labels.tif", _dead_pid()), _temp(out / "a_provenance.json", _dead_pid())]
        live = _temp(out / "a_labels.tif", sleeper.pid)  # another segmentation still writing
        results = batch_segment(model, [tmp_path / "in" / "a.tif"], out, BatchOptions())
        assert [r.status for r in results] == ["done"]
        assert not any(p.exists() for p in stale)
        assert _hidden(out) == [live.name]
        # a skipped file's leftovers go too
        again = _temp(out / "a_labels.tif", _dead_pid())
        results = batch_segment(model, [tmp_path / "in" / "a.tif"], out, BatchOptions())
        assert [r.status for r in results] == ["skipped"] and not again.exists()
    finally:
        sleeper.kill()
        sleeper.wait()


def test_saving_a_model_cleans_its_stale_temps(tmp_path):
    final = tmp_path / "m.pt"
    stale = _temp(final, 4242, age_s=2 * 86400)
    saved = save_with_fallback(tiny_model(), final)
    assert not saved.rescued and saved.path == final and not stale.exists()
    assert _hidden(tmp_path) == []
