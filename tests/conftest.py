"""Shared fixtures: small seeded synthetic EM stacks (no downloads, no ../shared data)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_unet.synthetic import partial_annotation, synthetic_em_stack


@pytest.fixture(autouse=True)
def _threads() -> None:
    # CI machines have 2 cores; more threads only add contention
    torch.set_num_threads(2)


@pytest.fixture
def one_torch_thread():
    """One intra-op torch thread for the widget tests: on two shared CI cores, OpenMP
    threads spinning against the Qt main thread and the batch producer make runs
    5-10x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def em_stack():
    """(8, 128, 128) synthetic EM stack with its ground-truth instances."""
    return synthetic_em_stack((8, 128, 128), seed=3)


@pytest.fixture(scope="session")
def em_labels(em_stack) -> np.ndarray:
    """Dense annotation of slices 2 and 5 only."""
    return partial_annotation(em_stack.instances, [2, 5])
