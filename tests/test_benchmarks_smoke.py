"""Smoke tests of the benchmark scripts (--quick: synthetic data, tiny models)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str = "eval_fewslice") -> ModuleType:
    """Import a benchmark script as a module."""
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_choose_slices_is_documented_choice() -> None:
    mod = _load()
    assert mod.choose_slices(1) == [10]
    assert mod.choose_slices(2) == [5, 15]
    assert mod.choose_slices(5) == [2, 6, 10, 14, 18]
    assert mod.choose_slices(20) == list(range(20))
    with pytest.raises(ValueError):
        mod.choose_slices(0)


def test_quick_run_produces_metrics(tmp_path: Path) -> None:
    mod = _load()
    out = tmp_path / "r.json"
    report = mod.main(["--quick", "--k", "1", "--method", "both", "--out", str(out)])
    on_disk = json.loads(out.read_text())
    assert on_disk["dataset"] == report["dataset"] == "synthetic"
    rows = on_disk["results"]
    assert {r["method"] for r in rows} == {"unet", "rf"}
    for r in rows:
        for key in (*mod.ISBI_KEYS, "train_s", "predict_s"):
            assert key in r
        assert 0.0 <= r["are"] <= 1.0
        assert 0.0 <= r["pixel_error"] <= 1.0
        assert r["vi"] == pytest.approx(r["vi_split"] + r["vi_merge"])


def test_lucchi_metrics_simple() -> None:
    import numpy as np

    mod = _load()
    gt = np.zeros((1, 4, 4), bool)
    gt[0, :2] = True
    pred = np.zeros_like(gt)
    pred[0, :1] = True
    m = mod.lucchi_metrics(gt, pred)
    assert m["iou"] == pytest.approx(0.5)
    assert m["dice"] == pytest.approx(2 / 3)


def test_quick_curve_and_loss_choice(tmp_path: Path) -> None:
    mod = _load()
    report = mod.main(["--quick", "--k", "1", "--method", "unet", "--curve", "2", "--loss", "ce"])
    rows = report["results"]
    assert [r["iteration"] for r in rows] == [2, 3]  # the curve point, then the final model
    assert report["unet"]["loss"] == "ce"
    assert all(0.0 <= r["are"] <= 1.0 and 0.0 <= r["fill_are"] <= 1.0 for r in rows)


def test_isbi_metrics_accept_instance_labels() -> None:
    import numpy as np

    mod = _load()
    gt = np.zeros((1, 6, 6), bool)
    gt[0, :, :2] = gt[0, :, 4:] = True  # two cells, membrane in the middle
    merged = np.ones((1, 6, 6), bool)  # one blob: a merge
    split = np.zeros((1, 6, 6), np.uint32)
    split[0, :, :3], split[0, :, 3:] = 1, 2  # two instances that cover the membrane too
    assert mod.isbi_metrics(gt, merged)["are"] > 0.3
    assert mod.isbi_metrics(gt, split)["are"] == pytest.approx(0.0)


def test_monai_comparison_quick(tmp_path: Path) -> None:
    pytest.importorskip("monai")
    mod = _load("bench_vs_monai")
    out = tmp_path / "m.json"
    result = mod.main(["--quick", "--out", str(out)])
    assert json.loads(out.read_text())["speedup"] == pytest.approx(result["speedup"])
    assert result["agreement"]["ours_vs_exact_max"] < 1e-4  # overlap-tile is exact
    assert result["ours"]["mpx_s"] > 0 and result["monai"]["mpx_s"] > 0
    assert result["gflop_per_output_px"] > 0


def test_train_pretrained_quick(tmp_path: Path) -> None:
    mod = _load("train_pretrained")
    out = tmp_path / "m.pt"
    report = mod.main(["--quick", "--out", str(out), "--snapshots", str(tmp_path / "s"), "--every", "2"])
    from napari_unet import load_checkpoint

    model = load_checkpoint(out)
    assert model.config.base_channels > 0
    assert json.loads(out.with_suffix(".json").read_text())["eval"] == report["eval"]
    assert len(report["curve"]) == 1 and (tmp_path / "s" / "it00002.pt").is_file()


def test_calibration_quick_run(tmp_path: Path) -> None:
    mod = _load("eval_calibration")
    out = tmp_path / "c.json"
    rows = mod.main(["--quick", "--out", str(out)])
    assert [r["balance"] for r in rows] == ["on", "off"]
    assert json.loads(out.read_text())["results"] == rows
    for r in rows:
        assert 0.0 <= r["precision@0.5"] <= 1.0 and 0.0 <= r["recall@0.5"] <= 1.0
    gt = mod.np.zeros((2, 4), bool)
    gt[0] = True
    s = mod.scores(mod.np.where(gt, 0.9, 0.6), gt)  # every pixel above 0.5: half are false positives
    assert s["precision@0.5"] == 0.5 and s["recall@0.5"] == 1.0 and s["iou@0.7"] == 1.0
