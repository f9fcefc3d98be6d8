"""Tests for semantic and instance labelling of predictions."""

from __future__ import annotations

import numpy as np
import pytest

from napari_unet.prediction.postprocess import instance_labels, semantic_labels


def _discs(shape: tuple[int, int], centres: list[tuple[int, int]], radius: float) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    mask = np.zeros(shape, dtype=bool)
    for cy, cx in centres:
        mask |= (yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2
    return mask


#: two discs of radius 10 overlapping in a narrow neck
TOUCHING = _discs((40, 70), [(20, 22), (20, 40)], 10)


def _ids(labels: np.ndarray) -> list[int]:
    return [int(i) for i in np.unique(labels) if i]


# ------------------------------------------------------------------ semantic
def test_semantic_argmax_and_threshold() -> None:
    p1 = np.array([[0.1, 0.4], [0.6, 0.9]], dtype=np.float32)
    probs = np.stack([1 - p1, p1])
    labels = semantic_labels(probs)
    assert labels.dtype == np.uint8
    np.testing.assert_array_equal(labels, [[0, 0], [1, 1]])
    np.testing.assert_array_equal(semantic_labels(probs, threshold=0.3), [[0, 1], [1, 1]])
    np.testing.assert_array_equal(semantic_labels(probs, threshold=0.9), [[0, 0], [0, 1]])


def test_semantic_multiclass_and_3d() -> None:
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(4), size=(3, 5, 6)).transpose(3, 0, 1, 2)  # (C, Z, Y, X)
    labels = semantic_labels(probs)
    assert labels.shape == (3, 5, 6) and labels.dtype == np.uint8
    np.testing.assert_array_equal(labels, probs.argmax(0))
    with pytest.raises(ValueError, match="2-class"):
        semantic_labels(probs, threshold=0.5)


@pytest.mark.parametrize(
    "probs", [np.zeros((1, 4, 4)), np.zeros(5), np.zeros((300, 2, 2))]
)
def test_semantic_rejects_bad_shapes(probs: np.ndarray) -> None:
    with pytest.raises(ValueError):
        semantic_labels(probs)


def test_semantic_rejects_bad_threshold() -> None:
    with pytest.raises(ValueError):
        semantic_labels(np.zeros((2, 3, 3)), threshold=1.5)


# ------------------------------------------------------------------ instance
def test_components_merge_touching_discs_and_watershed_splits_them() -> None:
    components = instance_labels(TOUCHING)
    assert components.dtype == np.uint32 and _ids(components) == [1]
    split = instance_labels(TOUCHING, method="watershed")
    assert split.dtype == np.uint32 and _ids(split) == [1, 2]
    assert ((split > 0) == TOUCHING).all()  # every foreground pixel labelled
    # each disc centre belongs to a different object, and the cut is near the neck
    assert split[20, 22] != split[20, 40]
    sizes = np.bincount(split.ravel())[1:]
    assert abs(int(sizes[0]) - int(sizes[1])) < 0.1 * sizes.sum()


def test_watershed_follows_probabilities() -> None:
    # the discs' neck is at x = 31; a probability valley at x = 26..27 moves the cut there
    prob = np.where(TOUCHING, 0.95, 0.0).astype(np.float32)
    prob[:, 26:28] = np.where(TOUCHING[:, 26:28], 0.55, 0.0)
    geometric = instance_labels(TOUCHING, method="watershed")
    guided = instance_labels(TOUCHING, method="watershed", probabilities=prob)
    assert _ids(geometric) == _ids(guided) == [1, 2]
    assert geometric[20, 29] == geometric[20, 22]  # left of the neck: left disc
    assert guided[20, 29] == guided[20, 40]  # right of the valley: right disc
    assert guided[20, 24] == guided[20, 22]
    assert ((guided > 0) == TOUCHING).all()


def test_watershed_labels_objects_too_thin_for_a_seed() -> None:
    mask = TOUCHING.copy()
    mask[2, 50:68] = True  # a 1-px line: distance peak of 1 < h
    labels = instance_labels(mask, method="watershed")
    assert ((labels > 0) == mask).all()
    assert _ids(labels) == [1, 2, 3]


def test_min_size_and_consecutive_ids() -> None:
    mask = np.zeros((30, 30), dtype=bool)
    mask[1:3, 1:3] = True  # 4 px
    mask[10:20, 10:20] = True  # 100 px
    mask[25, 25] = True  # 1 px
    mask[5:8, 20:28] = True  # 24 px
    labels = instance_labels(mask, min_size=5)
    assert _ids(labels) == [1, 2]  # consecutive after removal
    assert labels[15, 15] and labels[6, 22] and not labels[1, 1] and not labels[25, 25]
    assert _ids(instance_labels(mask)) == [1, 2, 3, 4]
    assert _ids(instance_labels(mask, min_size=101)) == []


def test_per_slice_offsets_and_3d_connectivity() -> None:
    stack = np.zeros((3, 20, 20), dtype=bool)
    stack[:, 2:8, 2:8] = True  # a column through all slices
    stack[0, 12:18, 12:18] = True
    stack[2, 12:18, 12:18] = True
    per_slice = instance_labels(stack)
    assert per_slice.dtype == np.uint32 and per_slice.shape == stack.shape
    assert _ids(per_slice) == [1, 2, 3, 4, 5]
    # ids do not repeat across slices
    slice_ids = [set(_ids(per_slice[z])) for z in range(3)]
    assert not (slice_ids[0] & slice_ids[1]) and not (slice_ids[1] & slice_ids[2])
    assert [len(s) for s in slice_ids] == [2, 1, 2]

    volume = instance_labels(stack, per_slice=False)
    assert _ids(volume) == [1, 2, 3]
    assert len(set(volume[:, 4, 4])) == 1  # the column is one object

    ws = instance_labels(np.stack([TOUCHING] * 2), method="watershed")
    assert _ids(ws) == [1, 2, 3, 4]


def test_min_size_counts_per_slice_objects() -> None:
    stack = np.zeros((4, 10, 10), dtype=bool)
    stack[:, 2:4, 2:4] = True  # 4 px per slice, 16 px as a 3D object
    assert _ids(instance_labels(stack, min_size=5)) == []
    assert _ids(instance_labels(stack, min_size=5, per_slice=False)) == [1]


def test_instance_edge_cases_and_validation() -> None:
    empty = instance_labels(np.zeros((8, 8), dtype=bool), method="watershed")
    assert empty.dtype == np.uint32 and not empty.any()
    ints = instance_labels(TOUCHING.astype(np.uint8))  # a 0/1 label image is accepted
    assert _ids(ints) == [1]
    with pytest.raises(ValueError, match="boolean"):
        instance_labels(TOUCHING.astype(np.float32))
    with pytest.raises(ValueError):
        instance_labels(np.zeros(5, dtype=bool))
    with pytest.raises(ValueError):
        instance_labels(TOUCHING, method="magic")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        instance_labels(TOUCHING, min_size=-1)
    with pytest.raises(ValueError, match="shape"):
        instance_labels(TOUCHING, method="watershed", probabilities=np.ones((3, 3)))


# ------------------------------------------------------------------ fill
def _two_cells() -> tuple[np.ndarray, np.ndarray]:
    """Two cells left and right of a 6-px dark membrane (x = 17..22) and its probability."""
    prob = np.full((20, 40), 0.9, np.float32)
    prob[:, 17:23] = np.linspace(0.4, 0.1, 6)  # least sure of "cell" at x = 22
    return prob >= 0.5, prob


def test_fill_tiles_the_image_and_cuts_where_the_network_was_least_sure() -> None:
    mask, prob = _two_cells()
    nearest = instance_labels(mask, method="fill")
    guided = instance_labels(mask, method="fill", probabilities=prob)
    for labels in (nearest, guided):
        assert _ids(labels) == [1, 2] and (labels > 0).all()  # every boundary pixel has a cell
        assert labels[5, 0] != labels[5, 39]
        assert (labels[mask] == instance_labels(mask)[mask]).all()  # cells keep their pixels
    assert nearest[5, 19] == nearest[5, 0] and nearest[5, 20] == nearest[5, 39]  # halfway
    assert (guided[:, :22] == guided[5, 0]).all() and (guided[:, 23:] == guided[5, 39]).all()


def test_fill_drops_specks_before_growing() -> None:
    mask, _ = _two_cells()
    mask[10, 20] = True  # a one-pixel speck in the membrane
    assert len(_ids(instance_labels(mask, method="fill"))) == 3
    assert _ids(instance_labels(mask, method="fill", min_size=5)) == [1, 2]
    assert not instance_labels(np.zeros((5, 5), bool), method="fill").any()


def test_fill_through_predict_uses_probabilities(tmp_path) -> None:
    """predict(instances=True, instance_method="fill") tiles every slice."""
    from napari_unet import predict, train
    from napari_unet.model.config import preset
    from napari_unet.synthetic import synthetic_em_stack

    stack = synthetic_em_stack((2, 48, 48), seed=1)
    labels = np.where(stack.foreground, 255, 0).astype(np.uint8)
    model = train(stack.image, labels, model=preset("tiny"), iterations=2, patch_size=16,
                  batch_size=2, val_every=10**6)
    pred = predict(model, stack.image, instances=True, instance_method="fill", probabilities=False)
    assert pred.instances is not None and pred.instances.shape == stack.image.shape
    for z in range(2):
        sl = pred.instances[z]
        assert (sl > 0).all() or not (pred.semantic[z] == 1).any()
