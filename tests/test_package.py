import subprocess
import sys

import napari_unet


def _run(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout


def test_import_is_light():
    out = _run("import sys, napari_unet; print('torch' in sys.modules, 'qtpy' in sys.modules)")
    assert out.split() == ["False", "False"]


def test_core_never_imports_qt_or_napari():
    code = (
        "import sys, napari_unet as nu\n"
        "for name in nu.__all__: getattr(nu, name)\n"
        "import napari_unet.io.tiff, napari_unet.prediction.inference, napari_unet.training.trainer\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('qtpy', 'PyQt5', 'PyQt6', 'PySide2', 'PySide6', 'napari', 'magicgui')]\n"
        "print(bad)"
    )
    assert _run(code).strip() == "[]"


def test_public_api_resolves():
    for name in napari_unet.__all__:
        assert getattr(napari_unet, name) is not None
    assert "train" in dir(napari_unet)


def test_exported_names_are_not_shadowed_by_submodules():
    """A submodule named like an exported function would replace it once imported."""
    import pkgutil

    submodules = {m.name for m in pkgutil.iter_modules(napari_unet.__path__)}
    assert not submodules & set(napari_unet.__all__)
