"""What every export reads from a classified scan file, and how every export writes its output.

:func:`open_wafer` checks a scan file once (it exists, is a plmapper scan file, holds a recipe, analysis results
and a classification whose maps fit the recipe's chip box) and returns a :class:`WaferSource`: the wafer's
metadata and a band reader over its chip maps, so no export holds a whole 8" map (78 M chips) at once. Every
problem is an :class:`ExportError` with one line that names the file and says what to do.

:func:`atomic_output` is how every export writes: into a hidden temporary file next to the target, flushed to disk,
then renamed over the target. A failure half-way (an exception, a full disk) removes the temporary file and leaves
the target as it was (absent, or the previous complete export): never half a file.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import math
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from inspection.bins import NO_CHIP, BinTable, DefectClass
from inspection.classify import Classification, read_classification
from inspection.pipeline import ChipResults
from inspection.recipe import Recipe, recipe_from_text
from inspection.scanfile import ScanFile, ScanFileError, open_hdf5
from inspection.wafer import WaferLayout

__all__ = ["BAND_ROWS", "ExportError", "WaferSource", "atomic_output", "open_wafer"]

BAND_ROWS = 64
"""Chip rows read at a time (the height of the results' and the classification's HDF5 chunks)."""


class ExportError(ValueError):
    """A scan file cannot be exported (the message is one line naming the file and what to do)."""


@dataclass(frozen=True)
class WaferSource:
    """A classified scan file, checked, with its metadata; the chip maps are read in bands on demand.

    Attributes
    ----------
    path : Path
    lot_id, wafer_id, operator, software_version : str
        As the scan file says ("" where it says nothing).
    scan_created_utc : str
        When the scan started (ISO 8601, UTC).
    recipe : Recipe
    layout : WaferLayout
        The recipe's chip box; every map is ``[row, col]``, row 0 at the bottom.
    classification : Classification
        The stored classification's metadata (its maps hold zero rows: read bands with :meth:`bands`).
    bin_table : BinTable
        The table the export uses: the one stored with the classification unless the caller gave another.
    powers_w : tuple of float
        Laser power of each pass (pass ``i`` is ``powers_w[i]``).
    has_el_reference : bool
        The file holds EL prober results (``/el_reference``).
    synthetic : bool
        The scan was rendered from a virtual wafer, not measured.
    extra : dict of str to str
        The scan file's free-form settings (``settings/extra``).
    """

    path: Path
    lot_id: str
    wafer_id: str
    operator: str
    software_version: str
    scan_created_utc: str
    recipe: Recipe
    layout: WaferLayout
    classification: Classification
    bin_table: BinTable
    powers_w: tuple[float, ...]
    has_el_reference: bool
    synthetic: bool
    extra: dict[str, str]

    @property
    def slot(self) -> int | None:
        """The wafer's cassette slot when the scan recorded one (``settings/extra`` ``slot``)."""
        value = self.extra.get("slot", "")
        return int(value) if value.strip().isdigit() else None

    @property
    def station_id(self) -> str:
        """The station that scanned the wafer (``settings/extra`` ``station``), ``SYNTHETIC`` for a rendered scan."""
        if self.synthetic:
            return "SYNTHETIC"
        return self.extra.get("station", "") or "STATION"

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, columns) of the chip box."""
        return self.layout.row_count, self.layout.column_count

    @property
    def title(self) -> str:
        """``lot <lot> · wafer <wafer>`` for titles."""
        return f"lot {self.lot_id or '?'} · wafer {self.wafer_id or '?'}"

    def bands(self, *, band_rows: int = BAND_ROWS, reverse: bool = False) -> Iterator[slice]:
        """Slices of chip rows covering the box, bottom to top (top to bottom with ``reverse``)."""
        if band_rows < 1:
            raise ValueError(f"band_rows must be >= 1, got {band_rows}")
        rows = self.shape[0]
        starts = range(0, rows, band_rows)
        for start in reversed(starts) if reverse else starts:
            yield slice(start, min(start + band_rows, rows))

    @contextlib.contextmanager
    def reader(self) -> Iterator[BandReader]:
        """Open the file once for reading bands of its maps."""
        reader = BandReader(self.path)
        try:
            yield reader
        finally:
            reader.close()

    def class_lookup(self, attribute: str) -> np.ndarray:
        """A 256-entry table from :class:`DefectClass` value to the bin's ``attribute`` (bin index: ``"index"``).

        ``"index"`` maps each class to the position of its bin in :attr:`bin_table` (``len(bins)`` for no chip);
        ``"code"``, ``"fail"`` and ``"el_fail"`` as :class:`BinTable` says (255 / False for no chip).
        """
        bins = self.bin_table.bins
        if attribute == "index":
            table = np.full(256, len(bins), dtype=np.uint8)
            for member in DefectClass:
                table[member] = bins.index(self.bin_table.bin_for(member))
            return table
        null = NO_CHIP if attribute == "code" else 0
        table = np.full(256, null, dtype=np.uint8)
        for member in DefectClass:
            table[member] = getattr(self.bin_table.bin_for(member), attribute)
        return table

    def class_counts(self) -> np.ndarray:
        """Chips per :class:`DefectClass` value (int64[256]; index 255 counts the places with no chip)."""
        counts = np.zeros(256, dtype=np.int64)
        with self.reader() as reader:
            for rows in self.bands():
                counts += np.bincount(reader.classes(rows).ravel(), minlength=256)
        return counts

    def bin_counts(self, class_counts: np.ndarray | None = None) -> dict[int, int]:
        """Chips per bin code of :attr:`bin_table`, every bin present (no-chip places not counted)."""
        counts = self.class_counts() if class_counts is None else class_counts
        result = {entry.code: 0 for entry in self.bin_table.bins}
        for member in DefectClass:
            result[self.bin_table.bin_for(member).code] += int(counts[member])
        return result


class BandReader:
    """Bands of rows of one scan file's classification and results maps (one open file for all of them)."""

    def __init__(self, path: Path) -> None:
        self._file = open_hdf5(path)
        self._group = self._file["classification"]
        self.results = ChipResults(path)

    def classes(self, rows: slice) -> np.ndarray:
        """DefectClass per chip (uint8, 255 where there is no chip)."""
        return self._group["defect_class"][rows]

    def el_fail_probability(self, rows: slice) -> np.ndarray:
        """P(chip fails EL) (float32, NaN where not inspected or decided by rules)."""
        return self._group["el_fail_probability"][rows]

    def structure_label(self, rows: slice) -> np.ndarray:
        """The wafer-scale structure a chip belongs to (int32, 0 = none)."""
        return self._group["structure_label"][rows]

    def close(self) -> None:
        self.results.close()
        self._file.close()


def open_wafer(path: str | Path, *, bin_table: BinTable | None = None) -> WaferSource:
    """Check a classified scan file and read its metadata.

    Parameters
    ----------
    path
        The scan file (``/results`` from ``plmapper analyze``, ``/classification`` from ``plmapper classify``).
    bin_table
        Re-bin the stored classes with this product table (default: the table stored with the classification).

    Raises
    ------
    ExportError
        The file is missing, not a scan file, has no recipe, no analysis results, no classification, or maps that
        do not fit its recipe's chip box. One line, naming the file.
    """
    path = Path(path)
    if not path.exists():
        raise ExportError(f"{path}: no such scan file")
    try:
        with ScanFile(path) as scan:
            identity = {
                "lot_id": scan.lot_id,
                "wafer_id": scan.wafer_id,
                "operator": scan.operator,
                "software_version": scan.software_version,
                "scan_created_utc": scan.created_utc,
            }
            recipe_toml = scan.recipe_toml
            powers_w = scan.powers_w
            extra = dict(scan.extra)
            synthetic = extra.get("source", "") == "synthetic"
            has_results = "results" in scan.h5file
            has_el = "el_reference" in scan.h5file
    except ScanFileError as error:
        raise ExportError(str(error)) from None
    if not recipe_toml:
        raise ExportError(f"{path}: the file holds no recipe, so its chip grid is unknown; it cannot be exported")
    try:
        recipe = recipe_from_text(recipe_toml, source=f"{path}:/settings/recipe_toml")
    except ValueError as error:
        raise ExportError(f"{path}: its recipe does not load: {error}") from None
    if not has_results:
        raise ExportError(f"{path}: no analysis results; run plmapper analyze {path.name}, then plmapper classify")
    try:
        classification = read_classification(path, rows=slice(0, 0))
    except ValueError as error:
        raise ExportError(str(error)) from None
    if classification is None:
        raise ExportError(f"{path}: not classified yet; run plmapper classify {path.name} first")
    layout = recipe.layout()
    with open_hdf5(path) as file:
        stored_shape = file["classification/defect_class"].shape
    if stored_shape != (layout.row_count, layout.column_count):
        raise ExportError(
            f"{path}: the classification's maps are {stored_shape[0]} x {stored_shape[1]} chips but the recipe's chip "
            f"box is {layout.row_count} x {layout.column_count}; classify the file again"
        )
    return WaferSource(
        path=path,
        recipe=recipe,
        layout=layout,
        classification=classification,
        bin_table=bin_table or classification.bin_table,
        powers_w=tuple(powers_w),
        has_el_reference=has_el,
        synthetic=synthetic,
        extra=extra,
        **identity,
    )


@contextlib.contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it becomes ``path``, on any failure it is removed.

    The temporary file is hidden (``.name.<random>.partial.ext``: the extension is kept so tools that look at it
    still work), fsync'ed before the rename, and the rename replaces ``path`` in one step (POSIX ``rename``).

    Examples
    --------
    >>> import tempfile
    >>> target = Path(tempfile.mkdtemp()) / "map.txt"
    >>> with atomic_output(target) as partial:
    ...     _ = partial.write_text("complete")
    >>> target.read_text(), sorted(p.name for p in target.parent.iterdir())
    ('complete', ['map.txt'])
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.stem}.{uuid.uuid4().hex[:12]}.partial{path.suffix}")
    try:
        yield partial
        if not partial.exists():
            raise RuntimeError(f"{partial}: the writer did not create its output")
        with open(partial, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(partial, path)
    except BaseException:
        with contextlib.suppress(OSError):
            partial.unlink()
        raise
    with contextlib.suppress(OSError):  # make the new name durable where the platform allows it
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)


def utc_text(iso: str) -> str:
    """``2026-11-22T07:32:46.149Z`` → ``2026-11-22 07:32 UTC`` (the text as given when it does not parse)."""
    try:
        moment = _dt.datetime.fromisoformat(iso.replace("Z", "+00:00"))
    except ValueError:
        return iso
    return moment.astimezone(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def classifier_text(classifier: dict[str, Any]) -> str:
    """One line naming the rules or model that classified the wafer."""
    kind = classifier.get("kind", "?")
    if kind == "rules":
        return "rule layer (no model)"
    parts = [str(classifier.get("name", "model"))]
    if classifier.get("model_id"):
        parts.append(f"id {classifier['model_id']}")
    if classifier.get("sha256"):
        parts.append(f"sha256 {str(classifier['sha256'])[:12]}…")
    threshold = classifier.get("threshold")
    if isinstance(threshold, int | float) and math.isfinite(threshold):
        parts.append(f"threshold {threshold:.3f}")
    return ", ".join(parts)


def json_text(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


def grid_origin_um(layout: WaferLayout) -> tuple[float, float]:
    """Centre of chip (0, 0) in the grid frame: wafer centre at the origin, axes along the chip grid (µm).

    With the grid's rotation 0 (the usual case) this is the chip's wafer coordinates.
    """
    x_um, y_um = layout.chip_center_um(0, 0)
    (exx, exy), (eyx, eyy) = layout.grid.axes
    return float(x_um * exx + y_um * exy), float(x_um * eyx + y_um * eyy)


def to_grid_frame(layout: WaferLayout, x_um: np.ndarray, y_um: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Wafer coordinates turned into the grid frame (µm)."""
    (exx, exy), (eyx, eyy) = layout.grid.axes
    return x_um * exx + y_um * exy, x_um * eyx + y_um * eyy


def mark_angle_deg(layout: WaferLayout) -> float:
    """Direction of the primary flat (or the notch) seen in the grid frame, counter-clockwise from +x (270 = down)."""
    substrate = layout.substrate
    angle = substrate.notch_angle_deg if substrate.has_notch else substrate.primary_flat_angle_deg
    return (angle - layout.grid.rotation_deg) % 360.0


def mark_side(layout: WaferLayout) -> str:
    """``DOWN``, ``LEFT``, ``UP`` or ``RIGHT``: the side of the map the primary flat (or notch) is nearest to."""
    sides = ("RIGHT", "UP", "LEFT", "DOWN")
    return sides[round(mark_angle_deg(layout) / 90.0) % 4]
