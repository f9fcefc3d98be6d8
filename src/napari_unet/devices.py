"""Choosing where torch runs, and with which mixed precision.

``"auto"`` prefers CUDA, then Apple's MPS, then the CPU. Mixed precision is used
on CUDA only: bf16 where the GPU supports it (no loss scaling needed), else fp16
with a gradient scaler; CPU and MPS run in float32, which is both correct and,
on CPUs, usually as fast.
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


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """Mixed-precision dtype for ``device``, or None for full float32."""
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


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
