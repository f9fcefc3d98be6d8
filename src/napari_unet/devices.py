"""Choosing where torch runs, and with which mixed precision.

``"auto"`` prefers CUDA, then Apple's MPS, then the CPU. Mixed precision is used
on CUDA only: bf16 where the GPU computes it natively (compute capability 8.0
and later: A100, H100, RTX 30xx/40xx; no loss scaling needed), else fp16 with a
gradient scaler. ``torch.cuda.is_bf16_supported()`` is not asked: it also says
yes where bf16 is only emulated (T4, V100), which is slower than float32 there.
MPS runs in float32.

Prediction (not training) may also use bf16 on CPUs that compute it natively
(x86 AVX-512-BF16 or AMX: oneDNN then runs bf16 convolutions about twice as
fast as float32; see :func:`cpu_native_bf16` and :func:`prediction_dtype`).
Elsewhere CPUs would only emulate bf16, which is slower than float32.
"""

from __future__ import annotations

import contextlib
import functools
import glob
import os
import platform
import sys
import warnings
from typing import Iterator

import torch

DEVICE_CHOICES = ("auto", "cuda", "mps", "cpu")


def mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def available_devices() -> list[str]:
    """Devices this torch build can use right now, best first."""
    found = []
    if torch.cuda.is_available():
        found.append("cuda")
    if mps_available():
        found.append("mps")
    found.append("cpu")
    return found


def nvidia_gpu_present() -> bool:
    """True when the machine has an NVIDIA driver, whatever torch was built for."""
    return os.path.exists("/proc/driver/nvidia/version") or bool(glob.glob("/dev/nvidia[0-9]*"))


def cpu_only_torch_warning() -> str | None:
    """A user-facing warning when an NVIDIA GPU is present but torch cannot use it."""
    if nvidia_gpu_present() and not torch.cuda.is_available():
        build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
        return (
            f"An NVIDIA GPU is present but the installed torch {torch.__version__} is {build} and "
            "cannot use it; install a CUDA build of torch (see pytorch.org) to train much faster."
        )
    return None


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """Turn a user's choice into a usable ``torch.device``; ValueError if it is not available."""
    if isinstance(device, torch.device):
        name = device.type
    else:
        name = (device or "auto").strip().lower()
    if name == "auto":
        return torch.device(available_devices()[0])
    base = name.split(":")[0]
    if base == "cuda":
        if not torch.cuda.is_available():
            hint = cpu_only_torch_warning() or "no CUDA GPU was found"
            raise ValueError(f"device 'cuda' is not available: {hint}. Use 'auto' or 'cpu'.")
        return torch.device(device if isinstance(device, torch.device) else name)
    if base == "mps":
        if not mps_available():
            raise ValueError("device 'mps' is not available on this machine. Use 'auto' or 'cpu'.")
        return torch.device("mps")
    if base == "cpu":
        return torch.device("cpu")
    raise ValueError(f"unknown device {device!r}; choose one of {DEVICE_CHOICES}")


#: First CUDA compute capability with native bf16 tensor-core arithmetic (Ampere).
NATIVE_BF16_CAPABILITY = (8, 0)


def native_bf16(device: torch.device) -> bool:
    """True when ``device`` computes bf16 in hardware (not emulated)."""
    if device.type != "cuda":
        return False
    return tuple(torch.cuda.get_device_capability(device)) >= NATIVE_BF16_CAPABILITY


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """Mixed-precision dtype for ``device``, or None for full float32.

    bf16 only with native support; fp16 otherwise (training then needs a
    :class:`torch.amp.GradScaler`, see :func:`grad_scaler`).
    """
    if device.type != "cuda":
        return None
    return torch.bfloat16 if native_bf16(device) else torch.float16


#: CPU flags (Linux ``/proc/cpuinfo``) of native bf16 arithmetic that oneDNN uses.
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def _cpuinfo_flags(text: str) -> set[str]:
    """The x86 ``flags`` of the first processor listed in a ``/proc/cpuinfo`` text."""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return set(value.split())
    return set()


@functools.lru_cache(maxsize=1)
def cpu_native_bf16() -> bool:
    """True when this CPU computes bf16 in hardware and torch can use it (cached).

    Linux x86 only: the kernel's cpuinfo flags name AVX-512-BF16 or AMX-BF16,
    and torch has oneDNN (which holds the fast bf16 kernels). Other systems and
    architectures say False: without a check we trust, bf16 could be emulated
    and slower than float32, so float32 stays the safe default there.
    """
    if not sys.platform.startswith("linux"):
        return False
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            flags = _cpuinfo_flags(f.read())
    except OSError:
        return False
    return any(flag in flags for flag in CPU_BF16_FLAGS)


def prediction_dtype(device: torch.device, precision: str = "auto") -> torch.dtype | None:
    """The autocast dtype to predict with on ``device``, or None for float32.

    ``"auto"``: on CUDA what :func:`autocast_dtype` says (bf16 where native,
    else fp16); bf16 on CPUs with :func:`cpu_native_bf16`; float32 elsewhere.
    ``"float32"``: None. ``"bfloat16"``: bf16 on CUDA and the CPU, with a
    warning where it is only emulated (slow, but the user asked for it);
    a ValueError on MPS, where it was never tested.
    """
    if precision == "float32":
        return None
    if precision == "auto":
        if device.type == "cuda":
            return autocast_dtype(device)
        if device.type == "cpu" and cpu_native_bf16():
            return torch.bfloat16
        return None
    if precision != "bfloat16":
        raise ValueError(f"precision must be 'auto', 'float32' or 'bfloat16', got {precision!r}")
    if device.type == "mps":
        raise ValueError("precision 'bfloat16' is not supported on MPS; use 'auto' or 'float32'")
    emulated = not (native_bf16(device) if device.type == "cuda" else cpu_native_bf16())
    if emulated:
        warnings.warn(
            f"this {device.type.upper()} has no native bf16 arithmetic: bfloat16 prediction is "
            "emulated and slower than float32 (precision 'auto' would choose float32)",
            RuntimeWarning,
            stacklevel=2,
        )
    return torch.bfloat16


def dtype_name(dtype: torch.dtype | None) -> str:
    """``"float32"``, ``"bfloat16"`` or ``"float16"``: what a provenance record says was used."""
    return "float32" if dtype is None else str(dtype).replace("torch.", "")


def grad_scaler(device: torch.device, dtype: torch.dtype | None) -> torch.amp.GradScaler | None:
    """A loss scaler for fp16 training on CUDA (bf16 and float32 need none)."""
    if device.type == "cuda" and dtype == torch.float16:
        return torch.amp.GradScaler("cuda")
    return None


def out_of_memory_error() -> tuple[type[BaseException], ...]:
    """The exception types torch raises when a device runs out of memory."""
    oom = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", None)
    return (oom,) if oom is not None else ()


def is_out_of_memory(exc: BaseException) -> bool:
    """CUDA's OutOfMemoryError, or MPS's and older builds' RuntimeError saying so."""
    if isinstance(exc, out_of_memory_error()):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def training_dtype(device: torch.device, enabled: bool = True) -> torch.dtype | None:
    """The autocast dtype to train with on ``device`` (None: float32).

    CUDA: :func:`autocast_dtype`. CPU: bf16 where it is native
    (:func:`cpu_native_bf16`): a training step of the default network ran
    1.8x faster than float32 on such a CPU, and the accuracy reached per
    minute of training is measured in BENCHMARKS.md (time to accuracy).
    Elsewhere float32, also when ``enabled`` is False (``amp=False``).
    """
    if not enabled:
        return None
    if device.type == "cpu":
        return torch.bfloat16 if cpu_native_bf16() else None
    return autocast_dtype(device)


@contextlib.contextmanager
def autocast(device: torch.device, enabled: bool = True) -> Iterator[None]:
    """``torch.autocast`` to :func:`training_dtype` when enabled, else a no-op."""
    dtype = training_dtype(device, enabled)
    if dtype is None:
        yield
    else:
        with torch.autocast(device_type=device.type, dtype=dtype):
            yield


@contextlib.contextmanager
def autocast_to(device: torch.device, dtype: torch.dtype | None) -> Iterator[None]:
    """``torch.autocast`` to ``dtype`` on any device; a no-op for None (float32)."""
    if dtype is None:
        yield
    else:
        with torch.autocast(device_type=device.type, dtype=dtype):
            yield


def release_memory(device: torch.device) -> None:
    """Give cached GPU memory back to the driver (other apps, the next job)."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps" and hasattr(torch, "mps"):
        torch.mps.empty_cache()
