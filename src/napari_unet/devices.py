"""Choosing where torch runs, and with which mixed precision.

``"auto"`` prefers CUDA, then Apple's MPS, then the CPU. Mixed precision is used
on CUDA only: bf16 where the GPU computes it natively (compute capability 8.0
and later: A100, H100, RTX 30xx/40xx; no loss scaling needed), else fp16 with a
gradient scaler. ``torch.cuda.is_bf16_supported()`` is not asked: it also says
yes where bf16 is only emulated (T4, V100), which is slower than float32 there.
CPU and MPS run in float32, which is both correct and, on CPUs, usually as fast.
"""

from __future__ import annotations

import contextlib
import glob
import os
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


@contextlib.contextmanager
def autocast(device: torch.device, enabled: bool = True) -> Iterator[None]:
    """``torch.autocast`` on CUDA when enabled, a no-op elsewhere."""
    dtype = autocast_dtype(device) if enabled else None
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
