import numpy as np
import pytest

from napari_unet.training.annotations import (
    AnnotationSettings,
    annotated_slices,
    n_classes_for,
    prepare_slices,
    summarize,
)


def _two_touching() -> np.ndarray:
    lab = np.zeros((3, 32, 32), np.uint32)
    lab[1, 8:24, 4:16] = 5
    lab[1, 8:24, 16:28] = 9  # touches id 5 along a vertical line
    return lab


def test_annotated_slices_and_summary():
    lab = _two_touching()
    assert annotated_slices(lab) == [1]
    s = summarize(lab)
    assert s.slices == (1,) and s.n_objects == 2
    assert "1 annotated slice: z = 1; 2 objects" == str(s)
    assert "no annotated slice" in str(summarize(np.zeros((2, 16, 16), np.uint8)))


def test_touching_objects_are_separated_by_one_pixel_line():
    (sl,) = prepare_slices(_two_touching())
    assert sl.z == 1 and sl.n_objects == 2
    row = sl.target[16]
    assert row[4:15].all() and row[17:28].all()
    assert (row[15:17] == 0).sum() == 1  # exactly one separating pixel
    # the weight map peaks on the separating line (w0 = 10 term)
    sep = np.flatnonzero(row[15:17] == 0)[0] + 15
    assert sl.weight[16, sep] > 8


def _sparse_objects() -> np.ndarray:
    """Two small separate objects covering 8 % of a slice (like mitochondria)."""
    lab = np.zeros((1, 50, 50), np.uint8)
    lab[0, 5:15, 5:15] = 1
    lab[0, 30:40, 30:40] = 2
    return lab


def test_dense_slices_keep_their_class_frequencies_by_default():
    # far from any object the weight is exactly 1: no w_c up-weighting of the rare class
    (sl,) = prepare_slices(_sparse_objects())
    assert AnnotationSettings().balance == "auto" and not AnnotationSettings().balances
    np.testing.assert_allclose(sl.weight[48, 0], 1.0)
    np.testing.assert_allclose(sl.weight[10, 10], 1.0)
    # the paper's balancing on request: each class carries half of the total weight
    (bal,) = prepare_slices(_sparse_objects(), AnnotationSettings(balance=True))
    fg = bal.target == 1
    np.testing.assert_allclose(bal.weight[10, 10], bal.target.size / (2 * fg.sum()), rtol=1e-6)
    assert bal.weight[48, 0] < 1.0


def test_scribbles_are_balanced_by_default():
    lab = np.zeros((1, 20, 20), np.uint8)
    lab[0, 2, :] = 1  # 20 background pixels
    lab[0, 10, 5:10] = 2  # 5 object pixels
    (sl,) = prepare_slices(lab, AnnotationSettings(mode="scribbles"))
    np.testing.assert_allclose(sl.weight[2, 0], 25 / (2 * 20))
    np.testing.assert_allclose(sl.weight[10, 5], 25 / (2 * 5))
    (off,) = prepare_slices(lab, AnnotationSettings(mode="scribbles", balance=False))
    assert set(np.unique(off.weight[lab[0] > 0])) == {1.0}


def test_binary_mask_becomes_instances():
    lab = np.zeros((1, 40, 40), np.uint8)
    lab[0] = 255
    lab[0, :, 19:21] = 0  # a membrane splits the "cell" mask in two
    lab[0, 19:21, :] = 0
    (sl,) = prepare_slices(lab)
    assert sl.n_objects == 4
    assert set(np.unique(sl.target)) == {0, 1}


def test_ignore_id_excluded():
    lab = _two_touching()
    lab[1, 0:4, :] = 7
    (sl,) = prepare_slices(lab, AnnotationSettings(ignore_id=7))
    assert (sl.target[0:4] == -1).all()
    assert (sl.weight[0:4] == 0).all()
    assert sl.n_objects == 2


def test_boundary_class():
    settings = AnnotationSettings(boundary_class=True)
    (sl,) = prepare_slices(_two_touching(), settings)
    assert set(np.unique(sl.target)) == {0, 1, 2}
    assert n_classes_for(_two_touching(), settings) == 3


def test_scribbles():
    lab = np.zeros((2, 32, 32), np.uint8)
    lab[0, 2, 2:20] = 1  # background stroke
    lab[0, 20, 5:25] = 3  # class "3" stroke
    settings = AnnotationSettings(mode="scribbles")
    (sl,) = prepare_slices(lab, settings)
    assert n_classes_for(lab, settings) == 3
    assert (sl.target[2, 2:20] == 0).all() and (sl.target[20, 5:25] == 2).all()
    assert (sl.target[10] == -1).all() and (sl.weight[10] == 0).all()
    # class balancing: both strokes carry the same total weight
    assert sl.weight[sl.target == 0].sum() == pytest.approx(sl.weight[sl.target == 2].sum(), rel=1e-4)
    assert str(summarize(lab, settings)).endswith("labels: background, class 3")


@pytest.mark.parametrize(
    "labels, settings, match",
    [
        (np.zeros((2, 16, 16), np.uint8), AnnotationSettings(), "no annotated slice"),
        (np.ones((1, 16, 16), np.uint8), AnnotationSettings(), "only objects"),
        (np.ones((1, 16, 16), np.uint8), AnnotationSettings(mode="scribbles"), "only label 1"),
    ],
)
def test_nothing_to_learn(labels, settings, match):
    with pytest.raises(ValueError, match=match):
        prepare_slices(labels, settings)


def test_settings_validation():
    with pytest.raises(ValueError):
        AnnotationSettings(mode="sparse")
    with pytest.raises(ValueError):
        AnnotationSettings(mode="scribbles", ignore_id=3)
    with pytest.raises(ValueError):
        AnnotationSettings(ignore_id=0)
    with pytest.raises(ValueError, match="balance"):
        AnnotationSettings(balance="yes")
