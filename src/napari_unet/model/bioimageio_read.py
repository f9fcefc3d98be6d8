"""Read back a bioimage.io model package that napari-unet exported, as safely as a checkpoint.

:func:`~napari_unet.load_checkpoint` hands a zip with an ``rdf.yaml`` (or
``bioimageio.yaml``) at its top to :func:`read_bioimageio_package`, which
returns the same payload a ``.pt`` checkpoint holds, for the same validation:
the napari-unet metadata from the rdf's ``config: {napari_unet: ...}`` and the
``pytorch_state_dict`` weights read with ``torch.load(weights_only=True)``.
Nothing in the package is executed: the rdf is parsed with a safe YAML loader
that also refuses anchors/aliases (exponential "billion laughs" documents), the
TorchScript weights are ignored, sizes are bounded and the weights' sha256 in
the rdf must match. Packages from elsewhere (no napari_unet config) are refused
with a message pointing to bioimage.io tools. Needs ruyaml (a dependency of
bioimageio.spec) to parse the rdf, as bioimageio.spec writes YAML 1.2.
"""

from __future__ import annotations

import hashlib
import io
import zipfile
from pathlib import Path
from typing import Any

from ..errors import CheckpointError
from .checkpoint import _MAX_ARCHIVE_BYTES, _ZIP_MAGIC, _reason, check_torch_zip, torch_load

CONFIG_KEY = "napari_unet"
RDF_NAMES = ("rdf.yaml", "bioimageio.yaml")
_MAX_RDF_BYTES = 2**20  # ours are a few kB
_MAX_MEMBERS = 1000
_PAYLOAD_KEYS = ("format", "format_version", "package_version", "model_config", "normalization",
                 "annotation", "class_names", "training")
INSTALL_HINT = 'pip install "napari-unet[bioimageio]"'


def _rdf_name(names: list[str]) -> str | None:
    """The package's rdf: ``rdf.yaml`` or ``bioimageio.yaml`` (or one ``*.bioimageio.yaml``) at the top."""
    for wanted in RDF_NAMES:
        if wanted in names:
            return wanted
    other = [n for n in names if "/" not in n and n.endswith(".bioimageio.yaml")]
    return other[0] if len(other) == 1 else None


def is_bioimageio_package(path: Path) -> bool:
    """Whether ``path`` is a zip whose top level holds a bioimage.io rdf (never raises)."""
    try:
        with open(path, "rb") as fh:
            if fh.read(4) != _ZIP_MAGIC:
                return False
        with zipfile.ZipFile(path) as zf:
            return _rdf_name(zf.namelist()) is not None
    except Exception:  # unreadable or damaged: the checkpoint reader says what is wrong
        return False


def _safe_yaml(name: str, text: bytes) -> Any:
    """The rdf parsed as YAML 1.2 (as bioimageio.spec writes it) by a safe loader without aliases."""
    try:
        import ruyaml
        from ruyaml.composer import Composer
        from ruyaml.events import AliasEvent
    except ImportError:
        raise CheckpointError(
            f"reading the bioimage.io package {name} needs ruyaml (installed with bioimageio.spec): "
            f"{INSTALL_HINT}"
        ) from None

    class NoAliasComposer(Composer):
        def compose_node(self, parent: Any, index: Any) -> Any:
            if self.parser.check_event(AliasEvent):
                raise ValueError("YAML aliases are not allowed in a napari-unet package")
            return super().compose_node(parent, index)

    loader = ruyaml.YAML(typ="safe", pure=True)
    loader.Composer = NoAliasComposer
    try:
        return loader.load(text.decode("utf-8"))
    except Exception as exc:
        raise CheckpointError(f"{name}: its rdf is not readable YAML: {_reason(exc)}") from None


def _member(name: str, zf: zipfile.ZipFile, member: str, limit: int) -> bytes:
    info = zf.getinfo(member)
    if info.file_size > limit:
        raise CheckpointError(f"{name}: its member {member!r} is {info.file_size / 2**20:.0f} MiB, too large")
    with zf.open(info) as fh:
        data = fh.read(limit + 1)
    if len(data) > limit:
        raise CheckpointError(f"{name}: its member {member!r} is larger than its zip entry says")
    return data


def _check_package_zip(name: str, infos: list[zipfile.ZipInfo]) -> None:
    if len(infos) > _MAX_MEMBERS:
        raise CheckpointError(f"{name}: a bioimage.io package of {len(infos)} files; napari-unet's hold ten")
    names = [i.filename for i in infos]
    if len(set(names)) != len(names):
        raise CheckpointError(f"{name}: its zip archive repeats member names")
    if any(i.flag_bits & 0x1 for i in infos):
        raise CheckpointError(f"{name}: its zip archive is encrypted")
    if sum(i.file_size for i in infos) > 2 * _MAX_ARCHIVE_BYTES:
        raise CheckpointError(f"{name} holds more data than a napari-unet model can need")


def _foreign(name: str, why: str) -> CheckpointError:
    return CheckpointError(
        f"{name} is a bioimage.io package that napari-unet did not export ({why}): napari-unet runs "
        "only packages it exported. Run this one with bioimageio.core (`bioimageio predict`), "
        "deepImageJ in Fiji, or another bioimage.io tool."
    )


def _weights_source(name: str, rdf: dict[str, Any], members: set[str]) -> tuple[str, str | None]:
    weights = rdf.get("weights")
    entry = weights.get("pytorch_state_dict") if isinstance(weights, dict) else None
    source = entry.get("source") if isinstance(entry, dict) else None
    if not isinstance(source, str):
        raise CheckpointError(f"{name}: its rdf names no pytorch_state_dict weights file")
    if source not in members or "/" in source or "\\" in source:
        raise CheckpointError(f"{name}: its pytorch_state_dict weights {source[:80]!r} are not a file of the package")
    sha = entry.get("sha256")
    return source, sha if isinstance(sha, str) else None


def read_bioimageio_package(path: Path) -> dict[str, Any]:
    """The checkpoint payload stored in a napari-unet bioimage.io package (not yet validated)."""
    name = path.name
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
            _check_package_zip(name, infos)
            rdf_member = _rdf_name([i.filename for i in infos])
            assert rdf_member is not None  # is_bioimageio_package said so
            rdf = _safe_yaml(name, _member(name, zf, rdf_member, _MAX_RDF_BYTES))
            if not isinstance(rdf, dict):
                raise CheckpointError(f"{name}: its {rdf_member} is not a bioimage.io description")
            if rdf.get("type") != "model":
                raise CheckpointError(f"{name} is a bioimage.io {str(rdf.get('type'))[:40]!r}, not a model package")
            config = rdf.get("config")
            meta = config.get(CONFIG_KEY) if isinstance(config, dict) else None
            if not isinstance(meta, dict):
                raise _foreign(name, f"its {rdf_member} has no config.{CONFIG_KEY}")
            source, sha256 = _weights_source(name, rdf, {i.filename for i in infos})
            data = _member(name, zf, source, _MAX_ARCHIVE_BYTES)
    except CheckpointError:
        raise
    except Exception as exc:
        raise CheckpointError(f"{name} is not a readable bioimage.io package: {_reason(exc)}") from None
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256.lower():
        raise CheckpointError(f"{name}: its weights file {source!r} does not match the sha256 in its rdf")
    weights_name = f"{name}:{source}"
    check_torch_zip(weights_name, data[:4], io.BytesIO(data))
    state = torch_load(weights_name, io.BytesIO(data))
    payload = {key: meta[key] for key in _PAYLOAD_KEYS if key in meta}
    payload["state_dict"] = state
    return payload
