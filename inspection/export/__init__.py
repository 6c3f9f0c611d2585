"""Defect-map exports of classified scan files, for fab yield systems and people.

One call writes every format of a wafer (:func:`export_scan`); one call makes a lot report (:func:`lot_report`).
Each format also has its own function. The conventions (chip = die, origin, orientation, units, what a defect
record is) are in docs/exports.md.

=========== ================================ =========================================================================
format      function                         file (``<stem>`` = the scan file's name without ``.h5``)
=========== ================================ =========================================================================
``klarf``   :func:`write_klarf`              ``<stem>.klarf``: KLARF 1.2, one defect record per failing chip
``klarf18`` :func:`write_klarf` (``"1.8"``)  ``<stem>.v18.klarf``: the same in KLARF 1.8
``e142``    :func:`write_e142`               ``<stem>.e142.xml``: SEMI E142 substrate map (every chip's bin)
``csv``     :func:`write_chip_csv`           ``<stem>.chips.csv``: per-chip results, one row per chip on the wafer
``parquet`` :func:`write_chip_parquet`       ``<stem>.chips.parquet``: the same table in Parquet
``png``     :func:`write_map_pngs`           ``<stem>.bins.png`` and one PNG per measurement map
``pdf``     :func:`write_wafer_report`       ``<stem>.report.pdf``: the wafer report
=========== ================================ =========================================================================

Every file is written under a hidden temporary name and renamed when complete; an input that cannot be exported
raises :class:`ExportError` (a ``ValueError``) with one line that says why, before anything is written.

Examples
--------
::

    from inspection.export import export_scan, lot_report

    export_scan("scans/W01.h5", "exports/")  # [exports/W01.klarf, exports/W01.e142.xml, ...]
    export_scan("scans/W01.h5", "exports/", ["klarf", "e142"])
    lot_report(["scans/W01.h5", "scans/W02.h5"], "exports/LOT1.pdf")  # and exports/LOT1.csv
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from inspection.bins import BinTable
from inspection.export._source import ExportError, WaferSource, atomic_output, open_wafer
from inspection.export.e142 import write_e142
from inspection.export.klarf import KlarfSummary, klarf_summary, write_klarf
from inspection.export.maps import write_map_pngs
from inspection.export.report import WaferSummary, lot_report, wafer_summary, write_wafer_report
from inspection.export.table import chip_table_batches, write_chip_csv, write_chip_parquet

__all__ = [
    "ALL_FORMATS",
    "DEFAULT_FORMATS",
    "ExportError",
    "KlarfSummary",
    "WaferSource",
    "WaferSummary",
    "atomic_output",
    "chip_table_batches",
    "export_scan",
    "klarf_summary",
    "lot_report",
    "open_wafer",
    "wafer_summary",
    "write_chip_csv",
    "write_chip_parquet",
    "write_e142",
    "write_klarf",
    "write_map_pngs",
    "write_wafer_report",
]

ALL_FORMATS = ("klarf", "klarf18", "e142", "csv", "parquet", "png", "pdf")
"""Every format :func:`export_scan` writes."""

DEFAULT_FORMATS = ("klarf", "e142", "csv", "parquet", "png", "pdf")
"""What :func:`export_scan` writes unless told otherwise (KLARF 1.8 only on request)."""


def export_scan(
    scan_path: str | Path,
    out_dir: str | Path,
    formats: Sequence[str] = DEFAULT_FORMATS,
    *,
    bin_table: BinTable | None = None,
    progress: Callable[[str], None] | None = None,
) -> list[Path]:
    """Export one classified scan file in several formats into ``out_dir`` (created if needed).

    Parameters
    ----------
    scan_path
        The scan file, analysed (``plmapper analyze``) and classified (``plmapper classify``).
    out_dir
        Where the files go; names start with the scan file's stem (table in the module docstring).
    formats
        Any of :data:`ALL_FORMATS`, in any order; each is written once.
    bin_table
        Re-bin the stored defect classes with this product table (default: the table stored with the
        classification). The classes themselves are never changed.
    progress
        Called with each file's name once it is complete.

    Returns
    -------
    list of Path
        The files written, in the order of ``formats``.

    Raises
    ------
    ExportError
        Unknown format, or a scan file that cannot be exported (not a scan file, not analysed or not classified):
        raised before any file is written. A failure while writing leaves the formats already written complete
        and no partial file of the one that failed.
    """
    unknown = [name for name in formats if name not in ALL_FORMATS]
    if unknown:
        raise ExportError(f"unknown export format(s) {', '.join(map(repr, unknown))}; known: {', '.join(ALL_FORMATS)}")
    source = open_wafer(scan_path, bin_table=bin_table)  # checks the input before anything is written
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = source.path.stem
    table = source.bin_table
    written: list[Path] = []

    def done(path: Path) -> None:
        written.append(path)
        if progress is not None:
            progress(path.name)

    for name in dict.fromkeys(formats):
        if name == "klarf":
            done(write_klarf(source.path, out_dir / f"{stem}.klarf", bin_table=table))
        elif name == "klarf18":
            done(write_klarf(source.path, out_dir / f"{stem}.v18.klarf", version="1.8", bin_table=table))
        elif name == "e142":
            done(write_e142(source.path, out_dir / f"{stem}.e142.xml", bin_table=table))
        elif name == "csv":
            done(write_chip_csv(source.path, out_dir / f"{stem}.chips.csv", bin_table=table))
        elif name == "parquet":
            done(write_chip_parquet(source.path, out_dir / f"{stem}.chips.parquet", bin_table=table))
        elif name == "png":
            for path in write_map_pngs(source.path, out_dir, bin_table=table, stem=stem):
                done(path)
        elif name == "pdf":
            done(write_wafer_report(source.path, out_dir / f"{stem}.report.pdf", bin_table=table))
    return written
