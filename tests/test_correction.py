"""Copying a prediction into the annotation as a starting point to correct."""

from __future__ import annotations

import numpy as np
import pytest

from napari_unet import copy_prediction
from napari_unet.training.annotations import AnnotationSettings, prepare_slices, summarize


def _stack() -> tuple[np.ndarray, np.ndarray]:
    annotation = np.zeros((4, 12, 12), np.uint16)
    annotation[0, 2:5, 2:5] = 7
    annotation[0, 6:9, 6:9] = 3
    predicted = np.zeros((4, 12, 12), np.uint32)
    for z in range(4):
        predicted[z, 1:4, 1:4] = 40 + z
        predicted[z, 6:10, 6:10] = 90
        predicted[z, 11, 11] = 90  # a second piece of instance 90
    return annotation, predicted


def test_dense_ids_are_consecutive_above_max_and_never_collide():
    annotation, predicted = _stack()
    before_a, before_p = annotation.copy(), predicted.copy()
    result = copy_prediction(annotation, predicted, [1, 2])
    assert result.written == [1, 2] and result.skipped == [] and not result.upcast
    one, two = result.slices[1], result.slices[2]
    assert one.dtype == annotation.dtype and one.shape == (12, 12)
    assert sorted(np.unique(one)) == [0, 8, 9] and sorted(np.unique(two)) == [0, 10, 11]
    assert (one[predicted[1] == 0] == 0).all()
    assert one[6, 6] == one[11, 11]  # pieces of one instance stay one id
    np.testing.assert_array_equal(annotation, before_a)  # inputs untouched
    np.testing.assert_array_equal(predicted, before_p)


def test_painted_slices_are_skipped_unless_overwrite():
    annotation, predicted = _stack()
    result = copy_prediction(annotation, predicted, [0, 3])
    assert result.written == [3] and result.skipped == [0] and 0 not in result.slices
    forced = copy_prediction(annotation, predicted, [0], overwrite=True)
    assert forced.written == [0] and sorted(np.unique(forced.slices[0])) == [0, 8, 9]


def test_single_slice_and_ignore_id():
    annotation, predicted = _stack()
    result = copy_prediction(annotation, predicted[2], 2, ignore_id=8)
    assert sorted(np.unique(result.slices[2])) == [0, 9, 10]


def test_scribbles_map_background_to_one_and_class_k_to_k_plus_one():
    annotation = np.zeros((2, 5, 5), np.uint8)
    semantic = np.zeros((2, 5, 5), np.uint8)
    semantic[1, :2] = 1
    semantic[1, 4] = 2
    result = copy_prediction(annotation, semantic, [1], mode="scribbles")
    sl = result.slices[1]
    assert (sl[:2] == 2).all() and (sl[2:4] == 1).all() and (sl[4] == 3).all()


def test_upcasts_when_new_ids_do_not_fit():
    annotation = np.zeros((2, 4, 4), np.uint8)
    annotation[0, 0, 0] = 255
    predicted = np.zeros((2, 4, 4), np.int32)
    predicted[1, 1, 1] = 5
    result = copy_prediction(annotation, predicted, [1])
    assert result.upcast and result.dtype == np.uint16 and "uint16" in result.note
    assert result.slices[1][1, 1] == 256
    assert result.applied_to(annotation).dtype == np.uint16


def test_validation_messages():
    annotation, predicted = _stack()
    with pytest.raises(ValueError, match="integer"):
        copy_prediction(annotation.astype(np.float32), predicted, [1])
    with pytest.raises(ValueError, match=r"\(Z, Y, X\) stack"):
        copy_prediction(annotation[0], predicted[0], [0])
    with pytest.raises(ValueError, match="Y, X"):
        copy_prediction(annotation, predicted[:, :5], [1])
    with pytest.raises(ValueError, match="exactly one z"):
        copy_prediction(annotation, predicted[1], [1, 2])
    with pytest.raises(ValueError, match="outside"):
        copy_prediction(annotation, predicted, [9])
    with pytest.raises(ValueError, match="mode"):
        copy_prediction(annotation, predicted, [1], mode="sparse")


@pytest.mark.parametrize("mode", ["dense", "scribbles"])
def test_training_sees_a_copied_slice_as_painted(mode):
    annotation = np.zeros((3, 16, 16), np.uint16)
    predicted = np.zeros((3, 16, 16), np.uint8)
    predicted[:, 4:10, 4:10] = 1
    if mode == "dense":
        annotation[0, 1:3, 1:3] = 1
    settings = AnnotationSettings(mode=mode)  # type: ignore[arg-type]
    result = copy_prediction(annotation, predicted, [2], mode=mode)
    updated = result.applied_to(annotation)
    assert 2 in summarize(updated, settings).slices
    assert 2 in [s.z for s in prepare_slices(updated, settings)]
