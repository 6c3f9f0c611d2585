"""The learned defect model: EL pass/fail and fail mode predicted from PL features.

A :class:`DefectModel` is a scikit-learn random forest over the features of
:mod:`inspection.features`, trained on **EL reference wafers** (PL-scanned and EL-probed), with probabilities
calibrated on wafers it was not fitted on, and an operating threshold chosen for a target false-alarm rate.

Training (:func:`train_model`):

1. Each reference wafer gives one row per chip that was inspected and probed; the label is the chip's EL fail
   mode, except that modes with no PL signature (open contact, series resistance) are labelled PASS: a PL model
   cannot learn them, and trying would only teach it noise.
2. The wafers are split: about a quarter (at least one, whole wafers) is held back for calibration; the model is
   fitted on the rest. With a single wafer, chips are split at random instead.
3. Probabilities are calibrated (isotonic regression, or sigmoid with few failures) on the held-back wafers,
   and the threshold on P(fail) = 1 − P(pass) is the lowest at which the held-back good chips' false-alarm rate
   stays within :attr:`TrainSettings.target_false_alarm`, never below :attr:`TrainSettings.min_threshold`.

A model file is a skops archive (``.skops``) holding the estimator and a JSON model card (training wafers,
features, metrics, threshold, software and scikit-learn versions, date, and the training features' quantiles for
the drift check). Loading never executes code: skops refuses every type not on :data:`TRUSTED_TYPES`, and a file
that is not a plmapper model, was made for other features or by a newer format is refused with a message saying
so (:class:`ModelFileError`).

The drift check (:meth:`DefectModel.drift`) compares a wafer's feature distribution with the training data's
(population stability index per feature) and warns when it is out of the range the model has seen.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import time
import uuid
import warnings
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import sklearn
import skops.io as sio
from cext.forest import forest_proba
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.calibration import CalibratedClassifierCV
from sklearn.ensemble import RandomForestClassifier
from sklearn.frozen import FrozenEstimator

from inspection.el_reference import NO_PL_SIGNATURE, ElFailMode
from inspection.evaluation import evaluate_predictions
from inspection.features import FEATURE_NAMES
from inspection.job import software_version
from inspection.settings import setting

__all__ = [
    "MODEL_FORMAT_VERSION",
    "TRUSTED_TYPES",
    "DefectModel",
    "DriftReport",
    "ModelFileError",
    "PackedForest",
    "TrainSettings",
    "TrainingWafer",
    "load_model",
    "pack_forest",
    "save_model",
    "train_model",
]

MODEL_FORMAT = "plmapper-defect-model"
MODEL_FORMAT_VERSION = 1

TRUSTED_TYPES = (
    "sklearn.calibration._CalibratedClassifier",
    "sklearn.calibration._SigmoidCalibration",
    "sklearn.tree._tree.Tree",
)
"""Types beyond skops' own safe list that a model file may contain (plain data holders of scikit-learn: the
calibrated classifier, the sigmoid calibrator used with few held-back failures, and the trees)."""

_MISSING_VALUE = -999.0
"""NaN features become this, far below every real value, so the trees can split missing values off."""

DRIFT_BINS = 10
"""Quantile bins of each training feature for the population stability index."""
DRIFT_WARN_PSI = 0.25
"""A feature whose PSI exceeds this has shifted enough to doubt the model (the usual 'significant shift' level)."""


class ModelFileError(ValueError):
    """A model file cannot be used: corrupt, not a plmapper model, untrusted content or made for other features."""


@dataclass(frozen=True)
class TrainSettings:
    """How a model is trained."""

    target_false_alarm: float = setting(
        0.001, minimum=0.0, maximum=0.5, doc="largest fraction of EL-good chips predicted to fail"
    )
    min_threshold: float = setting(0.2, minimum=0.0, maximum=1.0, doc="lowest allowed threshold on P(fail)")
    calibration_fraction: float = setting(0.25, minimum=0.05, maximum=0.5, doc="share of wafers held back")
    trees: int = setting(25, minimum=5, maximum=2000, doc="trees in the forest")
    max_depth: int = setting(10, minimum=2, maximum=64, doc="deepest split of a tree")
    min_samples_leaf: int = setting(10, minimum=1, maximum=10000, doc="fewest training chips in a leaf")
    max_good_chips_per_wafer: int = setting(
        60000, minimum=1000, maximum=100_000_000, doc="good chips sampled per wafer (all failures are kept)"
    )
    random_state: int = setting(0, minimum=0, maximum=2**31 - 1)


@dataclass(frozen=True)
class TrainingWafer:
    """One reference wafer's rows: features (n, F), EL fail modes (n,), and where they came from."""

    name: str
    features: np.ndarray
    el_mode: np.ndarray
    source: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DriftReport:
    """How far a wafer's features are from the model's training data."""

    psi: dict[str, float]  # population stability index per feature
    out_of_range: dict[str, float]  # fraction of chips outside the training data's 0.1-99.9 % range
    warnings: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {"psi": self.psi, "out_of_range": self.out_of_range, "warnings": list(self.warnings)}


def _label(el_mode: np.ndarray) -> np.ndarray:
    """EL fail modes as training labels: failures without a PL signature count as PASS (see module docstring)."""
    labels = np.asarray(el_mode, dtype=np.uint8).copy()
    for mode in NO_PL_SIGNATURE:
        labels[labels == mode] = ElFailMode.PASS
    return labels


def _feature_quantiles(features: np.ndarray) -> dict[str, Any]:
    """Per-feature bin edges (training quantiles) and the training data's share in each bin, for the drift check."""
    edges, shares, ranges = {}, {}, {}
    for index, name in enumerate(FEATURE_NAMES):
        column = features[:, index]
        column = column[np.isfinite(column)]
        if column.size == 0:
            continue
        inner = np.unique(np.quantile(column, np.linspace(0, 1, DRIFT_BINS + 1)[1:-1]))
        counts = np.bincount(np.searchsorted(inner, column, side="right"), minlength=inner.size + 1)
        edges[name] = inner.tolist()
        shares[name] = (counts / column.size).tolist()
        ranges[name] = [float(np.quantile(column, 0.001)), float(np.quantile(column, 0.999))]
    return {"edges": edges, "shares": shares, "range": ranges}


_PREDICT_BLOCK_ROWS = 262_144
"""Chips per prediction block: bounds the per-block probability arrays (rows x classes, float64)."""

_PROBE_ROWS = 4096
"""Rows of the load-time check that the compiled forest gives scikit-learn's probabilities (see
:func:`_compiled_estimator`)."""


@dataclass(frozen=True)
class PackedForest:
    """A fitted random forest as the arrays of :func:`cext.forest.forest_proba` (layout in that module)."""

    root: np.ndarray  # (trees,) int32: each tree's first node
    feature: np.ndarray  # (nodes,) int32: column a split tests
    threshold: np.ndarray  # (nodes,) float32: scikit-learn's threshold rounded down to float32; +inf on leaves
    left: np.ndarray  # (nodes,) int32: left child (the right one follows it); a leaf's is itself
    missing_right: np.ndarray  # (nodes,) uint8: NaN goes right
    leaf: np.ndarray  # (nodes,) int32: a leaf's row of ``values``
    values: np.ndarray  # (leaves, classes) float64: the leaves' class fractions, as scikit-learn stores them
    depth: int  # the deepest tree's depth: steps of every walk
    n_features: int

    def predict_proba(self, features: np.ndarray, *, threads: int = 1) -> np.ndarray:
        """The forest's mean class probabilities, bit for bit those of scikit-learn's ``predict_proba``.

        Parameters
        ----------
        features
            (n, n_features) float32 (converted if not); NaN goes where each split sends missing values.
        threads
            OpenMP threads over rows; the result does not depend on it.

        Examples
        --------
        >>> x = np.array([[0.0, 5.0], [1.0, 4.0], [2.0, 3.0], [3.0, 2.0]], dtype=np.float32)
        >>> forest = RandomForestClassifier(n_estimators=3, random_state=0).fit(x, [0, 0, 1, 1])
        >>> bool(np.array_equal(pack_forest(forest).predict_proba(x), forest.predict_proba(x)))
        True
        """
        rows = np.ascontiguousarray(features, dtype=np.float32)
        if rows.ndim != 2 or rows.shape[1] != self.n_features:
            raise ValueError(f"features must be (n, {self.n_features}), got {rows.shape}")
        out = np.empty((rows.shape[0], self.values.shape[1]), dtype=np.float64)
        forest_proba(
            rows,
            self.root,
            self.feature,
            self.threshold,
            self.left,
            self.missing_right,
            self.leaf,
            self.values,
            self.depth,
            out,
            threads,
        )
        return out


def _floor_float32(values: np.ndarray) -> np.ndarray:
    """The largest float32 at or below each float64 value (a float32 ``v`` has ``v <= t`` exactly when
    ``v <= floor32(t)``, so comparing in float32 against it takes scikit-learn's float64 branch)."""
    with np.errstate(over="ignore"):
        rounded = values.astype(np.float32)  # to nearest; beyond float32's range: +-inf
    above = rounded.astype(np.float64) > values
    rounded[above] = np.nextafter(rounded[above], np.float32(-np.inf))
    return rounded


def pack_forest(forest: RandomForestClassifier) -> PackedForest | None:
    """The compiled evaluator's arrays of a fitted forest, or None for a forest it does not take (several
    outputs, or trees whose classes differ from the forest's)."""
    trees = list(getattr(forest, "estimators_", []))
    if not trees or getattr(forest, "n_outputs_", 0) != 1:
        return None
    classes = int(forest.n_classes_)
    for tree in trees:
        state = tree.tree_
        if (
            state.n_outputs != 1
            or int(tree.n_classes_) != classes
            or state.value.shape[2] < classes
            or not hasattr(state, "missing_go_to_left")
        ):
            return None
    root, feature, threshold, left, missing_right, leaf, values = [], [], [], [], [], [], []
    nodes_before = leaves_before = depth = 0
    for tree in trees:
        state = tree.tree_
        children_left, children_right = state.children_left, state.children_right
        node_threshold = _floor_float32(np.asarray(state.threshold, dtype=np.float64))
        # breadth first, each split's two children placed side by side
        order = [0]
        level = {0: 0}
        child_place = np.zeros(state.node_count, dtype=np.int64)
        for node in order:
            if children_left[node] != -1:
                child_place[node] = len(order)
                for child in (int(children_left[node]), int(children_right[node])):
                    level[child] = level[node] + 1
                    order.append(child)
        if len(order) != state.node_count:
            return None  # nodes no walk reaches: not a tree this code understands
        order_array = np.asarray(order)
        is_leaf = children_left[order_array] == -1
        depth = max(depth, *level.values())
        root.append(nodes_before)
        feature.append(np.where(is_leaf, 0, state.feature[order_array]))
        threshold.append(np.where(is_leaf, np.float32(np.inf), node_threshold[order_array]))
        left.append(nodes_before + np.where(is_leaf, np.arange(len(order)), child_place[order_array]))
        missing_right.append(np.where(is_leaf, 0, state.missing_go_to_left[order_array] == 0))
        leaf_rows = np.zeros(len(order), dtype=np.int64)
        leaf_rows[is_leaf] = leaves_before + np.arange(int(is_leaf.sum()))
        leaf.append(leaf_rows)
        values.append(np.asarray(state.value[order_array[is_leaf], 0, :classes], dtype=np.float64))
        nodes_before += len(order)
        leaves_before += int(is_leaf.sum())
    if nodes_before >= 2**31:
        return None
    return PackedForest(
        root=np.asarray(root, dtype=np.int32),
        feature=np.concatenate(feature).astype(np.int32),
        threshold=np.concatenate(threshold).astype(np.float32),
        left=np.concatenate(left).astype(np.int32),
        missing_right=np.concatenate(missing_right).astype(np.uint8),
        leaf=np.concatenate(leaf).astype(np.int32),
        values=np.ascontiguousarray(np.concatenate(values)),
        depth=depth,
        n_features=int(forest.n_features_in_),
    )


class _CompiledForest(ClassifierMixin, BaseEstimator):
    """Stands in for a fitted forest inside a copy of the calibrated classifier: its ``predict_proba`` is the
    compiled evaluator's, everything around it (calibrators, normalisation, averaging) stays scikit-learn's own."""

    def __init__(self, packed: PackedForest, classes: np.ndarray) -> None:
        self.packed = packed
        self.classes = classes
        self.classes_ = classes
        self.n_classes_ = len(classes)
        self.n_features_in_ = packed.n_features

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        # one thread per call: DefectModel.predict runs blocks of rows on a thread pool, so one block's
        # calibration (NumPy and SciPy) overlaps another's trees
        return self.packed.predict_proba(features, threads=1)


def _forest_of(calibrated: Any) -> RandomForestClassifier | None:
    frozen = getattr(calibrated, "estimator", None)
    forest = frozen.estimator if isinstance(frozen, FrozenEstimator) else frozen
    return forest if isinstance(forest, RandomForestClassifier) else None


def _probe_rows(packed: PackedForest, rng: np.random.Generator) -> np.ndarray:
    """Rows whose every value sits on, just below or just above a split threshold of its column (or is NaN or the
    missing value): the values where a comparison done differently would take the other branch."""
    columns = []
    for column in range(packed.n_features):
        used = packed.threshold[(packed.feature == column) & (packed.threshold != np.inf)]
        candidates = [
            used,
            np.nextafter(used, np.float32(np.inf)),
            np.nextafter(used, np.float32(-np.inf)),
            np.array([np.nan, _MISSING_VALUE, 0.0], dtype=np.float32),
        ]
        columns.append(rng.choice(np.concatenate(candidates).astype(np.float32), _PROBE_ROWS))
    return np.ascontiguousarray(np.stack(columns, axis=1))


def _compiled_estimator(estimator: CalibratedClassifierCV) -> CalibratedClassifierCV | None:
    """A copy of a calibrated forest whose forests run in the compiled evaluator, or None when it cannot be made
    or does not give scikit-learn's probabilities bit for bit on probe rows (then :meth:`DefectModel.predict`
    keeps scikit-learn's path).

    The copy shares the fitted calibrators; only each forest is replaced, so a scikit-learn whose calibration
    differs is followed as it is. What the compiled forest reproduces (scikit-learn's float32-against-float64
    comparisons, its NaN routing, its sum over trees in order) is checked here on rows built around every
    threshold, and by the tests against ``estimator.predict_proba``.
    """
    calibrated_classifiers = getattr(estimator, "calibrated_classifiers_", None)
    if not calibrated_classifiers:
        return None
    replaced = []
    packed_of: dict[int, PackedForest | None] = {}
    for calibrated in calibrated_classifiers:
        forest = _forest_of(calibrated)
        if forest is None:
            return None
        if id(forest) not in packed_of:
            packed_of[id(forest)] = pack_forest(forest)
        packed = packed_of[id(forest)]
        if packed is None:
            return None
        stand_in = copy.copy(calibrated)
        stand_in.estimator = _CompiledForest(packed, np.asarray(forest.classes_))
        replaced.append(stand_in)
    compiled = copy.copy(estimator)
    compiled.calibrated_classifiers_ = replaced
    rng = np.random.default_rng(0)
    probe = np.nan_to_num(
        np.concatenate([_probe_rows(packed, rng) for packed in packed_of.values() if packed is not None]),
        nan=_MISSING_VALUE,
    )
    try:
        # the forests themselves (calibration's flat steps would hide a small difference), then the whole model
        same = all(
            np.array_equal(packed.predict_proba(probe), _forest_of(calibrated).predict_proba(probe))
            for calibrated, packed in zip(calibrated_classifiers, (c.estimator.packed for c in replaced), strict=True)
        ) and np.array_equal(compiled.predict_proba(probe), estimator.predict_proba(probe))
    except Exception as error:  # noqa: BLE001 - any failure of the stand-in means: use scikit-learn's own path
        warnings.warn(
            f"compiled forest unusable ({type(error).__name__}: {error}); using scikit-learn's path",
            RuntimeWarning,
            stacklevel=3,
        )
        return None
    if not same:
        warnings.warn(
            f"the compiled forest's probabilities differ from scikit-learn {sklearn.__version__}'s; "
            "using scikit-learn's (slower) path",
            RuntimeWarning,
            stacklevel=3,
        )
        return None
    return compiled


class DefectModel:
    """A trained model and its card. Use :func:`train_model` or :func:`load_model` to get one."""

    def __init__(self, estimator: CalibratedClassifierCV, card: dict[str, Any], sha256: str = "") -> None:
        self.estimator = estimator
        self.card = card
        self.sha256 = sha256
        # The forest adds its trees' votes in whatever order its worker threads finish, so with n_jobs=-1 the same
        # chip's probability could differ in the last bits between runs. Each tree is walked on one thread instead,
        # and :meth:`predict` spreads blocks of chips over the cores (a chip's result depends only on its own row).
        for calibrated in estimator.calibrated_classifiers_:
            forest = _forest_of(calibrated)
            if forest is not None:
                forest.n_jobs = 1
        # the same estimator with its forests in the compiled evaluator (cext/forest.pyx): the same probabilities
        # bit for bit, about twice as fast; None for a shape it does not take (then scikit-learn's path)
        self.compiled = _compiled_estimator(estimator)

    @property
    def threshold(self) -> float:
        return float(self.card["threshold"])

    @property
    def name(self) -> str:
        return str(self.card["name"])

    @property
    def model_id(self) -> str:
        return str(self.card["model_id"])

    def identity(self) -> dict[str, Any]:
        """What a result records about the model that produced it."""
        return {
            "kind": "model",
            "name": self.name,
            "model_id": self.model_id,
            "sha256": self.sha256,
            "threshold": self.threshold,
            "created_utc": self.card["created_utc"],
        }

    def predict(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """P(fails EL) and the most likely fail mode (ElFailMode; PASS where below the threshold) per row.

        Parameters
        ----------
        features
            (n, len(FEATURE_NAMES)) array; NaN (a feature that could not be measured) is allowed.
        """
        features = np.asarray(features, dtype=np.float32)
        if features.ndim != 2 or features.shape[1] != len(FEATURE_NAMES):
            raise ValueError(f"features must be (n, {len(FEATURE_NAMES)}), got {features.shape}")
        if features.shape[0] == 0:
            return np.zeros(0, dtype=np.float32), np.zeros(0, dtype=np.uint8)
        estimator = self.compiled if self.compiled is not None else self.estimator
        starts = range(0, features.shape[0], _PREDICT_BLOCK_ROWS)
        with ThreadPoolExecutor(max_workers=min(len(starts), os.cpu_count() or 1)) as pool:
            # the trees are walked without the GIL, so threads over blocks of rows use every core; every step is
            # row by row, so each block is finished in its thread, on data still in cache
            parts = list(
                pool.map(
                    lambda start: self._predict_block(estimator, features[start : start + _PREDICT_BLOCK_ROWS]),
                    starts,
                )
            )
        return np.concatenate([part[0] for part in parts]), np.concatenate([part[1] for part in parts])

    def _predict_block(self, estimator: CalibratedClassifierCV, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`predict` of one block of rows (float32) with ``estimator`` (the compiled one or scikit-learn's)."""
        # np.nan_to_num(features, nan=_MISSING_VALUE) (NaN to the missing value, +-inf to float32's extremes), in
        # place on a copy: nan_to_num's own isposinf/isneginf passes took longer than the forest's walk
        rows = np.array(features, dtype=np.float32)
        np.copyto(rows, np.float32(_MISSING_VALUE), where=np.isnan(rows))
        largest = np.finfo(np.float32).max
        np.clip(rows, -largest, largest, out=rows)
        probabilities = estimator.predict_proba(rows)
        classes = np.asarray(self.estimator.classes_)
        pass_column = np.flatnonzero(classes == ElFailMode.PASS)
        p_pass = probabilities[:, pass_column[0]] if pass_column.size else np.zeros(rows.shape[0])
        p_fail = np.clip(1.0 - p_pass, 0.0, 1.0).astype(np.float32)
        fail_probabilities = probabilities.copy()
        if pass_column.size:
            fail_probabilities[:, pass_column[0]] = -1.0
        mode = classes[np.argmax(fail_probabilities, axis=1)].astype(np.uint8)
        mode[p_fail < self.threshold] = ElFailMode.PASS
        return p_fail, mode

    def drift(self, features: np.ndarray) -> DriftReport:
        """Compare a wafer's features (n, F) with the training data's distribution."""
        stats = self.card["feature_quantiles"]
        psi, outside, warnings = {}, {}, []
        for index, name in enumerate(FEATURE_NAMES):
            if name not in stats["edges"]:
                continue
            column = features[:, index]
            column = column[np.isfinite(column)]
            if column.size == 0:
                continue
            edges = np.asarray(stats["edges"][name])
            expected = np.clip(np.asarray(stats["shares"][name]), 1e-4, None)
            counts = np.bincount(np.searchsorted(edges, column, side="right"), minlength=edges.size + 1)
            actual = np.clip(counts / column.size, 1e-4, None)
            psi[name] = float(np.sum((actual - expected) * np.log(actual / expected)))
            low, high = stats["range"][name]
            outside[name] = float(np.mean((column < low) | (column > high)))
            if psi[name] > DRIFT_WARN_PSI:
                warnings.append(
                    f"{name}: distribution shifted from the training wafers (PSI {psi[name]:.2f} > "
                    f"{DRIFT_WARN_PSI}); the model's predictions may be off: check the wafer and the recipe"
                )
        return DriftReport(psi=psi, out_of_range=outside, warnings=tuple(warnings))


def _split(wafers: list[TrainingWafer], fraction: float, rng: np.random.Generator) -> tuple[list[int], list[int]]:
    order = rng.permutation(len(wafers)).tolist()
    held = max(1, round(fraction * len(wafers)))
    return sorted(order[held:]), sorted(order[:held])


def _subsample(wafer: TrainingWafer, limit: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """All failing chips and at most ``limit`` good ones (good chips dominate and teach little after a point)."""
    labels = _label(wafer.el_mode)
    good = np.flatnonzero(labels == ElFailMode.PASS)
    if good.size > limit:
        keep = np.concatenate([np.flatnonzero(labels != ElFailMode.PASS), rng.choice(good, limit, replace=False)])
        keep.sort()
        return wafer.features[keep], labels[keep]
    return wafer.features, labels


def _choose_threshold(p_fail: np.ndarray, failed: np.ndarray, settings: TrainSettings) -> float:
    """The lowest threshold whose false-alarm rate on the good chips is within the target (see module docstring)."""
    good = np.sort(p_fail[~failed])
    if good.size == 0:
        return max(0.5, settings.min_threshold)
    allowed = math.floor(settings.target_false_alarm * good.size)
    # predicted fail means p >= threshold: with the threshold just above the (allowed+1)-th highest good score,
    # exactly `allowed` good chips (or fewer, with ties) are above it
    boundary = float(good[good.size - 1 - allowed]) if allowed < good.size else 0.0
    return float(max(np.nextafter(boundary, 2.0), settings.min_threshold))


def train_model(
    wafers: list[TrainingWafer], settings: TrainSettings | None = None, *, name: str = "defect model"
) -> DefectModel:
    """Fit, calibrate and threshold a model on reference wafers (see the module docstring for the procedure).

    Raises
    ------
    ValueError
        No wafers, features of the wrong width, or no EL failure with a PL signature to learn from.
    """
    settings = settings or TrainSettings()
    if not wafers:
        raise ValueError("training needs at least one EL reference wafer")
    for wafer in wafers:
        if wafer.features.ndim != 2 or wafer.features.shape[1] != len(FEATURE_NAMES):
            raise ValueError(f"{wafer.name}: features must be (n, {len(FEATURE_NAMES)}), got {wafer.features.shape}")
        if wafer.features.shape[0] != wafer.el_mode.shape[0]:
            raise ValueError(f"{wafer.name}: {wafer.features.shape[0]} feature rows for {wafer.el_mode.size} labels")
    rng = np.random.default_rng(settings.random_state)
    if len(wafers) >= 2:
        fit_index, calibration_index = _split(wafers, settings.calibration_fraction, rng)
        fit_parts = [_subsample(wafers[i], settings.max_good_chips_per_wafer, rng) for i in fit_index]
        calibration_parts = [_subsample(wafers[i], settings.max_good_chips_per_wafer, rng) for i in calibration_index]
        x_fit = np.concatenate([part[0] for part in fit_parts])
        y_fit = np.concatenate([part[1] for part in fit_parts])
        x_cal = np.concatenate([part[0] for part in calibration_parts])
        y_cal = np.concatenate([part[1] for part in calibration_parts])
        split = "by wafer"
    else:
        features, labels = _subsample(wafers[0], settings.max_good_chips_per_wafer, rng)
        held = rng.random(labels.size) < settings.calibration_fraction
        x_fit, y_fit, x_cal, y_cal = features[~held], labels[~held], features[held], labels[held]
        split = "by chip (one wafer)"
    if not (y_fit != ElFailMode.PASS).any():
        raise ValueError("the training wafers have no EL failure with a PL signature: nothing to learn")
    started = time.perf_counter()
    # A forest, not gradient boosting: the classes are nearly separable, and boosting's Newton steps on
    # separable data grow without bound (tried: 1500 of 170 k chips wrong at learning rate 0.1, 55 with strong
    # regularisation, against 3 for the forest on the same held-out wafer). 25 trees of depth 10 classify as well
    # as 100 unbounded ones on held-out wafers (agreement 99.869 % against 99.868 %) at a third of the time.
    forest = RandomForestClassifier(
        n_estimators=settings.trees,
        max_depth=settings.max_depth,
        min_samples_leaf=settings.min_samples_leaf,
        n_jobs=-1,
        random_state=settings.random_state,
    ).fit(np.nan_to_num(x_fit, nan=_MISSING_VALUE), y_fit)
    failures_held = int((y_cal != ElFailMode.PASS).sum())
    method = "isotonic" if failures_held >= 200 else "sigmoid"
    calibrated = CalibratedClassifierCV(FrozenEstimator(forest), method=method).fit(
        np.nan_to_num(x_cal, nan=_MISSING_VALUE), y_cal
    )
    card: dict[str, Any] = {
        "format": MODEL_FORMAT,
        "format_version": MODEL_FORMAT_VERSION,
        "name": name,
        "model_id": str(uuid.uuid4()),
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "software_version": software_version(),
        "sklearn_version": sklearn.__version__,
        "features": list(FEATURE_NAMES),
        "classes": [ElFailMode(int(c)).name for c in calibrated.classes_],
        "training_wafers": [
            {
                "name": wafer.name,
                "chips": int(wafer.el_mode.size),
                "el_failures": int((wafer.el_mode != ElFailMode.PASS).sum()),
                "role": "fit" if len(wafers) < 2 or i in fit_index else "calibration",
                **wafer.source,
            }
            for i, wafer in enumerate(wafers)
        ],
        "split": split,
        "calibration": method,
        "settings": {key: getattr(settings, key) for key in TrainSettings.__dataclass_fields__},
        "fit_seconds": 0.0,
        "threshold": 0.5,
        "feature_quantiles": _feature_quantiles(np.concatenate([wafer.features for wafer in wafers])),
    }
    model = DefectModel(calibrated, card)
    p_fail, _ = model.predict(x_cal)
    card["threshold"] = _choose_threshold(p_fail, y_cal != ElFailMode.PASS, settings)
    predicted = p_fail >= card["threshold"]
    card["metrics_calibration_set"] = evaluate_predictions(predicted, y_cal).summary()
    card["fit_seconds"] = round(time.perf_counter() - started, 2)
    return model


def save_model(model: DefectModel, path: str | Path) -> Path:
    """Write a model file (skops archive with the card), atomically; returns the path."""
    path = Path(path)
    temporary = path.with_name(path.name + ".partial")
    sio.dump({"card_json": json.dumps(model.card), "estimator": model.estimator}, temporary)
    temporary.replace(path)
    model.sha256 = hashlib.sha256(path.read_bytes()).hexdigest()
    return path


def load_model(path: str | Path) -> DefectModel:
    """Read a model file without executing code.

    Raises
    ------
    ModelFileError
        Missing, corrupt or foreign file; content of a type not in :data:`TRUSTED_TYPES`; a card from a newer
        format or for other features.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: no such model file")
    data = path.read_bytes()
    if not zipfile.is_zipfile(path):
        raise ModelFileError(
            f"{path}: not a plmapper model file (not a skops archive); was it saved by 'plmapper train'?"
        )
    try:
        untrusted = sio.get_untrusted_types(data=data)
    except Exception as error:  # noqa: BLE001 - skops raises many kinds on a damaged archive
        raise ModelFileError(f"{path}: damaged model file ({type(error).__name__}: {error})") from None
    refused = sorted(set(untrusted) - set(TRUSTED_TYPES))
    if refused:
        raise ModelFileError(
            f"{path}: refused: the file contains types a plmapper model never holds ({', '.join(refused)}); "
            "it may run foreign code. Use a model made by 'plmapper train'"
        )
    try:
        content = sio.loads(data, trusted=list(untrusted))
    except Exception as error:  # noqa: BLE001
        raise ModelFileError(f"{path}: damaged model file ({type(error).__name__}: {error})") from None
    if not isinstance(content, dict) or "card_json" not in content or "estimator" not in content:
        raise ModelFileError(f"{path}: not a plmapper model (no model card)")
    try:
        card = json.loads(content["card_json"])
    except (TypeError, json.JSONDecodeError):
        raise ModelFileError(f"{path}: not a plmapper model (unreadable model card)") from None
    if card.get("format") != MODEL_FORMAT:
        raise ModelFileError(f"{path}: not a plmapper model (card format {card.get('format')!r})")
    if int(card.get("format_version", 0)) > MODEL_FORMAT_VERSION:
        raise ModelFileError(
            f"{path}: model format {card['format_version']} is newer than this software reads "
            f"({MODEL_FORMAT_VERSION}); update plmapper"
        )
    if card.get("features") != list(FEATURE_NAMES):
        raise ModelFileError(
            f"{path}: the model was trained on features {card.get('features')}, this software computes "
            f"{list(FEATURE_NAMES)}; retrain it with 'plmapper train'"
        )
    estimator = content["estimator"]
    if not isinstance(estimator, CalibratedClassifierCV):
        raise ModelFileError(f"{path}: not a plmapper model (estimator is {type(estimator).__name__})")
    return DefectModel(estimator, card, hashlib.sha256(data).hexdigest())
