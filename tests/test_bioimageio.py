"""bioimage.io model packages: export, validation by the bioimage.io libraries, import back.

Everything runs offline: the packages are built and checked locally
(bioimageio.spec's format and file checks, bioimageio.core running both weight
formats on the test tensors).
"""

from __future__ import annotations

import io
import os
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("bioimageio.spec")

import napari_unet  # noqa: E402
from napari_unet.cli import main  # noqa: E402
from napari_unet.errors import CheckpointError  # noqa: E402
from napari_unet.model.bioimageio import export_bioimageio  # noqa: E402
from napari_unet.model.bioimageio_arch import UNetProbabilities  # noqa: E402
from napari_unet.model.checkpoint import TrainedModel, load_checkpoint  # noqa: E402
from napari_unet.model.config import preset  # noqa: E402
from napari_unet.model.normalization import Normalization  # noqa: E402
from napari_unet.model.unet import UNet  # noqa: E402
from napari_unet.synthetic import synthetic_em_stack  # noqa: E402


def _tiny(padding: str = "valid", normalization: Normalization | None = None) -> TrainedModel:
    """A tiny network with random weights and non-trivial batch-norm statistics."""
    torch.manual_seed(0)
    net = UNet(preset("tiny", padding=padding))
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 1.5)
    stack = synthetic_em_stack((4, 64, 64), seed=2).image
    return TrainedModel(
        net.eval(),
        normalization=normalization or Normalization().fit(stack),
        class_names=["membrane", "cell interior"],
        training={"iteration": 7, "iterations_run": 7, "annotated_slices": [1, 3], "best_val_dice": 0.5,
                  "settings": {"iterations": 7, "batch_size": 2, "learning_rate": 1e-4}},
    )


@pytest.fixture(scope="module")
def tiny() -> TrainedModel:
    return _tiny()


@pytest.fixture(scope="module")
def package(tiny: TrainedModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_bioimageio(tiny, tmp_path_factory.mktemp("pkg") / "tiny.zip", name="tiny test model")


def _rdf(path: Path) -> dict:
    import ruyaml

    with zipfile.ZipFile(path) as zf:
        return ruyaml.YAML(typ="safe", pure=True).load(zf.read("rdf.yaml"))


def _rewrite(src: Path, dst: Path, rdf: dict | None = None, replace: dict[str, bytes] | None = None) -> Path:
    """A copy of package ``src`` with its rdf and/or some members replaced."""
    import ruyaml

    replace = dict(replace or {})
    if rdf is not None:
        buf = io.StringIO()
        ruyaml.YAML(typ="safe", pure=True).dump(rdf, buf)
        replace["rdf.yaml"] = buf.getvalue().encode()
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, replace.get(info.filename, zin.read(info.filename)))
    return dst


def test_export_is_a_valid_bioimageio_model(tiny: TrainedModel, package: Path) -> None:
    from bioimageio.spec import load_description
    from bioimageio.spec.model.v0_5 import ModelDescr

    descr = load_description(package, perform_io_checks=True)
    assert isinstance(descr, ModelDescr), descr.validation_summary.format()
    assert descr.validation_summary.status in ("valid-format", "passed")
    assert not [e for d in descr.validation_summary.details for e in d.errors]
    geometry = tiny.model.geometry
    y_in, y_out = descr.inputs[0].axes[2], descr.outputs[0].axes[2]
    assert (y_in.size.min, y_in.size.step) == (geometry.min_input_size, geometry.divisor)
    assert y_out.size.offset == -2 * geometry.margin and str(y_out.size.axis_id) == "y"
    assert [str(a.type) for a in descr.inputs[0].axes] == ["batch", "channel", "space", "space"]
    assert [str(n) for n in descr.outputs[0].axes[1].channel_names] == ["membrane", "cell_interior"]
    ops = [p.id for p in descr.inputs[0].preprocessing]
    assert "scale_range" in ops
    scale = next(p for p in descr.inputs[0].preprocessing if p.id == "scale_range")
    assert (scale.kwargs.min_percentile, scale.kwargs.max_percentile) == (1.0, 99.8)
    assert descr.weights.torchscript is not None and descr.weights.pytorch_state_dict is not None
    assert descr.weights.pytorch_state_dict.architecture.callable == "UNetProbabilities"
    assert any(c.doi is not None and str(c.doi) == "10.1007/978-3-319-24574-4_28" for c in descr.cite)
    assert [a.name for a in descr.authors] == ["napari-unet user"]
    assert str(descr.license) == "CC-BY-4.0"
    meta = descr.config.model_extra["napari_unet"]
    assert meta["model_config"] == tiny.config.to_dict() and meta["class_names"] == tiny.class_names
    with zipfile.ZipFile(package) as zf:
        names = set(zf.namelist())
        readme = zf.read("README.md").decode()
    assert {"cover.png", "README.md", "test_input.npy", "test_output.npy"} <= names
    assert "Validation" in readme and "painted slices of the training stack: 2 (1, 3)" in readme


@pytest.mark.parametrize("weight_format", ["torchscript", "pytorch_state_dict"])
def test_bioimageio_core_reproduces_test_outputs(weight_format: str, package: Path) -> None:
    """bioimageio.core runs the weights on the test input (and at other legal sizes, batch 1 and 2)."""
    pytest.importorskip("bioimageio.core")
    from napari_unet.model.bioimageio import run_bioimageio_tests

    summary = run_bioimageio_tests(package, weight_format=weight_format)
    failed = [(d.name, [e.msg for e in d.errors]) for d in summary.details if d.status == "failed"]
    assert summary.status == "passed", failed
    ran = [d.name for d in summary.details if "Reproduce test outputs" in d.name]
    assert ran == [f"Reproduce test outputs from test inputs ({weight_format})"]


def test_round_trip_predicts_identically(tiny: TrainedModel, package: Path) -> None:
    back = load_checkpoint(package)
    assert back.config == tiny.config
    assert back.normalization == tiny.normalization and back.annotation == tiny.annotation
    assert back.class_names == tiny.class_names and back.training == tiny.training
    stack = synthetic_em_stack((2, 70, 90), seed=5).image
    a = napari_unet.predict(tiny, stack, probabilities=True, device="cpu")
    b = napari_unet.predict(package, stack, probabilities=True, device="cpu")
    assert np.array_equal(a.probabilities, b.probabilities) and np.array_equal(a.semantic, b.semantic)


@pytest.mark.parametrize("padding", ["valid", "same"])
def test_torchscript_matches_the_eager_network(padding: str, tiny: TrainedModel, package: Path,
                                               tmp_path: Path) -> None:
    trained = tiny if padding == "valid" else _tiny("same")
    path = package if padding == "valid" else export_bioimageio(trained, tmp_path / "same.zip")
    with zipfile.ZipFile(path) as zf:
        scripted = torch.jit.load(io.BytesIO(zf.read("weights_torchscript.pt")), map_location="cpu")
        test_in = np.load(io.BytesIO(zf.read("test_input.npy")))
    if padding == "same":
        assert _rdf(path)["outputs"][0]["axes"][2]["size"]["offset"] == 0
    eager = UNetProbabilities(**trained.config.to_dict())
    eager.load_state_dict(trained.model.state_dict())
    eager.eval()
    geometry = trained.model.geometry
    for k in (0, 3):  # other sizes than the traced one
        size = geometry.min_input_size + k * geometry.divisor
        x = torch.rand(2, 1, size, size + geometry.divisor)
        with torch.no_grad():
            out, ref = scripted(x), eager(x)
        assert out.shape == ref.shape == (2, 2, size - 2 * geometry.margin,
                                          size + geometry.divisor - 2 * geometry.margin)
        assert torch.allclose(out, ref, atol=1e-5, rtol=0)
        assert torch.allclose(out.sum(dim=1), torch.ones(()), atol=1e-5)  # probabilities
    assert test_in.dtype == np.float32 and test_in.shape[:2] == (1, 1)


def test_fixed_normalization_becomes_scale_linear(tmp_path: Path) -> None:
    trained = _tiny(normalization=Normalization(method="fixed", low=20.0, high=220.0))
    path = export_bioimageio(trained, tmp_path / "fixed.zip")
    pre = [p for p in _rdf(path)["inputs"][0]["preprocessing"] if p["id"] != "ensure_dtype"]
    assert [p["id"] for p in pre] == ["scale_linear"]
    assert pre[0]["kwargs"]["gain"] == pytest.approx(1 / 200) and pre[0]["kwargs"]["offset"] == pytest.approx(-0.1)
    assert load_checkpoint(path).normalization == trained.normalization


def test_foreign_package_is_refused(package: Path, tmp_path: Path) -> None:
    rdf = _rdf(package)
    del rdf["config"]["napari_unet"]
    foreign = _rewrite(package, tmp_path / "foreign.zip", rdf)
    with pytest.raises(CheckpointError, match="napari-unet runs only packages it exported.*bioimageio"):
        load_checkpoint(foreign)


def test_tampered_packages_are_refused(package: Path, tmp_path: Path) -> None:
    with zipfile.ZipFile(package) as zf:
        weights = zf.read("weights_state_dict.pt")
    changed = _rewrite(package, tmp_path / "changed.zip", replace={"weights_state_dict.pt": weights[:-10] + b"0" * 10})
    with pytest.raises(CheckpointError, match="sha256"):
        load_checkpoint(changed)
    rdf = _rdf(package)
    rdf["config"]["napari_unet"]["model_config"]["base_channels"] = 16  # weights no longer fit
    with pytest.raises(CheckpointError, match="do not fit"):
        load_checkpoint(_rewrite(package, tmp_path / "config.zip", rdf))
    bomb = b"a: &a [x, x]\nb: &b [*a, *a]\ntype: model\n"
    with pytest.raises(CheckpointError, match="aliases"):
        load_checkpoint(_rewrite(package, tmp_path / "alias.zip", replace={"rdf.yaml": bomb}))
    rdf = _rdf(package)
    rdf["weights"]["pytorch_state_dict"]["source"] = "../../etc/passwd"
    with pytest.raises(CheckpointError, match="not a file of the package"):
        load_checkpoint(_rewrite(package, tmp_path / "path.zip", rdf))


def test_missing_library_gives_install_hint(monkeypatch: pytest.MonkeyPatch, tiny: TrainedModel,
                                            tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "bioimageio.spec.model", None)
    with pytest.raises(ImportError, match=r'pip install "napari-unet\[bioimageio\]"'):
        export_bioimageio(tiny, tmp_path / "x.zip")
    assert os.listdir(tmp_path) == []


def test_cli_export_failure_leaves_no_file(monkeypatch: pytest.MonkeyPatch, tiny: TrainedModel,
                                           tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    ckpt = tiny.save(tmp_path / "tiny.pt")
    out_dir = tmp_path / "out"
    out_dir.mkdir()

    def invalid(path: object) -> None:
        raise ValueError("the bioimage.io package is not a valid model description")

    monkeypatch.setattr("napari_unet.model.bioimageio.check_package", invalid)
    assert main(["export", str(ckpt), "-o", str(out_dir / "m.zip")]) == 1
    assert "not a valid model description" in capsys.readouterr().err
    assert os.listdir(out_dir) == []  # no package, no temporary file
    assert main(["export", str(ckpt), "-o", str(out_dir / "m.pt")]) == 1
    assert main(["export", str(tmp_path / "missing.pt"), "-o", str(out_dir / "m.zip")]) == 1
    assert "model file not found" in capsys.readouterr().err
    assert main(["export", str(ckpt), "-o", str(out_dir / "m.zip"), "--license", "nope"]) == 1
    assert "SPDX" in capsys.readouterr().err
    assert os.listdir(out_dir) == []


@pytest.mark.slow
def test_cli_export_default_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """The shipped model: export, bioimageio.core runs the TorchScript weights, import, same prediction."""
    pytest.importorskip("bioimageio.core")
    from napari_unet.model.bioimageio import run_bioimageio_tests
    from napari_unet.model.pretrained import default_checkpoint

    if default_checkpoint() is None:
        pytest.skip("no default model in this copy")
    out = tmp_path / "default.zip"
    assert main(["export", "default", "-o", str(out), "--author", "Ada Lovelace"]) == 0
    assert "Wrote" in capsys.readouterr().out
    assert os.listdir(tmp_path) == ["default.zip"]
    assert main(["export", "default", "-o", str(out)]) == 1  # exists, no --overwrite
    assert "--overwrite" in capsys.readouterr().err
    rdf = _rdf(out)
    assert rdf["license"] == "BSD-3-Clause" and rdf["authors"] == [{"name": "Ada Lovelace"}]
    assert rdf["outputs"][0]["axes"][2]["size"]["offset"] == -184
    with zipfile.ZipFile(out) as zf:
        assert "ISBI 2012" in zf.read("README.md").decode()  # the shipped model card
    summary = run_bioimageio_tests(out, weight_format="torchscript")
    assert summary.status == "passed", [d.name for d in summary.details if d.status == "failed"]
    image = synthetic_em_stack((150, 170), seed=4).image
    a = napari_unet.predict(default_checkpoint(), image, probabilities=True, device="cpu")
    b = napari_unet.predict(out, image, probabilities=True, device="cpu")
    assert np.array_equal(a.probabilities, b.probabilities)


def test_cli_export_help_and_segment_with_a_package(package: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture) -> None:
    from napari_unet.io.tiff import read_tiff, write_tiff

    assert main(["export", "--help"]) == 0
    assert "usage: napari-unet export" in capsys.readouterr().out
    stack = synthetic_em_stack((2, 60, 70), seed=6).image
    write_tiff(tmp_path / "stack.tif", stack)
    assert main(["segment", "-m", str(package), str(tmp_path / "stack.tif"), "-o", str(tmp_path / "res"),
                 "--device", "cpu", "--precision", "float32"]) == 0
    labels = read_tiff(tmp_path / "res" / "stack_labels.tif", lazy=False).data
    expected = napari_unet.predict(package, stack, device="cpu", precision="float32").semantic
    assert np.array_equal(labels, expected)


def test_card_says_which_augmentation_ran() -> None:
    """The card's training section spells out the augmentation the checkpoint recorded."""
    from napari_unet.model._bioimageio_files import _training_section
    from napari_unet.training.augment import AugmentConfig

    trained = _tiny()
    trained.training = {**trained.training, "augment": AugmentConfig(p_affine=0.5).to_dict()}
    text = _training_section(trained)
    assert ("- augmentation: elastic (3x3 grid, 10 px), flips, 90-degree turns, rotation up to 45 degrees "
            "and zoom 0.8-1.25 (50% of patches), intensity jitter (80% of patches)") in text
    trained.training = {**trained.training, "augment": AugmentConfig(p_affine=0.0, elastic=False).to_dict()}
    assert "- augmentation: flips, 90-degree turns, intensity jitter (80% of patches)" in _training_section(trained)
    trained.training = {**trained.training, "augment": None}  # trained with augment=None
    assert "- augmentation: none" in _training_section(trained)
    trained.training = {**trained.training, "augment": {"elastic": "yes"}}  # a stranger's record
    assert "augmentation" not in _training_section(trained)
