"""The argument parser of ``napari-unet``: every command's flags, help texts and examples.

All of the command line's surface is here, in one place, so that ``--help``
reads the same as the docs and needs no heavy import: the commands are only
referred to, and each imports what it needs when it runs.
"""

from __future__ import annotations

import argparse
from typing import Any

from ._exit import PROG
from .demo import cmd_demo
from .export import cmd_export
from .info import cmd_info
from .segment import cmd_segment
from .train import BALANCE_OPTIONS, cmd_train

_MAIN_EPILOG = """\
examples:
  napari-unet demo                                  # the whole method on synthetic data, in minutes
  napari-unet train stack.tif painted.tif -o model.pt --iterations 500
  napari-unet segment -m model.pt data/ -o results/ --instances
  napari-unet segment -m model.pt 'runs/*/stack*.tif' -o results/ --scheduler tcp://head:8786
  napari-unet export model.pt -o model.zip          # a bioimage.io package for Fiji/deepImageJ
  napari-unet info

Run 'napari-unet COMMAND --help' for the options of a command.
"""

_TRAIN_EPILOG = """\
Labels: slices with no painted pixel are ignored. --mode dense (default,
napari's label painting): in a painted slice 0 is background and every
other id is one object. --mode scribbles (ilastik's convention): 0 =
unlabelled, 1 = background, 2.. = classes; sparse strokes are enough.

Ctrl-C stops training cleanly: the model so far is saved to -o and the
exit code is 0. A second Ctrl-C aborts without saving (exit code 130).
-o is checked before training starts; if saving still fails at the end
(disk full, permissions changed), the model is saved to
napari-unet-rescued-<date>-<time>.pt in the current folder (else the temp
folder), the message says where, and the exit code is 1.

examples:
  napari-unet train stack.tif painted.tif -o model.pt
  napari-unet train stack.tif painted.tif -o model.pt --from lab_model.pt --iterations 200
  napari-unet train stack.tif painted.tif -o model.pt --preset small --device cuda
  napari-unet train stack.tif painted.tif -o model2.pt --from model.pt --resume --iterations 1000
"""

_SEGMENT_EPILOG = """\
Outputs per input <stem>.tif in OUTDIR (same Z/Y/X shape, compressed,
resolution copied): <stem>_labels.tif (uint8 class ids), with --instances
<stem>_instances.tif (uint16, or uint32 when the ids need it; objects are
labelled per z-slice with ids unique across the stack), with --probabilities
<stem>_probabilities.tif, with --uncertainty <stem>_uncertainty.tif (per-pixel
uncertainty in [0, 1]), and <stem>_provenance.json (model checksum,
settings, versions, timings). Files are written to hidden temporary files and
renamed when complete; existing outputs are skipped unless --overwrite, so
re-running an interrupted command resumes it. Exit code 0 when every input
was done or skipped, 1 when any failed (see the summary table).

examples:
  napari-unet segment -m model.pt stack.tif -o results/
  napari-unet segment -m model.pt data/ more/*.tiff -o results/ --instances --probabilities
  napari-unet segment -m model.pt data/ -o results/ --scheduler tcp://10.0.0.1:8786
  napari-unet segment -m model.pt volume.ome.zarr -o results/ --scheduler tcp://10.0.0.1:8786

A zarr input (OME-Zarr or a plain zarr array) gives OME-Zarr outputs with its
scale, <stem>_labels.zarr etc.: split into blocks of --block-z slices, one task
each; an interrupted run resumes with the blocks it had not finished. With
--instances-3d the objects of neighbouring slices that overlap are linked into
3D objects (ids unique across the volume, the same for any --block-z).
"""

_EXPORT_EPILOG = """\
The package (a .zip) holds TorchScript weights (what deepImageJ in Fiji
runs), PyTorch state-dict weights, the normalisation as bioimage.io
preprocessing, test input/output tensors, a cover image, the model card and
napari-unet's own metadata, so that 'napari-unet segment -m MODEL.zip' and
the Segment panel read it back and predict exactly as MODEL did. Needs
pip install "napari-unet[bioimageio]". The package is written to a hidden
temporary file, validated with bioimageio.spec and only then renamed.

examples:
  napari-unet export default -o em_membranes.zip
  napari-unet export model.pt -o model.zip --author "Ada Lovelace" --test
  napari-unet export model.pt -o model.zip --sample stack.tif --license MIT
"""

_DEMO_EPILOG = """\
Writes demo_image.tif, demo_annotations.tif, demo_ground_truth.tif,
demo_model.pt, demo_image_labels.tif, demo_image_instances.tif and
demo_figure.png (image / prediction / ground truth) into --outdir, and prints
the accuracy on the slices that were not painted.
"""


def _z_smoothing(text: str) -> float | str:
    """``--z-smoothing``: "auto" or a sigma in slices, checked as the engine checks it."""
    from ..prediction.z_context import check_z_smoothing

    try:
        value: Any = text if text.strip().lower() == "auto" else float(text)
    except ValueError:
        value = text  # check_z_smoothing says what is expected
    try:
        return check_z_smoothing(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                        help="show debug messages and full tracebacks")
    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Segment electron-microscopy stacks with a U-Net trained on a few painted slices.",
        epilog=_MAIN_EPILOG,
        formatter_class=fmt,
        parents=[common],
    )
    from .. import __version__

    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    devices = ("auto", "cuda", "cpu", "mps")

    _add_train(sub, common, fmt, devices)
    _add_segment(sub, common, fmt, devices)
    _add_export(sub, common, fmt)
    _add_demo(sub, common, fmt, devices)
    _add_info(sub, common)
    return parser


def _add_train(sub: Any, common: argparse.ArgumentParser, fmt: Any, devices: tuple[str, ...]) -> None:
    """``napari-unet train``: what to learn from, the training recipe and the annotation conventions."""
    p = sub.add_parser(
        "train", parents=[common], formatter_class=fmt, epilog=_TRAIN_EPILOG,
        help="train or fine-tune a model on painted slices",
        description="Train a U-Net on the painted slices of a stack. Without --from or --preset it\n"
        "fine-tunes the built-in default model when one ships, else trains from scratch.",
    )
    p.add_argument("image", metavar="IMAGE", help="the stack (2D or 3D TIFF)")
    p.add_argument("labels", metavar="LABELS", help="painted labels, same shape as IMAGE (0 = unpainted)")
    p.add_argument("-o", "--output", required=True, metavar="MODEL",
                   help="where to save the trained model (e.g. model.pt)")
    p.add_argument("--from", dest="from_", metavar="CHECKPOINT",
                   help="fine-tune this checkpoint ('default' = the built-in model)")
    from ..model.config import PRESETS

    p.add_argument("--preset", choices=sorted(PRESETS),
                   help="network size for training from scratch (default: 'default')")
    p.add_argument("--iterations", type=int, metavar="N", help="training iterations (default 500)")
    p.add_argument("--minutes", type=float, metavar="M",
                   help="stop after M minutes of training (or at --iterations, whichever comes "
                        "first); the learning rate decays over the time, so a short budget still "
                        "ends well")
    p.add_argument("--input-slices", type=int, metavar="N",
                   help="2.5D: the network reads each slice with its neighbours, N slices in all "
                        "(odd; e.g. 3 for near-isotropic FIB-SEM); default: the starting model's (1)")
    p.add_argument("--lr", type=float, metavar="RATE",
                   help="learning rate (default 1e-3 from scratch, 3e-4 when fine-tuning)")
    p.add_argument("--batch-size", type=int, metavar="N", help="patches per iteration (default 4)")
    p.add_argument("--patch-size", type=int, metavar="PX", help="output patch edge in pixels (default 128)")
    p.add_argument("--mode", choices=("dense", "scribbles"), default=None,
                   help="how the labels were painted (default: dense; with --resume: the run's)")
    p.add_argument("--ignore-id", type=int, metavar="ID", help="a label id meaning 'do not learn here'")
    p.add_argument("--boundary-class", action="store_true",
                   help="learn membranes between touching objects as a class of their own")
    p.add_argument("--class-balance", choices=tuple(BALANCE_OPTIONS), default=None,
                   help="weight classes by inverse frequency (the paper's w_c); auto (the "
                   "default; with --resume: the run's): for scribbles only, since painted "
                   "slices already show the true proportions")
    p.add_argument("--device", choices=devices, default="auto", help="where to train (default: auto)")
    p.add_argument("--seed", type=int, metavar="N", help="random seed (default 0)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run saved in --from (optimizer state, iteration count)")
    p.add_argument("--overwrite", action="store_true", help="replace MODEL if it exists")
    p.set_defaults(func=cmd_train)


def _add_segment(sub: Any, common: argparse.ArgumentParser, fmt: Any, devices: tuple[str, ...]) -> None:
    """``napari-unet segment``: the inputs, the model, which outputs to write and how to predict."""
    p = sub.add_parser(
        "segment", parents=[common], formatter_class=fmt, epilog=_SEGMENT_EPILOG,
        help="segment TIFF stacks with a trained model",
        description="Segment files, folders (their .tif/.tiff) or globs of 2D/3D TIFF stacks.\n"
        "Stacks are read and written slice by slice: stacks larger than memory are fine.",
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="TIFF files, folders or globs; or OME-Zarr/zarr volumes (*.zarr directories)")
    p.add_argument("-m", "--model", required=True, metavar="MODEL",
                   help="checkpoint file ('default' = the built-in model)")
    p.add_argument("-o", "--output", required=True, metavar="OUTDIR", help="output folder")
    p.add_argument("--instances", action="store_true", help="also write object (instance) labels")
    from ..prediction.settings import INSTANCE_METHODS, PRECISION_CHOICES
    from ..prediction.uncertainty import UNCERTAINTY_METHODS

    p.add_argument("--instance-method", choices=INSTANCE_METHODS, default="components",
                   help="how objects are separated (default: components); 'fill' grows them over the "
                        "boundaries until they touch, for membrane-stained cells that tile the image")
    p.add_argument("--min-size", type=int, default=0, metavar="PX",
                   help="drop objects smaller than this many pixels (per slice)")
    p.add_argument("--probabilities", action="store_true", help="also write the foreground probability")
    p.add_argument("--probability-dtype", choices=("uint8", "float16"), default="uint8",
                   help="uint8 (0..255, default) or float16")
    p.add_argument("--uncertainty", action="store_true",
                   help="also write <stem>_uncertainty.tif, per-pixel uncertainty in [0, 1] "
                        "(same dtype as --probability-dtype)")
    p.add_argument("--uncertainty-method", choices=UNCERTAINTY_METHODS, default="entropy",
                   help="entropy of the softmax (default) or tta: disagreement of the 8 "
                        "flips/rotations (needs --tta)")
    p.add_argument("--tile", type=int, metavar="PX",
                   help="tile edge for prediction (default 512 on GPU, 256 on CPU)")
    p.add_argument("--batch-size", type=int, default=4, metavar="N", help="tiles per forward pass")
    p.add_argument("--tta", action="store_true", help="average over 8 flips/rotations (8x slower)")
    p.add_argument("--overwrite", action="store_true", help="redo files whose outputs exist")
    p.add_argument("--device", choices=devices, default="auto", help="where to predict (default: auto)")
    p.add_argument("--precision", choices=PRECISION_CHOICES, default="auto",
                   help="arithmetic (default: auto = mixed precision on GPUs, bf16 on CPUs "
                        "that compute it natively, else float32)")
    p.add_argument("--z-smoothing", type=_z_smoothing, default="auto", metavar="auto|SIGMA",
                   help="3D context: average each slice's probabilities with its neighbours' "
                        "(Gaussian sigma in slices; 0: every slice alone). auto (default): 2 "
                        "slices on stacks whose neighbouring slices look alike (FIB-SEM), else 0")
    p.add_argument("--scheduler", metavar="ADDRESS",
                   help="run one dask.distributed task per stack on this scheduler "
                   "(tcp://host:8786 or a scheduler JSON file); a zarr volume is split into "
                   "one task per --block-z slices")
    p.add_argument("--block-z", type=int, default=16, metavar="N",
                   help="zarr volumes: slices per task and z chunk of the OME-Zarr outputs (default 16)")
    p.add_argument("--block-xy", type=int, default=None, metavar="PX",
                   help="zarr volumes: also cut slices into xy blocks of PX pixels, for slices "
                        "too large for one task (same result; not with --instances)")
    p.add_argument("--instances-3d", action="store_true",
                   help="zarr volumes: link objects across slices into 3D objects where they "
                        "overlap by at least half of the smaller one (mitochondria, nuclei); "
                        "implies --instances; the same for any --block-z; not with --block-xy "
                        "or TIFF inputs")
    p.add_argument("--level", type=int, default=0, metavar="N",
                   help="zarr volumes: multiscale level to segment (default 0, full resolution)")
    p.set_defaults(func=cmd_segment)


def _add_export(sub: Any, common: argparse.ArgumentParser, fmt: Any) -> None:
    """``napari-unet export``: the model, the package file and what to write into it."""
    p = sub.add_parser(
        "export", parents=[common], formatter_class=fmt, epilog=_EXPORT_EPILOG,
        help="write a model as a bioimage.io package (Fiji/deepImageJ, bioimageio.core)",
        description="Export a checkpoint as a bioimage.io model package (spec 0.5).",
    )
    p.add_argument("model", metavar="MODEL", help="checkpoint file ('default' = the built-in model)")
    p.add_argument("-o", "--output", required=True, metavar="PACKAGE", help="the package to write (a .zip)")
    p.add_argument("--name", help="the model's name in the package (default: from the file name)")
    p.add_argument("--author", action="append", metavar="NAME",
                   help="an author (repeat for several; default: 'napari-unet user')")
    p.add_argument("--license", metavar="SPDX",
                   help="licence of the weights, an SPDX id (default: CC-BY-4.0; BSD-3-Clause for 'default')")
    p.add_argument("--sample", metavar="TIFF",
                   help="cut the test tensors from this image's middle slice (default: a synthetic EM tile)")
    p.add_argument("--test", action="store_true",
                   help="also run the package's weights on its test tensors with bioimageio.core")
    p.add_argument("--overwrite", action="store_true", help="replace PACKAGE if it exists")
    p.set_defaults(func=cmd_export)


def _add_demo(sub: Any, common: argparse.ArgumentParser, fmt: Any, devices: tuple[str, ...]) -> None:
    """``napari-unet demo``: where to write and how long to run."""
    p = sub.add_parser(
        "demo", parents=[common], formatter_class=fmt, epilog=_DEMO_EPILOG,
        help="train and segment a synthetic stack end to end, and report the accuracy",
        description="Generate a synthetic EM stack, paint two slices from its ground truth, train,\n"
        "segment the whole stack, write a figure and print the accuracy.\n"
        "A few minutes on a 2-core CPU, faster on a GPU.",
    )
    p.add_argument("--outdir", default="napari-unet-demo", metavar="DIR",
                   help="where to write the demo files (default: ./napari-unet-demo)")
    p.add_argument("--quick", action="store_true", help="a tiny version that runs in seconds (for tests)")
    p.add_argument("--device", choices=devices, default="auto", help="where to run (default: auto)")
    p.set_defaults(func=cmd_demo)


def _add_info(sub: Any, common: argparse.ArgumentParser) -> None:
    """``napari-unet info``: no options of its own."""
    p = sub.add_parser("info", parents=[common], help="versions, devices and GPU warnings",
                       description="Print versions and the devices torch can use; warn when an\n"
                       "NVIDIA GPU is present but torch cannot use it.")
    p.set_defaults(func=cmd_info)
