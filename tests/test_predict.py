"""Tests for overlap-tile prediction: exact tile invariance, seams, placement, plumbing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from napari_unet.errors import Cancelled
from napari_unet.model.config import UNetConfig, preset
from napari_unet.model.unet import Geometry, UNet
from napari_unet.prediction.overlap_tile import TilePredictor

#: tile invariance bound for valid nets (float32 rounding only)
EXACT = 1e-5


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """These nets are tiny: a second intra-op thread gains nothing, and on a
    shared 2-core machine spinning OpenMP threads make calls up to 40x slower."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _with_batch_stats(config: UNetConfig, seed: int) -> UNet:
    """A random net whose batch-norm running stats are not the identity."""
    torch.manual_seed(seed)
    model = UNet(config)
    model.train()
    size = model.geometry.min_input_size + 4 * model.geometry.divisor
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(2, 1, size, size) * 2.0 + 0.5)
    return model.eval()


@pytest.fixture(scope="module")
def tiny() -> UNet:
    return _with_batch_stats(preset("tiny"), 0)


@pytest.fixture(scope="module")
def deep3() -> UNet:
    return _with_batch_stats(preset("tiny", depth=3, base_channels=4), 1)


@pytest.fixture(scope="module")
def tiny_same() -> UNet:
    return _with_batch_stats(preset("tiny", padding="same"), 2)


def _image(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def _softmax_pass(model: nn.Module, padded: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        logits = model(torch.from_numpy(np.ascontiguousarray(padded))[None, None])
    return torch.softmax(logits.float(), dim=1)[0].numpy()


def _whole_valid_padded(model: UNet, image: np.ndarray) -> np.ndarray:
    """The image mirror-padded by the margin, and further to a legal size."""
    g, (Y, X) = model.geometry, image.shape
    m = g.margin
    iy, ix = g.input_size_for_output(Y), g.input_size_for_output(X)
    return np.pad(image, ((m, iy - Y - m), (m, ix - X - m)), mode="reflect")


def _whole_valid(model: UNet, image: np.ndarray) -> np.ndarray:
    """Reference: one pass over the whole mirror-padded image, cropped back."""
    Y, X = image.shape
    return _softmax_pass(model, _whole_valid_padded(model, image))[:, :Y, :X]


def _whole_same(model: UNet, image: np.ndarray) -> np.ndarray:
    d, (Y, X) = model.geometry.divisor, image.shape
    padded = np.pad(image, ((0, -Y % d), (0, -X % d)), mode="reflect")
    return _softmax_pass(model, padded)[:, :Y, :X]


# ---------------------------------------------------------------- valid nets
VALID_CASES = [
    # (net, image shape, tile size, batch size)
    ("tiny", (211, 157), 12, 3),  # 252 tiles
    ("tiny", (211, 157), 36, 1),
    ("tiny", (211, 157), 100, 3),
    ("tiny", (13, 30), 60, 1),  # image smaller than one tile
    ("tiny", (13, 30), 8, 3),  # small image, several tiles
    ("tiny", (1, 50), 16, 2),
    ("deep3", (61, 45), 12, 3),  # 48 tiles of 12 px on an 8 px pooling grid
    ("deep3", (211, 157), 44, 1),
    ("deep3", (13, 30), 60, 3),
    ("deep3", (70, 9), 20, 1),
]


@pytest.mark.parametrize(("net", "shape", "tile", "batch"), VALID_CASES)
def test_valid_tiling_equals_whole_image_pass(
    request: pytest.FixtureRequest, net: str, shape: tuple[int, int], tile: int, batch: int
) -> None:
    model = request.getfixturevalue(net)
    image = _image(shape, seed=tile)
    predictor = TilePredictor(model, tile_size=tile, batch_size=batch, device="cpu")
    assert predictor.tile_size == tile
    got = predictor.predict_slice(image)
    assert got.shape == (2, *shape) and got.dtype == np.float32
    np.testing.assert_allclose(got.sum(0), 1.0, atol=1e-5)
    assert np.abs(got - _whole_valid(model, image)).max() < EXACT


@pytest.mark.parametrize("net", ["tiny", "deep3"])
def test_valid_tta_equals_averaged_whole_image_passes(
    request: pytest.FixtureRequest, net: str
) -> None:
    model = request.getfixturevalue(net)
    image = _image((45, 39), seed=3)
    predictor = TilePredictor(model, tile_size=20, batch_size=3, tta=True, device="cpu")
    got = predictor.predict_slice(image)
    # TTA of a whole-image pass: transform the mirror-padded image, run, undo
    padded = _whole_valid_padded(model, image)
    expected = np.zeros_like(got)
    for k in range(4):
        for flip in (False, True):
            t = np.rot90(padded, k)
            t = t[:, ::-1] if flip else t
            p = _softmax_pass(model, t)
            p = p[:, :, ::-1] if flip else p
            expected += np.rot90(p, -k, axes=(1, 2))[:, : image.shape[0], : image.shape[1]]
    expected /= 8
    assert np.abs(got - expected).max() < EXACT
    assert np.abs(got - _whole_valid(model, image)).max() > 1e-3  # TTA did something


def test_tile_size_is_rounded_to_a_legal_size(tiny: UNet, deep3: UNet) -> None:
    assert TilePredictor(tiny, tile_size=50, device="cpu").tile_size in (48, 52)
    p = TilePredictor(deep3, tile_size=30, device="cpu")
    assert p.tile_size in (28, 36)
    assert deep3.geometry.is_valid_input_size(p.tile_size + 2 * deep3.margin)
    for model in (tiny, deep3):
        default = TilePredictor(model, device="cpu").tile_size
        assert abs(default - 256) <= model.geometry.divisor // 2 + 4
        assert model.geometry.is_valid_input_size(default + 2 * model.margin)
    with pytest.raises(ValueError, match="legal output tile sizes are 12, 20, 28"):
        TilePredictor(deep3, tile_size=8, device="cpu")


# ----------------------------------------------------------------- same nets
def test_same_padding_seams_are_small_and_smooth(tiny_same: UNet) -> None:
    image = _image((211, 157), seed=5)
    reference = _whole_same(tiny_same, image)
    predictor = TilePredictor(tiny_same, tile_size=96, overlap=0.5, batch_size=4, device="cpu")
    assert predictor.n_tiles(image.shape) > 4
    got = predictor.predict_slice(image)
    np.testing.assert_allclose(got.sum(0), 1.0, atol=1e-5)
    error = got - reference
    # measured: max 0.0044, pixel-to-pixel step 0.0059 (receptive field ~50 px;
    # random weights are far more sensitive to zero padding than trained ones)
    assert np.abs(error).max() < 0.01
    # no visible seam: the error changes little from one pixel to the next
    assert np.abs(np.diff(error, axis=1)).max() < 0.01
    assert np.abs(np.diff(error, axis=2)).max() < 0.01
    # the linear tent blends less well but still without gross seams (measured 0.061)
    linear = TilePredictor(tiny_same, tile_size=96, overlap=0.5, blend="linear", device="cpu")
    assert np.abs(linear.predict_slice(image) - reference).max() < 0.1
    # one tile covering everything is exactly the whole-image pass
    single = TilePredictor(tiny_same, tile_size=256, device="cpu").predict_slice(image)
    assert np.abs(single - reference).max() < EXACT


# --------------------------------------------------------- placement checks
class CentreCrop(nn.Module):
    """Fake U-Net: class-1 probability = the input pixel at the output position.

    Logits ``(log(1 - v), log v)`` make the softmax reproduce the image
    exactly, so any misplaced tile pixel shows. Also checks that it is only
    fed legal sizes and records the batch sizes it sees.
    """

    def __init__(self, padding: str = "valid", depth: int = 2) -> None:
        super().__init__()
        self.config = UNetConfig(depth=depth, padding=padding)  # type: ignore[arg-type]
        self.geometry = Geometry(depth, padding)
        self.batches: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert self.geometry.is_valid_input_size(x.shape[-2])
        assert self.geometry.is_valid_input_size(x.shape[-1])
        self.batches.append(x.shape[0])
        m = self.geometry.margin
        c = x[:, :, m : x.shape[-2] - m, m : x.shape[-1] - m]
        return torch.cat([torch.log1p(-c), torch.log(c)], dim=1)


@pytest.mark.parametrize("padding", ["valid", "same"])
@pytest.mark.parametrize("depth", [2, 3])
@pytest.mark.parametrize(("shape", "tile"), [((83, 121), 20), ((30, 9), 60), ((64, 64), 32)])
@pytest.mark.parametrize("tta", [False, True])
def test_every_pixel_comes_from_its_place(
    padding: str, depth: int, shape: tuple[int, int], tile: int, tta: bool
) -> None:
    image = np.random.default_rng(7).uniform(0.05, 0.95, size=shape).astype(np.float32)
    fake = CentreCrop(padding, depth)
    predictor = TilePredictor(fake, tile_size=tile, batch_size=3, tta=tta, device="cpu")
    got = predictor.predict_slice(image)
    np.testing.assert_allclose(got[1], image, atol=1e-6)
    np.testing.assert_allclose(got[0], 1.0 - image, atol=1e-6)
    assert max(fake.batches) <= 3


def test_plain_callable_model_is_accepted() -> None:
    """Anything with .geometry, .config and a tensor -> tensor call will do."""
    module = CentreCrop("valid", 2)

    class Plain:
        config, geometry = module.config, module.geometry

        def __call__(self, x: torch.Tensor) -> torch.Tensor:
            return module(x)

    image = np.random.default_rng(3).uniform(0.05, 0.95, size=(40, 50)).astype(np.float32)
    got = TilePredictor(Plain(), tile_size=16, device="cpu").predict(image)
    np.testing.assert_allclose(got[1], image, atol=1e-6)


def test_wrong_geometry_is_reported() -> None:
    class Shrinking(CentreCrop):
        """Output one pixel smaller than its geometry promises."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return super().forward(x)[..., 1:, 1:]

    fake = Shrinking("valid", 2)
    with pytest.raises(ValueError, match="do not describe it"):
        TilePredictor(fake, tile_size=20, device="cpu").predict_slice(np.zeros((30, 30), np.float32))


# ------------------------------------------------------- plumbing and stacks
def test_progress_reaches_total_and_cancel_raises() -> None:
    image = np.full((50, 70), 0.5, dtype=np.float32)
    calls: list[tuple[int, int]] = []
    predictor = TilePredictor(
        CentreCrop(), tile_size=12, batch_size=4, device="cpu",
        progress=lambda done, total: calls.append((done, total)),
    )
    n = predictor.n_tiles(image.shape)
    predictor.predict_slice(image)
    assert calls[-1] == (n, n) and len(calls) == -(-n // 4)
    assert all(b[0] > a[0] for a, b in zip(calls, calls[1:]))

    calls.clear()
    predictor.predict(np.stack([image] * 3))
    assert calls[-1] == (3 * n, 3 * n)

    polls = []

    def stop() -> bool:
        polls.append(1)
        return len(polls) > 2

    cancelling = TilePredictor(
        CentreCrop(), tile_size=12, batch_size=4, device="cpu", should_stop=stop
    )
    with pytest.raises(Cancelled):
        cancelling.predict_slice(image)
    assert len(polls) == 3


def test_predict_stack_fills_out_and_iter_stack_is_ordered(tmp_path) -> None:
    fake = CentreCrop()
    stack = np.random.default_rng(1).uniform(0.05, 0.95, size=(4, 33, 27)).astype(np.float32)
    mm = np.lib.format.open_memmap(
        tmp_path / "stack.npy", mode="w+", dtype=np.float32, shape=stack.shape
    )
    mm[:] = stack
    predictor = TilePredictor(fake, tile_size=16, device="cpu")

    result = predictor.predict(mm)
    assert result.shape == (4, 2, 33, 27) and result.dtype == np.float32
    np.testing.assert_allclose(result[:, 1], stack, atol=1e-6)

    out = np.zeros((4, 2, 33, 27), dtype=np.float16)
    assert predictor.predict(stack, out=out) is out
    np.testing.assert_allclose(out[:, 1], stack, atol=1e-3)

    assert [z for z, _ in predictor.iter_stack(mm)] == [0, 1, 2, 3]

    class SliceReader:
        """zarr-like: only integer indexing, counts reads."""

        shape, dtype = stack.shape, stack.dtype

        def __init__(self) -> None:
            self.reads: list[int] = []

        def __getitem__(self, z: int) -> np.ndarray:
            assert isinstance(z, int)
            self.reads.append(z)
            return stack[z]

    reader = SliceReader()
    for z, probs in predictor.iter_stack(reader):
        assert reader.reads[-1] == z
        np.testing.assert_allclose(probs[1], stack[z], atol=1e-6)
    assert reader.reads == [0, 1, 2, 3]

    out2d = np.zeros((2, 33, 27), dtype=np.float32)
    predictor.predict(stack[0], out=out2d)
    np.testing.assert_allclose(out2d[1], stack[0], atol=1e-6)


def test_bad_inputs_raise_value_error(tiny: UNet) -> None:
    p = TilePredictor(tiny, tile_size=20, device="cpu")
    bad = [
        np.zeros(10, np.float32),
        np.zeros((2, 3, 10, 10), np.float32),
        np.zeros((0, 10), np.float32),
        np.zeros((10, 10), np.uint8),
        np.array([[0.0, np.nan], [1.0, 2.0]], np.float32),
        np.array([[0.0, np.inf], [1.0, 2.0]], np.float64),
    ]
    for image in bad:
        with pytest.raises(ValueError):
            p.predict(image)
    with pytest.raises(ValueError, match="2D"):
        p.predict_slice(np.zeros((2, 10, 10), np.float32))
    with pytest.raises(ValueError, match="3D"):
        next(p.iter_stack(np.zeros((10, 10), np.float32)))
    with pytest.raises(ValueError, match="shape"):
        p.predict(np.zeros((10, 10), np.float32), out=np.zeros((2, 10, 11), np.float32))
    with pytest.raises(ValueError, match="float32 or float16"):
        p.predict(np.zeros((10, 10), np.float32), out=np.zeros((2, 10, 10), np.float64))
    for kwargs in ({"batch_size": 0}, {"overlap": 1.0}, {"overlap": -0.1}, {"blend": "box"}):
        with pytest.raises(ValueError):
            TilePredictor(tiny, device="cpu", **kwargs)
    with pytest.raises(ValueError, match="multichannel"):
        TilePredictor(UNet(preset("tiny", in_channels=2)), device="cpu")
    with pytest.raises(ValueError, match=".config and .geometry"):
        TilePredictor(nn.Identity(), device="cpu")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_agrees_with_cpu_and_memory_does_not_grow(tiny: UNet, tiny_same: UNet) -> None:
    image = _image((300, 260), seed=9)
    try:
        for model in (tiny, tiny_same):
            cpu = TilePredictor(model, tile_size=64, device="cpu").predict_slice(image)
            for amp in (True, False):  # bf16/fp16 autocast; float32 (TF32 convolutions)
                gpu = TilePredictor(model, tile_size=64, device="cuda", amp=amp, tta=amp)
                got = gpu.predict_slice(image)
                want = cpu if not amp else TilePredictor(
                    model, tile_size=64, device="cpu", tta=True
                ).predict_slice(image)
                diff = np.abs(got - want)
                assert diff.mean() < 5e-3 and diff.max() < 5e-2, (amp, diff.max())

        # the output lives on the host: peak device memory is set by one batch
        predictor = TilePredictor(tiny, tile_size=64, batch_size=4, device="cuda")
        peaks = []
        for size in (256, 1024):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            predictor.predict_slice(_image((size, size), seed=size))
            peaks.append(torch.cuda.max_memory_allocated())
        assert peaks[1] < 1.2 * peaks[0] + 2**20
    finally:  # the fixtures are shared with the CPU tests
        for model in (tiny, tiny_same):
            model.to("cpu", memory_format=torch.contiguous_format)
