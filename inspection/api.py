"""The Python API: what ``plmapper`` does, as functions for notebooks and scripts.

Thin functions over the modules that do the work (nothing is implemented twice): each records what it does in
the scan history (:mod:`inspection.history`) like the command line does, unless told ``record=False``.

=========================  ====================================================================================
:func:`scan`               one wafer on a station (the virtual one by default): :func:`inspection.job.run_scan`
:func:`analyze`            per-chip measurements into the file's ``/results``: :func:`inspection.pipeline.analyze_scan`
:func:`classify`           bins into ``/classification``: :func:`inspection.classify.classify_scan`
:func:`import_el`          an EL prober's CSV into a scan file: :func:`inspection.el_reference.import_el_csv`
:func:`import_pl`          PL images from another tool as a new scan file: :func:`inspection.pl_import.import_pl_map`
:func:`chip_columns`       one NumPy array per measurement, one value per chip
:func:`chip_table`         the same as a pandas DataFrame, one row per chip
:func:`open_results`       :class:`inspection.pipeline.ChipResults` (maps as rows x columns arrays)
:func:`open_history`       :class:`inspection.history.History`: list scans, lot summaries, yield trends
:func:`scan_history`       the history's scans as a DataFrame
:func:`run_batch`          a lot, wafer after wafer: :func:`inspection.batch.run_batch`
:func:`export`             KLARF, SEMI E142, CSV/Parquet, PNG maps, PDF report: :func:`inspection.export.export_scan`
:func:`lot_report`         a lot's PDF report and CSV summary: :func:`inspection.export.lot_report`
=========================  ====================================================================================

A notebook session (docs/api.md has a version that runs on the virtual station)::

    from inspection import api as plm

    outcome = plm.scan("scans/W01.h5", lot="L7", wafer="W01")       # virtual station, demo recipe
    plm.analyze(outcome.path)
    classification = plm.classify(outcome.path)                      # the deployed model, or the rules
    chips = plm.chip_table(outcome.path)                             # pandas: one row per chip
    chips.groupby("bin_name").intensity_v_p1.median()
    plm.scan_history(lot="L7")
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from drivers.station import StationConfig, load_station_config
from inspection.access import AuditAction, audit, operator_session
from inspection.bins import BinTable, DefectClass, default_bin_table, load_bin_table
from inspection.classify import Classification, ClassifyOptions, classify_scan, read_classification, scan_layout
from inspection.deployment import deployed_model
from inspection.el_reference import JoinReport, import_el_csv
from inspection.history import History, Recorder, ScanRecord, classification_record, read_scan_identity, recipe_name
from inspection.job import ScanIdentity, ScanOutcome, run_scan
from inspection.model import DefectModel, load_model
from inspection.pipeline import CHIP_DTYPE, AnalysisSettings, AnalysisSummary, ChipFlag, ChipResults, analyze_scan
from inspection.pl_import import import_pl_map
from inspection.scanfile import ScanFileError

if TYPE_CHECKING:
    import pandas as pd

    from drivers.station import Station
    from inspection.batch import BatchPlan, BatchResult
    from inspection.plan import ScanPlan
    from inspection.scan import ScanEngine, ScanOptions, ScanProgress

__all__ = [
    "DEFAULT_RECIPE",
    "DEFAULT_STATION",
    "RESOURCES",
    "analysis_details",
    "analyze",
    "chip_columns",
    "chip_table",
    "classifier_options",
    "classify",
    "describe_classifier",
    "export",
    "import_el",
    "import_pl",
    "lot_report",
    "open_history",
    "open_results",
    "run_batch",
    "scan",
    "scan_history",
]

RESOURCES = Path(__file__).resolve().parent.parent / "resources"
DEFAULT_STATION = RESOURCES / "stations" / "virtual.toml"
DEFAULT_RECIPE = RESOURCES / "recipes" / "demo-2in.toml"

ProgressCallback = Callable[[float, str], None]
Record = Recorder | bool


@contextlib.contextmanager
def _recording(record: Record) -> Iterator[Recorder]:
    """The recorder to use: the caller's, or one of our own (closed afterwards)."""
    if isinstance(record, Recorder):
        yield record
        return
    recorder = Recorder(True if record else None)
    try:
        yield recorder
    finally:
        recorder.close()


# ---------------------------------------------------------------------------------------------------------------------
# Doing things
# ---------------------------------------------------------------------------------------------------------------------


def scan(
    out: str | Path,
    *,
    recipe: str | Path = DEFAULT_RECIPE,
    station: str | Path | StationConfig = DEFAULT_STATION,
    lot: str = "LOT",
    wafer: str = "WAFER",
    operator: str | None = None,
    resume: bool = False,
    on_plan: Callable[[ScanPlan, str], None] | None = None,
    on_progress: Callable[[ScanProgress], None] | None = None,
    on_engine: Callable[[ScanEngine], None] | None = None,
    options: ScanOptions | None = None,
    connection: Station | None = None,
    record: Record = True,
    batch_id: int | None = None,
    slot: int | None = None,
) -> ScanOutcome:
    """Scan one wafer into a new scan file ``out`` (or continue the interrupted scan in it with ``resume``).

    Parameters
    ----------
    recipe, station
        Recipe TOML and station file (or a loaded :class:`~drivers.station.StationConfig`); the defaults are
        the demo 2" recipe and the virtual station, which is started for the scan and stopped after it.
    lot, wafer, operator
        Written into the scan file (a resumed scan keeps what its file says).
    on_plan, on_progress, on_engine, options, connection
        As for :func:`inspection.job.run_scan` (``connection``: an already open station to use).
    record
        Record the scan in the history (True), not (False), or through this :class:`~inspection.history.Recorder`.
    batch_id, slot
        The batch and slot the history files the scan under.

    Returns
    -------
    ScanOutcome
        ``path``, ``status`` (complete, aborted, failed), ``message`` and the ``plan``.
    """
    out = Path(out)
    config = station if isinstance(station, StationConfig) else load_station_config(station)
    operator = operator or os.environ.get("USER", "operator")
    if resume:  # what the interrupted file says, before the scan opens it
        stored = read_scan_identity(out)
        identity = {key: stored[key] for key in ("lot_id", "wafer_id", "recipe", "operator", "uuid")}
    else:
        identity = {"lot_id": lot, "wafer_id": wafer, "operator": operator, "recipe": recipe_name(_text(recipe))}
        identity["recipe_path"] = str(Path(recipe).absolute())
    # every scan start and stop goes to the audit log; a log that cannot be written stops the scan before it starts
    session = operator_session(operator)
    audit(AuditAction.SCAN_START, session, {"file": str(out), "resume": resume, **identity})
    with _recording(record) as recorder:
        handle = None

        def engine_ready(engine: ScanEngine) -> None:
            nonlocal handle  # the scan is recorded from the moment its file exists
            handle = recorder.begin_scan(
                out, station=config.station.name, resume=resume, batch_id=batch_id, slot=slot, **identity
            )
            if on_engine is not None:
                on_engine(engine)

        try:
            outcome = run_scan(
                recipe,
                config,
                out,
                ScanIdentity(operator=operator, lot_id=lot, wafer_id=wafer),
                resume=resume,
                on_plan=on_plan,
                on_progress=on_progress,
                options=options,
                station=connection,
                on_engine=engine_ready,
            )
        except BaseException as error:
            status = _file_status(out)
            message = "stopped by Ctrl-C" if isinstance(error, KeyboardInterrupt) else str(error)
            status = "interrupted" if status in (None, "running") else status
            if handle is not None:  # what the file says now (a writer stopped mid-line leaves it interrupted)
                recorder.end_scan(handle, status, message)
            audit(AuditAction.SCAN_STOP, session, {"file": str(out), "status": status, "message": message})
            raise
        recorder.end_scan(handle, outcome.status.value, outcome.message, uuid=_file_uuid(out))
    audit(
        AuditAction.SCAN_STOP, session, {"file": str(out), "status": outcome.status.value, "message": outcome.message}
    )
    return outcome


def _text(path: str | Path) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return ""  # run_scan reports an unreadable recipe properly


def _file_uuid(path: Path) -> str | None:
    try:
        return read_scan_identity(path)["uuid"]
    except (OSError, ScanFileError):
        return None


def _file_status(path: Path) -> str | None:
    try:
        return read_scan_identity(path)["status"]
    except (OSError, ScanFileError):
        return None


def analyze(
    path: str | Path,
    *,
    settings: AnalysisSettings | None = None,
    progress: ProgressCallback | None = None,
    record: Record = True,
) -> AnalysisSummary:
    """Per-chip measurements of a stopped scan into its ``/results`` group (:func:`inspection.pipeline.analyze_scan`;
    its exceptions: ``RegistrationError``, ``ScanFileError``, ``ValueError``)."""
    with _recording(record) as recorder, recorder.operation(path, "analysis") as result:
        summary = analyze_scan(path, settings, progress=progress)
        result.details = analysis_details(summary)
    return summary


def analysis_details(summary: AnalysisSummary) -> dict[str, Any]:
    """An analysis summary as JSON-ready values (what ``plmapper analyze --json`` prints per file)."""
    return {
        "seconds": round(summary.seconds, 3),
        "spectra": summary.spectra,
        "passes": [
            {
                "power_w": result.power_w,
                "lines": result.lines,
                "chips_measured": result.chips_measured,
                "dark_v": result.dark_v,
                "bidirectional_offset_um": result.bidirectional_offset_um,
                "power_spread": result.power_spread,
            }
            for result in summary.passes
        ],
    }


def classifier_options(
    model: str | Path | DefectModel | None = "deployed", bins: str | Path | BinTable | None = None
) -> ClassifyOptions:
    """What classifies: ``model`` is ``"deployed"`` (the station's deployed model, the rules when none is), None
    or ``"rules"`` (the rule layer only), a model file, or a loaded model; ``bins`` a bin table file or table
    (default ``resources/bins/default.toml``)."""
    table = bins if isinstance(bins, BinTable) else load_bin_table(bins) if bins is not None else default_bin_table()
    if isinstance(model, DefectModel):
        chosen: DefectModel | None = model
    elif model is None or model == "rules":
        chosen = None
    elif model == "deployed":
        chosen = deployed_model()
    else:
        chosen = load_model(model)
    return ClassifyOptions(bin_table=table, model=chosen)


def describe_classifier(options: ClassifyOptions) -> str:
    """``rule layer`` or ``model 'name' (id, threshold t)``."""
    model = options.model
    if model is None:
        return "rule layer"
    return f"model {model.name!r} ({model.model_id[:8]}, threshold {model.threshold:.3f})"


def classify(
    path: str | Path,
    *,
    model: str | Path | DefectModel | None = "deployed",
    bins: str | Path | BinTable | None = None,
    options: ClassifyOptions | None = None,
    progress: ProgressCallback | None = None,
    record: Record = True,
) -> Classification:
    """Classify an analysed scan and store it in its ``/classification`` group; ``model`` and ``bins`` as for
    :func:`classifier_options` (or give ``options``). Raises ``ValueError`` for a file without results."""
    options = options or classifier_options(model, bins)
    with (
        _recording(record) as recorder,
        recorder.operation(path, "classification", {"classifier": describe_classifier(options)}) as result,
    ):
        classification = classify_scan(path, options, progress=progress)
        result.classification = classification_record(classification)
        result.details = {
            "classifier": describe_classifier(options),
            "structures": len(classification.structures),
            "warnings": list(classification.drift.get("warnings", [])),
        }
    return classification


def import_el(
    scan_path: str | Path, csv_path: str | Path, mapping: str | Path | None = None, *, record: Record = True
) -> JoinReport:
    """An EL prober's CSV into the scan file's ``/el_reference`` (:func:`inspection.el_reference.import_el_csv`)."""
    with _recording(record) as recorder, recorder.operation(scan_path, "import-el", {"csv": str(csv_path)}) as result:
        report = import_el_csv(scan_path, csv_path, mapping)
        result.details = {"csv": str(csv_path), "summary": report.summary()}
    return report


def import_pl(
    sidecar: str | Path,
    out: str | Path,
    settings: AnalysisSettings | None = None,
    *,
    progress: ProgressCallback | None = None,
    record: Record = True,
) -> Path:
    """PL images from another tool (TIFF per power + TOML sidecar) as a new, analysed scan file
    (:func:`inspection.pl_import.import_pl_map`); recorded in the history as an import."""
    path = import_pl_map(sidecar, out, settings, progress=progress)
    with _recording(record) as recorder:
        operation = recorder.begin_operation(path, "import-pl", {"sidecar": str(sidecar)}, register_as="import")
        recorder.end_operation(operation, "ok", details={"sidecar": str(Path(sidecar).absolute())})
    return path


def run_batch(plan: str | Path | BatchPlan, **options: Any) -> BatchResult:
    """A lot, wafer after wafer (scan, analysis, classification): :func:`inspection.batch.run_batch` of a plan or
    of a plan file (TOML or CSV, :func:`inspection.batch.load_batch_plan`)."""
    from inspection import batch  # noqa: PLC0415 (batch is built on this module's functions)

    chosen = plan if isinstance(plan, batch.BatchPlan) else batch.load_batch_plan(plan)
    return batch.run_batch(chosen, **options)


def export(
    path: str | Path,
    out_dir: str | Path,
    formats: Sequence[str] | None = None,
    *,
    bin_table: BinTable | None = None,
    record: Record = True,
) -> list[Path]:
    """Defect-map files of a classified scan into ``out_dir`` (:func:`inspection.export.export_scan`; ``formats``
    from ``inspection.export.ALL_FORMATS``, default ``DEFAULT_FORMATS``); returns the files written."""
    from inspection import export as exporting  # noqa: PLC0415 (Matplotlib and PyArrow only for exports)

    chosen = tuple(formats) if formats is not None else exporting.DEFAULT_FORMATS
    with _recording(record) as recorder, recorder.operation(path, "export", {"formats": list(chosen)}) as result:
        written = exporting.export_scan(path, out_dir, chosen, bin_table=bin_table)
        result.details = {"formats": list(chosen), "files": [str(item) for item in written]}
    return written


def lot_report(paths: Sequence[str | Path], out: str | Path, *, bin_table: BinTable | None = None) -> Path:
    """A lot's PDF report (and its CSV summary next to it) from classified scan files
    (:func:`inspection.export.lot_report`)."""
    from inspection import export as exporting  # noqa: PLC0415 (as above)

    return exporting.lot_report(paths, out, bin_table=bin_table)


# ---------------------------------------------------------------------------------------------------------------------
# Reading results
# ---------------------------------------------------------------------------------------------------------------------


def open_results(path: str | Path) -> ChipResults:
    """The per-chip results of an analysed scan file (use as a context manager; see docs/results.md)."""
    return ChipResults(path)


CHIP_SELECTIONS = ("measured", "usable", "all")


def chip_columns(path: str | Path, *, chips: str = "measured", rows: slice | None = None) -> dict[str, np.ndarray]:
    """Every chip's measurements and bin as one array per column (the table form of the results).

    Parameters
    ----------
    chips
        ``measured``: chips with a measurement in at least one pass; ``usable``: every chip inside the usable area
        (not measured ones have NaN); ``all``: every chip on the substrate.
    rows
        A band of chip rows (for wafers too large to load whole).

    Returns
    -------
    dict of str to ndarray
        ``col``, ``row`` (chip index, SEMI E142), ``x_um``, ``y_um`` (chip centre, wafer frame), ``usable``;
        every ``CHIP_DTYPE`` field per pass with the pass index as suffix (``intensity_v_p0``, ``flags_p1``, ...);
        ``efficiency_ratio`` (2+ passes); ``peak_nm``, ``fwhm_nm``, ``spectrum_quality`` of chips whose
        spectrum was measured (NaN, 0xFFFF elsewhere); ``peak_nm_map``, ``fwhm_nm_map`` (the interpolated maps);
        and if the file is classified ``defect_class``, ``class_name``, ``bin_code``, ``bin_name``, ``fail``,
        ``el_fail_probability``, ``structure_label``.

    Raises
    ------
    ValueError
        The file has no analysis results, or ``chips`` is unknown.
    """
    if chips not in CHIP_SELECTIONS:
        raise ValueError(f"chips={chips!r}: choose one of {', '.join(CHIP_SELECTIONS)}")
    _, layout = scan_layout(path)
    band = rows if rows is not None else slice(0, layout.row_count)
    first = band.indices(layout.row_count)[0]
    usable_map = layout.usable_mask()[band]
    with ChipResults(path) as results:
        passes = [results.chips(index, band) for index in range(len(results.powers_w))]
        measured = np.zeros(usable_map.shape, dtype=bool)
        for records in passes:
            measured |= (records["flags"] & ChipFlag.NOT_MEASURED) == 0
        select = {"measured": measured, "usable": usable_map, "all": layout.physical_mask()[band]}[chips]
        row_index, col_index = np.nonzero(select)
        columns: dict[str, np.ndarray] = {
            "col": col_index.astype(np.int32),
            "row": (row_index + first).astype(np.int32),
        }
        x_um, y_um = layout.chip_center_um(col_index, row_index + first)
        columns["x_um"], columns["y_um"] = np.asarray(x_um), np.asarray(y_um)
        columns["usable"] = usable_map[row_index, col_index]
        for index, records in enumerate(passes):
            chosen = records[row_index, col_index]
            for name in CHIP_DTYPE.names:
                columns[f"{name}_p{index}"] = chosen[name]
        ratio = results.efficiency_ratio(band)
        if ratio is not None:
            columns["efficiency_ratio"] = ratio[row_index, col_index]
        _spectra_columns(
            columns,
            results,
            row_count=layout.row_count,
            column_count=layout.column_count,
            first=first,
            row_index=row_index,
            col_index=col_index,
        )
    classification = read_classification(path, rows=band)
    if classification is not None:
        classes = classification.defect_class[row_index, col_index]
        table = classification.bin_table
        columns["defect_class"] = classes
        columns["class_name"] = _names_of(classes, {int(code): _class_key(code) for code in np.unique(classes)})
        codes = table.codes_of(classes)
        columns["bin_code"] = codes
        columns["bin_name"] = _names_of(codes, {entry.code: entry.name for entry in table.bins})
        columns["fail"] = table.fail_of(classes)
        columns["el_fail_probability"] = classification.el_fail_probability[row_index, col_index]
        columns["structure_label"] = classification.structure_label[row_index, col_index]
    return columns


def _class_key(code: int) -> str:
    try:
        return DefectClass(int(code)).key
    except ValueError:
        return "no_chip"


def _names_of(codes: np.ndarray, names: dict[int, str]) -> np.ndarray:
    lookup = np.array([names.get(code, "") for code in range(256)], dtype=object)
    return lookup[codes.astype(np.intp)]


def _spectra_columns(
    columns: dict[str, np.ndarray],
    results: ChipResults,
    *,
    row_count: int,
    column_count: int,
    first: int,
    row_index: np.ndarray,
    col_index: np.ndarray,
) -> None:
    """Measured spectrum fits per chip (the last one where a chip has several) and the interpolated maps."""
    peak = np.full((row_count, column_count), np.nan, dtype=np.float32)
    fwhm = np.full_like(peak, np.nan)
    quality = np.full(peak.shape, 0xFFFF, dtype=np.uint16)
    spectra = results.spectra()
    if spectra.size:
        inside = (spectra["col"] >= 0) & (spectra["col"] < column_count)
        inside &= (spectra["row"] >= 0) & (spectra["row"] < row_count)
        spectra = spectra[inside]
        peak[spectra["row"], spectra["col"]] = spectra["peak_nm"]
        fwhm[spectra["row"], spectra["col"]] = spectra["fwhm_nm"]
        quality[spectra["row"], spectra["col"]] = spectra["quality"]
    rows = row_index + first
    columns["peak_nm"], columns["fwhm_nm"] = peak[rows, col_index], fwhm[rows, col_index]
    columns["spectrum_quality"] = quality[rows, col_index]
    for name, column in (("wavelength_map_nm", "peak_nm_map"), ("fwhm_map_nm", "fwhm_nm_map")):
        values = results.map(name)
        if values is None:
            continue
        step = max(1, int(np.ceil(row_count / values.shape[0])))  # the map's downsample
        columns[column] = values[np.minimum(rows // step, values.shape[0] - 1),
                                 np.minimum(col_index // step, values.shape[1] - 1)]  # fmt: skip


def chip_table(path: str | Path, *, chips: str = "measured", rows: slice | None = None) -> pd.DataFrame:
    """:func:`chip_columns` as a pandas DataFrame, one row per chip (names as categories). ``df.attrs`` holds the
    file, the pass powers and the lot and wafer."""
    import pandas as pd  # noqa: PLC0415 (pandas only for those who ask for a DataFrame)

    columns = chip_columns(path, chips=chips, rows=rows)
    frame = pd.DataFrame(columns)
    for name in ("class_name", "bin_name"):
        if name in frame:
            frame[name] = frame[name].astype("category")
    identity = read_scan_identity(path)
    with ChipResults(path) as results:
        powers = list(results.powers_w)
    frame.attrs.update(
        {"path": str(path), "powers_w": powers, "lot_id": identity["lot_id"], "wafer_id": identity["wafer_id"]}
    )
    return frame


# ---------------------------------------------------------------------------------------------------------------------
# History
# ---------------------------------------------------------------------------------------------------------------------


def open_history(path: str | Path | None = None) -> History:
    """The scan history (default: the station's, ``$PLMAPPER_HOME/history.sqlite``)."""
    return History(path)


def scan_history(*, history: str | Path | None = None, **filters: Any) -> pd.DataFrame:
    """The history's scans as a DataFrame, newest first; ``filters`` as for :meth:`History.scans` (``lot``,
    ``wafer``, ``recipe``, ``status``, ``since``, ``until``, ``limit``)."""
    import pandas as pd  # noqa: PLC0415 (as above)

    with History(history) as opened:
        records = [record.to_json() for record in opened.scans(**filters)]
    return pd.DataFrame.from_records(records, columns=list(_SCAN_COLUMNS))


_SCAN_COLUMNS = tuple(item.name for item in fields(ScanRecord))
