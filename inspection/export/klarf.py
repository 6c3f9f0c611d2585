"""KLARF defect files (KLA Results File, versions 1.2 and 1.8) of a classified wafer.

Convention (docs/exports.md has the full story): **every chip is a die.** The die grid is the recipe's chip grid:
``DiePitch`` = chip pitch, die index ``(XINDEX, YINDEX)`` = chip index ``(col, row)`` (lower-left origin, x right,
y up, as everywhere in plmapper). Each die's cell is its pitch rectangle centred on the chip; ``DieOrigin 0 0`` puts
the die's reference point at the cell's lower-left corner. **One defect record per failing chip** (its bin has
``fail = true``): it covers the whole chip, so ``XREL, YREL`` = the chip centre within its cell (half the pitch),
``XSIZE, YSIZE`` = the chip's size, ``DEFECTAREA`` = its area (µm²), ``DSIZE`` = √area. ``CLASSNUMBER`` is the bin
code, with ``ClassLookup`` from the bin table. Extra columns: ``CLUSTERNUMBER`` = the wafer-scale structure the
chip belongs to (0 = none), ``ROUGHBINNUMBER`` = the defect group (1 optical, 2 electrical, 3 appearance),
``FINEBINNUMBER`` = the classifier's :class:`~inspection.bins.DefectClass` value. All lengths are µm.

``SampleCenterLocation`` is the wafer centre in die coordinates, so a reader's usual conversion
``x = XINDEX·DiePitchX + XREL − SampleCenterX`` gives the chip centre in wafer coordinates (µm from the wafer
centre, +x right, +y up, primary flat or notch ``OrientationMarkLocation`` = DOWN by default). With a rotated chip
grid these are coordinates along the grid axes.

The defect list is streamed band by band: an 8" wafer with millions of failing chips never sits in memory.

Examples
--------
``write_klarf("scans/W01.h5", "exports/W01.klarf")`` writes KLARF 1.2; ``version="1.8"`` the nested 1.8 form.
"""

from __future__ import annotations

import datetime as _dt
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TextIO

import numpy as np

from inspection.bins import NO_CHIP, BinTable, DefectClass
from inspection.export._source import (
    WaferSource,
    atomic_output,
    grid_origin_um,
    mark_side,
    open_wafer,
)

__all__ = ["KLARF_DEFECT_COLUMNS", "KlarfSummary", "write_klarf"]

KLARF_DEFECT_COLUMNS = (
    "DEFECTID",
    "XREL",
    "YREL",
    "XINDEX",
    "YINDEX",
    "XSIZE",
    "YSIZE",
    "DEFECTAREA",
    "DSIZE",
    "CLASSNUMBER",
    "TEST",
    "CLUSTERNUMBER",
    "ROUGHBINNUMBER",
    "FINEBINNUMBER",
)
"""The columns of every defect record, in order (``DefectRecordSpec``)."""

_COLUMN_TYPES_18 = ("int32", "float", "float", "int32", "int32", "float", "float", "float", "float") + ("int32",) * 5

KLARF_TEST = 1
"""The one inspection test of the file (``InspectionTest``, the defects' ``TEST``)."""

STEP_ID = "PL-INSPECTION"


@dataclass(frozen=True)
class KlarfSummary:
    """What the summary list of a written file says (one test).

    Attributes
    ----------
    defects : int
        Defect records (failing chips).
    inspected_dies : int
        Chips inspected (on the substrate, inside the usable area, measured): ``NDIE``.
    area_per_test_um2 : float
        Inspected area: inspected chips × pitch area (``AreaPerTest``).
    defect_density_per_cm2 : float
        ``DEFDENSITY``: defects per cm² of inspected area.
    """

    defects: int
    inspected_dies: int
    area_per_test_um2: float
    defect_density_per_cm2: float


def _string(value: str) -> str:
    """A quoted KLARF string: no quotes, semicolons or line breaks inside."""
    cleaned = re.sub(r"[\"\r\n;]", " ", value).strip()
    return f'"{cleaned}"'


def _token(value: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", value) or "NONE"


def _timestamp(moment: _dt.datetime) -> tuple[str, str]:
    """KLARF date and time: ``mm-dd-yy``, ``hh:mm:ss`` (UTC)."""
    moment = moment.astimezone(_dt.UTC)
    return moment.strftime("%m-%d-%y"), moment.strftime("%H:%M:%S")


def _scan_moment(iso: str) -> _dt.datetime:
    try:
        return _dt.datetime.fromisoformat(iso.replace("Z", "+00:00"))
    except ValueError:
        return _dt.datetime.now(_dt.UTC)


def _fmt(value: float) -> str:
    return f"{value:.6e}"


@dataclass(frozen=True)
class _Header:
    """What both KLARF versions say about the wafer, worked out once."""

    pitch_x_um: float
    pitch_y_um: float
    centre_x_um: float  # SampleCenterLocation: the wafer centre in die coordinates
    centre_y_um: float
    file_date: str
    file_time: str
    result_date: str
    result_time: str
    recipe: str
    station: str  # quoted
    mark_type: str  # FLAT or NOTCH
    mark_side: str  # DOWN, LEFT, UP, RIGHT
    size_mm: int
    slot: int


def _header(source: WaferSource) -> _Header:
    grid = source.layout.grid
    origin_x_um, origin_y_um = grid_origin_um(source.layout)
    file_date, file_time = _timestamp(_dt.datetime.now(_dt.UTC))
    result_date, result_time = _timestamp(_scan_moment(source.scan_created_utc))
    substrate = source.layout.substrate
    return _Header(
        pitch_x_um=grid.pitch_x_um,
        pitch_y_um=grid.pitch_y_um,
        centre_x_um=grid.pitch_x_um / 2.0 - origin_x_um,
        centre_y_um=grid.pitch_y_um / 2.0 - origin_y_um,
        file_date=file_date,
        file_time=file_time,
        result_date=result_date,
        result_time=result_time,
        recipe=source.recipe.name or "recipe",
        station=_string(_token(source.station_id)),
        mark_type="NOTCH" if substrate.has_notch else "FLAT",
        mark_side=mark_side(source.layout),
        size_mm=round(substrate.diameter_mm),
        slot=source.slot if source.slot is not None else 1,
    )


def _group_lookup() -> np.ndarray:
    table = np.zeros(256, dtype=np.uint8)
    for member in DefectClass:
        table[member] = int(member.group)
    return table


def _defect_rows(source: WaferSource) -> Iterator[str]:
    """Text of the defect records, ``"id xrel yrel ..."`` without the leading space, band by band."""
    grid = source.layout.grid
    fixed_rel = f"{grid.pitch_x_um / 2.0:.3f} {grid.pitch_y_um / 2.0:.3f}"
    area_um2 = grid.chip_width_um * grid.chip_height_um
    fixed_size = f"{grid.chip_width_um:.3f} {grid.chip_height_um:.3f} {area_um2:.3f} {math.sqrt(area_um2):.3f}"
    fail_of = source.class_lookup("fail").astype(bool)
    code_of = source.class_lookup("code")
    group_of = _group_lookup()
    defect_id = 0
    with source.reader() as reader:
        for rows in source.bands():
            classes = reader.classes(rows)
            failing = fail_of[classes]
            if not failing.any():
                continue
            band_rows, cols = np.nonzero(failing)
            chosen = classes[band_rows, cols]
            clusters = reader.structure_label(rows)[band_rows, cols]
            for col, row, code, cluster, group, fine in zip(
                cols.tolist(),
                (band_rows + rows.start).tolist(),
                code_of[chosen].tolist(),
                clusters.tolist(),
                group_of[chosen].tolist(),
                chosen.tolist(),
                strict=True,
            ):
                defect_id += 1
                yield (f"{defect_id} {fixed_rel} {col} {row} {fixed_size} {code} {KLARF_TEST} {cluster} {group} {fine}")


def _summary(source: WaferSource, class_counts: np.ndarray) -> KlarfSummary:
    fail_of = source.class_lookup("fail").astype(bool)
    defects = int(class_counts[fail_of].sum())
    inspected = int(class_counts[:NO_CHIP].sum() - class_counts[DefectClass.NOT_INSPECTED])
    grid = source.layout.grid
    area_um2 = inspected * grid.pitch_x_um * grid.pitch_y_um
    density = defects / (area_um2 * 1e-8) if area_um2 > 0 else 0.0
    return KlarfSummary(defects, inspected, area_um2, density)


def _test_plan(source: WaferSource) -> Iterator[str]:
    """``col row`` of every inspected chip, row by row from the bottom."""
    with source.reader() as reader:
        for rows in source.bands():
            classes = reader.classes(rows)
            band_rows, cols = np.nonzero((classes != NO_CHIP) & (classes != DefectClass.NOT_INSPECTED))
            for col, row in zip(cols.tolist(), (band_rows + rows.start).tolist(), strict=True):
                yield f"{col} {row}"


def _class_rows(table: BinTable) -> list[tuple[int, str]]:
    return [(entry.code, entry.name) for entry in sorted(table.bins, key=lambda entry: entry.code)]


def _write_12(handle: TextIO, source: WaferSource, summary: KlarfSummary, *, sample_test_plan: bool) -> None:
    head = _header(source)
    write = handle.write
    write("FileVersion 1 2;\n")
    write(f"FileTimestamp {head.file_date} {head.file_time};\n")
    write(f'InspectionStationID "PLMAPPER" "MICRO-PL" {head.station};\n')
    write("SampleType WAFER;\n")
    write(f"ResultTimestamp {head.result_date} {head.result_time};\n")
    write(f"LotID {_string(source.lot_id)};\n")
    write(f"SampleSize 1 {head.size_mm};\n")
    write(f"DeviceID {_string(head.recipe)};\n")
    write(f"SetupID {_string(head.recipe)} {head.result_date} {head.result_time};\n")
    write(f"StepID {_string(STEP_ID)};\n")
    write(f"SampleOrientationMarkType {head.mark_type};\n")
    write(f"OrientationMarkLocation {head.mark_side};\n")
    write(f"DiePitch {_fmt(head.pitch_x_um)} {_fmt(head.pitch_y_um)};\n")
    write(f"DieOrigin {_fmt(0.0)} {_fmt(0.0)};\n")
    write(f"WaferID {_string(source.wafer_id)};\n")
    write(f"Slot {head.slot};\n")
    write(f"SampleCenterLocation {_fmt(head.centre_x_um)} {_fmt(head.centre_y_um)};\n")
    classes = _class_rows(source.bin_table)
    write(f"ClassLookup {len(classes)}")
    for code, name in classes:
        write(f"\n {code} {_string(name)}")
    write(";\n")
    write(f"InspectionTest {KLARF_TEST};\n")
    if sample_test_plan:
        write(f"SampleTestPlan {summary.inspected_dies}")
        for line in _test_plan(source):
            write(f"\n {line}")
        write(";\n")
    write(f"AreaPerTest {_fmt(summary.area_per_test_um2)};\n")
    # the space before ";" keeps the last column name a token of its own for line-splitting readers
    write(f"DefectRecordSpec {len(KLARF_DEFECT_COLUMNS)} {' '.join(KLARF_DEFECT_COLUMNS)} ;\n")
    write("DefectList")
    for line in _defect_rows(source):
        write(f"\n {line}")
    write(";\n")
    write("SummarySpec 5 TESTNO NDEFECT DEFDENSITY NDIE NDEFDIE;\n")
    write(
        f"SummaryList\n {KLARF_TEST} {summary.defects} {_fmt(summary.defect_density_per_cm2)} "
        f"{summary.inspected_dies} {summary.defects};\n"
    )
    write("EndOfFile;\n")


def _write_18(handle: TextIO, source: WaferSource, summary: KlarfSummary, *, sample_test_plan: bool) -> None:
    head = _header(source)
    write = handle.write
    write('Record FileRecord "1.8"\n{\n')
    write(f'  Field FileTimestamp 2 {{"{head.file_date}", "{head.file_time}"}}\n')
    write(f"  Record LotRecord {_string(source.lot_id)}\n  {{\n")
    write(f'    Field InspectionStationID 3 {{"PLMAPPER", "MICRO-PL", {head.station}}}\n')
    write('    Field SampleType 1 {"WAFER"}\n')
    write(f'    Field ResultTimestamp 2 {{"{head.result_date}", "{head.result_time}"}}\n')
    write(f"    Field SampleSize 2 {{1, {head.size_mm}}}\n")
    write(f"    Field DeviceID 1 {{{_string(head.recipe)}}}\n")
    write(f'    Field RecipeID 3 {{{_string(head.recipe)}, "{head.result_date}", "{head.result_time}"}}\n')
    write(f"    Field StepID 1 {{{_string(STEP_ID)}}}\n")
    write(f'    Field SampleOrientationMarkType 1 {{"{head.mark_type}"}}\n')
    write(f'    Field OrientationMarkLocation 1 {{"{head.mark_side}"}}\n')
    write(f"    Field DiePitch 2 {{{_fmt(head.pitch_x_um)}, {_fmt(head.pitch_y_um)}}}\n")
    classes = _class_rows(source.bin_table)
    write("    List ClassLookupList\n    {\n      Columns 2 { int32 CLASSNUMBER, string CLASSNAME }\n")
    write(f"      Data {len(classes)}\n      {{\n")
    for code, name in classes:
        write(f"        {code} {_string(name)};\n")
    write("      }\n    }\n")
    write(f"    Record WaferRecord {_string(source.wafer_id)}\n    {{\n")
    write(f"      Field SlotNumber 1 {{{head.slot}}}\n")
    write(f"      Field DieOrigin 2 {{{_fmt(0.0)}, {_fmt(0.0)}}}\n")
    write(f"      Field SampleCenterLocation 2 {{{_fmt(head.centre_x_um)}, {_fmt(head.centre_y_um)}}}\n")
    write(f"      Record TestRecord {KLARF_TEST}\n      {{\n")
    write(f"        Field AreaPerTest 1 {{{_fmt(summary.area_per_test_um2)}}}\n")
    if sample_test_plan:
        write("        List SampleTestPlanList\n        {\n          Columns 2 { int32 XINDEX, int32 YINDEX }\n")
        write(f"          Data {summary.inspected_dies}\n          {{\n")
        for line in _test_plan(source):
            write(f"            {line};\n")
        write("          }\n        }\n")
    write("      }\n")
    columns = ", ".join(f"{kind} {name}" for kind, name in zip(_COLUMN_TYPES_18, KLARF_DEFECT_COLUMNS, strict=True))
    write(f"      List DefectList\n      {{\n        Columns {len(KLARF_DEFECT_COLUMNS)} {{ {columns} }}\n")
    write(f"        Data {summary.defects}\n        {{\n")
    for line in _defect_rows(source):
        write(f"          {line};\n")
    write("        }\n      }\n")
    write("      Record SummaryRecord\n      {\n        List TestSummaryList\n        {\n")
    write("          Columns 5 { int32 TESTNO, int32 NDEFECT, float DEFDENSITY, int32 NDIE, int32 NDEFDIE }\n")
    write(
        f"          Data 1\n          {{\n            {KLARF_TEST} {summary.defects} "
        f"{_fmt(summary.defect_density_per_cm2)} {summary.inspected_dies} {summary.defects};\n          }}\n"
    )
    write("        }\n      }\n    }\n  }\n}\nEndOfFile;\n")


def write_klarf(
    scan_path: str | Path,
    out_path: str | Path,
    *,
    version: Literal["1.2", "1.8"] = "1.2",
    bin_table: BinTable | None = None,
    sample_test_plan: bool = False,
) -> Path:
    """Write a classified wafer's failing chips as a KLARF file.

    Parameters
    ----------
    scan_path
        The classified scan file.
    out_path
        The KLARF file to write (replaced if it exists; written under a temporary name first).
    version
        ``"1.2"`` (flat ``Keyword values;`` records) or ``"1.8"`` (nested ``Record``/``Field``/``List``).
    bin_table
        Re-bin the stored classes with this product table (default: the stored one).
    sample_test_plan
        Also list every inspected chip (``SampleTestPlan``): about 12 bytes per chip, 0.9 GB for an 8" wafer at
        20 µm pitch. Without it the summary's ``NDIE`` still gives the inspected-chip count.

    Returns
    -------
    Path
        ``out_path``.

    Raises
    ------
    ExportError
        The scan file cannot be exported (see :func:`~inspection.export.open_wafer`).
    ValueError
        An unknown ``version``.
    """
    if version not in ("1.2", "1.8"):
        raise ValueError(f"version must be '1.2' or '1.8', got {version!r}")
    source = open_wafer(scan_path, bin_table=bin_table)
    summary = klarf_summary(source)
    out_path = Path(out_path)
    writer = _write_12 if version == "1.2" else _write_18
    with atomic_output(out_path) as partial, open(partial, "w", encoding="utf-8", newline="\n") as handle:
        writer(handle, source, summary, sample_test_plan=sample_test_plan)
    return out_path


def klarf_summary(source: WaferSource) -> KlarfSummary:
    """The summary a KLARF file of ``source`` states (defects, inspected dies, area, density)."""
    return _summary(source, source.class_counts())
