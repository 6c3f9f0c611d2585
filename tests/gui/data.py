"""Scan files for the GUI tests and screenshots: a synthetic demo-wafer scan, analysed, with spectra, a
classification from simple thresholds (the classifier's output format) and the virtual prober's EL reference."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from drivers.virtual.profile import load_profile
from drivers.virtual.synthetic import write_synthetic_scan
from drivers.virtual.world import WaferWorld, export_el_csv
from inspection.bins import DefectClass, default_bin_table
from inspection.classify import Classification, write_classification
from inspection.el_reference import import_el_csv
from inspection.pipeline import ChipFlag, ChipResults, analyze_scan
from inspection.recipe import load_recipe
from inspection.scanfile import ScanFileWriter, ScanStatus

REPO = Path(__file__).resolve().parents[2]
DEMO_PROFILE = REPO / "resources" / "profiles" / "demo-2in.toml"
DEMO_RECIPE = REPO / "resources" / "recipes" / "demo-2in.toml"
MIDDLE = slice(900, 1000)  # 100 raster lines through the middle of the demo wafer: ~25 chip rows of ~500 chips
ABORTED = 2  # the scan file's status code for "aborted" (docs/scan-file.md)


def make_review_scan(path: Path, *, lines: slice = MIDDLE, spectra: int = 12, el_reference: bool = True) -> Path:
    """A synthetic scan of the demo wafer (``lines`` of its plan), ``spectra`` spectra of measured chips, analysed
    and classified, with the virtual prober's EL results of every chip as its ``/el_reference``."""
    profile, recipe = load_profile(DEMO_PROFILE), load_recipe(DEMO_RECIPE)
    write_synthetic_scan(path, profile, recipe, lines=lines)
    analyze_scan(path)
    if spectra:
        add_spectra(path, profile, spectra)
        analyze_scan(path)
    classify_by_thresholds(path)
    if el_reference:
        csv = path.with_suffix(".csv")
        export_el_csv(WaferWorld(profile), csv)
        import_el_csv(path, csv)
    return path


def add_spectra(path: Path, profile, count: int) -> None:
    """Spectra of ``count`` measured chips spread over the scanned area, from the virtual wafer's physics."""
    with ChipResults(path) as results:
        chips = results.chips(len(results.powers_w) - 1)
    rows, cols = np.nonzero((chips["flags"] & (ChipFlag.OUTSIDE_USABLE | ChipFlag.NOT_MEASURED)) == 0)
    chosen = np.linspace(0, rows.size - 1, count).astype(int)
    world = WaferWorld(profile)
    recipe = load_recipe(DEMO_RECIPE)
    wavelength = np.linspace(recipe.spectra.start_nm, recipe.spectra.stop_nm, recipe.spectra.points)
    # the synthetic scan is complete; mark it aborted so that the writer may append to it, then complete it again
    with h5py.File(path, "r+") as file:
        file["status/code"][()] = ABORTED
    with ScanFileWriter.resume(path, fsync=False) as writer:
        for index in chosen:
            col, row = int(cols[index]), int(rows[index])
            x_um, y_um = (float(value) for value in world.layout.chip_center_um(col, row))
            power = world.pl_spectrum_w_per_nm(x_um, y_um, max(recipe.excitation.powers_w), wavelength)
            writer.write_spectrum(
                col=col, row=row, x_um=x_um, y_um=y_um, reason="grid", wavelength_nm=wavelength, power_w_per_nm=power
            )
        writer.finish(ScanStatus.COMPLETE, "synthetic scan complete")


def classify_by_thresholds(path: Path) -> Classification:
    """Defect classes from simple thresholds on the stored results (a stand-in for the classifier)."""
    recipe = load_recipe(DEMO_RECIPE)
    layout = recipe.layout()
    with ChipResults(path) as results:
        high = results.chips(len(results.powers_w) - 1)
        ratio = results.efficiency_ratio()
    intensity = high["intensity_v"]
    measured = ((high["flags"] & (ChipFlag.OUTSIDE_USABLE | ChipFlag.NOT_MEASURED)) == 0) & np.isfinite(intensity)
    classes = np.full(intensity.shape, DefectClass.NOT_INSPECTED, dtype=np.uint8)
    classes[~layout.physical_mask()] = 255
    median = float(np.median(intensity[measured]))
    median_ratio = float(np.nanmedian(ratio[measured]))
    classes[measured] = DefectClass.GOOD
    classes[measured & (high["neighbour_ratio"] > 1.5)] = DefectClass.BRIGHT
    classes[measured & (ratio < 0.5 * median_ratio)] = DefectClass.LEAKAGE
    classes[measured & (intensity < 0.6 * median)] = DefectClass.DIM
    classes[measured & (intensity < 0.1 * median)] = DefectClass.DEAD
    table = default_bin_table()
    probability = np.where(table.el_fail_of(classes), 0.9, 0.05).astype(np.float32)
    probability[~measured] = np.nan
    classification = Classification(
        defect_class=classes,
        el_fail_probability=probability,
        structure_label=np.zeros(classes.shape, dtype=np.int32),
        bin_table=table,
        classifier={"kind": "rules", "name": "test thresholds"},
    )
    write_classification(path, classification)
    return classification
