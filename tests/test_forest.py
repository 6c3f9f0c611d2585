"""The compiled forest (cext/forest.pyx, inspection.model.pack_forest): scikit-learn's probabilities bit for bit."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from cext.forest import forest_proba
from sklearn.calibration import CalibratedClassifierCV
from sklearn.ensemble import RandomForestClassifier
from sklearn.frozen import FrozenEstimator
from sklearn.linear_model import LogisticRegression

from inspection import model as model_module
from inspection.el_reference import ElFailMode
from inspection.features import FEATURE_NAMES
from inspection.model import DefectModel, TrainSettings, _floor_float32, pack_forest, train_model
from tests.test_classifier_parts import synthetic_wafer


def sklearn_path(model: DefectModel) -> DefectModel:
    """The same model predicting through scikit-learn's own forest (the path the compiled one must equal)."""
    reference = copy.copy(model)
    reference.compiled = None
    return reference


def around_thresholds(packed: model_module.PackedForest, rows: int, seed: int) -> np.ndarray:
    """Rows whose values are the forest's float32 thresholds, their neighbours, and the nearest float32 of the
    float64 threshold (which can lie above it): every value where a comparison made differently would flip."""
    rng = np.random.default_rng(seed)
    columns = []
    for column in range(packed.n_features):
        used = packed.threshold[(packed.feature == column) & (packed.threshold != np.inf)]
        pool = np.concatenate(
            [used, np.nextafter(used, np.float32(np.inf)), np.nextafter(used, np.float32(-np.inf)), [0.0, -999.0]]
        ).astype(np.float32)
        columns.append(rng.choice(pool, rows))
    return np.ascontiguousarray(np.stack(columns, axis=1))


def float64_thresholds_nearest(forest: RandomForestClassifier, rows: int, seed: int) -> np.ndarray:
    """Rows of each float64 threshold rounded to the *nearest* float32 (above the threshold about half the time)."""
    rng = np.random.default_rng(seed)
    columns = []
    for column in range(forest.n_features_in_):
        used = np.concatenate(
            [tree.tree_.threshold[tree.tree_.feature == column] for tree in forest.estimators_]
        ).astype(np.float32)
        columns.append(rng.choice(used, rows) if used.size else np.zeros(rows, dtype=np.float32))
    return np.ascontiguousarray(np.stack(columns, axis=1))


@pytest.fixture(scope="module")
def isotonic_model() -> DefectModel:
    # as tests/test_classifier_parts.py trains its model: three synthetic wafers, 20 trees, isotonic calibration
    model = train_model([synthetic_wafer(1), synthetic_wafer(2), synthetic_wafer(3)], TrainSettings(trees=20))
    assert model.card["calibration"] == "isotonic"
    return model


@pytest.fixture(scope="module")
def sigmoid_model() -> DefectModel:
    model = train_model([synthetic_wafer(seed, chips=1500) for seed in (4, 5, 6)], TrainSettings(trees=5))
    assert model.card["calibration"] == "sigmoid"
    return model


@pytest.mark.parametrize("name", ["isotonic_model", "sigmoid_model"])
def test_compiled_predictions_are_sklearns_bit_for_bit(name: str, request: pytest.FixtureRequest) -> None:
    model = request.getfixturevalue(name)
    assert model.compiled is not None, "the compiled forest should take a model trained by train_model"
    forest = model.estimator.calibrated_classifiers_[0].estimator.estimator
    packed = model.compiled.calibrated_classifiers_[0].estimator.packed
    held_out = synthetic_wafer(9).features.copy()
    held_out[::17, 3] = np.nan  # features that could not be measured: the model's missing value
    held_out[5, :] = np.nan
    held_out[7, 2], held_out[8, 4] = np.inf, -np.inf  # become float32's extremes, as np.nan_to_num makes them
    rows = np.concatenate(
        [held_out, around_thresholds(packed, 5000, seed=1), float64_thresholds_nearest(forest, 5000, seed=2)]
    )
    x = np.nan_to_num(rows, nan=model_module._MISSING_VALUE)
    assert np.array_equal(model.compiled.predict_proba(x), model.estimator.predict_proba(x))
    assert np.array_equal(packed.predict_proba(x), forest.predict_proba(x))
    fast, slow = model.predict(rows), sklearn_path(model).predict(rows)
    assert np.array_equal(fast[0], slow[0]) and np.array_equal(fast[1], slow[1])
    # and P(fail) is what the model's definition gives: scikit-learn on np.nan_to_num(rows, nan=missing value)
    p_pass = model.estimator.predict_proba(x)[:, list(model.estimator.classes_).index(ElFailMode.PASS)]
    assert np.array_equal(fast[0], np.clip(1.0 - p_pass, 0.0, 1.0).astype(np.float32))
    # the rows reach both sides of the operating threshold and several fail modes: a comparison that is not trivial
    assert 0 < np.count_nonzero(fast[0] >= model.threshold) < len(rows)
    assert len(np.unique(fast[1])) >= 3


def test_values_exactly_on_a_threshold_go_left() -> None:
    # integer features: every threshold is a midpoint k + 0.5, exact in float32, so values land exactly on it
    rng = np.random.default_rng(4)
    x = rng.integers(0, 20, size=(3000, 4)).astype(np.float32)
    y = (x[:, 0] + 2 * x[:, 1] > 20).astype(int) + (x[:, 2] > 15)
    forest = RandomForestClassifier(n_estimators=7, max_depth=6, random_state=0).fit(x, y)
    thresholds = np.concatenate([tree.tree_.threshold[tree.tree_.feature >= 0] for tree in forest.estimators_])
    assert np.array_equal(thresholds.astype(np.float32).astype(np.float64), thresholds)
    on = np.repeat(thresholds.astype(np.float32)[:, None], 4, axis=1)
    probe = np.concatenate([on, np.nextafter(on, np.float32(np.inf)), np.nextafter(on, np.float32(-np.inf)), x])
    assert np.array_equal(pack_forest(forest).predict_proba(probe), forest.predict_proba(probe))


def test_nan_goes_where_each_split_sends_missing_values() -> None:
    # trained with NaN: scikit-learn learns per split whether missing values go left or right
    rng = np.random.default_rng(5)
    x = rng.normal(size=(4000, 5)).astype(np.float32)
    y = (x[:, 0] > 0.3).astype(int) + (x[:, 1] < -0.5)
    x[rng.random(x.shape) < 0.15] = np.nan
    y[np.isnan(x[:, 0])] = 2  # a missing value means something, so splits send it one way or the other
    forest = RandomForestClassifier(n_estimators=12, max_depth=8, random_state=1).fit(x, y)
    packed = pack_forest(forest)
    assert packed is not None and packed.missing_right.any() and not packed.missing_right.all()
    probe = rng.normal(size=(5000, 5)).astype(np.float32)
    probe[rng.random(probe.shape) < 0.3] = np.nan
    assert np.array_equal(packed.predict_proba(probe), forest.predict_proba(probe))


def test_unbounded_depth_and_fewer_trees_than_a_group() -> None:
    rng = np.random.default_rng(6)
    x = rng.normal(size=(3000, 3)).astype(np.float32)
    y = rng.integers(0, 3, 3000)  # noise: unbounded trees grow deep and ragged
    for trees in (3, 8, 13):
        forest = RandomForestClassifier(n_estimators=trees, random_state=2).fit(x, y)
        packed = pack_forest(forest)
        assert packed.depth == max(tree.tree_.max_depth for tree in forest.estimators_) > 12
        probe = rng.normal(size=(2000, 3)).astype(np.float32)
        assert np.array_equal(packed.predict_proba(probe), forest.predict_proba(probe))


def test_result_does_not_depend_on_threads(isotonic_model: DefectModel) -> None:
    packed = isotonic_model.compiled.calibrated_classifiers_[0].estimator.packed
    x = np.nan_to_num(np.concatenate([synthetic_wafer(seed).features for seed in (13, 14)]), nan=-999.0)
    assert np.array_equal(packed.predict_proba(x, threads=1), packed.predict_proba(x, threads=2))
    assert packed.predict_proba(x[:0]).shape == (0, packed.values.shape[1])


def test_float32_rounding_down_of_thresholds() -> None:
    rng = np.random.default_rng(7)
    t = np.concatenate(
        [
            rng.normal(scale=10.0, size=20000),
            (rng.normal(size=2000).astype(np.float32) + np.float32(0)).astype(np.float64),  # exact float32s
            [0.0, -0.0, 1e-45, -1e-45, 3.5e38, -3.5e38, 1e39, -1e39, np.inf, -np.inf],
        ]
    )
    floor = _floor_float32(t)
    assert np.all(floor.astype(np.float64) <= t)
    # the next float32 up is above t: floor is the largest float32 at or below it (nothing is above +inf)
    below_inf = floor != np.inf
    with np.errstate(over="ignore"):  # the float32 above the largest one is +inf, as intended
        above = np.nextafter(floor[below_inf], np.float32(np.inf))
    assert np.all(above.astype(np.float64) > t[below_inf])
    assert np.array_equal(floor[~below_inf], np.full(1, np.inf, dtype=np.float32))
    with np.errstate(over="ignore"):  # beyond float32's range the nearest float32 is +-inf, as intended
        nearest = t.astype(np.float32)
        candidates = (
            floor,
            nearest,
            np.nextafter(nearest, np.float32(np.inf)),
            np.nextafter(nearest, np.float32(-np.inf)),
        )
    for v in candidates:
        # scikit-learn's float64 comparison and the compiled float32 one agree for every float32 near t
        assert np.array_equal(v.astype(np.float64) <= t, v <= floor)


def test_shapes_it_does_not_take_use_sklearns_path() -> None:
    rng = np.random.default_rng(8)
    x = rng.normal(size=(600, len(FEATURE_NAMES))).astype(np.float32)
    y = np.where(x[:, 0] > 0.8, ElFailMode.DEAD, ElFailMode.PASS)
    # several outputs: not a layout the compiled forest has
    multi = RandomForestClassifier(n_estimators=5, random_state=0).fit(x, np.stack([y, y], axis=1))
    assert pack_forest(multi) is None
    # a calibrated model that is not a forest
    linear = CalibratedClassifierCV(FrozenEstimator(LogisticRegression().fit(x, y)), method="sigmoid").fit(x, y)
    model = DefectModel(linear, {"threshold": 0.5})
    assert model.compiled is None
    p_fail, _ = model.predict(x)
    assert np.array_equal(p_fail, np.clip(1 - linear.predict_proba(x)[:, 0], 0, 1).astype(np.float32))


def test_two_classes_take_sklearns_binary_calibration() -> None:
    rng = np.random.default_rng(9)
    x = rng.normal(size=(4000, len(FEATURE_NAMES))).astype(np.float32)
    y = np.where(x[:, 0] + 0.3 * rng.normal(size=4000) > 1.2, ElFailMode.DEAD, ElFailMode.PASS)
    forest = RandomForestClassifier(n_estimators=9, max_depth=7, random_state=0).fit(x[:3000], y[:3000])
    for method in ("isotonic", "sigmoid"):
        calibrated = CalibratedClassifierCV(FrozenEstimator(forest), method=method).fit(x[3000:], y[3000:])
        model = DefectModel(calibrated, {"threshold": 0.3})
        assert model.compiled is not None
        assert np.array_equal(model.compiled.predict_proba(x), calibrated.predict_proba(x))


def test_a_compiled_forest_that_differs_is_refused(isotonic_model: DefectModel, monkeypatch) -> None:
    # regression guard for a scikit-learn whose forest computes differently: the load-time check falls back
    def off_by_one_ulp(forest: RandomForestClassifier) -> model_module.PackedForest:
        packed = pack_forest(forest)
        return model_module.PackedForest(**{**packed.__dict__, "values": np.nextafter(packed.values, 0.0)})

    monkeypatch.setattr(model_module, "pack_forest", off_by_one_ulp)
    with pytest.warns(RuntimeWarning, match="differ from scikit-learn"):
        model = DefectModel(isotonic_model.estimator, isotonic_model.card)
    assert model.compiled is None


def test_kernel_refuses_arrays_that_do_not_fit() -> None:
    x = np.zeros((3, 2), dtype=np.float32)
    root = np.array([0], dtype=np.int32)
    feature = np.array([0, 0, 0], dtype=np.int32)
    threshold = np.array([0.5, np.inf, np.inf], dtype=np.float32)
    left = np.array([1, 1, 2], dtype=np.int32)
    missing_right = np.zeros(3, dtype=np.uint8)
    leaf = np.array([0, 0, 1], dtype=np.int32)
    values = np.array([[1.0, 0.0], [0.0, 1.0]])
    out = np.empty((3, 2))
    forest_proba(x, root, feature, threshold, left, missing_right, leaf, values, 1, out)
    assert out.tolist() == [[1.0, 0.0]] * 3
    with pytest.raises(ValueError, match="column outside"):
        forest_proba(x, root, np.array([0, 2, 0], dtype=np.int32), threshold, left, missing_right, leaf, values, 1, out)
    with pytest.raises(ValueError, match="child is outside"):
        forest_proba(
            x, root, feature, threshold, np.array([2, 1, 2], dtype=np.int32), missing_right, leaf, values, 1, out
        )
    with pytest.raises(ValueError, match="leaf points outside"):
        forest_proba(
            x, root, feature, threshold, left, missing_right, np.array([0, 0, 2], dtype=np.int32), values, 1, out
        )
    with pytest.raises(ValueError, match="out is"):
        forest_proba(x, root, feature, threshold, left, missing_right, leaf, values, 1, np.empty((2, 2)))
