"""What the commands print besides their results: durations, stderr lines, progress bars, the batch summary.

Kept apart so that every command formats times and reports progress the
same way, and so that tests can replace the progress bar in one place
(``napari_unet.cli._bar``; the commands reach it through :func:`progress_bar`).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Sequence


def _fmt_seconds(seconds: float) -> str:
    if seconds != seconds:  # NaN
        return "?"
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min {int(seconds % 60):02d} s"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d} min"


def _err(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _bar(**kwargs: Any) -> Any:
    """A tqdm bar on stderr, hidden when stderr is not a terminal (log files stay readable)."""
    from tqdm.auto import tqdm

    return tqdm(file=sys.stderr, dynamic_ncols=True, disable=None, **kwargs)


def progress_bar(**kwargs: Any) -> Any:
    """The bar the commands use: ``napari_unet.cli._bar``, looked up at call time.

    Looking it up on the package (not binding :func:`_bar` at import) means a
    replacement set on ``napari_unet.cli`` -- tests use one to press Ctrl-C at
    chosen moments -- is the bar every command gets.
    """
    from . import _bar as bar

    return bar(**kwargs)


def print_summary(results: Sequence[Any], outdir: Path, n_total: int | None = None) -> None:
    """The table at the end of a batch: what was done, skipped and why files failed."""
    from ..prediction.batch import summarize_results

    counts = summarize_results(results)
    print()
    header = ", ".join(f"{counts[k]} {k}" for k in ("done", "skipped", "failed"))
    if n_total is not None and n_total > len(results):
        header += f", {n_total - len(results)} not started"
    print(f"Summary: {header}  (outputs in {outdir})")
    if not results:
        return
    width = min(40, max(len(r.input.name) for r in results))
    print(f"  {'status':8} {'file':{width}} {'time':>10}  details")
    for r in results:
        name = r.input.name if len(r.input.name) <= width else "..." + r.input.name[-(width - 3):]
        seconds = _fmt_seconds(r.seconds) if r.status == "done" else "-"
        if r.status == "done":
            details = ", ".join(p.name for p in r.outputs if p.suffix != ".json")
        else:
            details = r.reason
        print(f"  {r.status:8} {name:{width}} {seconds:>10}  {details}")
