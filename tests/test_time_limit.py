"""Training for a time budget: "train for 5 minutes" ends on time with a decayed rate and a validated model."""

from __future__ import annotations

import math

import pytest

from napari_unet import Trainer, TrainingConfig, cli
from napari_unet.model.checkpoint import load_checkpoint
from napari_unet.model.config import preset
from napari_unet.training.config import TrainEvent
from napari_unet.training.step import lr_factor


def test_time_limit_is_validated() -> None:
    assert TrainingConfig().time_limit_s is None
    assert TrainingConfig(time_limit_s=90).time_limit_s == 90
    for bad in (0, -1, float("nan"), float("inf"), True, "5"):
        with pytest.raises(ValueError, match="time_limit_s"):
            TrainingConfig(time_limit_s=bad)
    # a recipe stored in a checkpoint carries it, and rebuilds it checked
    assert TrainingConfig.from_dict({"time_limit_s": 30.0}).time_limit_s == 30.0


def test_schedule_follows_whichever_of_time_and_iterations_is_further() -> None:
    # after the warm-up, half the time spent at a tenth of the iterations: mid-decay
    by_time = lr_factor(100, 1000, 25, "cosine", time_fraction=0.5)
    by_iterations = lr_factor(100, 1000, 25, "cosine")
    assert by_time < by_iterations
    assert by_time == pytest.approx(lr_factor(int(25 + 0.5 * 975), 1000, 25, "cosine"), abs=1e-3)
    assert lr_factor(100, 1000, 25, "cosine", time_fraction=1.0) == pytest.approx(0.01)
    assert lr_factor(10, 1000, 25, "cosine", time_fraction=0.9) == pytest.approx(11 / 25)  # warm-up first
    assert lr_factor(500, 1000, 25, "constant", time_fraction=0.9) == 1.0


def test_eta_and_fraction_use_the_budget() -> None:
    event = TrainEvent(iteration=10, total=100_000, loss=1.0, lr=1e-3, patches_per_s=1.0,
                       elapsed_s=5.0, time_limit_s=20.0)
    assert event.eta_s == pytest.approx(15.0) and event.fraction == pytest.approx(0.25)
    plain = TrainEvent(iteration=10, total=100, loss=1.0, lr=1e-3, patches_per_s=1.0, elapsed_s=5.0)
    assert plain.eta_s == pytest.approx(45.0) and plain.fraction == pytest.approx(0.1)


class _Clock:
    """A clock that moves 10 ms each time it is read: the run's timing without the machine's load."""

    def __init__(self) -> None:
        self.now = 1000.0

    def perf_counter(self) -> float:
        self.now += 0.01
        return self.now


def test_a_run_ends_when_its_time_is_spent_with_a_validated_model(em_stack, em_labels, monkeypatch) -> None:
    from napari_unet.training import loop

    monkeypatch.setattr(loop, "time", _Clock())
    config = TrainingConfig(iterations=100_000, time_limit_s=2.0, warmup=2, patch_size=24, batch_size=2,
                            device="cpu")
    trainer = Trainer(em_stack.image, em_labels, config, model=preset("tiny"))
    events = list(trainer)
    final, steps = events[-1], events[:-1]
    assert final.done and not final.cancelled
    assert 5 < final.iteration < 100_000 and final.iteration == len(steps)
    assert steps[-1].lr < 0.2 * config.learning_rate  # the rate decayed with the clock
    # validated along the way by time (val_every alone would wait 5000 iterations)
    assert sum(e.val_metric is not None for e in steps) >= 3
    assert trainer.result is not None and math.isfinite(trainer.result.training["best_val_dice"])


def test_cli_minutes(tmp_path, capsys, em_stack, em_labels) -> None:
    from napari_unet.io.tiff import write_tiff

    write_tiff(tmp_path / "i.tif", em_stack.image)
    write_tiff(tmp_path / "l.tif", em_labels.astype("uint16"))
    out = tmp_path / "m.pt"
    code = cli.main(["train", str(tmp_path / "i.tif"), str(tmp_path / "l.tif"), "-o", str(out),
                     "--preset", "tiny", "--iterations", "100000", "--minutes", "0.02",
                     "--patch-size", "24", "--batch-size", "2"])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    assert "or 0.02 minutes" in printed.out
    assert load_checkpoint(out).training["settings"]["time_limit_s"] == pytest.approx(1.2)
    code = cli.main(["train", str(tmp_path / "i.tif"), str(tmp_path / "l.tif"), "-o",
                     str(tmp_path / "n.pt"), "--minutes", "-1"])
    assert code != 0 and "time_limit_s" in capsys.readouterr().err
