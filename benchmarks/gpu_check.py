"""One-shot GPU check: everything this project has never measured on a GPU, in one run.

Run it once on a machine with a CUDA GPU (sized for an H100/H200, under 8
minutes with the default budget)::

    python benchmarks/gpu_check.py

It prints one markdown table at the end and writes the same rows as JSON to
``benchmarks/results/gpu_check.json`` (``--out`` to change). Rows:

a. **CUDA tests**: ``python -m pytest -m cuda -q`` in a subprocess; counts of
   passed, failed and skipped tests (names of the failures in the JSON).
b. **Prediction vs MONAI on CUDA** (``bench_vs_monai.compare``): the paper
   network (random weights) on 16 Lucchi slices (768 x 1024), bf16 autocast for
   both; the speed-up over MONAI's same-output set-up (verified in float32
   first), Mpx/s of both, the network's useful rate as a fraction of the
   measured bf16 matrix-multiply ceiling, and MONAI's defaults for reference.
c. **Training speed on CUDA** (``bench_training.measure``): iterations/s of the
   default network with the engine's default patch (128 px output) and batch (4).
d. **GPU memory given back**: ``torch.cuda.memory_allocated``/``memory_reserved``
   before and after a training job and a prediction job (after
   ``napari_unet.devices.release_memory``), and allocated memory after also
   clearing cuBLAS's per-handle workspaces, which torch keeps on purpose.
e. **Fine-tuning the shipped model on ISBI, k = 2** (``eval_fewslice`` pieces:
   painted slices 5 and 15, the adapted Rand error of cells by *fill*): wall
   time, and the ARE on the development split (the 18 unpainted slices among
   0-19) and on the evaluation slices 20-29. The shipped model was trained on
   all of ISBI 0-19, so the development slices are its training data there:
   that ARE is optimistic, and the evaluation figure is the one to report.

Every row is guarded: a failure prints ``FAILED`` with its reason and the
next row still runs. ``--budget-s`` (default 420) bounds the whole run:
a row is ``skipped: budget`` when less time is left than it needs (from 20 s
for the tests to 90 s for the fine-tuning), and the test run and the
fine-tuning are cut short to fit it.

Without CUDA the script stops with exit code 2, unless ``--allow-cpu`` is
given: then it runs every row on the CPU at toy sizes (the smoke test) and
exits 0 when all rows pass. When ``../shared/data`` is missing, rows b and e
use synthetic EM data (``napari_unet.synthetic``) and say so. The exit code is
1 when a row failed.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import re
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

DEFAULT_DATA = ROOT.parent / "shared" / "data"
DEFAULT_OUT = HERE / "results" / "gpu_check.json"


def shown(path: Path) -> str:
    """A path as printed and stored: relative to the repository, never the machine's."""
    path = Path(path).resolve()
    for base, name in ((ROOT, "."), (ROOT.parent, "..")):
        try:
            return str(Path(name) / path.relative_to(base))
        except ValueError:
            continue
    return path.name


def scrub(text: str) -> str:
    """Tool output without this machine's paths."""
    for path, name in ((str(ROOT), "."), (str(ROOT.parent), ".."), (sys.prefix, "<python>"),
                       (str(Path.home()), "~")):
        text = text.replace(path, name)
    return text


class Context:
    """What every row needs: the device, toy sizes or not, the data, the clock."""

    def __init__(self, args: argparse.Namespace, device: Any, toy: bool) -> None:
        self.args = args
        self.device = device
        self.toy = toy
        self.data = Path(args.data)
        self.deadline = time.monotonic() + args.budget_s

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"


def _free_gpu(ctx: Context) -> None:
    gc.collect()
    from napari_unet.devices import release_memory

    release_memory(ctx.device)


# --------------------------------------------------------------------- row a
def cuda_test_files() -> list[str]:
    """Test files that hold CUDA-marked tests (the toy run collects only these)."""
    return sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests").glob("test_*.py")
                  if "mark.cuda" in p.read_text(encoding="utf-8"))


def parse_pytest(output: str) -> dict[str, int]:
    """Counts from pytest's last summary line ("3 passed, 1 skipped, 40 deselected in 9.1s")."""
    counts = {k: 0 for k in ("passed", "failed", "skipped", "errors", "deselected")}
    lines = [ln for ln in output.splitlines() if re.search(r"\d+ (passed|failed|skipped|error|deselected)", ln)
             or "no tests ran" in ln]
    for n, word in re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected)", lines[-1] if lines else ""):
        counts["errors" if word.startswith("error") else word] += int(n)
    return counts


def row_cuda_tests(ctx: Context) -> tuple[str, dict[str, Any]]:
    cmd = [sys.executable, "-m", "pytest", "-m", "cuda", "-q", "-p", "no:cacheprovider"]
    if ctx.toy:
        cmd += cuda_test_files()
    timeout = max(30.0, min(ctx.remaining(), 180.0 if ctx.cuda else 90.0))
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        raise RuntimeError(f"pytest -m cuda did not finish within {timeout:.0f} s; "
                           f"last output: {scrub(out[-300:])}") from None
    out = scrub(proc.stdout + proc.stderr)
    counts = parse_pytest(out)
    failures = [ln.split(" - ")[0] for ln in out.splitlines() if ln.startswith(("FAILED ", "ERROR "))]
    details = {"command": "python -m pytest -m cuda -q" + (" <files with cuda tests>" if ctx.toy else ""),
               "returncode": proc.returncode, **counts, "failures": failures,
               "seconds": round(time.perf_counter() - t0, 1), "output_tail": out[-2000:]}
    summary = f"{counts['passed']} passed, {counts['failed']} failed, {counts['skipped']} skipped"
    if counts["errors"]:
        summary += f", {counts['errors']} errors"
    if not ctx.cuda:
        summary += " (no CUDA: skipping is the expected outcome)"
    if counts["failed"] or counts["errors"] or proc.returncode not in (0, 5):
        raise RowFailed(f"{summary}: {', '.join(failures) or 'pytest exit code ' + str(proc.returncode)}",
                        details)
    return summary, details


# --------------------------------------------------------------------- row b
def row_monai(ctx: Context) -> tuple[str, dict[str, Any]]:
    import bench_vs_monai as bench
    import torch

    import napari_unet
    from napari_unet.model.unet import UNet

    if ctx.toy:
        name, n, tiles, batches, repeats, synthetic = "tiny", 2, [36], [2], 1, (96, 96)
    else:
        name, n, tiles, batches, repeats = (ctx.args.monai_preset, ctx.args.monai_slices,
                                            [388, 516, 772], [4, 8, 16], 3)
        synthetic = None if (ctx.data / "lucchi_epfl_mito" / "image.tif").is_file() else (768, 1024)
    source = "synthetic EM (data folder missing)" if synthetic else "Lucchi slices"
    stack = bench.load_stack(ctx.data / "lucchi_epfl_mito" / "image.tif", n, synthetic)
    torch.manual_seed(0)
    model = UNet(napari_unet.preset(name)).to(ctx.device).eval()
    if ctx.cuda:
        model = model.to(memory_format=torch.channels_last)
    try:
        r = bench.compare(model, stack, tiles, batches, repeats, ctx.device,
                          log=lambda s: print("   ", s, flush=True))
    finally:
        model.to("cpu")
        del model
        _free_gpu(ctx)
    print(bench.summary_table(r), flush=True)
    summary = (f"{name} net ({r['parameters_M']} M), {source} {tuple(r['stack'])}: "
               f"x{r['speedup_paired_median']:.2f} vs MONAI same output "
               f"(max diff {r['same_output']['max_abs_diff']:.1e}); "
               f"ours {r['ours']['mpx_s']:.3g} Mpx/s, MONAI {r['monai_same']['mpx_s']:.3g} Mpx/s; "
               f"x{r['defaults']['speedup_paired_median']:.2f} vs MONAI defaults (different output)")
    if "fraction_of_ceiling" in r:
        summary += (f"; {100 * r['fraction_of_ceiling']:.1f} % of the bf16 ceiling "
                    f"({r['bf16_ceiling_tflop_s']:.0f} TFLOP/s measured), "
                    f"{100 * r['share_outside_network']:.0f} % of the time outside the network")
    return summary, {"data": source, "preset": name, **r, "table": bench.summary_table(r)}


# --------------------------------------------------------------------- row c
def row_training(ctx: Context) -> tuple[str, dict[str, Any]]:
    import bench_training

    if ctx.toy:
        r = bench_training.measure("tiny", 32, 2, 4, 2, ctx.device.type, (4, 96, 96))
    else:
        r = bench_training.measure("default", 128, 4, 60, 10, ctx.device.type, (6, 256, 256))
    _free_gpu(ctx)
    summary = (f"{r['preset']} net ({r['parameters_M']} M), patch {r['input_size']} -> {r['output_size']} px, "
               f"batch {r['batch_size']}: {r['iterations_s']:.1f} iterations/s, "
               f"{r['patches_s']:.0f} patches/s (synthetic data)")
    return summary, r


# --------------------------------------------------------------------- row d
def _memory(ctx: Context) -> dict[str, float]:
    import torch

    gc.collect()
    if not ctx.cuda:
        return {}
    torch.cuda.synchronize(ctx.device)
    return {"allocated_mib": torch.cuda.memory_allocated(ctx.device) / 2**20,
            "reserved_mib": torch.cuda.memory_reserved(ctx.device) / 2**20}


def _clear_cublas_workspaces() -> bool:
    """Free cuBLAS's per-handle workspaces (torch keeps them allocated on purpose)."""
    import torch

    clear = getattr(torch._C, "_cuda_clearCublasWorkspaces", None)
    if clear is None:
        return False
    clear()
    return True


def row_memory(ctx: Context) -> tuple[str, dict[str, Any]]:
    import napari_unet
    from napari_unet import Trainer, TrainingConfig, preset
    from napari_unet.devices import release_memory
    from napari_unet.synthetic import partial_annotation, synthetic_em_stack

    shape = (3, 96, 96) if ctx.toy else (4, 512, 512)
    data = synthetic_em_stack(shape, seed=1)
    labels = partial_annotation(data.instances, [0, 2])
    cfg = TrainingConfig(iterations=3 if ctx.toy else 30, patch_size=32 if ctx.toy else 128,
                         batch_size=2 if ctx.toy else 4, val_every=10**9, device=ctx.device.type)
    _free_gpu(ctx)
    before = _memory(ctx)
    trainer = Trainer(data.image, labels, cfg, model=preset("tiny" if ctx.toy else "default"))
    for _ in trainer:
        pass
    trained = trainer.result
    del trainer
    release_memory(ctx.device)
    after_train = _memory(ctx)
    pred = napari_unet.predict(trained, data.image, device=ctx.device.type)
    n_fg = int((pred.semantic > 0).sum())
    del pred
    release_memory(ctx.device)
    after_predict = _memory(ctx)
    cleared = _clear_cublas_workspaces() if ctx.cuda else False
    after_clear = _memory(ctx)
    details = {"job": f"train {cfg.iterations} iterations, then predict {shape}",
               "before": before, "after_training": after_train, "after_prediction": after_predict,
               "after_prediction_and_cublas_clear": after_clear if cleared else None,
               "model_on": str(next(trained.model.parameters()).device), "foreground_px": n_fg}
    if not ctx.cuda:
        return "CPU: no CUDA allocator to check; the training and prediction jobs ran", details
    fmt = "{allocated_mib:.1f}/{reserved_mib:.1f}".format
    summary = (f"allocated/reserved MiB: before {fmt(**before)}, after training {fmt(**after_train)}, "
               f"after prediction {fmt(**after_predict)}")
    if cleared:
        summary += f", after clearing cuBLAS workspaces {fmt(**after_clear)}"
    left = (after_clear if cleared else after_predict)["allocated_mib"] - before["allocated_mib"]
    if details["model_on"] != "cpu":
        raise RowFailed(f"the trained model stayed on {details['model_on']}; {summary}", details)
    if left > 1.0:
        raise RowFailed(f"{left:.1f} MiB still allocated after both jobs; {summary}", details)
    return summary, details


# --------------------------------------------------------------------- row e
def row_finetune(ctx: Context) -> tuple[str, dict[str, Any]]:
    import eval_fewslice as fs
    import numpy as np

    import napari_unet
    from napari_unet.model.config import FINETUNE_LEARNING_RATE
    from napari_unet.model.pretrained import default_checkpoint
    from napari_unet.training.trainer import Trainer, TrainingConfig

    ckpt = default_checkpoint()
    if ckpt is None:
        raise RuntimeError("no shipped model in this copy (napari_unet/model/weights/em_membranes_default.pt)")
    have_data = (ctx.data / "isbi2012" / "labels.tif").is_file()
    if have_data and not ctx.toy:
        image, fg = fs.load_dataset("isbi", ctx.data)
        n_train, source = fs.N_TRAIN, "ISBI 2012"
    else:
        from napari_unet.synthetic import synthetic_em_stack

        stack = synthetic_em_stack((6, 64, 64) if ctx.toy else (30, 512, 512), seed=0)
        image, fg = stack.image, stack.foreground
        n_train = 4 if ctx.toy else fs.N_TRAIN
        source = "synthetic EM" + (" (toy size)" if ctx.toy and have_data else " (data folder missing)")
    zs = fs.choose_slices(2, n_train)
    dev = fs.scored_slices("dev", zs, n_train, image.shape[0])
    ev = fs.scored_slices("eval", zs, n_train, image.shape[0])
    labels = fs.painted_labels(fg, zs, n_train)
    extra: dict[str, Any] = dict(patch_size=32, batch_size=2, val_every=10**9) if ctx.toy else {}
    iterations = 3 if ctx.toy else ctx.args.finetune_iterations
    # the engine's fine-tuning rate, as eval_fewslice --init uses
    config = TrainingConfig(iterations=iterations, learning_rate=FINETUNE_LEARNING_RATE, seed=0, device=ctx.device.type, **extra)
    trainer = Trainer(image[:n_train], labels, config, init=napari_unet.load_checkpoint(ckpt))
    # leave time to predict and score 28 slices (about a minute on 16 cores)
    stop_at = time.monotonic() + max(10.0, ctx.remaining() - (15 if ctx.toy else 75))
    t0 = time.perf_counter()
    for event in trainer:
        if not event.done and time.monotonic() > stop_at:
            trainer.cancel()
    train_s = time.perf_counter() - t0
    trained = trainer.result
    done = int(trained.training["iterations_run"])
    t1 = time.perf_counter()
    pred = fs.predict_foreground(trained, image[dev + ev], False, "components")
    predict_s = time.perf_counter() - t1
    m_dev = fs.isbi_metrics_both(fg[dev], pred[:len(dev)])
    m_eval = fs.isbi_metrics_both(fg[ev], pred[len(dev):])
    _free_gpu(ctx)
    details = {
        "data": source, "painted_slices": zs, "dev_slices": dev, "eval_slices": ev,
        "iterations_asked": iterations, "iterations_run": done, "cut_short_by_budget": done < iterations,
        "train_s": round(train_s, 1), "predict_s": round(predict_s, 1),
        "dev": m_dev, "eval": m_eval,
        "note": "the shipped model was trained on ISBI slices 0-19: on ISBI the dev slices are its "
                "training data, so the dev ARE is optimistic; report the eval ARE",
    }
    summary = (f"{source}, k=2 (slices {zs}), {done} iterations{' (cut by budget)' if done < iterations else ''} "
               f"in {train_s:.0f} s: ARE (fill) dev {m_dev['fill_are']:.3f}"
               f"{' (slices the shipped model trained on)' if source == 'ISBI 2012' else ''}, "
               f"eval {m_eval['fill_are']:.3f} "
               f"(slices {ev[0]}-{ev[-1]}, report once)")
    assert np.isfinite(m_eval["fill_are"])
    return summary, details


# ------------------------------------------------------------------- driver
class RowFailed(RuntimeError):
    """A row ran but its check did not pass; ``details`` go to the JSON."""

    def __init__(self, message: str, details: dict[str, Any]) -> None:
        super().__init__(message)
        self.details = details


#: (key, title, function, seconds a full-size row needs at least: with less left it is skipped)
ROWS: list[tuple[str, str, Callable[[Context], tuple[str, dict[str, Any]]], float]] = [
    ("a", "CUDA tests (pytest -m cuda)", row_cuda_tests, 20.0),
    ("b", "prediction vs MONAI (same output)", row_monai, 60.0),
    ("c", "training speed, default network", row_training, 20.0),
    ("d", "GPU memory given back", row_memory, 20.0),
    ("e", "fine-tune shipped model, ISBI k=2", row_finetune, 90.0),
]


def run_rows(ctx: Context, only: list[str] | None = None) -> list[dict[str, Any]]:
    rows = []
    for key, title, fn, needs in ROWS:
        if only and key not in only:
            continue
        row: dict[str, Any] = {"row": key, "check": title}
        if ctx.remaining() <= (0.0 if ctx.toy else needs):
            row.update(status="skipped: budget", result="", seconds=0.0)
            rows.append(row)
            print(f"({key}) {title}: skipped: budget", flush=True)
            continue
        print(f"({key}) {title} ...", flush=True)
        t0 = time.perf_counter()
        try:
            summary, details = fn(ctx)
            row.update(status="ok", result=summary, details=details)
        except Exception as exc:  # one row's failure must not stop the others
            reason = scrub(" ".join(f"{type(exc).__name__}: {exc}".split()))[:400]
            row.update(status="FAILED", result=reason,
                       details=getattr(exc, "details", None) or {"traceback": scrub(traceback.format_exc())[-3000:]})
            try:
                _free_gpu(ctx)
            except Exception:  # noqa: BLE001 - best effort after a failure
                pass
        row["seconds"] = round(time.perf_counter() - t0, 1)
        print(f"({key}) {row['status']}: {row['result']} [{row['seconds']} s]", flush=True)
        rows.append(row)
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| row | check | status | result | s |", "|---|---|---|---|---|"]
    for r in rows:
        result = str(r["result"]).replace("|", "/")
        lines.append(f"| {r['row']} | {r['check']} | {r['status']} | {result} | {r['seconds']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=None,
                    help="JSON output (default benchmarks/results/gpu_check.json; "
                         "gpu_check_cpu.json for a CPU run)")
    ap.add_argument("--budget-s", type=float, default=420.0, help="time for all rows (default 420)")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="data folder (default ../shared/data)")
    ap.add_argument("--allow-cpu", action="store_true",
                    help="without CUDA, run every row on the CPU at toy sizes instead of exiting with 2")
    ap.add_argument("--quick", action="store_true", help="toy sizes (also on a GPU)")
    ap.add_argument("--rows", nargs="+", choices=[r[0] for r in ROWS], default=None,
                    help="run only these rows")
    ap.add_argument("--monai-preset", default="paper", help="network for row b (default paper)")
    ap.add_argument("--monai-slices", type=int, default=16, help="Lucchi slices for row b (default 16)")
    ap.add_argument("--finetune-iterations", type=int, default=600,
                    help="fine-tuning iterations for row e (default 600; cut short by the budget)")
    args = ap.parse_args(argv)

    t_start = time.perf_counter()
    import torch

    from napari_unet.devices import cpu_only_torch_warning

    if torch.cuda.is_available():
        device, toy = torch.device("cuda"), args.quick
        out = args.out or DEFAULT_OUT
    else:
        why = cpu_only_torch_warning() or "no CUDA GPU is visible to torch"
        if not args.allow_cpu:
            print(f"gpu_check: {why}; this check needs CUDA. Run it on a GPU machine, or pass "
                  "--allow-cpu for a toy-size run of every row on the CPU.", file=sys.stderr)
            return 2
        print(f"gpu_check: {why}; --allow-cpu: running every row on the CPU at toy sizes "
              "(no GPU figures).", flush=True)
        device, toy = torch.device("cpu"), True
        out = args.out or DEFAULT_OUT.with_name("gpu_check_cpu.json")
    ctx = Context(args, device, toy)
    header = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else
        f"CPU ({platform.machine()}, {os.cpu_count()} cores)",
        "torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
        "toy_sizes": toy, "budget_s": args.budget_s, "data": shown(args.data),
        "data_found": args.data.is_dir(),
    }
    print(json.dumps(header), flush=True)
    rows = run_rows(ctx, args.rows)
    md = table(rows)
    report = {**header, "wall_s": round(time.perf_counter() - t_start, 1), "rows": rows, "table": md}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print()
    print(f"GPU check on {header['device']}, torch {header['torch']} "
          f"({report['wall_s']:.0f} s; JSON: {shown(out)})\n")
    print(md)
    return 1 if any(r["status"] == "FAILED" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
