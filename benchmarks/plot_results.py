"""Draw the figures of BENCHMARKS.md from the JSON files the benchmarks wrote.

Reads ``benchmarks/results/*.json`` (whatever is there) and writes PNGs to
``docs/benchmarks/``::

    python benchmarks/plot_results.py
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def _load(path: Path) -> Any:
    return json.loads(path.read_text()) if path.is_file() else None


def _iou_curves(ax: Any, runs: dict[str, Any]) -> None:
    """One IoU-vs-iterations line per eval_fewslice run (its curve points and its end)."""
    for label, run in runs.items():
        if run is None:
            continue
        rows = sorted((r for r in run["results"] if r["method"] == "unet"), key=lambda r: r["iteration"])
        ax.plot([r["iteration"] for r in rows], [r["iou"] for r in rows], "o-", label=label)


def _final_unet_rows(results: Path, names: tuple[str, ...]) -> dict[int, dict[str, Any]]:
    """k -> the U-Net row at the end of each named run (not its curve points)."""
    rows: dict[int, dict[str, Any]] = {}
    for name in names:
        run = _load(results / name)
        for r in (run or {}).get("results", []):
            if r["method"] == "unet" and r["iteration"] == run["unet"]["iterations"]:
                rows[r["k"]] = r
    return rows


def _save(fig: Any, ax: Any, out: Path, legend_size: int = 8) -> Path:
    import matplotlib.pyplot as plt

    ax.legend(fontsize=legend_size)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def finetune_curve(results: Path, out: Path) -> Path | None:
    """Lucchi k=2: foreground IoU vs iterations, from scratch vs from the shipped model."""
    import matplotlib.pyplot as plt

    runs = {"from scratch": _load(results / "lucchi_k2_scratch.json"),
            "from the pretrained model": _load(results / "lucchi_k2_pretrained.json")}
    if not any(runs.values()):
        return None
    fig, ax = plt.subplots(figsize=(5, 3.4))
    _iou_curves(ax, runs)
    rf = _load(results / "lucchi_rf.json")
    if rf:
        for r in rf["results"]:
            if r["k"] == 2:
                ax.axhline(r["iou"], color="grey", ls="--", label="random forest (ilastik-style)")
    ax.set_xlabel("training iterations (batch 4)")
    ax.set_ylabel("foreground IoU, slices 20-39")
    ax.set_title("Lucchi mitochondria, 2 painted slices", fontsize=10)
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    return _save(fig, ax, out)


def lucchi_k5_curve(results: Path, out: Path) -> Path | None:
    """Lucchi k=5: IoU vs iterations, fine-tuned from the shipped model at natural class proportions."""
    import matplotlib.pyplot as plt

    runs = {"1200 iterations (4 training slices)": _load(results / "lucchi_k5_pretrained_nobal.json"),
            "2400 iterations, TTA (5 slices)": _load(results / "lucchi_k5_pretrained_nobal_2400_tta.json")}
    if not any(runs.values()):
        return None
    fig, ax = plt.subplots(figsize=(5, 3.4))
    _iou_curves(ax, runs)
    old = _load(results / "lucchi_k5_pretrained.json")
    if old:
        r = old["results"][-1]
        ax.plot([r["iteration"]], [r["iou"]], "x", color="C3", ms=8, label="with class balancing (former default)")
    for name, style in (("lucchi_rf.json", "--"), ("lucchi_rf_natural.json", ":")):
        for r in (_load(results / name) or {}).get("results", []):
            if r["k"] == 5:
                kind = "class-balanced" if style == "--" else "natural proportions"
                ax.axhline(r["iou"], color="grey", ls=style, label=f"random forest, {kind}")
    ax.axhline(0.80, color="C2", lw=0.8, ls="-.", label="target")
    ax.set_xlabel("fine-tuning iterations (batch 4)")
    ax.set_ylabel("foreground IoU, slices 20-39")
    ax.set_title("Lucchi mitochondria, 5 painted slices", fontsize=10)
    ax.set_ylim(0.3, 0.9)
    ax.grid(alpha=0.3)
    return _save(fig, ax, out, legend_size=7)


def isbi_vs_k(results: Path, out: Path) -> Path | None:
    """ISBI: adapted Rand error vs number of painted slices, U-Net vs random forest."""
    import matplotlib.pyplot as plt

    # the run with the engine's current default (last weights) when there is one
    k2 = "isbi_k2_weighted_last.json" if (results / "isbi_k2_weighted_last.json").is_file() \
        else "isbi_k2_weighted.json"
    unet = {k: {"are": r["are"], "fill_are": r["fill_are"]}
            for k, r in _final_unet_rows(results, ("isbi_k1_k5_weighted_last.json", k2)).items()}
    pre = _load(ROOT / "src" / "napari_unet" / "model" / "weights" / "em_membranes_default.json")
    pre_rows = _load(results / "pretrained_isbi.json")
    if pre and pre_rows:
        comp = next(r for r in pre_rows if not r["tta"] and r["instances"] == "components")
        ws = next(r for r in pre_rows if not r["tta"] and r["instances"] == "fill")
        unet[20] = {"are": comp["are"], "fill_are": ws["are"]}
    rf = {r["k"]: r for r in (_load(results / "isbi_rf.json") or {}).get("results", [])}
    if not unet and not rf:
        return None
    fig, ax = plt.subplots(figsize=(5, 3.4))
    for rows, name, color in ((unet, "U-Net", "C0"), (rf, "random forest", "C1")):
        ks = sorted(rows)
        if not ks:
            continue
        ax.plot(ks, [rows[k]["are"] for k in ks], "o--", color=color, label=f"{name}, components")
        if all("fill_are" in rows[k] for k in ks):
            ax.plot(ks, [rows[k]["fill_are"] for k in ks], "s-", color=color, label=f"{name}, fill")
    # the engine's current dense default: no class balancing (w_c), border term kept
    nat = _final_unet_rows(results, ("isbi_k2_nobal_last.json", "isbi_k20_nobal_last.json"))
    if nat:
        ks = sorted(nat)
        ax.plot(ks, [nat[k]["fill_are"] for k in ks], "D", color="C2", label="U-Net, no class balancing, fill")
    ax.axhline(0.06, color="grey", lw=0.8, ls=":")
    ax.set_xscale("log")
    ax.set_xticks([1, 2, 5, 20], labels=["1", "2", "5", "20"])
    ax.set_xlabel("painted slices (of 0-19)")
    ax.set_ylabel("adapted Rand error, slices 20-29")
    ax.set_title("ISBI 2012 membranes (lower is better)", fontsize=10)
    ax.grid(alpha=0.3)
    return _save(fig, ax, out, legend_size=7)


def monai_speed(results: Path, out: Path) -> Path | None:
    """Speed-up over MONAI per repeat (each repeat runs the tools back to back) and its
    median: against MONAI set up for the same output, and against MONAI's defaults
    (a different output)."""
    import matplotlib.pyplot as plt

    r = _load(results / "monai_same_default_cpu.json")
    if not r:
        return None
    bars = [("same output\n(MONAI windows on the grid)", "monai_same", r["speedup_paired_median"]),
            ("MONAI defaults\n(different output)", "monai_defaults", r["defaults"]["speedup_paired_median"])]
    fig, ax = plt.subplots(figsize=(5, 3.2))
    for i, (_, name, med) in enumerate(bars):
        ratios = [m / o for o, m in zip(r["ours"]["times"], r[name]["times"])]
        ax.bar(i, med, 0.5, color="C0" if i == 0 else "C7", alpha=0.6)
        ax.plot([i] * len(ratios), ratios, "k.", label="one repeat" if i == 0 else None)
        ax.text(i, med + 0.05, f"x{med:.2f}", ha="center", fontsize=9)
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.axhline(1.2, color="C3", lw=0.8, ls="--", label="target on CPU (x1.2)")
    ax.set_xticks(range(len(bars)), labels=[b[0] for b in bars])
    ax.set_ylabel("napari-unet speed / MONAI speed")
    ax.set_title(f"Prediction speed-up over MONAI, {r['parameters_M']} M-parameter net, CPU", fontsize=10)
    return _save(fig, ax, out)


def time_to_accuracy(results: Path, out: Path) -> Path | None:
    """Accuracy against minutes of 2-core CPU training (eval_time_to_accuracy.py runs).

    One panel per dataset and split; one line per run label.
    """
    import matplotlib.pyplot as plt

    runs = [r for r in (_load(p) for p in sorted(results.glob("tta_*.json"))) if r]
    if not runs:
        return None
    panels = sorted({(r["dataset"], r["split"]) for r in runs})
    cols = 2
    rows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(10, 3.6 * rows), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax, (dataset, split) in zip(axes.flat, panels):
        key = "iou" if dataset == "lucchi" else "fill_are"
        for run in (r for r in runs if (r["dataset"], r["split"]) == (dataset, split)):
            rows = sorted(run["results"], key=lambda r: r["mark_s"])
            ax.plot([r["mark_s"] / 60 for r in rows], [r[key] for r in rows], "o-", label=run["label"])
        where = {"dev": "unpainted slices 0-19", "far": "slices 10-19 (painted among 0-9)",
                 "eval": "slices 20-39" if dataset == "lucchi" else "slices 20-29"}[split]
        ax.set_xlabel("minutes of training (2-core CPU)")
        ax.set_ylabel(("foreground IoU" if key == "iou" else "adapted Rand error (fill), lower is better")
                      + f"\n{where}", fontsize=8)
        k = runs[0]["k"] if dataset == runs[0]["dataset"] else next(
            r["k"] for r in runs if r["dataset"] == dataset)
        name = "Lucchi, from the shipped model" if dataset == "lucchi" else "ISBI 2012, from scratch"
        kind = {"dev": "development", "far": "far development", "eval": "evaluation"}[split]
        ax.set_title(f"{name}, {k} painted slices ({kind})", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> list[Path]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks")
    args = ap.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    args.out.mkdir(parents=True, exist_ok=True)
    written = [p for p in (
        finetune_curve(args.results, args.out / "lucchi_finetune_curve.png"),
        lucchi_k5_curve(args.results, args.out / "lucchi_k5_curve.png"),
        isbi_vs_k(args.results, args.out / "isbi_are_vs_slices.png"),
        monai_speed(args.results, args.out / "monai_speed_cpu.png"),
        time_to_accuracy(args.results, args.out / "time_to_accuracy.png"),
    ) if p is not None]
    for p in written:
        print(f"wrote {p}")
    return written


if __name__ == "__main__":
    main()
