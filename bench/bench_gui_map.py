"""Benchmark: opening and panning/zooming an 8"-size wafer map in the operator GUI.

The bench writes (once, kept in ``bench/data/``) a scan file of the 8" example recipe (``green-8in``: a chip box of
9,999 × 9,999, 73.9 M usable chips) holding no raw lines but synthetic analysis results in the documented
``/results`` format (two passes of ``CHIP_DTYPE``, the efficiency ratio) and a ``/classification`` group, written
directly with h5py. It then measures, in this process:

* the baseline: a plain h5py read of the shown measurement (one field of one pass, the whole chip box), band by band;
* the GUI's open: from File ▸ Open to the whole-wafer map on screen (metadata, the first overview level, the
  image drawn), with the real main window under Qt;
* the full overview build that refines the first map in the background;
* a redraw after each of a series of pan and zoom steps, from the whole wafer down to single chips (the detail
  window read from the file at full resolution when zoomed in).

Run: ``python bench/bench_gui_map.py`` (``QT_QPA_PLATFORM=offscreen`` is set unless a display is given).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from PySide6.QtCore import QRectF, QSettings  # noqa: E402
from PySide6.QtWidgets import QApplication  # noqa: E402

import app.gui  # noqa: E402, F401 - the PySide6 guard (app/gui/qtcompat.py)
from app.gui.mainwindow import MainWindow  # noqa: E402
from inspection.bins import DefectClass, default_bin_table  # noqa: E402
from inspection.classify import Classification, write_classification  # noqa: E402
from inspection.pipeline import CHIP_DTYPE, RESULTS_FORMAT_VERSION, ChipFlag  # noqa: E402
from inspection.plan import LINE_DTYPE  # noqa: E402
from inspection.recipe import load_recipe, recipe_to_toml  # noqa: E402
from inspection.scanfile import ScanFileWriter, ScanStatus  # noqa: E402

DATA = REPO / "bench" / "data"
RECIPE = REPO / "resources" / "recipes" / "green-8in.toml"
BAND_ROWS = 512


def results_file(path: Path = DATA / "gui-8in-results.h5") -> Path:
    """The synthetic 8" results file, written on first use (about 6 GB)."""
    if path.exists():
        return path
    DATA.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial.h5")
    partial.unlink(missing_ok=True)
    started = time.perf_counter()
    print(f"writing {path.name} (once) ...", flush=True)
    write_results_file(partial)
    partial.rename(path)
    print(f"  written in {time.perf_counter() - started:.0f} s", flush=True)
    return path


def write_results_file(path: Path, recipe_path: Path = RECIPE, *, seed: int = 8) -> None:
    """A scan file of ``recipe_path`` with synthetic ``/results`` and ``/classification`` and no raw lines."""
    recipe = load_recipe(recipe_path)
    layout = recipe.layout()
    shape = (layout.row_count, layout.column_count)
    powers = recipe.excitation.powers_w
    writer = ScanFileWriter.create(
        path,
        recipe_toml=recipe_to_toml(recipe),
        station_toml="",
        identities={},
        plan_lines=np.zeros(0, dtype=LINE_DTYPE),
        powers_w=powers,
        plan_summary="synthetic results for the GUI benchmark (no raw lines)",
        operator="bench",
        lot_id="BENCH",
        wafer_id="W8-SYNTH",
        software_version="bench",
        extra={"source": "synthetic"},
        fsync=False,
    )
    with writer:
        writer.finish(ScanStatus.COMPLETE, "synthetic results only")
    rng = np.random.default_rng(seed)
    usable = layout.usable_mask()
    classes = np.full(shape, DefectClass.NOT_INSPECTED, dtype=np.uint8)
    classes[~layout.physical_mask()] = 255
    chunks = (64, 1024)
    with h5py.File(path, "r+") as file:
        group = file.create_group("results")
        group.attrs.update(
            {
                "format_name": "plmapper-results",
                "format_version": RESULTS_FORMAT_VERSION,
                "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "settings_json": json.dumps({"memory_mb": 512.0}),
                "placement_json": json.dumps({"offset_x_um": 0.0, "offset_y_um": 0.0, "rotation_deg": 0.0}),
                "passes_json": json.dumps([{"power_w": power, "lines": 0} for power in powers]),
                "powers_w": np.asarray(powers, dtype=np.float64),
            }
        )
        datasets = []
        for index, power in enumerate(powers):
            dataset = group.create_dataset(f"pass_{index:03d}/chips", shape=shape, dtype=CHIP_DTYPE, chunks=chunks)
            dataset.attrs["power_w"] = power
            datasets.append(dataset)
        ratio = group.create_dataset("efficiency_ratio", shape=shape, dtype="<f4", chunks=chunks)
        group.create_dataset("spectra", data=np.zeros(0, dtype=[("col", "<i4"), ("row", "<i4")]))
        cols = np.arange(shape[1], dtype=np.float32) - shape[1] / 2
        for first in range(0, shape[0], BAND_ROWS):
            last = min(first + BAND_ROWS, shape[0])
            rows = np.arange(first, last, dtype=np.float32)[:, None] - shape[0] / 2
            radius = np.sqrt(rows**2 + cols[None, :] ** 2) / (shape[0] / 2)
            band_usable = usable[first:last]
            gradient = 1.0 - 0.25 * radius**2
            noise = rng.normal(1.0, 0.03, size=radius.shape).astype(np.float32)
            defect = rng.random(radius.shape, dtype=np.float32)
            dead, leaky = defect < 0.01, (defect >= 0.01) & (defect < 0.02)
            band_classes = classes[first:last]
            band_classes[band_usable] = DefectClass.GOOD
            band_classes[band_usable & dead] = DefectClass.DEAD
            band_classes[band_usable & leaky] = DefectClass.LEAKAGE
            low_ratio = np.where(leaky, 0.3, 1.0).astype(np.float32)
            for index, power in enumerate(powers):
                chips = np.zeros(radius.shape, dtype=CHIP_DTYPE)
                scale = 0.05 if index == 0 else 1.0
                intensity = (2.0 * scale * gradient * noise * np.where(dead, 0.01, 1.0)).astype(np.float32)
                if index == 0:
                    intensity *= low_ratio
                intensity[~band_usable] = np.nan
                chips["intensity_v"] = intensity
                chips["peak_v"] = intensity * 1.2
                chips["integrated_v_um2"] = intensity * 150.0
                chips["street_v"] = 0.01
                chips["efficiency_v_per_w"] = intensity / power
                chips["neighbour_ratio"] = noise * np.where(dead, 0.01, 1.0)
                chips["core_samples"] = np.where(band_usable, 12, 0)
                chips["flags"] = np.where(band_usable, 0, ChipFlag.OUTSIDE_USABLE | ChipFlag.NOT_MEASURED)
                datasets[index][first:last] = chips
            band_ratio = (low_ratio * noise).astype(np.float32)
            band_ratio[~band_usable] = np.nan
            ratio[first:last] = band_ratio
    probability = np.where(np.isin(classes, [DefectClass.DEAD, DefectClass.LEAKAGE]), 0.95, 0.02).astype(np.float32)
    probability[classes >= DefectClass.NOT_INSPECTED] = np.nan
    write_classification(
        path,
        Classification(
            defect_class=classes,
            el_fail_probability=probability,
            structure_label=np.zeros(shape, dtype=np.int32),
            bin_table=default_bin_table(),
            classifier={"kind": "rules", "name": "bench thresholds"},
        ),
    )


def baseline_read_s(path: Path) -> float:
    """A plain h5py read of the shown measurement (intensity at the highest power), whole chip box, in bands."""
    started = time.perf_counter()
    with h5py.File(path, "r", locking=False) as file:
        dataset = file["results/pass_001/chips"]
        reader = dataset.fields("intensity_v")
        for first in range(0, dataset.shape[0], BAND_ROWS):
            reader[first : first + BAND_ROWS]
    return time.perf_counter() - started


def measure_gui(path: Path) -> dict[str, object]:
    """Open the file in the real main window and pan/zoom it; seconds per step."""
    application = QApplication.instance() or QApplication([])
    settings = QSettings(str(Path(tempfile.mkdtemp()) / "bench.ini"), QSettings.Format.IniFormat)
    window = MainWindow(settings=settings)
    window.resize(1600, 960)
    window.show()
    application.processEvents()
    review = window.review

    def wait(condition, timeout_s: float = 60.0) -> None:
        deadline = time.perf_counter() + timeout_s
        while not condition():
            application.processEvents()
            if time.perf_counter() > deadline:
                raise TimeoutError("the GUI did not get there in time")
            time.sleep(0.001)

    figures: dict[str, object] = {}
    started = time.perf_counter()
    window.open_file(path)
    wait(lambda: review.image is not None)
    window.review.map.graphics.grab()  # drawn
    figures["open_s"] = time.perf_counter() - started
    figures["overview"] = review.image.shape
    started = time.perf_counter()
    review.choose_layer("pass1:intensity_v")
    wait(lambda: review.layer is not None and review.layer.key == "pass1:intensity_v")
    window.review.map.graphics.grab()
    figures["switch_s"] = time.perf_counter() - started
    wait(lambda: review.defect_model.rowCount() > 0, 120.0)
    figures["defects_s"] = time.perf_counter() - started
    figures["defects"] = review.defect_model.rowCount()

    view = review.map.view
    layout = review.document.layout
    radius = layout.substrate.radius_um
    steps = []
    # zoom from the whole wafer to 40 chips across, around a point off the centre, then pan at the finest zoom
    for half in np.geomspace(radius * 1.03, 20 * layout.grid.pitch_x_um, 12):
        steps.append(("zoom", QRectF(31_000.0 - half, -17_000.0 - half, 2 * half, 2 * half)))
    for shift in range(1, 7):
        half = 20 * layout.grid.pitch_x_um
        steps.append(("pan", QRectF(31_000.0 - half + shift * 300.0, -17_000.0 - half, 2 * half, 2 * half)))
    for shift in range(1, 5):
        half = radius / 4
        steps.append(("pan wide", QRectF(-half + shift * 2000.0, -half, 2 * half, 2 * half)))
    timings: dict[str, list[float]] = {}
    for kind, rect in steps:
        started = time.perf_counter()
        view.setRange(rect, padding=0)
        application.processEvents()
        review.map._range_settled()  # what the 60 ms debounce timer calls
        wait(lambda: not review._detail_pending)
        application.processEvents()
        review.map.graphics.grab()
        timings.setdefault(kind, []).append(time.perf_counter() - started)
        if os.environ.get("BENCH_VERBOSE"):
            detail = review.map.detail_box
            print(f"  {kind} {rect.width():10.0f} µm wide: {timings[kind][-1] * 1e3:7.1f} ms, detail {detail}")
    figures["timings"] = timings
    figures["detail_shown"] = review.map.detail_box
    window.close()
    return figures


def main() -> None:
    path = results_file()
    baseline = min(baseline_read_s(path) for _ in range(2))
    gui = measure_gui(path)
    print(f'8" map, chip box {gui["overview"]} overview pixels of 9,999 x 9,999 chips (green-8in recipe)')
    print(f"baseline: plain h5py read of intensity_v, whole box in 64-row bands   {baseline:6.2f} s")
    print(
        f"GUI: File > Open to the whole-wafer bin map drawn                     {gui['open_s']:6.2f} s  "
        f"({gui['open_s'] / baseline:.2f} x baseline; target <= 3 s)"
    )
    print(
        f"GUI: switch to intensity at 20 mW, drawn                              {gui['switch_s']:6.2f} s  "
        f"({gui['switch_s'] / baseline:.2f} x baseline)"
    )
    print(f"GUI: defect table of {gui['defects']:,} failing chips listed (background)    {gui['defects_s']:6.2f} s")
    for kind, values in gui["timings"].items():
        print(f"redraw after {kind:<9} median {np.median(values) * 1e3:7.1f} ms, max {max(values) * 1e3:7.1f} ms "
              f"over {len(values)} steps (median {np.median(values) / baseline:.3f} x baseline)")  # fmt: skip


if __name__ == "__main__":
    main()
