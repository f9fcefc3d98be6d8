"""``napari-unet export``: write a model as a bioimage.io package for Fiji (deepImageJ) and other tools.

Checks the destination first, exports (the package is written to a hidden
temporary file and renamed once it is complete and valid, so a failure leaves
nothing behind), and with ``--test`` runs the package's weights on its test
tensors with bioimageio.core.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ._exit import EXIT_FAILED, EXIT_OK, CLIError


def _sample(path: str | None) -> object:
    """The middle slice of a TIFF, to cut the package's test tile from; None without --sample."""
    if path is None:
        return None
    from ..io.tiff import read_tiff

    try:
        data = read_tiff(path, lazy=False).data
    except (ValueError, OSError) as exc:
        raise CLIError(f"cannot read the sample image {path}: {exc}") from None
    return data[data.shape[0] // 2] if data.ndim == 3 else data


def cmd_export(args: argparse.Namespace) -> int:
    from ..io._atomic import remove_stale_temps
    from ..io._saving import DestinationError, DestinationExists, check_destination

    out = Path(args.output)
    if out.suffix.lower() != ".zip":
        raise CLIError(f"-o must name a .zip file (a bioimage.io package), e.g. {out.with_suffix('.zip').name}")
    try:
        check_destination(out, overwrite=args.overwrite)
    except DestinationExists:
        raise CLIError(f"{out} exists; pass --overwrite to replace it") from None
    except DestinationError as exc:
        raise CLIError(str(exc)) from None
    if os.fspath(args.model) != "default" and not Path(args.model).expanduser().is_file():
        raise CLIError(f"model file not found: {args.model}")
    sample = _sample(args.sample)
    try:
        from ..model.bioimageio import export_bioimageio, run_bioimageio_tests
    except ImportError as exc:  # pragma: no cover - the module itself imports nothing optional
        raise CLIError(str(exc)) from None
    remove_stale_temps(out)  # leftovers of an export that was killed
    print(f"Exporting {args.model} as a bioimage.io package ...")
    try:
        export_bioimageio(args.model, out, name=args.name, authors=args.author, license=args.license,
                          sample=sample)
    except ImportError as exc:
        raise CLIError(str(exc)) from None
    size = out.stat().st_size / 2**20
    print(f"Wrote {out} ({size:.1f} MB): a valid bioimage.io model (TorchScript and PyTorch weights).")
    if not args.test:
        return EXIT_OK
    print("Testing the package with bioimageio.core (CPU) ...")
    try:
        summary = run_bioimageio_tests(out)
    except ImportError as exc:
        raise CLIError(str(exc)) from None
    failed = [d for d in summary.details if d.status == "failed"]
    for detail in failed:
        errors = "; ".join(str(e.msg) for e in getattr(detail, "errors", []))[:300]
        print(f"  failed: {detail.name}{': ' + errors if errors else ''}")
    print(f"bioimageio.core test: {summary.status}")
    return EXIT_OK if summary.status == "passed" else EXIT_FAILED
