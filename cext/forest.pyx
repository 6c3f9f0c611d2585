# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Class probabilities of a random forest, each row walked through every tree at once (OpenMP over rows).

The layout (:func:`inspection.model.pack_forest` makes it from a fitted scikit-learn forest). All trees' nodes are
in one set of arrays, each tree breadth first from its ``root``, the two children of a split side by side
(``right = left + 1``). Per node:

- ``feature`` (int32): the column of ``x`` a split tests;
- ``threshold`` (float32): the largest float32 at or below scikit-learn's float64 threshold. scikit-learn sends a
  float32 value ``v`` left when ``v <= t`` in float64; as ``v`` is a float32, that is exactly ``v <= t32`` with
  ``t32`` rounded down, so the walk compares in float32 and takes the same branch for every value;
- ``left`` (int32): the left child; a leaf is its own child (``left`` = itself, threshold +inf: every value,
  NaN too, stays), so every tree can be walked for the forest's largest depth with no test for the end;
- ``missing_right`` (uint8): 1 where scikit-learn sends NaN right (its ``missing_go_to_left`` is 0), 0 on leaves;
- ``leaf`` (int32): a leaf's row of ``values`` (float64, leaves x classes: the tree's stored class fractions); 0
  on splits (never read there, but always a row: the walk reads without checks).

Why this is fast, and why it gives scikit-learn's numbers bit for bit. scikit-learn walks one tree over all rows,
gathers each row's leaf values into a (rows x classes) array and adds it to the forest's sum, tree after tree, with
a branch at every node that the CPU guesses wrong about as often as the data is mixed. Here each row is walked
through every tree while its features sit in L1, with no branch on the data (``node = left + (x > t)``), eight
trees side by side so their walks overlap in the CPU. For that walk :func:`forest_proba` packs each node into 8
bytes (the threshold's bits, then ``left << 8 | feature``; 25 trees of depth 10 take some 25 kB: in L1), so a
step reads one node (one cache line) and one of the row's features. Rows with a NaN, forests of fewer than eight
trees, and forests with 2**24 nodes or more or more than 256 columns, take a plain walk over the arrays above. Up
to eight classes are summed side by side, each in its own register. The sums are made as scikit-learn makes them:
from 0.0, each tree's leaf value added in the forest's order, then divided by the number of trees (float64; the
module is built without fused or reordered floating-point operations).
"""

from cython.parallel cimport prange, threadid
from libc.stdint cimport int32_t, uint8_t, uint32_t

import numpy as np

cdef enum:
    _GROUP = 8  # trees walked side by side: their nodes stay in registers, their loads overlap
    _WIDE = 8  # up to this many classes are summed side by side


cdef inline void _walk_group(
    const float* x,
    const int32_t* root,
    const uint32_t* node_words,
    Py_ssize_t depth,
    Py_ssize_t* reached,
) noexcept nogil:
    """The leaves (``reached``) of ``_GROUP`` consecutive trees for a row without NaN: no branch on the data."""
    cdef Py_ssize_t node[_GROUP]
    cdef Py_ssize_t k, d
    cdef uint32_t word
    for k in range(_GROUP):
        node[k] = root[k]
    for d in range(depth):
        for k in range(_GROUP):
            # one 8-byte node: threshold, then left child << 8 | feature (one cache line holds four parents)
            word = node_words[2 * node[k] + 1]
            # a value not above the float32 threshold goes left, as scikit-learn's `value <= threshold` in float64
            node[k] = (word >> 8) + (x[word & 0xFF] > (<const float*>node_words)[2 * node[k]])
    for k in range(_GROUP):
        reached[k] = node[k]


ctypedef struct _Forest:
    # forest_proba's arrays (module docstring), the fast walk's packed nodes, and the sizes every walk needs
    const int32_t* root
    const uint32_t* node_words
    const int32_t* feature
    const float* threshold
    const int32_t* left
    const uint8_t* missing_right
    const int32_t* leaf
    const double* values  # _WIDE columns when classes <= _WIDE, else classes
    Py_ssize_t trees
    Py_ssize_t depth
    Py_ssize_t classes
    bint fast  # the packed nodes are filled: rows without NaN take _walk_group


cdef inline void _walk_with_missing(const float* x, const _Forest* forest, Py_ssize_t* reached) noexcept nogil:
    """The leaves of every tree for a row with NaN: a NaN goes where the split's ``missing_right`` says."""
    cdef Py_ssize_t t, d, node
    cdef float v
    for t in range(forest.trees):
        reached[t] = forest.root[t]
    for d in range(forest.depth):
        for t in range(forest.trees):
            node = reached[t]
            v = x[forest.feature[node]]
            reached[t] = forest.left[node] + (
                (v > forest.threshold[node]) | ((v != v) & forest.missing_right[node])
            )


cdef void _predict_row(
    const float* x, Py_ssize_t width, const _Forest* forest, Py_ssize_t* reached, double* out
) noexcept nogil:
    cdef Py_ssize_t t, c, first, trees = forest.trees, classes = forest.classes
    cdef bint missing = False
    cdef double total[_WIDE]
    cdef const double* row
    for c in range(width):
        if x[c] != x[c]:
            missing = True
    if missing or trees < _GROUP or not forest.fast:
        _walk_with_missing(x, forest, reached)
    else:
        first = 0
        while first < trees:
            # the last group ends at the last tree, overlapping the one before: a walk is pure, so a tree walked
            # twice reaches the same leaf twice
            if first + _GROUP > trees:
                first = trees - _GROUP
            _walk_group(x, forest.root + first, forest.node_words, forest.depth, reached + first)
            first += _GROUP
    # scikit-learn's order for each class: a zero sum, then each tree's leaf value in the forest's order, then the
    # division by the number of trees
    if classes <= _WIDE:
        # `values` has _WIDE columns (zeros beyond `classes`): every class's sum in a register, side by side
        for c in range(_WIDE):
            total[c] = 0.0
        for t in range(trees):
            row = forest.values + forest.leaf[reached[t]] * _WIDE
            for c in range(_WIDE):
                total[c] = total[c] + row[c]
        for c in range(classes):
            out[c] = total[c] / <double>trees
    else:
        for t in range(trees):
            reached[t] = forest.leaf[reached[t]] * classes
        for c in range(classes):
            total[0] = 0.0
            for t in range(trees):
                total[0] = total[0] + forest.values[reached[t] + c]
            out[c] = total[0] / <double>trees


def forest_proba(
    const float[:, ::1] x,
    const int32_t[::1] root,
    const int32_t[::1] feature,
    const float[::1] threshold,
    const int32_t[::1] left,
    const uint8_t[::1] missing_right,
    const int32_t[::1] leaf,
    const double[:, ::1] values,
    int depth,
    double[:, ::1] out,
    int threads=1,
) -> None:
    """Mean class probabilities of the forest for each row of ``x``, written into ``out``.

    Parameters
    ----------
    x
        (rows, features) float32, C order; NaN goes where each split's ``missing_right`` says.
    root
        (trees,) first node of each tree.
    feature, threshold, left, missing_right, leaf
        (nodes,) the nodes of all trees (module docstring).
    values
        (leaves, classes) float64 class fractions of the leaves.
    depth
        Steps of every walk: the deepest tree's depth (a walk that reached its leaf stays there).
    out
        (rows, classes) float64, C order: receives the probabilities.
    threads
        OpenMP threads over rows (the result does not depend on it: each row is computed by one thread alone).

    Raises
    ------
    ValueError
        Arrays whose shapes do not fit together, or indices out of range (the walk does not check them, so they
        are checked here, once per call).
    """
    cdef Py_ssize_t rows = x.shape[0], trees = root.shape[0], classes = values.shape[1]
    cdef Py_ssize_t nodes = feature.shape[0]
    if trees < 1:
        raise ValueError("the forest has no trees")
    if threshold.shape[0] != nodes or left.shape[0] != nodes or missing_right.shape[0] != nodes:
        raise ValueError("feature, threshold, left and missing_right must have one entry per node")
    if leaf.shape[0] != nodes:
        raise ValueError("leaf must have one entry per node")
    if out.shape[0] != rows or out.shape[1] != classes:
        raise ValueError(f"out is {(out.shape[0], out.shape[1])}, expected {(rows, classes)}")
    if depth < 0 or threads < 1:
        raise ValueError(f"depth must be >= 0 and threads >= 1, got {depth} and {threads}")
    roots, features, lefts, leaves = np.asarray(root), np.asarray(feature), np.asarray(left), np.asarray(leaf)
    if nodes == 0 or roots.min() < 0 or roots.max() >= nodes:
        raise ValueError("a root is outside the nodes")
    if features.min() < 0 or features.max() >= x.shape[1]:
        raise ValueError(f"a split tests a column outside x's {x.shape[1]}")
    # a walk takes left + 1 (the right child) wherever the comparison can send a value right
    can_go_right = (np.asarray(threshold) != np.inf) | (np.asarray(missing_right) != 0)
    if lefts.min() < 0 or lefts.max() >= nodes or (can_go_right & (lefts + 1 >= nodes)).any():
        raise ValueError("a child is outside the nodes")
    if leaves.min() < 0 or leaves.max() >= values.shape[0]:
        raise ValueError(f"a leaf points outside values' {values.shape[0]} rows")
    if rows == 0:
        return
    # the fast walk's copy of the nodes, 8 bytes each: the threshold's bits, then left << 8 | feature (it is only
    # taken when these fit: fewer than 2**24 nodes and 256 columns; else every row takes the walk below)
    compact = nodes < (1 << 24) and x.shape[1] <= 256
    packed_nodes = np.zeros((nodes, 2), dtype=np.uint32)
    if compact:
        packed_nodes[:, 0] = np.asarray(threshold).view(np.uint32)
        packed_nodes[:, 1] = (lefts.astype(np.uint32) << 8) | features.astype(np.uint32)
    cdef const uint32_t[:, ::1] words = packed_nodes
    # up to _WIDE classes, the walk sums _WIDE columns at once: zeros beyond the classes
    wide = np.zeros((values.shape[0], _WIDE), dtype=np.float64) if classes <= _WIDE else np.asarray(values)
    if classes <= _WIDE:
        wide[:, :classes] = values
    cdef const double[:, ::1] table = wide
    # each thread's reached leaves, one row of this array per thread (no allocation in the parallel region)
    scratch = np.zeros((threads, trees), dtype=np.intp)
    cdef Py_ssize_t[:, ::1] reached = scratch
    cdef _Forest forest
    forest.root, forest.node_words, forest.feature = &root[0], &words[0, 0], &feature[0]
    forest.threshold, forest.left, forest.missing_right = &threshold[0], &left[0], &missing_right[0]
    forest.leaf, forest.values = &leaf[0], &table[0, 0]
    forest.trees, forest.depth, forest.classes, forest.fast = trees, depth, classes, compact
    cdef Py_ssize_t i, width = x.shape[1]
    for i in prange(rows, nogil=True, schedule="static", chunksize=4096, num_threads=threads):
        _predict_row(&x[0, 0] + i * width, width, &forest, &reached[threadid(), 0], &out[0, 0] + i * classes)
