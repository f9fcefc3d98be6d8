"""Smoke tests of the benchmark scripts (--quick: synthetic data, tiny models)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
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
    assert result["agreement"]["monai_same_vs_exact_max"] < 1e-4  # so is MONAI on the grid
    same = result["same_output"]
    assert same["verified"] and same["max_abs_diff"] <= same["tolerance"] == 1e-4
    for name in ("ours", "monai_same", "monai_defaults"):
        assert result[name]["mpx_s"] > 0
    assert 0.0 <= result["defaults"]["argmax_agreement"] <= 1.0
    assert result["gflop_per_output_px"] > 0
    table = mod.summary_table(result)
    assert "same output (verified" in table and "MONAI defaults (different output" in table


def test_monai_comparison_exits_when_output_differs(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("monai")
    mod = _load("bench_vs_monai")
    # an off-grid set-up in the same-output slot must stop the script before it claims anything
    monkeypatch.setitem(mod.RUNNERS, "monai_same", mod.run_monai_defaults)
    with pytest.raises(SystemExit) as exc:
        mod.main(["--quick"])
    assert exc.value.code == 1


def test_monai_same_output_plan_is_on_the_pooling_grid() -> None:
    pytest.importorskip("monai")
    import napari_unet
    from napari_unet.model.unet import UNet

    mod = _load("bench_vs_monai")
    model = UNet(napari_unet.preset("default"))
    for shape, tile in (((768, 1024), 388), ((768, 1024), 516), ((512, 512), 260), ((100, 700), 516)):
        plan = mod.same_output_plan(model, shape, tile)
        assert plan["stride"] % 16 == 0 and plan["stride"] <= plan["tile"]
        mod.check_plan_on_grid(model, shape, plan)  # raises when a window is off the grid


def test_eval_fewslice_dev_split(tmp_path: Path) -> None:
    mod = _load()
    assert mod.scored_slices("dev", [5, 15], 20, 30) == [z for z in range(20) if z not in (5, 15)]
    assert mod.scored_slices("eval", [5, 15], 20, 30) == list(range(20, 30))
    with pytest.raises(ValueError):
        mod.scored_slices("dev", list(range(20)), 20, 30)  # k=20 leaves no development slice
    report = mod.main(["--quick", "--k", "2", "--method", "rf", "--split", "dev"])
    assert report["split"] == "dev"
    (row,) = report["results"]
    assert row["split"] == "dev" and row["dev_slices"] == [0, 2] and row["slices"] == [1, 3]


def test_bench_training_quick() -> None:
    mod = _load("bench_training")
    r = mod.measure("tiny", 32, 2, 3, 1, "cpu", (4, 64, 64))
    assert r["iterations_s"] > 0 and r["output_size"] == 32 and r["timed_iterations"] == 2


def test_gpu_check_parses_pytest_summary() -> None:
    mod = _load("gpu_check")
    c = mod.parse_pytest("..s\n2 passed, 1 skipped, 400 deselected in 9.10s\n")
    assert (c["passed"], c["failed"], c["skipped"], c["deselected"]) == (2, 0, 1, 400)
    c = mod.parse_pytest("FAILED tests/x.py::t - boom\n1 failed, 1 error in 1s\n")
    assert (c["failed"], c["errors"]) == (1, 1)


def _run_gpu_check(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # the CPU path, also on a GPU machine
    return subprocess.run(
        [sys.executable, str(BENCHMARKS / "gpu_check.py"), *args],
        capture_output=True, text=True, env=env, timeout=240, cwd=tmp_path,
    )


def test_gpu_check_without_cuda_exits_2(tmp_path: Path) -> None:
    proc = _run_gpu_check(tmp_path, "--out", str(tmp_path / "g.json"))
    assert proc.returncode == 2 and "--allow-cpu" in proc.stderr
    assert not (tmp_path / "g.json").exists()


def test_gpu_check_allow_cpu_quick(tmp_path: Path) -> None:
    pytest.importorskip("monai")
    out = tmp_path / "g.json"
    proc = _run_gpu_check(tmp_path, "--allow-cpu", "--quick", "--out", str(out), "--budget-s", "150",
                          "--data", str(tmp_path / "no-data"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    rows = {r["row"]: r for r in report["rows"]}
    assert set(rows) == set("abcde")
    assert all(r["status"] == "ok" for r in rows.values()), report["table"]
    assert "synthetic" in rows["b"]["result"] and "synthetic" in rows["e"]["result"]
    assert rows["e"]["details"]["dev_slices"] == [0, 2]
    # one markdown table at the end, and no machine paths in what was written
    assert proc.stdout.rstrip().endswith(report["table"])
    assert str(tmp_path) not in out.read_text() and str(BENCHMARKS.parent) not in out.read_text()


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


def test_bench_prepare_quick(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    mod = _load("bench_prepare")
    out = tmp_path / "p.json"
    report = mod.main(["--quick", "--data", str(tmp_path / "no-data"), "--out", str(out)])
    names = [r["case"] for r in report["rows"]]
    assert names == ["sample-1", "sample-2", "sample-scribbles", "fibres-256"]
    for r in report["rows"]:
        assert all(r[p] >= 0.0 for p in mod.PHASES)
        assert r["trainer_scratch"] > 0.0 and r["trainer_finetune"] > 0.0
    assert report["rows"][1]["painted_mpx"] == pytest.approx(2 * 256 * 256 / 1e6)
    assert json.loads(out.read_text())["prepare_s_per_mpx"] == report["prepare_s_per_mpx"]
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last == f"prepare_s_per_mpx={report['prepare_s_per_mpx']:.4f}"
    assert 0.0 < report["prepare_s_per_mpx"] < 30.0


def test_cpu_bf16_quick(tmp_path: Path) -> None:
    mod = _load("bench_cpu_bf16")
    out = tmp_path / "b.json"
    report = mod.main(["--quick", "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    assert report["data"] == "synthetic" and isinstance(report["cpu_native_bf16"], bool)
    for row in report["speed"].values():
        assert row["float32_mpx_s"] > 0 and row["bfloat16_mpx_s"] > 0 and row["speedup"] > 0
        assert 0.99 <= row["argmax_agreement"] <= 1.0
    for part in report["accuracy"].values():
        assert part["argmax_agreement"] > 0.99 and part["max_abs_dp"] < 0.1
        assert all(abs(d) <= mod.GATE for d in part["delta"].values())
    assert report["gate_passed"]
    with pytest.raises(SystemExit) as exc:  # a gate nothing can pass: exit status 1
        mod.main(["--quick", "--skip-speed", "--gate", "-1"])
    assert exc.value.code == 1


def test_gui_latency_quick(tmp_path: Path) -> None:
    """The GUI latency benchmark under Xvfb: a real viewer, the three panels, their buttons."""
    import shutil

    if shutil.which("xvfb-run") is None:
        pytest.skip("xvfb-run is not installed")
    out = tmp_path / "gui.json"
    src = str(BENCHMARKS.parent / "src")
    env = {**os.environ, "QT_QPA_PLATFORM": "xcb",
           "PYTHONPATH": os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")]))}
    try:
        proc = subprocess.run(
            ["xvfb-run", "-a", "-s", "-screen 0 1920x1080x24", sys.executable,
             str(BENCHMARKS / "bench_gui_latency.py"), "--quick", "--out", str(out)],
            capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path,
        )
    except subprocess.TimeoutExpired:
        pytest.fail("bench_gui_latency.py --quick ran for more than 300 s")
    if proc.returncode != 0 and not out.exists() and (
        "cannot open display" in proc.stderr.lower()
        or "could not connect to display" in proc.stderr.lower()
        or "xvfb failed" in proc.stderr.lower()
        or "no display" in proc.stderr.lower()
    ):
        pytest.skip("no X display could be made: " + proc.stderr.strip()[-300:])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    phases = report["phases"]
    assert set(phases) == {"idle", "train_tiny", "train_finetune", "segment_stack", "batch"}
    for name, row in phases.items():
        assert row["n"] > 0, name
        assert 0 < row["median_ms"] <= row["p99_ms"] <= row["max_ms"]
    assert all(v is not None and v > 0 for v in report["first_preview_s"].values())
    assert sorted(report["batch_rows"]) == ["done", "done", "failed"]  # 2 stacks, 1 corrupt file
    worst = report["worst"]
    assert worst["window_height_px"] > 0
    last = proc.stdout.strip().splitlines()[-1]
    assert last == (
        f"max_gap_ms={worst['max_gap_ms']:.1f} p99_ms={worst['p99_ms']:.1f} "
        f"first_preview_s={worst['first_preview_s']:.2f} window_height_px={worst['window_height_px']}"
    )


def test_eval_suggest_quick(tmp_path: Path) -> None:
    mod = _load("eval_suggest")
    out = tmp_path / "s.json"
    report = mod.main(["--quick", "--out", str(out)])
    rows = json.loads(out.read_text())["rows"]
    assert rows == report["rows"]
    assert {r["arm"] for r in rows} == {"base", "suggest", "random", "even"}
    base = next(r for r in rows if r["arm"] == "base")
    for r in rows:
        assert 0.0 <= r["metric"] <= 1.0
        if r["arm"] in ("suggest", "random"):
            assert r["added"] not in base["slices"] and 0 <= r["added"] < 4  # pool only, never painted
            assert r["slices"] == sorted(base["slices"] + [r["added"]])
            assert 0 <= r["correct_px"] <= r["slice_px"] and r["scratch_px"] <= r["slice_px"]
    assert {s["arm"] for s in report["summary"]} == {"base", "suggest", "random", "even"}
    again = mod.main(["--quick", "--out", str(out)])  # resumable: every row is already there
    assert again["rows"] == rows


def test_eval_suggest_correction_pixels() -> None:
    import numpy as np

    mod = _load("eval_suggest")
    gt = np.zeros((6, 6), bool)
    gt[:, :2] = gt[:, 4:] = True  # two cells, membrane in the middle
    assert mod.correction_pixels(gt, gt, instances=True) == 0
    swapped = gt.copy()  # same cells, other ids: nothing to change
    assert mod.correction_pixels(gt, swapped[:, ::-1], instances=True) == 0
    merged = gt.copy()
    merged[:, 2:4] = True  # the membrane painted as cell: one object covering both cells
    assert mod.correction_pixels(gt, merged, instances=True) == 12 + 12  # membrane + the unmatched cell
    assert mod.correction_pixels(gt, merged, instances=False) == 12


def test_time_to_accuracy_quick(tmp_path: Path) -> None:
    mod = _load("eval_time_to_accuracy")
    out, saved = tmp_path / "t.json", tmp_path / "m.pt"
    report = mod.main(["--quick", "--set", "amp=false", "--label", "x", "--out", str(out),
                       "--save", str(saved)])
    rows = json.loads(out.read_text())["results"]
    assert [r["mark_s"] for r in rows] == [0.5, 2.0] and {r["label"] for r in rows} == {"x"}
    assert all(0.0 <= r["iou"] <= 1.0 for r in rows)
    assert report["config"]["amp"] is False and saved.is_file()
    assert rows[-1]["iteration"] <= report["iterations"]
    assert mod.parse_value("5") == 5 and mod.parse_value("none") is None and mod.parse_value("x") == "x"


def test_time_to_accuracy_far_split() -> None:
    mod = _load("eval_time_to_accuracy")
    assert mod.painted_and_scored("far", 5, None, 20, 40) == ([1, 3, 5, 7, 9], list(range(10, 20)))
    zs, dev = mod.painted_and_scored("dev", 5, None, 20, 40)
    assert zs == [2, 6, 10, 14, 18] and dev == [z for z in range(20) if z not in zs]
    assert mod.painted_and_scored("eval", 2, 10, 20, 30)[1] == list(range(20, 30))
    with pytest.raises(ValueError, match="paint-among"):
        mod.painted_and_scored("far", 5, 20, 20, 40)


def test_eval_per_slice_scores_and_draws(tmp_path: Path) -> None:
    import numpy as np
    import tifffile

    from napari_unet.synthetic import synthetic_em_stack

    model = tmp_path / "m.pt"
    _load("eval_time_to_accuracy").main(["--quick", "--set", "amp=false", "--save", str(model)])
    stack = synthetic_em_stack((6, 64, 64), seed=1)
    folder = tmp_path / "lucchi_epfl_mito"
    folder.mkdir()
    tifffile.imwrite(folder / "image.tif", stack.image)
    tifffile.imwrite(folder / "labels.tif", np.where(stack.foreground, 255, 0).astype(np.uint8))
    figure, out = tmp_path / "errors.png", tmp_path / "rows.json"
    rows = _load("eval_per_slice").main(["--model", str(model), "--data", str(tmp_path), "--show", "2",
                                         "--figure", str(figure), "--out", str(out)])
    assert [r["z"] for r in rows] == list(range(6)) and figure.stat().st_size > 0
    assert all(0.0 <= r[k] <= 1.0 for r in rows for k in ("iou", "precision", "recall"))
    saved = json.loads(out.read_text())
    assert saved["slices"] == rows and saved["ranges"] == []  # 6 slices: no range of Lucchi's 40 fits


def test_error_overlay_colours() -> None:
    import numpy as np

    mod = _load("eval_per_slice")
    truth = np.array([[True, True, False, False]])
    pred = np.array([[True, False, True, False]])
    rgb = mod.error_overlay(np.full((1, 4), 100, np.uint8), truth, pred).astype(int)
    found, missed, false, neither = rgb[0]
    assert found[1] > found[0] and missed[0] > missed[1] and false[2] > false[0]
    assert list(neither) == [100, 100, 100]
    assert mod.slice_scores(truth, pred) == {"iou": 1 / 3, "precision": 0.5, "recall": 0.5}


def test_recall_by_kind_separates_cut_whole_and_small_objects() -> None:
    import numpy as np

    mod = _load("eval_per_slice")
    truth = np.zeros((1, 60, 60), bool)
    truth[0, :10, 20:30] = True  # cut by the top edge: 100 px
    truth[0, 30:40, 30:40] = True  # whole and small: 100 px
    pred = np.zeros_like(truth)
    pred[0, 30:40, 30:35] = True  # half of the whole one, none of the cut one
    r = mod.recall_by_kind(truth, pred)
    assert r["recall_edge"] == 0.0 and r["recall_inner"] == 0.5 and r["recall_small"] == 0.5
    assert r["missed_at_edge"] == 100 / 150
