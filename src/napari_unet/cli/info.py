"""``napari-unet info``: versions, devices and GPU warnings, for bug reports and setup checks."""

from __future__ import annotations

import argparse

from ._exit import EXIT_OK


def _version(dist: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def cmd_info(args: argparse.Namespace) -> int:
    import platform

    import torch

    from .. import __version__
    from ..devices import available_devices, cpu_only_torch_warning, nvidia_gpu_present
    from ..model.pretrained import default_checkpoint

    print(f"napari-unet {__version__}")
    print(f"Python {platform.python_version()} on {platform.platform(terse=True)} ({platform.machine()})")
    cuda = torch.version.cuda or "none (CPU-only build)"
    print(f"torch {torch.__version__}: CUDA build {cuda}, {torch.get_num_threads()} CPU threads")
    if torch.cuda.is_available():
        print(f"  cuDNN {torch.backends.cudnn.version()}")
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            print(f"  cuda:{i} {props.name}, {props.total_memory / 2**30:.0f} GiB")
    for dist in ("numpy", "scipy", "scikit-image", "tifffile", "zarr", "dask", "distributed", "napari"):
        v = _version(dist)
        print(f"{dist:13} {v if v else 'not installed'}")
    devices = available_devices()
    print(f"Devices: {', '.join(devices)} (auto picks {devices[0]})")
    print(f"NVIDIA GPU present: {'yes' if nvidia_gpu_present() else 'no'}")
    ckpt = default_checkpoint()
    print(f"Pretrained default model: {ckpt if ckpt else 'none ships with this version'}")
    warning = cpu_only_torch_warning()
    if warning:
        print(f"WARNING: {warning}")
    return EXIT_OK
