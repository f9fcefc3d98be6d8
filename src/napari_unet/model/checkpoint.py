"""Self-describing checkpoints that are safe to load from strangers.

A checkpoint is a plain dict of tensors and plain Python values saved with
``torch.save`` and read back with ``torch.load(weights_only=True)``, which
refuses any pickle that would import or call code. Beside the weights it
stores everything needed to use the model again: the architecture config, the
intensity normalisation, the annotation convention and class names, the
training settings, the package version and a format version.

Files come from strangers, so :func:`load_checkpoint` trusts nothing in them:
the container is checked in pure Python before torch parses it, and every
value, key, tensor shape and dtype is checked against what the stored config
implies before a network is built. Anything wrong is one
:class:`~napari_unet.errors.CheckpointError` naming the file and the problem.
"""

from __future__ import annotations

import copy
import math
import os
import pickle
import warnings
import zipfile
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import torch

from ..errors import CheckpointError
from ..io._atomic import atomic_path
from ..training.annotations import AnnotationSettings
from .config import UNetConfig
from .normalization import Normalization
from .unet import UNet

if TYPE_CHECKING:
    import numpy as np

    from ..training.trainer import TrainingConfig

FORMAT = "napari-unet-checkpoint"
FORMAT_VERSION = 1

#: Largest network a checkpoint may describe. The presets reach 31 M parameters (the
#: paper's U-Net); a file claiming far more is damaged or hostile, and building it
#: would exhaust memory before its weights could even be compared.
MAX_PARAMETERS = 200_000_000
#: Largest pickle (the metadata, not the weights) a checkpoint may hold; ours are kB.
_MAX_PICKLE_BYTES = 64 * 2**20
#: Largest total uncompressed size of a checkpoint archive: float32 weights and the two
#: Adam moments of a MAX_PARAMETERS network, with room to spare.
_MAX_ARCHIVE_BYTES = 4 * 4 * MAX_PARAMETERS
_ZIP_MAGIC = b"PK\x03\x04"
_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_INT_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


def _package_version() -> str:
    from .. import __version__

    return __version__


@dataclass
class TrainedModel:
    """A network plus what it needs to be applied correctly to new stacks."""

    model: UNet
    normalization: Normalization = field(default_factory=Normalization)
    annotation: AnnotationSettings = field(default_factory=AnnotationSettings)
    class_names: list[str] = field(default_factory=lambda: ["background", "foreground"])
    training: dict[str, Any] = field(default_factory=dict)
    optimizer_state: dict[str, Any] | None = None

    @property
    def config(self) -> UNetConfig:
        return self.model.config

    @property
    def n_classes(self) -> int:
        return self.model.config.n_classes

    def predict(self, image: np.ndarray, **kwargs: Any) -> Any:
        """Shortcut for :func:`napari_unet.predict` with this model (a ``Prediction``).

        Goes through the package's public API: the checkpoint module stays below
        prediction (inference imports checkpoint, never the other way round).
        """
        import napari_unet

        return napari_unet.predict(self, image, **kwargs)

    def save(self, path: str | os.PathLike, *, half: bool = False, include_optimizer: bool = True) -> Path:
        return save_checkpoint(self, path, half=half, include_optimizer=include_optimizer)

    @classmethod
    def load(cls, path: str | os.PathLike) -> TrainedModel:
        return load_checkpoint(path)

    def copy(self) -> TrainedModel:
        """An independent copy (weights included), e.g. to keep while training goes on."""
        return copy.deepcopy(self)

    def training_config(self) -> TrainingConfig | None:
        """The recipe this model was trained with, typed; None when the checkpoint has none.

        Checkpoints store it as ``training["settings"]`` (TrainingConfig minus its
        hardware fields). Older ones left annotation and normalization out of it: they
        come from this model's own fields then. Keys this version does not know are
        ignored with a warning (a newer napari-unet may add some); values that cannot
        be a TrainingConfig raise :class:`CheckpointError`.
        """
        from ..training.trainer import HARDWARE_FIELDS, TrainingConfig

        settings = self.training.get("settings") if isinstance(self.training, dict) else None
        if settings is None:
            return None
        if not isinstance(settings, dict):
            raise CheckpointError(
                f"the checkpoint's training settings are a {type(settings).__name__}, not a dict"
            )
        known = {f.name for f in fields(TrainingConfig)}
        unknown = sorted(str(k) for k in settings if k not in known)
        if unknown:
            warnings.warn(
                f"ignoring training settings this napari-unet does not know: {unknown}", stacklevel=2
            )
        data = {k: v for k, v in settings.items() if k in known and k not in HARDWARE_FIELDS}
        data.setdefault("annotation", asdict(self.annotation))
        if "normalization" not in data:
            # the stored one carries the training stack's statistics; a recipe only
            # keeps them when they are fixed (percentiles are measured on each stack)
            norm = self.normalization
            if norm.method != "fixed":
                norm = replace(norm, low=None, high=None)
            data["normalization"] = norm.to_dict()
        try:
            return TrainingConfig.from_dict(data)
        except Exception as exc:  # whatever the values are, the caller gets one clear error
            raise CheckpointError(f"the checkpoint's training settings are invalid: {_reason(exc)}") from None


def _plain(value: Any) -> Any:
    """Recursively turn tuples into lists and reject anything not plain (safe to load)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str, torch.Tensor)):
        return value
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:  # numpy scalars
        return value.item()
    raise TypeError(f"cannot store {type(value).__name__} in a checkpoint")


def save_checkpoint(
    trained: TrainedModel,
    path: str | os.PathLike,
    *,
    half: bool = False,
    include_optimizer: bool = True,
) -> Path:
    """Write ``trained`` to ``path`` atomically (temporary file, then rename).

    ``half=True`` stores float weights as float16 (half the size, for shipping);
    they are loaded back as float32.
    """
    path = Path(path)
    state = {
        k: (v.detach().to("cpu", torch.float16) if half and v.is_floating_point() else v.detach().cpu())
        for k, v in trained.model.state_dict().items()
    }
    payload: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "package_version": _package_version(),
        "model_config": trained.config.to_dict(),
        "state_dict": state,
        "normalization": trained.normalization.to_dict(),
        "annotation": _plain(trained.annotation.__dict__),
        "class_names": list(trained.class_names),
        "training": _plain(trained.training),
    }
    if include_optimizer and trained.optimizer_state is not None:
        payload["optimizer"] = _plain(trained.optimizer_state)
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


def _reason(exc: BaseException) -> str:
    """The useful first line of an exception raised by torch, zipfile or a config, or its type."""
    text = str(exc).strip()
    line = text.splitlines()[0] if text else ""
    for noise in (" This is an internal miniz error", " (Could this error message be improved?",
                  " In PyTorch 2.6, we changed"):
        line = line.split(noise)[0]
    line = line.strip()[:200]
    if not line or isinstance(exc, (KeyError, IndexError)):  # "101" alone tells nobody anything
        return f"{type(exc).__name__}: {line}" if line else type(exc).__name__
    return line


def _show(value: Any) -> str:
    """A value from a file, shown in one short line (a tensor's repr spans many)."""
    if isinstance(value, torch.Tensor):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    text = " ".join(repr(value).split())
    return text if len(text) <= 60 else text[:57] + "..."


def _check_archive(path: Path) -> None:
    """Refuse, before torch parses it, every file that is not a sound torch zip archive.

    ``torch.load`` hands zip archives to C++ and anything else to a pickle reader
    that fails on text files with arbitrary exceptions; napari-unet checkpoints are
    always zip archives (``torch.save``'s format since torch 1.6). So only a zip
    archive gets through, and only after Python's zipfile has checked its layout
    (one folder holding ``data.pkl``), its sizes and the checksums of every member.
    """
    name = path.name
    try:
        with open(path, "rb") as fh:
            head = fh.read(4)
    except OSError as exc:
        raise CheckpointError(f"cannot read {name}: {exc.strerror or _reason(exc)}") from None
    check_torch_zip(name, head, path)


def check_torch_zip(name: str, head: bytes, source: Path | IO[bytes]) -> None:
    """:func:`_check_archive` for a file or an in-memory file whose first 4 bytes are ``head``."""
    if not head:
        raise CheckpointError(f"{name} is not a readable checkpoint: the file is empty")
    if head != _ZIP_MAGIC:
        if head[:1] == b"\x80":
            what = ("a raw Python pickle (torch's legacy format or pickle.dump), which napari-unet "
                    "does not read")
        else:
            what = "not a zip archive as torch.save writes (a text or other file renamed .pt?)"
        raise CheckpointError(f"{name} is not a readable checkpoint: it is {what}")
    try:
        with zipfile.ZipFile(source) as zf:
            infos = zf.infolist()
            _check_members(name, infos)
            damaged = zf.testzip()  # reads every member: CRC and length checks
    except CheckpointError:
        raise
    except Exception as exc:
        raise CheckpointError(
            f"{name} is not a readable checkpoint (damaged or truncated zip archive): {_reason(exc)}"
        ) from None
    if damaged is not None:
        raise CheckpointError(f"{name} is corrupt: its member {damaged!r} fails its checksum")


def _check_members(name: str, infos: list[zipfile.ZipInfo]) -> None:
    """The layout torch.save writes: one top folder with data.pkl, plain members, sane sizes."""
    names = [i.filename for i in infos]
    tops = {n.split("/", 1)[0] for n in names}
    if not names or len(tops) != 1 or any("/" not in n for n in names):
        raise CheckpointError(
            f"{name} is not a readable checkpoint: a zip archive, but not one torch.save wrote"
        )
    if len(set(names)) != len(names):
        raise CheckpointError(f"{name} is not a readable checkpoint: its zip archive repeats member names")
    wanted = f"{tops.pop()}/data.pkl"
    pkl = next((i for i in infos if i.filename == wanted), None)
    if pkl is None:
        raise CheckpointError(f"{name} is not a readable checkpoint: a zip archive without torch's data.pkl")
    for info in infos:
        if info.flag_bits & 0x1:
            raise CheckpointError(f"{name} is not a readable checkpoint: its zip archive is encrypted")
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise CheckpointError(
                f"{name} is not a readable checkpoint: member {info.filename!r} uses a compression "
                "torch cannot read"
            )
    if pkl.file_size > _MAX_PICKLE_BYTES:
        raise CheckpointError(
            f"{name}: its metadata is {pkl.file_size / 2**20:.0f} MiB; napari-unet checkpoints hold a few kB"
        )
    total = sum(i.file_size for i in infos)
    if total > _MAX_ARCHIVE_BYTES:
        raise CheckpointError(
            f"{name} holds {total / 2**30:.1f} GiB of data, more than a napari-unet model of at most "
            f"{MAX_PARAMETERS:,} parameters can need"
        )


def _read(path: Path) -> dict[str, Any]:
    try:
        is_file = path.is_file()
    except (OSError, ValueError) as exc:  # e.g. no permission on a parent folder, a NUL in the name
        raise CheckpointError(f"cannot read checkpoint {str(path)!r}: {_reason(exc)}") from None
    if not is_file:
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist or is not a file")
    from .bioimageio_read import is_bioimageio_package, read_bioimageio_package

    if is_bioimageio_package(path):  # a zip with an rdf.yaml at its top, never a torch archive
        payload = read_bioimageio_package(path)
    else:
        _check_archive(path)
        payload = torch_load(path.name, path)
    check_format(path.name, payload)
    return payload


def torch_load(name: str, source: Path | IO[bytes]) -> Any:
    """``torch.load(weights_only=True)`` on the CPU; every failure is one :class:`CheckpointError`."""
    try:
        return torch.load(source, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        detail = next((ln.strip() for ln in str(exc).splitlines() if "GLOBAL" in ln), None)
        if detail:  # the file names a Python callable: the way pickles execute code
            raise CheckpointError(
                f"refused to load {name}: it contains Python objects that could run code "
                "when loaded, which napari-unet checkpoints never do. Only load checkpoints from "
                f"sources you trust. ({detail[:200]})"
            ) from None
        raise CheckpointError(
            f"{name} is not a readable checkpoint (corrupt, truncated or another format)"
        ) from None
    except Exception as exc:  # torch raises many types on damaged files; the caller needs one
        raise CheckpointError(
            f"{name} is not a readable checkpoint (corrupt, truncated or another format): {_reason(exc)}"
        ) from None


def check_format(name: str, payload: Any) -> None:
    """A napari-unet checkpoint payload of a format version this napari-unet reads."""
    if not isinstance(payload, dict) or not isinstance(payload.get("format"), str) \
            or payload["format"] != FORMAT:
        raise CheckpointError(f"{name} is not a napari-unet checkpoint")
    version = payload.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version > FORMAT_VERSION or version < 1:
        raise CheckpointError(
            f"{name} has checkpoint format version {_show(version)}; this napari-unet "
            f"({_package_version()}) reads versions up to {FORMAT_VERSION}. Update napari-unet."
        )


def parameter_count(config: UNetConfig) -> int:
    """Number of parameters of ``UNet(config)``, by arithmetic (nothing is allocated).

    Lets a checkpoint that claims an absurd network be refused at once.
    """
    c = [config.base_channels * 2**i for i in range(config.depth + 1)]
    per_conv_extra = 1 if config.norm == "none" else 2  # a bias, or the norm's weight and bias

    def two_conv(cin: int, cout: int) -> int:
        return 9 * cout * (cin + cout) + 2 * per_conv_extra * cout

    n = sum(two_conv(config.input_planes if i == 0 else c[i - 1], c[i]) for i in range(config.depth))
    n += two_conv(c[-2], c[-1])
    n += sum(4 * c[i + 1] * c[i] + c[i] + two_conv(2 * c[i], c[i]) for i in range(config.depth))
    return n + (c[0] + 1) * config.n_classes


class _ShapeOnlyUNet(UNet):
    """A UNet built on the meta device: names and shapes, no memory, no initialisation."""

    def reset_parameters(self) -> None:  # meta tensors hold no values to initialise
        pass


@dataclass
class _Checked:
    """The parts of a checkpoint payload after validation, ready to be assembled."""

    config: UNetConfig
    state: dict[str, torch.Tensor]
    normalization: Normalization
    annotation: AnnotationSettings
    class_names: list[str]
    training: dict[str, Any]
    optimizer: dict[str, Any] | None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_config(name: str, data: Any) -> tuple[UNetConfig, _ShapeOnlyUNet]:
    """The model config, its size checked by arithmetic, then its meta-device network."""
    invalid = f"{name} has an invalid configuration"
    if not isinstance(data, dict):
        raise CheckpointError(f"{invalid}: model_config is missing or not a dict")
    for key in ("in_channels", "n_classes", "depth", "base_channels", "groups", "input_slices"):
        if key in data and not _is_int(data[key]):
            raise CheckpointError(f"{invalid}: {key} must be an integer, got {_show(data[key])}")
    if "dropout" in data and not _is_number(data["dropout"]):
        raise CheckpointError(f"{invalid}: dropout must be a number, got {_show(data['dropout'])}")
    try:
        config = UNetConfig.from_dict(data)
    except Exception as exc:
        raise CheckpointError(f"{invalid}: {_reason(exc)}") from None
    if config.groups < 1:
        raise CheckpointError(f"{invalid}: groups must be >= 1, got {config.groups}")
    count = parameter_count(config)
    if count > MAX_PARAMETERS:
        raise CheckpointError(
            f"{name}: its model config describes a network of {count:,} parameters, more than "
            f"napari-unet loads ({MAX_PARAMETERS:,}); the file is damaged or not meant for napari-unet"
        )
    try:
        with torch.device("meta"):
            skeleton = _ShapeOnlyUNet(config)
    except Exception as exc:
        raise CheckpointError(f"{invalid}: {_reason(exc)}") from None
    return config, skeleton


def _check_tensor(name: str, key: str, value: torch.Tensor, expected: torch.Tensor) -> torch.Tensor:
    """One weight: shape, dtype and finiteness as the network needs them; returns it converted."""
    if value.layout != torch.strided or value.is_quantized or value.device.type != "cpu":
        raise CheckpointError(f"{name}: weight {key!r} is not a plain dense tensor")
    if tuple(value.shape) != tuple(expected.shape):
        raise CheckpointError(
            f"{name}: weights do not fit the stored model config: {key!r} has shape "
            f"{tuple(value.shape)} where the config implies {tuple(expected.shape)}"
        )
    if expected.is_floating_point():
        if value.dtype not in _FLOAT_DTYPES:
            raise CheckpointError(f"{name}: weight {key!r} is {value.dtype}, not floating point")
        value = value.float()
        if not bool(torch.isfinite(value).all()):
            raise CheckpointError(
                f"{name}: weight {key!r} holds NaN or infinite values (a diverged training?)"
            )
        if key.endswith("running_var") and bool((value < 0).any()):
            raise CheckpointError(f"{name}: weight {key!r} holds negative variances")
        return value
    if value.dtype not in _INT_DTYPES:
        raise CheckpointError(f"{name}: {key!r} is {value.dtype}, where an integer count is expected")
    return value.to(expected.dtype)


def _check_state(name: str, data: Any, skeleton: UNet) -> dict[str, torch.Tensor]:
    """The exact set of weights the config implies, each of the right shape and kind."""
    if not isinstance(data, dict):
        what = "missing" if data is None else f"a {type(data).__name__}"
        raise CheckpointError(f"{name}: its weights (state_dict) are {what}, not a dict of tensors")
    for key, value in data.items():
        if not isinstance(key, str):
            raise CheckpointError(f"{name}: its weights (state_dict) have a non-text key {_show(key)}")
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{name}: weight {key!r} is a {type(value).__name__}, not a tensor")
    expected = skeleton.state_dict()
    missing, unexpected = sorted(set(expected) - set(data)), sorted(set(data) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"{name}: weights do not fit the stored model config "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    return {key: _check_tensor(name, key, data[key], ref) for key, ref in expected.items()}


def _check_fields(name: str, what: str, data: Any, cls: type) -> dict[str, Any]:
    """A dict whose keys are fields of ``cls`` (settings stored with ``asdict``)."""
    if not isinstance(data, dict):
        raise CheckpointError(f"{name}: its {what} settings are a {type(data).__name__}, not a dict")
    known = {f.name for f in fields(cls)}
    unknown = sorted(str(k) for k in data if k not in known)
    if unknown:
        raise CheckpointError(f"{name}: its {what} settings have unknown keys {unknown}")
    return data


def _check_normalization(name: str, data: Any) -> Normalization:
    data = _check_fields(name, "normalization", data, Normalization)
    for key in ("p_low", "p_high", "low", "high"):
        value = data.get(key)
        if key in ("low", "high") and value is None:
            continue
        if key in data and (not _is_number(value) or not math.isfinite(value)):
            raise CheckpointError(f"{name}: its normalization {key} must be a finite number, got {_show(value)}")
    try:
        norm = Normalization.from_dict(data)
    except Exception as exc:
        raise CheckpointError(f"{name}: invalid normalization settings: {_reason(exc)}") from None
    if norm.low is not None and norm.high is not None and not norm.high > norm.low:
        raise CheckpointError(f"{name}: its normalization needs high > low, got {norm.low}, {norm.high}")
    return norm


def _check_annotation(name: str, data: Any) -> AnnotationSettings:
    data = _check_fields(name, "annotation", data, AnnotationSettings)
    for key in ("w0", "sigma"):
        if key in data and (not _is_number(data[key]) or not math.isfinite(data[key])):
            raise CheckpointError(f"{name}: its annotation {key} must be a finite number, got {_show(data[key])}")
    if data.get("ignore_id") is not None and not _is_int(data["ignore_id"]):
        raise CheckpointError(
            f"{name}: its annotation ignore_id must be an integer, got {_show(data['ignore_id'])}"
        )
    if "boundary_class" in data and not isinstance(data["boundary_class"], bool):
        raise CheckpointError(f"{name}: its annotation boundary_class must be true or false")
    try:
        return AnnotationSettings(**data)
    except Exception as exc:
        raise CheckpointError(f"{name}: invalid annotation settings: {_reason(exc)}") from None


def _check_class_names(name: str, data: Any, n_classes: int) -> list[str]:
    if data is None or (isinstance(data, list) and not data):  # not recorded: numbered, as before
        return [f"class {i}" for i in range(n_classes)]
    if not isinstance(data, list):
        raise CheckpointError(f"{name}: its class_names must be a list of text, got a {type(data).__name__}")
    odd = next((c for c in data if not isinstance(c, str)), None)
    if odd is not None:
        raise CheckpointError(f"{name}: its class_names must be a list of text, not hold {_show(odd)}")
    if len(data) != n_classes:
        raise CheckpointError(f"{name}: it names {len(data)} classes for a network of {n_classes}")
    return list(data)


def _check_training(name: str, data: Any) -> dict[str, Any]:
    """The training record: only the fields the package reads are type-checked."""
    if not isinstance(data, dict):
        raise CheckpointError(f"{name}: its training record is a {type(data).__name__}, not a dict")
    if not all(isinstance(k, str) for k in data):
        raise CheckpointError(f"{name}: its training record has non-text keys")
    for key in ("iteration", "iterations_run"):
        if key in data and (not _is_int(data[key]) or data[key] < 0):
            raise CheckpointError(f"{name}: its training {key} must be an integer >= 0, got {_show(data[key])}")
    dice = data.get("best_val_dice")
    if dice is not None and not _is_number(dice):
        raise CheckpointError(f"{name}: its training best_val_dice must be a number, got {_show(dice)}")
    settings = data.get("settings")
    if settings is not None and not isinstance(settings, dict):
        raise CheckpointError(f"{name}: its training settings are a {type(settings).__name__}, not a dict")
    return dict(data)


def _check_optimizer(name: str, data: Any, skeleton: UNet) -> dict[str, Any] | None:
    """An optimizer state that ``torch.optim`` can load for this network (used to resume)."""
    if data is None:
        return None
    bad = f"{name}: its optimizer state does not fit the network"
    if not isinstance(data, dict) or not isinstance(data.get("state"), dict):
        raise CheckpointError(f"{bad} (not a dict with a 'state' dict)")
    groups = data.get("param_groups")
    if not isinstance(groups, list) or not all(
        isinstance(g, dict) and isinstance(g.get("params"), list) for g in groups
    ):
        raise CheckpointError(f"{bad} (param_groups are not a list of dicts with 'params')")
    for group in groups:  # hyper-parameters (betas, eps, ...) are restored with the state
        for key, value in group.items():
            values = value if isinstance(value, (list, tuple)) and key != "params" else [value]
            if key != "params" and not all(
                v is None or isinstance(v, (bool, str)) or (_is_number(v) and math.isfinite(v)) for v in values
            ):
                raise CheckpointError(f"{bad} (its {_show(key)} is {_show(value)})")
    ids = [i for g in groups for i in g["params"]]
    shapes = [tuple(p.shape) for p in skeleton.parameters()]
    if not all(_is_int(i) for i in ids) or sorted(ids) != list(range(len(shapes))):
        raise CheckpointError(f"{bad} ({len(ids)} parameter ids for {len(shapes)} parameters)")
    state: dict[int, Any] = {}
    for key, entry in data["state"].items():
        # saving turns dict keys into text ('0'); torch.optim matches them to parameters as
        # ints and silently drops the rest, so they are turned back here
        pid = int(key) if isinstance(key, str) and key.isdigit() and key.isascii() else key
        if not _is_int(pid) or not 0 <= pid < len(shapes) or not isinstance(entry, dict):
            raise CheckpointError(f"{bad} (a state entry for parameter {_show(key)})")
        state[pid] = entry
        for slot, value in entry.items():
            if not isinstance(value, torch.Tensor) or value.ndim == 0:
                continue
            if tuple(value.shape) != shapes[pid] or not value.is_floating_point():
                raise CheckpointError(f"{bad} ({_show(slot)} of parameter {pid} has shape {tuple(value.shape)})")
            if not bool(torch.isfinite(value).all()):
                raise CheckpointError(f"{name}: its optimizer state holds NaN or infinite values")
    return {**data, "state": state}


def _check_payload(name: str, payload: dict[str, Any]) -> _Checked:
    """Validate everything in a loaded payload; nothing large is allocated on the way."""
    if "package_version" in payload and not isinstance(payload["package_version"], str):
        raise CheckpointError(f"{name}: its package_version is not text")
    config, skeleton = _check_config(name, payload.get("model_config"))
    return _Checked(
        config=config,
        state=_check_state(name, payload.get("state_dict"), skeleton),
        normalization=_check_normalization(name, payload.get("normalization", {})),
        annotation=_check_annotation(name, payload.get("annotation", {})),
        class_names=_check_class_names(name, payload.get("class_names"), config.n_classes),
        training=_check_training(name, payload.get("training", {})),
        optimizer=_check_optimizer(name, payload.get("optimizer"), skeleton),
    )


def load_checkpoint(path: str | os.PathLike) -> TrainedModel:
    """Load a checkpoint safely; :class:`CheckpointError` (a ValueError) says what is wrong.

    The whole file is validated before the network is built, so a damaged or hostile
    file costs neither memory nor a confusing error from deep inside torch.

    ``path`` may also be a bioimage.io model package (``.zip``) that
    :func:`~napari_unet.export_bioimageio` wrote: its napari-unet metadata and
    state-dict weights go through the same checks (see ``bioimageio_read``);
    packages from other tools are refused.
    """
    path = Path(path)
    payload = _read(path)
    try:
        checked = _check_payload(path.name, payload)
    except CheckpointError:
        raise
    except Exception as exc:  # a check tripped over a value of a type nobody expected
        raise CheckpointError(f"{path.name} has invalid contents: {_reason(exc)}") from None
    try:
        model = UNet(checked.config)
        model.load_state_dict(checked.state)
    except Exception as exc:  # validated above: only lack of memory should get here
        raise CheckpointError(f"{path.name}: cannot build its network: {_reason(exc)}") from None
    model.eval()
    return TrainedModel(
        model=model,
        normalization=checked.normalization,
        annotation=checked.annotation,
        class_names=checked.class_names,
        training=checked.training,
        optimizer_state=checked.optimizer,
    )


def _widened_first_conv(weight: torch.Tensor, source: UNetConfig, target: UNetConfig) -> torch.Tensor:
    """A 2D network's first convolution for a network reading ``target.input_slices``
    slices: the 2D weights on the centre slice, zeros on the neighbours, so the wider
    network starts as exactly the same function and training learns what the
    neighbours add."""
    out = torch.zeros((weight.shape[0], target.input_planes, *weight.shape[2:]), dtype=weight.dtype)
    centre = target.z_radius * target.in_channels
    out[:, centre : centre + source.in_channels] = weight
    return out


def transfer_weights(source: UNet, target: UNet) -> list[str]:
    """Copy every weight of ``source`` whose name and shape fit ``target``.

    Used for fine-tuning: the encoder and decoder are kept, the 1x1 head is
    re-initialised when the number of classes differs. A 2D source (one input
    slice) fills a 2.5D target's first convolution on its centre slice
    (:func:`_widened_first_conv`). Returns the names of the tensors that were
    *not* transferred.
    """
    s_cfg, t_cfg = source.config, target.config
    if s_cfg.in_channels != t_cfg.in_channels:
        raise CheckpointError(
            f"the checkpoint expects {s_cfg.in_channels} input channel(s), the image has "
            f"{t_cfg.in_channels}"
        )
    if s_cfg.input_slices != t_cfg.input_slices and s_cfg.input_slices != 1:
        raise CheckpointError(
            f"the checkpoint reads {s_cfg.input_slices} slices at a time; it can be fine-tuned "
            f"with that number only (asked for {t_cfg.input_slices})"
        )
    src = source.state_dict()
    dst = target.state_dict()
    first = "encoder.0.0.weight"
    if s_cfg.input_slices != t_cfg.input_slices and first in src:
        src[first] = _widened_first_conv(src[first], s_cfg, t_cfg)
    skipped = []
    for k, v in dst.items():
        if k in src and src[k].shape == v.shape:
            dst[k] = src[k].clone()
        else:
            skipped.append(k)
    target.load_state_dict(dst)
    return skipped
