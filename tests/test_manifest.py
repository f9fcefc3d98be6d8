"""The npe2 manifest: valid, importable, found by napari, and light to import."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import npe2
import pytest

import napari_unet

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def manifest() -> npe2.PluginManifest:
    return npe2.PluginManifest.from_distribution("napari-unet")


def test_manifest_is_valid_and_names_what_we_ship(manifest):
    assert manifest.name == "napari-unet"
    assert manifest.display_name == "napari-unet"
    widgets = {w.display_name: w.command for w in manifest.contributions.widgets}
    assert widgets == {
        "Train": "napari-unet.train_widget",
        "Segment": "napari-unet.segment_widget",
        "Batch": "napari-unet.batch_widget",
    }
    assert [s.key for s in manifest.contributions.sample_data] == ["synthetic_em"]
    reader, zarr_reader = manifest.contributions.readers
    assert "*.tif" in reader.filename_patterns and "*.tiff" in reader.filename_patterns
    assert zarr_reader.filename_patterns == ["*.zarr"] and zarr_reader.accepts_directories


def test_every_command_imports(manifest):
    """What ``npe2 validate --imports`` checks: each python_name resolves to a callable."""
    manifest.validate_imports()
    for command in manifest.contributions.commands:
        module, _, attr = command.python_name.partition(":")
        assert callable(getattr(__import__(module, fromlist=[attr]), attr))


def test_npe2_validate_with_imports_cli():
    out = subprocess.run(
        [sys.executable, "-m", "npe2", "validate", "napari-unet", "--imports"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "valid" in out.stdout


def test_root_manifest_is_a_symlink_to_the_packaged_one():
    root = ROOT / "napari.yaml"
    packaged = Path(napari_unet.__file__).with_name("napari.yaml")
    assert root.is_symlink()
    assert root.resolve() == packaged.resolve()


def test_widget_modules_do_not_import_torch():
    """napari imports widget modules when a user opens a widget; torch loads only when needed."""
    code = (
        "import sys\n"
        "import napari_unet._widgets.train_widget, napari_unet._widgets.segment_widget\n"
        "import napari_unet._widgets.batch_widget\n"
        "import napari_unet._reader, napari_unet._sample_data\n"
        "heavy = [m for m in ('torch', 'napari_unet.training.trainer', 'matplotlib') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
