"""Smoke test of benchmarks/eval_fewslice.py (--quick: synthetic data, tiny models)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "eval_fewslice.py"


def _load() -> ModuleType:
    """Import the benchmark script as a module."""
    spec = importlib.util.spec_from_file_location("eval_fewslice", SCRIPT)
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
