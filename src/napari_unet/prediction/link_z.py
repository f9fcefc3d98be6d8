"""3D instances: 2D objects of neighbouring slices linked into one object where they overlap.

Instance ids are computed per slice (2D), which splits a mitochondrion or a
nucleus into one object per slice. Linking joins the 2D objects of slice z and
z + 1 that overlap by at least ``min_overlap`` of the smaller one, and numbers
the connected groups as 3D objects. The work splits the way a z-blocked volume
does: :func:`overlap_edges` needs only two slices (so each block computes the
edges inside it and across its lower border), :func:`link_components` needs
only the edges (a small graph the client solves), and the 3D ids it gives
depend only on the 2D ids and the edges, never on the block layout.
"""

from __future__ import annotations

import numpy as np

_NO_EDGES = np.zeros((0, 2), np.uint32)


def check_min_overlap(min_overlap: float) -> float:
    """``min_overlap`` as a float in (0, 1]: a fraction of the smaller object's area."""
    value = float(min_overlap)
    if not 0.0 < value <= 1.0:
        raise ValueError(f"the link overlap must be a fraction in (0, 1], got {min_overlap!r}")
    return value


def _areas(ids: np.ndarray, of: np.ndarray) -> np.ndarray:
    """Pixel counts in the slice ``ids`` of each id in ``of`` (ids may be huge: no bincount)."""
    values, counts = np.unique(ids, return_counts=True)
    return counts[np.searchsorted(values, of)]


def overlap_edges(lower: np.ndarray, upper: np.ndarray, min_overlap: float) -> np.ndarray:
    """Pairs ``(a, b)`` of ids in ``lower`` and ``upper`` (two neighbouring slices) to link.

    A pair is linked when the two objects share at least ``min_overlap`` of
    the smaller one's pixels: a fraction of the smaller object, so that a small
    object ending inside a large one is still linked, while two objects that
    only touch at their rims (e.g. neighbouring cells through a slanted
    membrane) stay apart. 0 is background; ids must be unique across the two
    slices. Returns an (E, 2) uint32 array, each pair once, sorted.
    """
    min_overlap = check_min_overlap(min_overlap)
    if lower.shape != upper.shape:
        raise ValueError(f"slices of different shapes: {lower.shape} and {upper.shape}")
    both = (lower > 0) & (upper > 0)
    if not both.any():
        return _NO_EDGES.copy()
    codes = (lower[both].astype(np.uint64) << np.uint64(32)) | upper[both].astype(np.uint64)
    pairs, shared = np.unique(codes, return_counts=True)
    a = (pairs >> np.uint64(32)).astype(np.uint32)
    b = (pairs & np.uint64(0xFFFFFFFF)).astype(np.uint32)
    smaller = np.minimum(_areas(lower, a), _areas(upper, b))
    keep = shared >= min_overlap * smaller
    return np.stack([a[keep], b[keep]], axis=1)


def link_components(n_objects: int, edges: np.ndarray) -> np.ndarray:
    """Lookup table ``table[id_2d] -> id_3d`` (uint32, ``table[0] == 0``) for ids 1..n_objects.

    3D objects are the connected components of the edge graph, numbered 1..K
    in the order of their smallest 2D id: with 2D ids numbered slice by slice,
    that is the order in which objects first appear going up the stack, and it
    depends on nothing but the 2D ids and the edges.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = int(n_objects) + 1  # node 0 (background) has no edges: its own component, ranked first
    edges = np.asarray(edges, dtype=np.int64).reshape(-1, 2)
    if edges.size and (edges.min() < 1 or edges.max() >= n):
        raise ValueError(f"edges name ids outside 1..{n_objects}")
    graph = coo_matrix((np.ones(len(edges), np.int8), (edges[:, 0], edges[:, 1])), shape=(n, n))
    _, component = connected_components(graph, directed=False)
    # np.unique's first index of each component is its smallest node: rank components by it
    _, first, inverse = np.unique(component, return_index=True, return_inverse=True)
    rank = np.empty(len(first), np.uint32)
    rank[np.argsort(first, kind="stable")] = np.arange(len(first), dtype=np.uint32)
    return rank[inverse.reshape(-1)]


def stack_edges(instances: np.ndarray, min_overlap: float) -> np.ndarray:
    """The edges between every pair of neighbouring slices of a (Z, Y, X) id stack."""
    edges = [overlap_edges(instances[z], instances[z + 1], min_overlap) for z in range(len(instances) - 1)]
    return np.concatenate(edges) if edges else _NO_EDGES.copy()


def link_stack(instances: np.ndarray, min_overlap: float = 0.5) -> np.ndarray:
    """3D ids of a whole in-memory (Z, Y, X) stack of 2D ids unique across the stack.

    The reference that z-blocked volumes are tested against, and a convenience
    for stacks that fit in memory. Returns uint32 ids 1..K (0 stays 0).
    """
    instances = np.asarray(instances)
    if instances.ndim != 3:
        raise ValueError(f"a stack of 2D ids needs three axes (z, y, x), got shape {instances.shape}")
    table = link_components(int(instances.max(initial=0)), stack_edges(instances, min_overlap))
    return table[instances]
