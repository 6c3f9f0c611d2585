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
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from inspection.bins import NO_CHIP, BinTable, DefectClass, bin_table_from_json

__all__ = [
    "CLASSIFICATION_FORMAT_VERSION",
    "Classification",
    "read_classification",
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
    with h5py.File(path, "r+") as file:
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
    with h5py.File(path, "r") as file:
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
