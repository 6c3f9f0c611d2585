"""Defect classification of an analysed scan, and where it is stored.

:func:`classify_scan` reads a scan file's per-chip results (``/results``, see :mod:`inspection.pipeline`), decides
one :class:`~inspection.bins.DefectClass` per chip and an EL failure probability, finds wafer-scale structures
(:mod:`inspection.spatial`), and writes it all to the file's ``/classification`` group::

    /classification              attrs: format_name "plmapper-classification", format_version 1, created_utc,
    │                                   bin_table_json (the product's BinTable), classifier_json (which rules or
    │                                   model decided: kind, name, model_id, sha256, threshold), signature (the
    │                                   wafer-level label), signature_json (its evidence), structures_json,
    │                                   counts_json ({bin code: chips}), drift_json (model input range check)
    ├── defect_class             (rows, cols) uint8: DefectClass per chip, 255 where the box has no chip
    ├── el_fail_probability      (rows, cols) float32: P(chip fails EL), NaN where not inspected
    └── structure_label          (rows, cols) int32: the wafer-scale structure a chip belongs to (0 = none)

Like ``/results`` it is written under a temporary name and renamed, so an interrupted classification leaves the
previous one (or none). :func:`read_classification` reads it back without recomputation.

How a chip's class is decided (bands of rows, so memory does not grow with the wafer):

1. Features (:mod:`inspection.features`), relative to the wafer's trends.
2. **Rules** (:mod:`inspection.rules`, thresholds from the recipe's ``[classification]`` section): a class per
   chip with no training data.
3. With a **model** (:mod:`inspection.model`): P(fails EL) per chip; chips at or above the model's threshold take
   the model's most likely fail mode (missing, dead, dim, leakage), the others are good unless a rule finds an
   optical defect that does not fail EL (bright). Without a model the rules decide and the probability is NaN.
4. **Spectra**: measured chips off the wafer's wavelength trend or broadened
   (:func:`inspection.rules.spectral_outliers`) are wavelength-shift / broadened, unless they already fail EL.
5. **Spatial**: the map of chips predicted to fail EL goes to :mod:`inspection.spatial`; failing chips in a
   particle blob or cluster, a scratch or edge damage take that class, and the wafer gets its signature label.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np

from inspection.bins import NO_CHIP, BinTable, DefectClass, bin_table_from_json, default_bin_table
from inspection.el_reference import FAIL_MODE_UNSPECIFIED, NOT_PROBED, ElFailMode, read_el_reference
from inspection.evaluation import Evaluation, evaluate_predictions
from inspection.features import FEATURE_NAMES, FeatureSettings, band_features, wafer_trends
from inspection.model import DefectModel, TrainingWafer
from inspection.pipeline import ChipResults
from inspection.recipe import ClassificationSettings, Recipe, stored_recipe
from inspection.rules import classify_features, spectral_outliers
from inspection.scanfile import ScanFile, open_hdf5
from inspection.settings import to_mapping
from inspection.spatial import SpatialSettings, StructureKind, find_defect_structures, wafer_signature
from inspection.wafer import WaferLayout

__all__ = [
    "CLASSIFICATION_FORMAT_VERSION",
    "Classification",
    "ClassifyOptions",
    "WaferEvaluation",
    "classify",
    "classify_scan",
    "evaluate_scan",
    "read_classification",
    "reference_chips",
    "scan_layout",
    "write_classification",
]

CLASSIFICATION_FORMAT_VERSION = 1
_CHUNKS = (64, 1024)


@dataclass
class Classification:
    """The classification of one wafer (all maps rows x columns of the recipe's chip box, row 0 at the bottom)."""

    defect_class: np.ndarray  # uint8 DefectClass, NO_CHIP where there is no chip
    el_fail_probability: np.ndarray  # float32, NaN where not inspected
    structure_label: np.ndarray  # int32, 0 = not part of a structure
    bin_table: BinTable
    classifier: dict[str, Any]  # kind ("rules" or "model"), name, model_id, sha256, threshold ...
    signature: str = "none"
    signature_evidence: dict[str, Any] = field(default_factory=dict)
    structures: list[dict[str, Any]] = field(default_factory=list)
    drift: dict[str, Any] = field(default_factory=dict)
    created_utc: str = ""

    @property
    def bin_codes(self) -> np.ndarray:
        """Bin code per chip (uint8, 255 = no chip)."""
        return self.bin_table.codes_of(self.defect_class)

    def bin_counts(self) -> dict[int, int]:
        """Chips per bin code (no-chip places not counted)."""
        codes = self.bin_codes
        counts = np.bincount(codes.ravel(), minlength=256)
        return {entry.code: int(counts[entry.code]) for entry in self.bin_table.bins}

    def fail_map(self) -> np.ndarray:
        """True where the chip is a reject for the product."""
        return self.bin_table.fail_of(self.defect_class)

    def yield_fraction(self) -> float:
        """Good chips over inspected chips (chips not inspected are in neither)."""
        inspected = (self.defect_class != NO_CHIP) & (self.defect_class != DefectClass.NOT_INSPECTED)
        total = int(inspected.sum())
        return float((inspected & ~self.fail_map()).sum() / total) if total else float("nan")


def write_classification(path: str | Path, classification: Classification) -> None:
    """Store ``classification`` as the scan file's ``/classification`` group (replacing an earlier one)."""
    path = Path(path)
    with open_hdf5(path, "r+") as file:
        if "classification_partial" in file:
            del file["classification_partial"]
        group = file.create_group("classification_partial")
        shape = classification.defect_class.shape
        chunks = (min(_CHUNKS[0], shape[0]), min(_CHUNKS[1], shape[1])) if all(shape) else None
        for name, values, dtype in (
            ("defect_class", classification.defect_class, np.uint8),
            ("el_fail_probability", classification.el_fail_probability, np.float32),
            ("structure_label", classification.structure_label, np.int32),
        ):
            if values.shape != shape:
                raise ValueError(f"{name}: shape {values.shape} differs from defect_class's {shape}")
            group.create_dataset(name, data=np.asarray(values, dtype=dtype), chunks=chunks, compression="lzf")
        group.attrs.update(
            {
                "format_name": "plmapper-classification",
                "format_version": CLASSIFICATION_FORMAT_VERSION,
                "created_utc": classification.created_utc or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "bin_table_json": classification.bin_table.to_json(),
                "classifier_json": json.dumps(classification.classifier),
                "signature": classification.signature,
                "signature_json": json.dumps(classification.signature_evidence),
                "structures_json": json.dumps(classification.structures),
                "counts_json": json.dumps({str(code): n for code, n in classification.bin_counts().items()}),
                "drift_json": json.dumps(classification.drift),
            }
        )
        if "classification" in file:
            del file["classification"]
        file.move("classification_partial", "classification")
        file.flush()


def read_classification(path: str | Path, *, rows: slice | None = None) -> Classification | None:
    """The stored classification of a scan file (or of a band of its rows), or None when it has none."""
    path = Path(path)
    with open_hdf5(path) as file:
        group = file.get("classification")
        if group is None:
            return None
        version = int(group.attrs.get("format_version", 0))
        if version > CLASSIFICATION_FORMAT_VERSION:
            raise ValueError(
                f"{path}: classification format {version} is newer than this software reads "
                f"({CLASSIFICATION_FORMAT_VERSION})"
            )
        band = rows if rows is not None else slice(None)
        return Classification(
            defect_class=group["defect_class"][band],
            el_fail_probability=group["el_fail_probability"][band],
            structure_label=group["structure_label"][band],
            bin_table=bin_table_from_json(group.attrs["bin_table_json"]),
            classifier=json.loads(group.attrs["classifier_json"]),
            signature=str(group.attrs["signature"]),
            signature_evidence=json.loads(group.attrs["signature_json"]),
            structures=json.loads(group.attrs["structures_json"]),
            drift=json.loads(group.attrs["drift_json"]),
            created_utc=str(group.attrs["created_utc"]),
        )


# ---------------------------------------------------------------------------------------------------------------------
# Classifying a scan
# ---------------------------------------------------------------------------------------------------------------------

_MODE_CLASS = {
    ElFailMode.MISSING: DefectClass.MISSING,
    ElFailMode.DEAD: DefectClass.DEAD,
    ElFailMode.DIM: DefectClass.DIM,
    ElFailMode.LEAKAGE: DefectClass.LEAKAGE,
}
"""The class of a chip the model predicts to fail in each mode (modes without a PL signature are never predicted)."""

_STRUCTURE_CLASS = {
    StructureKind.PARTICLE: DefectClass.PARTICLE,
    StructureKind.CLUSTER: DefectClass.PARTICLE,
    StructureKind.SCRATCH: DefectClass.SCRATCH,
    StructureKind.EDGE: DefectClass.EDGE_DAMAGE,
}
_RECLASSIFIED_BY_STRUCTURE = (DefectClass.DEAD, DefectClass.DIM, DefectClass.LEAKAGE)
"""Point classes that become the structure's class when the chip is part of one (a missing chip stays missing)."""

DRIFT_SAMPLE_CHIPS = 200_000
"""Chips sampled (evenly over the wafer) for the model's drift check."""


@dataclass(frozen=True)
class ClassifyOptions:
    """What classifies a scan: the product's bin table, an optional model, and the settings of each stage."""

    bin_table: BinTable = field(default_factory=default_bin_table)
    model: DefectModel | None = None
    rules: ClassificationSettings | None = None  # None: the scan's recipe's [classification] section
    features: FeatureSettings = field(default_factory=FeatureSettings)
    spatial: SpatialSettings = field(default_factory=SpatialSettings)


def scan_layout(path: str | Path) -> tuple[Recipe, WaferLayout]:
    """The recipe stored in a scan file and its chip layout."""
    recipe = stored_recipe(path)
    return recipe, recipe.layout()


def _plain_record(record: Any, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """A dataclass as JSON-ready values (enums by name, NaN as None)."""
    return {name: _plain_value(value) for name, value in asdict(record).items() if name not in skip}


def _plain_value(value: Any) -> Any:
    if isinstance(value, Enum):
        return value.name.lower()
    if isinstance(value, (tuple, list)):
        return [_plain_value(item) for item in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _band_classes(
    features: np.ndarray, inspected: np.ndarray, rules: ClassificationSettings, model: DefectModel | None
) -> tuple[np.ndarray, np.ndarray]:
    """Classes and P(fail) of a band of chips (steps 2 and 3 of the module docstring)."""
    rule_classes = classify_features(features, inspected, rules)
    probability = np.full(inspected.shape, np.nan, dtype=np.float32)
    if model is None:
        return rule_classes, probability
    classes = np.where(inspected, DefectClass.GOOD, DefectClass.NOT_INSPECTED).astype(np.uint8)
    rows = features[inspected]
    p_fail, mode = model.predict(rows)
    probability[inspected] = p_fail
    decided = np.full(mode.shape, DefectClass.GOOD, dtype=np.uint8)
    for fail_mode, defect_class in _MODE_CLASS.items():
        decided[mode == fail_mode] = defect_class
    # optical outliers that pass EL (bright) come from the rules where the model sees no EL failure
    rule_inspected = rule_classes[inspected]
    optical = (mode == ElFailMode.PASS) & (rule_inspected == DefectClass.BRIGHT)
    decided[optical] = DefectClass.BRIGHT
    classes[inspected] = decided
    return classes, probability


def _spectral_classes(classes: np.ndarray, spectra: np.ndarray, layout: WaferLayout, rules: ClassificationSettings):
    """Step 4: wavelength-shifted and broadened chips among the measured ones."""
    if spectra.size == 0:
        return
    cols, rows = spectra["col"].astype(np.int64), spectra["row"].astype(np.int64)
    inside = layout.in_box(cols, rows)
    spectra, cols, rows = spectra[inside], cols[inside], rows[inside]
    x_um, y_um = layout.chip_center_um(cols, rows)
    shifted, broadened, _ = spectral_outliers(spectra, np.asarray(x_um), np.asarray(y_um), rules)
    for hits, defect_class in ((broadened, DefectClass.BROADENED), (shifted, DefectClass.WAVELENGTH_SHIFT)):
        target = classes[rows[hits], cols[hits]]
        keep = np.isin(target, (DefectClass.GOOD, DefectClass.BRIGHT))
        classes[rows[hits][keep], cols[hits][keep]] = defect_class


def classify_scan(
    path: str | Path,
    options: ClassifyOptions | None = None,
    *,
    progress: Callable[[float, str], None] | None = None,
) -> Classification:
    """Classify an analysed scan file and store the result in its ``/classification`` group.

    Raises
    ------
    ValueError
        The file has no analysis results, fewer than two excitation powers, or no recipe.
    """
    classification = classify(path, options, progress=progress)
    write_classification(path, classification)
    return classification


def classify(
    path: str | Path,
    options: ClassifyOptions | None = None,
    *,
    progress: Callable[[float, str], None] | None = None,
) -> Classification:
    """Classify an analysed scan file without storing the result (:func:`classify_scan` stores it).

    Raises
    ------
    ValueError
        The file has no analysis results, fewer than two excitation powers, or no recipe.
    """
    options = options or ClassifyOptions()
    report = progress or (lambda fraction, message: None)
    path = Path(path)
    recipe, layout = scan_layout(path)
    rules = options.rules or recipe.classification
    grid = recipe.grid
    shape = (layout.row_count, layout.column_count)
    classes = np.full(shape, DefectClass.NOT_INSPECTED, dtype=np.uint8)
    probability = np.full(shape, np.nan, dtype=np.float32)
    drift_rows: list[np.ndarray] = []
    with ChipResults(path) as results:
        trends = wafer_trends(results, shape, (grid.pitch_y_um, grid.pitch_x_um), options.features)
        band = options.features.band_rows
        # sample every k-th inspected chip for the drift check, so it sees the whole wafer in bounded memory
        stride = max(1, layout.chip_count // DRIFT_SAMPLE_CHIPS)
        bands = [slice(first, min(first + band, shape[0])) for first in range(0, shape[0], band)]
        chip_size_um = (grid.chip_height_um, grid.chip_width_um)
        # the next band's features are read and computed while this one is classified (the model walks its trees
        # without the GIL), so the file, the features and the model keep both cores busy; bands are classified in
        # order, each by the same calls as one at a time
        with ThreadPoolExecutor(max_workers=1) as reader:
            upcoming = reader.submit(band_features, results, trends, bands[0], chip_size_um) if bands else None
            for index, rows in enumerate(bands):
                features, inspected = upcoming.result()
                if index + 1 < len(bands):
                    upcoming = reader.submit(band_features, results, trends, bands[index + 1], chip_size_um)
                classes[rows], probability[rows] = _band_classes(features, inspected, rules, options.model)
                if options.model is not None:
                    # features[inspected][::stride], without copying every inspected chip's row first
                    sample = np.flatnonzero(inspected.ravel())[::stride]
                    drift_rows.append(features.reshape(-1, features.shape[-1])[sample])
                report(0.8 * rows.stop / shape[0], f"classified rows {rows.start}-{rows.stop - 1}")
        spectra = results.spectra()
    _spectral_classes(classes, spectra, layout, rules)
    classes[~layout.physical_mask()] = NO_CHIP
    report(0.85, "looking for wafer-scale structures")
    el_fail = options.bin_table.el_fail_of(classes)
    # only what was inspected counts: on a partial scan the rest would dilute the wafer's point-defect level
    inspected = (classes != NO_CHIP) & (classes != DefectClass.NOT_INSPECTED)
    spatial = find_defect_structures(el_fail, layout, inspected_map=inspected, settings=options.spatial)
    for kind, defect_class in _STRUCTURE_CLASS.items():
        member = (spatial.kind_map == kind) & np.isin(classes, _RECLASSIFIED_BY_STRUCTURE)
        classes[member] = defect_class
    signature = wafer_signature(el_fail, layout, spatial.structures, inspected_map=inspected, settings=options.spatial)
    drift: dict[str, Any] = {}
    if options.model is not None and drift_rows:
        drift = options.model.drift(np.concatenate(drift_rows)).to_json()
    classifier = (
        options.model.identity()
        if options.model is not None
        else {"kind": "rules", "name": "rule layer", "settings": to_mapping(rules)}
    )
    classification = Classification(
        defect_class=classes,
        el_fail_probability=probability,
        structure_label=spatial.label_map,
        bin_table=options.bin_table,
        classifier=classifier,
        signature=signature.label.value,
        signature_evidence=_plain_record(signature, skip=("label",)),
        structures=[_plain_record(structure) for structure in spatial.structures],
        drift=drift,
    )
    report(1.0, "classification complete")
    return classification


# ---------------------------------------------------------------------------------------------------------------------
# EL reference wafers: training rows and evaluation
# ---------------------------------------------------------------------------------------------------------------------


def _el_modes(path: Path, layout: WaferLayout) -> np.ndarray:
    reference = read_el_reference(path)
    if reference is None:
        raise ValueError(
            f"{path}: no EL reference data; import the prober's results first (plmapper import el {path.name} FILE.csv)"
        )
    return reference.fail_mode_map(layout)


def reference_chips(path: str | Path, options: ClassifyOptions | None = None) -> TrainingWafer:
    """Training rows of an EL reference wafer: the features and EL fail mode of every chip that was both
    inspected and probed (chips whose failure has no stated mode are left out: nothing to learn from them)."""
    options = options or ClassifyOptions()
    path = Path(path)
    recipe, layout = scan_layout(path)
    modes = _el_modes(path, layout)
    grid = recipe.grid
    shape = (layout.row_count, layout.column_count)
    parts: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    with ChipResults(path) as results:
        trends = wafer_trends(results, shape, (grid.pitch_y_um, grid.pitch_x_um), options.features)
        band = options.features.band_rows
        for first in range(0, shape[0], band):
            rows = slice(first, min(first + band, shape[0]))
            band_modes = modes[rows]
            probed = (band_modes != NOT_PROBED) & (band_modes != FAIL_MODE_UNSPECIFIED)
            if not probed.any():
                continue
            features, inspected = band_features(results, trends, rows, (grid.chip_height_um, grid.chip_width_um))
            chosen = probed & inspected
            parts.append(features[chosen])
            labels.append(band_modes[chosen])
    features = np.concatenate(parts) if parts else np.zeros((0, len(FEATURE_NAMES)), dtype=np.float32)
    el_mode = np.concatenate(labels) if labels else np.zeros(0, dtype=np.uint8)
    with ScanFile(path) as scan:
        identity = {"lot_id": scan.lot_id, "wafer_id": scan.wafer_id}
    return TrainingWafer(path.name, features, el_mode, source={"path": str(path), **identity})


@dataclass(frozen=True)
class WaferEvaluation:
    """A classified wafer against its EL reference."""

    path: Path
    evaluation: Evaluation
    probed_not_inspected: int  # probed chips outside the usable area: in neither figure
    classifier: dict[str, Any]


def evaluate_scan(path: str | Path, classification: Classification | None = None) -> WaferEvaluation:
    """Compare a scan's classification (the stored one by default) with its EL reference, chip by chip.

    The prediction is the bin's ``el_fail`` (the product's bin table says which bins predict an EL failure); the
    chips compared are those both inspected and probed.

    Raises
    ------
    ValueError
        No classification or no EL reference in the file.
    """
    path = Path(path)
    classification = classification or read_classification(path)
    if classification is None:
        raise ValueError(f"{path}: not classified yet; run plmapper classify {path.name} first")
    _, layout = scan_layout(path)
    modes = _el_modes(path, layout)
    classes = classification.defect_class
    probed = modes != NOT_PROBED
    inspected = (classes != NO_CHIP) & (classes != DefectClass.NOT_INSPECTED)
    chosen = probed & inspected
    evaluation = evaluate_predictions(classification.bin_table.el_fail_of(classes[chosen]), modes[chosen])
    return WaferEvaluation(path, evaluation, int((probed & ~inspected).sum()), classification.classifier)
