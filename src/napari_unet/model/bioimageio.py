"""Export a trained model as a bioimage.io model package (spec 0.5), for Fiji and other tools.

:func:`export_bioimageio` builds the package with the maintained libraries
(``bioimageio.spec``'s ``v0_5`` classes and ``save_bioimageio_package_to_stream``),
never hand-written YAML. What goes in:

- weights twice: ``pytorch_state_dict`` (the original; architecture
  :class:`~napari_unet.model.bioimageio_arch.UNetProbabilities`, imported from the
  napari-unet library with the model config as keyword arguments) and
  ``torchscript`` (that module traced on the CPU in float32; what deepImageJ runs);
- axes batch, channel, y, x; input sizes ``min + n * step`` from the network's
  :class:`~napari_unet.model.unet.Geometry`; output size = input size
  ``- 2 * margin`` (a ``SizeReference`` offset: the valid network crops its own
  halo), equal to the input for same-padding networks;
- the recorded normalisation as spec preprocessing (``scale_range`` with the
  percentiles per sample, or ``scale_linear`` for fixed low/high); the softmax is
  part of the network, so outputs are class probabilities;
- test input/output tensors from an EM-like tile, a cover (tile | foreground
  probability), the model card (generated when the model has none), licence,
  authors, the U-Net paper as citation, and the napari-unet checkpoint metadata
  under ``config: {napari_unet: ...}`` so that :func:`~napari_unet.load_checkpoint`
  reads the package back (see :mod:`napari_unet.model.bioimageio_read`).

``bioimageio.spec`` (and ``bioimageio.core`` for :func:`run_bioimageio_tests`) are
optional: ``pip install "napari-unet[bioimageio]"``.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import tifffile
import torch

from ..io._atomic import atomic_path
from ._bioimageio_files import (
    CONFIG_KEY,
    cover_png,
    documentation,
    make_test_tensors,
    napari_unet_config,
    resolve_model,
)
from .bioimageio_arch import UNetProbabilities

if TYPE_CHECKING:
    from .checkpoint import TrainedModel

INSTALL_HINT = 'pip install "napari-unet[bioimageio]"'
UNET_CITATION = (
    "O. Ronneberger, P. Fischer and T. Brox. U-Net: Convolutional Networks for Biomedical "
    "Image Segmentation. MICCAI 2015, LNCS 9351, pp. 234-241."
)
UNET_DOI = "10.1007/978-3-319-24574-4_28"
DEFAULT_AUTHOR = "napari-unet user"
INPUT_ID, OUTPUT_ID = "raw", "probabilities"
#: scale_range's epsilon (the spec's default): out = (x - p_low) / (p_high - p_low + eps)
SCALE_RANGE_EPS = 1e-6


def _spec() -> Any:
    """``bioimageio.spec.model.v0_5``, or an ImportError saying how to install it."""
    try:
        from bioimageio.spec.model import v0_5
    except ImportError as exc:
        raise ImportError(
            f"exporting bioimage.io packages needs bioimageio.spec: {INSTALL_HINT} ({exc})"
        ) from None
    return v0_5


def _probability_module(trained: TrainedModel) -> UNetProbabilities:
    """The network as the package describes it: float32, CPU, eval mode, softmax at the end."""
    module = UNetProbabilities(**trained.config.to_dict())
    module.load_state_dict({k: v.detach().cpu() for k, v in trained.model.state_dict().items()})
    return module.float().eval()


def _preprocessing(v: Any, trained: TrainedModel) -> list[Any]:
    """The recorded normalisation as spec operations (ensure_dtype steps are added by the spec)."""
    norm = trained.normalization
    if norm.method == "none":
        return []
    if norm.method == "fixed":
        scale = 1.0 / (float(norm.high) - float(norm.low))  # type: ignore[arg-type]
        return [v.ScaleLinearDescr(kwargs=v.ScaleLinearKwargs(gain=scale, offset=-float(norm.low) * scale))]
    if norm.p_high <= 1.0:  # the spec's max_percentile must exceed 1 (a guard against fractions)
        raise ValueError(
            f"the model's normalisation maps the {norm.p_high} percentile to 1, which bioimage.io's "
            "scale_range cannot express (its max_percentile must be > 1)"
        )
    axes = [v.AxisId("channel"), v.AxisId("y"), v.AxisId("x")]  # one low/high per sample, as per stack
    kwargs = v.ScaleRangeKwargs(axes=axes, min_percentile=norm.p_low, max_percentile=norm.p_high,
                                eps=SCALE_RANGE_EPS)
    return [v.ScaleRangeDescr(kwargs=kwargs)]


def _axes(v: Any, trained: TrainedModel, class_names: Sequence[str]) -> tuple[list[Any], list[Any]]:
    geometry = trained.model.geometry
    size = v.ParameterizedSize(min=geometry.min_input_size, step=geometry.divisor)
    in_names = ["raw"] if trained.config.in_channels == 1 else [
        f"raw{i}" for i in range(trained.config.in_channels)
    ]
    inputs = [
        v.BatchAxis(),
        v.ChannelAxis(channel_names=[v.Identifier(n) for n in in_names]),
        v.SpaceInputAxis(id=v.AxisId("y"), size=size),
        v.SpaceInputAxis(id=v.AxisId("x"), size=size),
    ]

    def ref(axis: str) -> Any:
        return v.SizeReference(tensor_id=v.TensorId(INPUT_ID), axis_id=v.AxisId(axis),
                               offset=-2 * geometry.margin)

    outputs = [
        v.BatchAxis(),
        v.ChannelAxis(channel_names=[v.Identifier(n) for n in class_names]),
        v.SpaceOutputAxis(id=v.AxisId("y"), size=ref("y")),
        v.SpaceOutputAxis(id=v.AxisId("x"), size=ref("x")),
    ]
    return inputs, outputs


def _identifiers(names: Sequence[str]) -> list[str]:
    """Class names as spec identifiers (letters, digits, ``_``; unique)."""
    out: list[str] = []
    for i, name in enumerate(names):
        ident = "".join(c if c.isascii() and (c.isalnum() or c == "_") else "_" for c in name).strip("_")
        ident = ident or f"class{i}"
        if not ident[0].isalpha():
            ident = f"c_{ident}"
        while ident in out:
            ident += f"_{i}"
        out.append(ident)
    return out


def _write_weights(module: UNetProbabilities, example: torch.Tensor, folder: Path) -> tuple[Path, Path]:
    state = folder / "weights_state_dict.pt"
    torch.save({k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}, state)
    script = folder / "weights_torchscript.pt"
    # the crops depend on sizes only through Python ints the tracer records as it goes
    # (checked: the trace reproduces the eager network at other legal sizes)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript is what deepImageJ runs
        traced = torch.jit.trace(module, example, check_trace=False)
    traced.save(str(script))
    return state, script


def build_description(
    trained: TrainedModel,
    folder: Path,
    *,
    name: str,
    authors: Sequence[str],
    description: str | None,
    license: str,
    card: str | None,
    sample: np.ndarray | None,
) -> Any:
    """Write the package's files into ``folder`` and return its validated ``ModelDescr``."""
    v = _spec()
    module = _probability_module(trained)
    tile, expected = make_test_tensors(trained, module, sample)
    in_path, out_path = folder / "test_input.npy", folder / "test_output.npy"
    np.save(in_path, tile)
    np.save(out_path, expected)
    sample_in, sample_out = folder / "sample_input.tif", folder / "sample_output.tif"
    tifffile.imwrite(sample_in, tile)  # the same tensors as TIFF, for viewers (FAIR)
    tifffile.imwrite(sample_out, expected)
    (folder / "cover.png").write_bytes(cover_png(tile, expected))
    (folder / "README.md").write_text(documentation(trained, name, card, tile, expected), encoding="utf-8")
    state_path, script_path = _write_weights(module, torch.from_numpy(tile), folder)

    class_names = _identifiers(trained.class_names)
    in_axes, out_axes = _axes(v, trained, class_names)
    torch_version = v.Version(torch.__version__.split("+")[0])
    people = [v.Author(name=a) for a in authors]
    state_weights = v.PytorchStateDictWeightsDescr(
        source=state_path,
        architecture=v.ArchitectureFromLibraryDescr(
            import_from="napari_unet.model.bioimageio_arch",
            callable=v.Identifier("UNetProbabilities"),
            kwargs=trained.config.to_dict(),
        ),
        pytorch_version=torch_version,
        authors=people,
        comment="napari-unet's UNet with a softmax over channels; needs `pip install napari-unet`",
    )
    script_weights = v.TorchscriptWeightsDescr(
        source=script_path, pytorch_version=torch_version, parent="pytorch_state_dict",
        comment="the pytorch_state_dict network traced with torch.jit.trace (CPU, float32)",
    )
    n_in = trained.config.in_channels
    geometry = trained.model.geometry
    return v.ModelDescr(
        name=name,
        description=description or _summary(trained),
        authors=people,
        cite=[v.CiteEntry(text=UNET_CITATION, doi=v.Doi(UNET_DOI))],
        license=v.LicenseId(license),
        documentation=v.FileDescr(source=folder / "README.md"),
        covers=[v.FileDescr(source=folder / "cover.png")],
        tags=["napari-unet", "u-net", "unet", "2d", "pytorch", "torchscript", "semantic-segmentation",
              "electron-microscopy"],
        inputs=[v.InputTensorDescr(
            id=v.TensorId(INPUT_ID),
            description=f"{n_in}-channel 2D image, legal sizes {geometry.min_input_size} + "
                        f"n * {geometry.divisor} px",
            axes=in_axes,
            test_tensor=v.FileDescr(source=in_path),
            sample_tensor=v.FileDescr(source=sample_in),
            preprocessing=_preprocessing(v, trained),
        )],
        outputs=[v.OutputTensorDescr(
            id=v.TensorId(OUTPUT_ID),
            description="class probabilities (softmax over channels)"
                        + (f"; {geometry.margin} px of context lost per side" if geometry.margin else ""),
            axes=out_axes,
            test_tensor=v.FileDescr(source=out_path),
            sample_tensor=v.FileDescr(source=sample_out),
            data=v.IntervalOrRatioDataDescr(type="float32", range=(0.0, 1.0)),
        )],
        weights=v.WeightsDescr(pytorch_state_dict=state_weights, torchscript=script_weights),
        config=v.Config(**{CONFIG_KEY: napari_unet_config(trained)}),
    )


def _summary(trained: TrainedModel) -> str:
    cfg = trained.config
    classes = ", ".join(trained.class_names)
    return (
        f"2D U-Net ({cfg.padding} convolutions, depth {cfg.depth}, {cfg.base_channels} base channels) "
        f"trained with napari-unet on EM slices; outputs per-pixel probabilities of: {classes}."
    )[:1000]


def export_bioimageio(
    model: TrainedModel | str | os.PathLike,
    path: str | os.PathLike,
    *,
    name: str | None = None,
    authors: Sequence[str] | None = None,
    description: str | None = None,
    license: str | None = None,
    sample: np.ndarray | None = None,
    validate: bool = True,
) -> Path:
    """Write ``model`` as a bioimage.io model package (a ``.zip``) to ``path``, atomically.

    ``model`` is a :class:`~napari_unet.TrainedModel`, a checkpoint path or
    ``"default"`` (the shipped model). ``name`` defaults to the checkpoint's file
    name; ``authors`` to ``["napari-unet user"]``; ``license`` (an SPDX id) to
    BSD-3-Clause for the shipped model (its card's licence) and CC-BY-4.0
    otherwise. ``sample`` is a 2D image the test tensors are cut from (a slice
    of your data; default: a synthetic EM tile). With ``validate`` (default) the
    written package is read back with ``bioimageio.spec.load_description``
    before it gets its final name; :func:`run_bioimageio_tests` also runs its weights.
    Returns ``path``.
    """
    _spec()
    from pydantic import ValidationError  # installed with bioimageio.spec

    trained, source_name, card, shipped = resolve_model(model)
    if trained.config.input_slices != 1:
        raise ValueError(
            f"this model reads {trained.config.input_slices} neighbouring slices per slice (2.5D); "
            "bioimage.io export covers 2D models only so far"
        )
    path = Path(path)
    if path.suffix.lower() != ".zip":
        raise ValueError(f"a bioimage.io package is a .zip file, not {path.name!r}")
    from bioimageio.spec import save_bioimageio_package_to_stream

    if not name:  # the spec allows letters, digits, space and _+-() in names
        stem = "".join(c if c.isascii() and (c.isalnum() or c in " _+-()") else "_" for c in source_name or "")
        name = f"napari-unet {stem}"[:128] if stem else "napari-unet model"
    license = license or ("BSD-3-Clause" if shipped else "CC-BY-4.0")
    people = [str(a).strip() for a in (authors or [DEFAULT_AUTHOR])]
    if not all(people):
        raise ValueError("an author's name is empty")
    _check_license(license)
    with tempfile.TemporaryDirectory(prefix="napari-unet-bioimageio-") as tmp:
        try:
            descr = build_description(
                trained, Path(tmp), name=name, authors=people,
                description=description, license=license, card=card, sample=sample,
            )
        except ValidationError as exc:  # pydantic's many-line report: the first problem, briefly
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first.get("loc", ())) or "the description"
            raise ValueError(f"cannot describe the model for bioimage.io: {where}: {first.get('msg', exc)}"[:300]) from None
        with atomic_path(path) as out:
            with open(out, "wb") as stream:
                save_bioimageio_package_to_stream(descr, output_stream=stream)
            if validate:
                check_package(out)
    return path


def _check_license(license: str) -> None:
    from bioimageio.spec.model.v0_5 import LicenseId
    from pydantic import ValidationError

    try:
        LicenseId(license)
    except ValidationError:
        raise ValueError(
            f"unknown licence {license!r}: give an SPDX identifier such as CC-BY-4.0, MIT or BSD-3-Clause"
        ) from None


def check_package(path: str | os.PathLike) -> Any:
    """Load ``path`` with ``bioimageio.spec.load_description``; ValueError unless it is a valid model."""
    from bioimageio.spec import load_description
    from bioimageio.spec.model.v0_5 import ModelDescr

    descr = load_description(Path(path), perform_io_checks=True)
    if not isinstance(descr, ModelDescr):
        summary = descr.validation_summary.format() if hasattr(descr, "validation_summary") else descr
        raise ValueError(f"the bioimage.io package is not a valid model description:\n{summary}")
    return descr


def run_bioimageio_tests(path: str | os.PathLike, *, weight_format: str | None = None) -> Any:
    """Run ``bioimageio.core.test_model`` on a package (CPU); returns its ValidationSummary.

    ``summary.status`` is ``"passed"`` (or ``"valid-format"`` with failed runs
    listed in ``summary.details``); nothing here needs the network.
    """
    try:
        from bioimageio.core import test_model
    except ImportError as exc:
        raise ImportError(f"testing bioimage.io packages needs bioimageio.core: {INSTALL_HINT} ({exc})") from None
    return test_model(Path(path), weight_format=weight_format, devices=["cpu"])


__all__ = ["export_bioimageio", "check_package", "run_bioimageio_tests", "build_description"]
