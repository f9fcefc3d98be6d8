"""``napari-unet segment``: segment many TIFF stacks with a trained model.

Turns the flags into batch options, runs the batch here or on a dask
cluster with a bar for the files and one for the slices of the current
file, cancels cleanly on the first Ctrl-C (no partial outputs are left, so
the same command resumes) and ends with the summary table.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import threading
from pathlib import Path
from typing import Any

from ._exit import EXIT_ABORTED, EXIT_FAILED, EXIT_OK, CLIError
from ._output import _err, _fmt_seconds, print_summary, progress_bar
from ._signals import _ctrl_c


def _options(args: argparse.Namespace) -> Any:
    from ..prediction.batch import BatchOptions

    return BatchOptions(
        instances=args.instances or args.instances_3d,  # 3D instances imply instances
        probabilities=args.probabilities,
        probability_dtype=args.probability_dtype,
        tile_size=args.tile,
        batch_size=args.batch_size,
        tta=args.tta,
        device=args.device,
        overwrite=args.overwrite,
        min_size=args.min_size,
        instance_method=args.instance_method,
        precision=args.precision,
        uncertainty=args.uncertainty,
        uncertainty_method=args.uncertainty_method,
        z_smoothing=args.z_smoothing,
    )


def cmd_segment(args: argparse.Namespace) -> int:
    from ..errors import Cancelled
    from ..io.zarr_volume import is_zarr
    from ..prediction.batch import batch_segment_steps, expand_inputs, resolve_model_path

    options = _options(args)
    volumes = [Path(i) for i in args.inputs if is_zarr(i)]
    others = [i for i in args.inputs if not is_zarr(i)]
    if args.instances_3d and others:
        raise CLIError("--instances-3d is for zarr volumes only; TIFF inputs get 2D instances "
                       f"(--instances): remove it or the TIFF inputs ({others[0]})")
    paths = expand_inputs(others) if others or not volumes else []
    resolve_model_path(args.model)  # a missing model is reported before anything starts
    outdir = Path(args.output)
    stop = threading.Event()

    def on_first() -> None:
        stop.set()
        _err("\nCancelling: the current file's partial outputs are removed (Ctrl-C again to abort).")

    files_bar = progress_bar(total=len(paths) + len(volumes), unit="file", desc="files", position=0)
    slice_bar = progress_bar(total=0, unit="slice", desc="", position=1, leave=False)
    results: list[Any] = []

    def finished(result: Any) -> None:
        results.append(result)
        files_bar.update(1)
        line = f"{result.status:8} {result.input.name}"
        if result.status == "done":
            line += f"  ({_fmt_seconds(result.seconds)})"
        elif result.reason:
            line += f"  ({result.reason})"
        files_bar.write(line, file=sys.stderr)

    try:
        with _ctrl_c(on_first), files_bar, slice_bar:
            if not paths:
                pass  # only zarr volumes: below
            elif args.scheduler:
                from ..prediction.cluster import batch_segment_distributed

                print(f"Segmenting {len(paths)} file(s) on the dask cluster at {args.scheduler}.")
                batch_segment_distributed(
                    args.model, paths, outdir, options, client=args.scheduler,
                    should_stop=stop.is_set, callback=lambda e: finished(e.result),
                )
            else:
                print(f"Segmenting {len(paths)} file(s) into {outdir}.")
                current = None
                steps = batch_segment_steps(args.model, paths, outdir, options, should_stop=stop.is_set)
                # closing: an abort between two events still deletes the temporary files
                with contextlib.closing(steps):
                    for event in steps:
                        if event.result is not None:
                            finished(event.result)
                            continue
                        if event.path != current:
                            current = event.path
                            slice_bar.reset(total=event.slices_total)
                            slice_bar.set_description(event.path.name[-30:], refresh=False)
                        slice_bar.update(event.slices_done - slice_bar.n)
            for volume in volumes:
                finished(_segment_volume(args, volume, outdir, options, stop.is_set))
    except Cancelled as exc:
        done = list(getattr(exc, "results", results))
        print_summary(done, outdir, len(paths))
        print("Cancelled; no partial outputs were left. Run the same command again to resume.")
        return EXIT_ABORTED
    print_summary(results, outdir, len(paths) + len(volumes))
    return EXIT_FAILED if any(r.status == "failed" for r in results) else EXIT_OK


def _segment_volume(args: argparse.Namespace, volume: Path, outdir: Path, options: Any,
                    should_stop: Any) -> Any:
    """One zarr volume in z-blocks (on the cluster with --scheduler); failures become results."""
    from ..prediction.batch import FileResult
    from ..prediction.volume import segment_volume

    where = f"the dask cluster at {args.scheduler}" if args.scheduler else "this process"
    print(f"Segmenting the volume {volume.name} in blocks of {args.block_z} slices on {where}.")
    try:
        return segment_volume(args.model, volume, outdir, settings=options, block_z=args.block_z,
                              block_xy=args.block_xy,
                              client=args.scheduler or None, level=args.level,
                              should_stop=should_stop, instances_3d=args.instances_3d)
    except (ValueError, OSError) as exc:
        return FileResult(volume, "failed", reason=str(exc).splitlines()[0][:300])
