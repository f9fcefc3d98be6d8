"""Workers hand freed memory back after each task (glibc's malloc_trim)."""

import sys

import pytest

from napari_unet.prediction import worker_memory


def test_glibc_is_found_where_it_is_there():
    import ctypes

    assert isinstance(worker_memory.release_free_memory(), bool)
    try:
        has_trim = sys.platform.startswith("linux") and hasattr(ctypes.CDLL("libc.so.6"), "malloc_trim")
    except OSError:
        has_trim = False
    assert (worker_memory._malloc_trim() is not None) == has_trim


def test_trimmed_runs_the_task_and_trims_even_when_it_fails(monkeypatch):
    calls = []
    monkeypatch.setattr(worker_memory, "release_free_memory", lambda: calls.append("trim") or True)
    assert worker_memory.trimmed(lambda a, b: a + b, 2, 3) == 5
    with pytest.raises(ZeroDivisionError):
        worker_memory.trimmed(lambda: 1 / 0)
    assert calls == ["trim", "trim"]


def test_without_glibc_nothing_is_called(monkeypatch):
    worker_memory._malloc_trim.cache_clear()
    monkeypatch.setattr(worker_memory.sys, "platform", "darwin")
    try:
        assert worker_memory._malloc_trim() is None
        assert worker_memory.release_free_memory() is False
    finally:
        worker_memory._malloc_trim.cache_clear()
