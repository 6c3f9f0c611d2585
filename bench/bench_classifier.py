"""How well the defect classifier predicts the EL test, on whole virtual 2" reference wafers, and how fast it runs.

Training wafers: the demo profile with other seeds and three defect mixes (the profile's own, one with many dim and
weakly leaking chips and partly transparent particles, one with many leaky and missing chips). Held-out wafers:
other seeds and a fourth mix none of them had (dim chips near the EL limit, weaker shunts, dense particles and
scratches). Every wafer is scanned synthetically (the virtual station's physics and noise), analysed, and EL-probed
by the virtual prober (every chip; its CSV imported as the EL reference). The model is trained with the same call
as ``plmapper train``, evaluated with the same call as ``plmapper evaluate``; the rule layer alone is evaluated too.

Speed: classifying one wafer (features, model, spatial analysis; not stored) against reading its per-chip results
(the pass records and the efficiency ratio it has to read anyway), measured in the same run.

Run: ``PYTHONPATH=. .venv/bin/python bench/bench_classifier.py`` (first run renders 11 wafers into
bench/data/classifier, about 4 minutes; later runs reuse them).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from drivers.virtual.profile import load_profile
from drivers.virtual.synthetic import write_reference_wafer
from inspection.classify import ClassifyOptions, classify, evaluate_scan, reference_chips
from inspection.evaluation import merge_evaluations
from inspection.model import train_model
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
        f"{chips / classify_s / 1e3:,.0f} k chips/s"
    )


if __name__ == "__main__":
    main()
