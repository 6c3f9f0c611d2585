"""How well the defect classifier predicts the EL test, on whole virtual 2" reference wafers, and how fast it runs.

Training wafers: the demo profile with other seeds and three defect mixes (the profile's own, one with many dim and
weakly leaking chips and partly transparent particles, one with many leaky and missing chips). Held-out wafers:
other seeds and a fourth mix none of them had (dim chips near the EL limit, weaker shunts, dense particles and
scratches). Every wafer is scanned synthetically (the virtual station's physics and noise), analysed, and EL-probed
by the virtual prober (every chip; its CSV imported as the EL reference). The model is trained with the same call
as ``plmapper train``, evaluated with the same call as ``plmapper evaluate``; the rule layer alone is evaluated too.

Speed: classifying one wafer (features, model, spatial analysis; not stored) against reading its per-chip results
(the pass records and the efficiency ratio it has to read anyway), measured in the same run. The model's
prediction on the held-out wafers' chips through scikit-learn's own forest (the baseline) and through the compiled
one (cext/forest.pyx), same rows, same run, with a check that both give the same bits. With the 8" example results
(bench/data/gui-8in-results.h5, 74 M chips) present: classifying it with the model, scikit-learn's path against the
compiled one, each phase timed. Every speed figure is printed with the machine's load average.

Run: ``PYTHONPATH=. .venv/bin/python bench/bench_classifier.py`` (first run renders 11 wafers into
bench/data/classifier, about 4 minutes; later runs reuse them).
"""

from __future__ import annotations

import copy
import dataclasses
import os
import time
from pathlib import Path

import numpy as np

from drivers.virtual.profile import load_profile
from drivers.virtual.synthetic import write_reference_wafer
from inspection import classify as classify_module
from inspection.classify import ClassifyOptions, classify, evaluate_scan, reference_chips
from inspection.evaluation import merge_evaluations
from inspection.model import DefectModel, train_model
from inspection.pipeline import ChipResults
from inspection.recipe import load_recipe

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "bench" / "data" / "classifier"
PROFILE = REPO / "resources" / "profiles" / "demo-2in.toml"
RECIPE = REPO / "resources" / "recipes" / "demo-2in.toml"

MIXES: dict[str, dict] = {
    "profile": {},
    "dim and weak leaks": {
        "dim_fraction": 0.01,
        "dim_a_factor": (1.5, 40.0),
        "leaky_fraction": 0.004,
        "leak_strength": (0.1, 6.0),
        "particles_per_cm2": 0.8,
        "particle_transmission": (0.02, 1.0),
        "scratches_per_cm2": 0.1,
    },
    "leaky and missing": {
        "dead_fraction": 0.004,
        "dim_fraction": 0.006,
        "dim_a_factor": (2.0, 20.0),
        "leaky_fraction": 0.008,
        "leak_strength": (0.1, 3.0),
        "particles_per_cm2": 0.5,
        "particle_transmission": (0.1, 1.0),
        "scratches_per_cm2": 0.15,
        "missing_fraction": 0.002,
    },
    "held out": {
        "dim_fraction": 0.008,
        "dim_a_factor": (2.0, 30.0),
        "leaky_fraction": 0.006,
        "leak_strength": (0.2, 5.0),
        "particles_per_cm2": 1.0,
        "particle_transmission": (0.02, 0.9),
        "scratches_per_cm2": 0.2,
    },
}
TRAINING = [(101, "profile"), (102, "profile"), (103, "profile"), (104, "profile")]
TRAINING += [(111, "dim and weak leaks"), (113, "dim and weak leaks")]
TRAINING += [(112, "leaky and missing"), (114, "leaky and missing")]
HELD_OUT = [(201, "held out"), (202, "held out"), (203, "held out")]
WAFER_8IN = REPO / "bench" / "data" / "gui-8in-results.h5"


def wafer(seed: int, mix: str) -> Path:
    path = DATA / f"ref-{seed}.h5"
    if path.exists():
        return path
    DATA.mkdir(parents=True, exist_ok=True)
    profile = load_profile(PROFILE)
    defects = dataclasses.replace(profile.defects, **MIXES[mix])
    profile = dataclasses.replace(profile, seed=seed, name=f"demo 2-inch seed {seed} ({mix})", defects=defects)
    started = time.perf_counter()
    write_reference_wafer(path, profile, load_recipe(RECIPE))
    print(f"  rendered {path.name} ({mix}) in {time.perf_counter() - started:.0f} s", flush=True)
    return path


def read_results(path: Path) -> None:
    with ChipResults(path) as results:
        for index in range(len(results.powers_w)):
            results.chips(index)
        results.efficiency_ratio()


def main() -> None:
    training = [wafer(seed, mix) for seed, mix in TRAINING]
    held_out = [wafer(seed, mix) for seed, mix in HELD_OUT]
    started = time.perf_counter()
    model = train_model([reference_chips(path) for path in training], name="bench model")
    print(
        f"trained on {len(training)} wafers in {time.perf_counter() - started:.0f} s; threshold {model.threshold:.3f}"
    )
    rows = []
    for name, options in (("model", ClassifyOptions(model=model)), ("rules only", ClassifyOptions())):
        evaluations = [evaluate_scan(path, classify(path, options)).evaluation for path in held_out]
        total = merge_evaluations(evaluations)
        rows.append((name, total))
    print(
        f'\nheld-out wafers: {len(held_out)} × 2" ({rows[0][1].chips:,} chips, {rows[0][1].el_failures:,} EL failures)'
    )
    print("| classifier | agreement with EL | recall of PL-visible EL failures | false alarms (of EL-good) | MCC |")
    print("|---|---|---|---|---|")
    for name, total in rows:
        print(
            f"| {name} | {total.accuracy:.3%} | {total.recall_detectable:.2%} | {total.false_alarm_rate:.3%} | "
            f"{total.mcc:.4f} |"
        )
    total = rows[0][1]
    print(
        f"ceiling (failures without a PL signature: {total.no_signature_failures:,}): agreement "
        f"{total.agreement_ceiling:.3%}"
    )
    for mode, figures in total.per_mode.items():
        print(f"  {mode:<16} {figures.chips:>6,} chips, recall {figures.recall:.2%}")

    path = held_out[0]
    timings = {"read": [], "classify": []}
    for _ in range(3):
        started = time.perf_counter()
        read_results(path)
        timings["read"].append(time.perf_counter() - started)
        started = time.perf_counter()
        classify(path, ClassifyOptions(model=model))
        timings["classify"].append(time.perf_counter() - started)
    read_s, classify_s = min(timings["read"]), min(timings["classify"])
    chips = total.chips / len(held_out)
    print(
        f'\nspeed, one 2" wafer ({chips:,.0f} inspected chips): reading its results {read_s:.2f} s (baseline); '
        f"classifying {classify_s:.2f} s = {classify_s / read_s:.1f}× the read, "
        f"{chips / classify_s / 1e3:,.0f} k chips/s ({load()})"
    )
    predict_speed(model, np.concatenate([reference_chips(path).features for path in held_out]))
    if WAFER_8IN.exists():
        classify_8in(model)


def load() -> str:
    return "load average {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())


def sklearn_path(model: DefectModel) -> DefectModel:
    """The same model predicting through scikit-learn's own forest (the baseline of the compiled one)."""
    reference = copy.copy(model)
    reference.compiled = None
    return reference


def predict_speed(model: DefectModel, rows: np.ndarray) -> None:
    """The model's prediction on the same rows through scikit-learn's forest and through the compiled one."""
    timings: dict[str, list[float]] = {"scikit-learn": [], "compiled": []}
    results = {}
    for _ in range(3):
        for name, predictor in (("scikit-learn", sklearn_path(model)), ("compiled", model)):
            started = time.perf_counter()
            results[name] = predictor.predict(rows)
            timings[name].append(time.perf_counter() - started)
    same = all(np.array_equal(a, b) for a, b in zip(results["scikit-learn"], results["compiled"], strict=True))
    base, fast = min(timings["scikit-learn"]), min(timings["compiled"])
    print(
        f"\nmodel prediction, {len(rows):,} chips: scikit-learn's forest {base:.2f} s (baseline), compiled "
        f"{fast:.2f} s = {base / fast:.1f}× faster, {len(rows) / fast / 1e6:.1f} M chips/s; same bits: {same} "
        f"({load()}, {os.cpu_count()} cores)"
    )


def classify_8in(model: DefectModel) -> None:
    """Classify the 8" example wafer with the model (not stored): scikit-learn's path, then the compiled one."""
    print(f'\n8" wafer ({WAFER_8IN.name}), classification with the model, phases timed:')
    results = {}
    totals = {}
    for name, predictor in (("scikit-learn", sklearn_path(model)), ("compiled", model)):
        phases = {"wafer_trends": 0.0, "predict": 0.0}
        trends = classify_module.wafer_trends
        predict = predictor.predict

        def timed_trends(*args, _phases=phases, _trends=trends, **kwargs):
            started = time.perf_counter()
            value = _trends(*args, **kwargs)
            _phases["wafer_trends"] += time.perf_counter() - started
            return value

        def timed_predict(features, _phases=phases, _predict=predict):
            started = time.perf_counter()
            value = _predict(features)
            _phases["predict"] += time.perf_counter() - started
            return value

        classify_module.wafer_trends = timed_trends
        predictor.predict = timed_predict
        try:
            started = time.perf_counter()
            results[name] = classify(WAFER_8IN, ClassifyOptions(model=predictor))
            totals[name] = time.perf_counter() - started
        finally:
            classify_module.wafer_trends = trends
            del predictor.predict
        chips = int(np.count_nonzero(np.isfinite(results[name].el_fail_probability)))
        print(
            f"  {name:<13} {totals[name]:6.1f} s ({chips / totals[name] / 1e6:.2f} M chips/s): wafer trends "
            f"{phases['wafer_trends']:.1f} s, model {phases['predict']:.1f} s ({load()})"
        )
    same = all(
        np.array_equal(getattr(results["scikit-learn"], field), getattr(results["compiled"], field), equal_nan=True)
        for field in ("defect_class", "el_fail_probability", "structure_label")
    )
    print(f"  compiled = {totals['scikit-learn'] / totals['compiled']:.1f}× faster; same classification: {same}")


if __name__ == "__main__":
    main()
