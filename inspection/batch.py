"""A lot of wafers, one after the other: scan, analyse, classify each, and a summary at the end.

``plmapper batch LOT.toml`` (or a CSV) runs :func:`run_batch`. Each wafer gets its own scan file; a wafer that fails
(alignment, an instrument fault, a grid that does not fit in the analysis) is reported and the lot goes on with
the next one. The whole plan is checked before anything moves: every recipe loads, no two wafers share a slot, an
ID or a file, no scan file is overwritten. ``resume`` runs a stopped lot again: complete wafers are skipped (or
only analysed and classified if that is missing), interrupted ones resumed, the rest scanned.

Plan files (relative paths are relative to the plan file)::

    # lot.toml
    lot = "L2026-114"
    recipe = "../resources/recipes/demo-2in.toml"   # for every wafer that names none
    out_dir = "scans/L2026-114"                      # default: the plan file's directory
    operator = "ana"                                 # optional
    station = "../resources/stations/virtual.toml"   # optional (plmapper batch --station overrides)

    [[wafers]]
    slot = 1
    wafer = "W01"
    [[wafers]]
    slot = 2
    wafer = "W02"
    recipe = "../resources/recipes/demo-2in-fine.toml"   # this wafer's own recipe
    out = "W02-fine.h5"                                   # default: <wafer>.h5 in out_dir

    # lot.csv: a header row, then one wafer per row (slot and wafer required; lot, recipe, out optional)
    slot,wafer,recipe
    1,W01,../resources/recipes/demo-2in.toml
    2,W02,../resources/recipes/demo-2in.toml

A wafer's outcome (:class:`WaferResult`): ``ok`` (scanned, analysed, classified), ``skipped`` (already done,
``resume``), ``failed`` (``stage`` says where: scan, analysis or classification; ``message`` why), ``stopped``
(Ctrl-C), ``not started`` (after a stop, or when the station could not be reached at all).

On a Dask cluster (``run_batch(..., cluster=ClusterSettings(...))``, ``plmapper batch --workers N | --dask
ADDRESS``) each wafer's analysis and classification go to an :class:`inspection.distributed.AnalysisPool` as soon
as its scan is complete, and the station scans the next wafer meanwhile: the scan needs the station, the analysis
only the scan file. The results are the in-process results bit for bit; a wafer whose analysis fails is reported
for that wafer (``failed``, stage analysis or classification) and the lot goes on; the scan history gets the same
records as in process, written by this process when each wafer's outcome is back. ``wafer_done`` is then called
when a wafer's analysis is done, which may be while a later wafer is being scanned.
"""

from __future__ import annotations

import contextlib
import csv
import math
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from drivers.errors import InstrumentError
from drivers.station import Station, StationConfig, connect, load_station_config
from inspection import api
from inspection.alignment import AlignmentError
from inspection.classify import ClassifyOptions, read_classification
from inspection.history import Recorder, read_scan_identity
from inspection.pipeline import AnalysisSettings, RegistrationError
from inspection.plan import ScanPlan
from inspection.recipe import load_recipe
from inspection.scan import ScanEngine, ScanProgress
from inspection.scanfile import ScanFileError, ScanStatus, open_hdf5
from inspection.settings import SettingsError, load_toml

if TYPE_CHECKING:
    from inspection.distributed import AnalysisPool, ClusterSettings, WaferOutcome, WaferProgress

__all__ = [
    "BatchHooks",
    "BatchPlan",
    "BatchResult",
    "BatchWafer",
    "WaferResult",
    "check_plan",
    "load_batch_plan",
    "run_batch",
]

_PLAN_KEYS = {"lot", "recipe", "out_dir", "operator", "station", "wafers"}
_WAFER_KEYS = {"slot", "wafer", "recipe", "out", "lot"}
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")
MAX_SLOT = 999


@dataclass(frozen=True)
class BatchWafer:
    """One wafer of a lot: its slot (None when the plan gives none), ID, recipe and scan file."""

    slot: int | None
    wafer_id: str
    recipe: Path
    out: Path


@dataclass(frozen=True)
class BatchPlan:
    """A lot to inspect (see the module docstring for the file formats)."""

    lot_id: str
    wafers: tuple[BatchWafer, ...]
    operator: str = ""
    station: Path | None = None
    source: Path | None = None


def load_batch_plan(
    path: str | Path,
    *,
    lot: str | None = None,
    recipe: str | Path | None = None,
    out_dir: str | Path | None = None,
    operator: str | None = None,
) -> BatchPlan:
    """Read a plan file (``.toml``, else CSV); ``lot``, ``recipe``, ``out_dir`` and ``operator`` override the file's.

    Raises
    ------
    SettingsError
        Every problem of the file at once (unknown keys, missing IDs, duplicate slots, IDs or files, bad slots).
    """
    path = Path(path)
    base = path.absolute().parent
    problems: list[str] = []
    if path.suffix.lower() == ".toml":
        data = load_toml(path)
        for key in sorted(set(data) - _PLAN_KEYS):
            problems.append(f"{key}: unknown key (the plan has {', '.join(sorted(_PLAN_KEYS))})")
        rows = data.get("wafers", [])
        if not isinstance(rows, list) or not all(isinstance(row, dict) for row in rows):
            problems.append("wafers: expected [[wafers]] tables")
            rows = []
        where = [f"wafers[{index}]" for index in range(len(rows))]
    else:
        data, rows, where = {}, *_read_csv(path, problems)
    if not rows and not problems:
        problems.append("no wafers: add [[wafers]] tables (TOML) or rows under the header (CSV)")
    lot_id = _text_value(lot if lot is not None else data.get("lot", ""), "lot", problems)
    csv_lots = {str(row.get("lot", "")).strip() for row in rows if str(row.get("lot", "")).strip()}
    if not lot_id and len(csv_lots) == 1:
        lot_id = csv_lots.pop()
    elif lot is None and len(csv_lots) > 1:
        problems.append(f"lot: the rows name several lots ({', '.join(sorted(csv_lots))}); one plan is one lot")
    for row, label in zip(rows, where, strict=True):
        row_lot = str(row.get("lot", "")).strip()
        if lot_id and row_lot and row_lot != lot_id:
            problems.append(f"{label}.lot: {row_lot!r} differs from the plan's lot {lot_id!r}; one plan is one lot")
    if not lot_id:
        problems.append('lot: missing (give lot = "..." in the plan, a lot column, or --lot)')
    default_recipe = _path_value(recipe, Path.cwd()) if recipe is not None else None
    if default_recipe is None and data.get("recipe"):
        default_recipe = _path_value(data["recipe"], base)
    directory = _path_value(out_dir, Path.cwd()) if out_dir is not None else None
    if directory is None:
        directory = _path_value(data["out_dir"], base) if data.get("out_dir") else base
    station = _path_value(data["station"], base) if data.get("station") else None
    wafers: list[BatchWafer] = []
    for row, label in zip(rows, where, strict=True):
        for key in sorted(set(row) - _WAFER_KEYS):
            problems.append(f"{label}.{key}: unknown key (a wafer has {', '.join(sorted(_WAFER_KEYS))})")
        wafer = _wafer(row, label, base=base, recipe=default_recipe, directory=directory, problems=problems)
        if wafer is not None:
            wafers.append(wafer)
    for name, values in (
        ("slot", [wafer.slot for wafer in wafers if wafer.slot is not None]),
        ("wafer", [wafer.wafer_id for wafer in wafers]),
        ("out", [str(wafer.out) for wafer in wafers]),
    ):
        for value in sorted({value for value in values if values.count(value) > 1}, key=str):
            problems.append(f"{name} {value}: used by more than one wafer")
    if problems:
        raise SettingsError(problems, source=str(path))
    chosen_operator = operator if operator is not None else str(data.get("operator", ""))
    return BatchPlan(lot_id, tuple(wafers), operator=chosen_operator, station=station, source=path.absolute())


def _read_csv(path: Path, problems: list[str]) -> tuple[list[dict[str, Any]], list[str]]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise SettingsError([f"file not found: {path}"], source=str(path)) from None
    except (OSError, UnicodeDecodeError) as error:
        raise SettingsError([f"cannot read: {error}"], source=str(path)) from None
    lines = [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    reader = csv.reader(lines)
    header = [name.strip().lower() for name in next(reader, [])]
    if not {"slot", "wafer"} <= set(header):
        problems.append(f"line 1: the header must name at least the columns slot and wafer (found {header})")
        return [], []
    rows, where = [], []
    for number, cells in enumerate(reader, start=2):
        if len(cells) != len(header):
            problems.append(f"line {number}: {len(cells)} values for {len(header)} columns")
            continue
        rows.append({name: cell.strip() for name, cell in zip(header, cells, strict=True) if cell.strip() != ""})
        where.append(f"line {number}")
    return rows, where


def _text_value(value: Any, what: str, problems: list[str]) -> str:
    if not isinstance(value, str):
        problems.append(f"{what}: expected text, got {value!r}")
        return ""
    return value.strip()


def _path_value(value: Any, base: Path) -> Path:
    path = Path(str(value)).expanduser()
    return path if path.is_absolute() else base / path


def _wafer(
    row: dict[str, Any], label: str, *, base: Path, recipe: Path | None, directory: Path, problems: list[str]
) -> BatchWafer | None:
    slot = row.get("slot")
    if slot is not None:
        try:
            slot = int(str(slot))
        except ValueError:
            problems.append(f"{label}.slot: {slot!r} is not a whole number")
            slot = None
        else:
            if not 1 <= slot <= MAX_SLOT:
                problems.append(f"{label}.slot: {slot} is outside 1..{MAX_SLOT}")
    wafer_id = row.get("wafer")
    if wafer_id is None or str(wafer_id).strip() == "":
        problems.append(f"{label}.wafer: missing")
        return None
    wafer_id = str(wafer_id).strip()
    chosen = _path_value(row["recipe"], base) if row.get("recipe") else recipe
    if chosen is None:
        problems.append(f"{label}.recipe: missing (no recipe for the lot either; give recipe = ... or --recipe)")
        return None
    if row.get("out"):
        out = _path_value(row["out"], directory)
    elif _SAFE_NAME.match(wafer_id):
        out = directory / f"{wafer_id}.h5"
    else:
        problems.append(f'{label}.wafer: {wafer_id!r} cannot name a file; give the wafer an out = "...h5"')
        return None
    return BatchWafer(slot, wafer_id, chosen, out)


def check_plan(plan: BatchPlan, *, resume: bool = False) -> None:
    """Everything that can be checked before anything moves: every recipe loads (all its problems), and no scan
    file would be overwritten (with ``resume``: existing files are continued instead).

    Raises
    ------
    SettingsError
        Every problem at once.
    """
    problems: list[str] = []
    for recipe in dict.fromkeys(wafer.recipe for wafer in plan.wafers):
        try:
            load_recipe(recipe)
        except SettingsError as error:
            problems.extend(f"recipe {recipe}: {problem}" for problem in error.problems)
    for wafer in plan.wafers:
        if wafer.out.is_dir():
            problems.append(f"wafer {wafer.wafer_id}: {wafer.out} is a directory")
        elif wafer.out.exists() and not resume:
            problems.append(
                f"wafer {wafer.wafer_id}: {wafer.out} already exists (run with --resume to continue the lot)"
            )
    if problems:
        raise SettingsError(problems, source=str(plan.source or "batch plan"))


# ---------------------------------------------------------------------------------------------------------------------
# Running a lot
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class WaferResult:
    """What happened to one wafer of a lot."""

    slot: int | None
    wafer_id: str
    path: Path
    status: str = "not started"  # ok, skipped, failed, stopped, not started
    stage: str = ""  # where it failed or stopped: scan, analysis, classification
    scan_status: str = ""  # the scan file's status (complete, aborted, failed, interrupted)
    message: str = ""
    yield_fraction: float | None = None
    bins: dict[str, int] = field(default_factory=dict)  # chips per bin name (bins with chips)
    signature: str = ""
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "slot": self.slot,
            "wafer": self.wafer_id,
            "path": str(self.path),
            "status": self.status,
            "stage": self.stage,
            "scan_status": self.scan_status,
            "message": self.message,
            "yield": self.yield_fraction,
            "bins": self.bins,
            "signature": self.signature,
            "seconds": round(self.seconds, 1),
        }


@dataclass
class BatchResult:
    """A lot's outcome: one :class:`WaferResult` per wafer of the plan, in plan order."""

    plan: BatchPlan
    wafers: list[WaferResult]
    stopped: bool = False  # Ctrl-C or the stop event
    fatal: str = ""  # why the lot could not go on at all (the station could not be reached)
    batch_id: int | None = None
    seconds: float = 0.0

    @property
    def succeeded(self) -> int:
        return sum(wafer.status in ("ok", "skipped") for wafer in self.wafers)

    @property
    def failed(self) -> int:
        return sum(wafer.status == "failed" for wafer in self.wafers)

    @property
    def all_ok(self) -> bool:
        return self.succeeded == len(self.wafers)

    @property
    def status(self) -> str:
        """complete (every wafer ok), partial (some failed), stopped, or failed (the lot could not run)."""
        if self.all_ok:
            return "complete"
        if self.fatal:
            return "failed"
        return "stopped" if self.stopped else "partial"

    def to_json(self) -> dict[str, Any]:
        yields = [wafer.yield_fraction for wafer in self.wafers if wafer.yield_fraction is not None]
        return {
            "lot": self.plan.lot_id,
            "plan": str(self.plan.source) if self.plan.source else None,
            "status": self.status,
            "wafers": [wafer.to_json() for wafer in self.wafers],
            "succeeded": self.succeeded,
            "failed": self.failed,
            "not_done": len(self.wafers) - self.succeeded - self.failed,
            "mean_yield": sum(yields) / len(yields) if yields else None,
            "fatal": self.fatal,
            "batch_id": self.batch_id,
            "seconds": round(self.seconds, 1),
        }

    def summary(self) -> str:
        """The lot as a table for people."""
        lines = [f"lot {self.plan.lot_id}: {self.succeeded} of {len(self.wafers)} wafers done, {self.failed} failed"]
        lines.append(f"  {'slot':>4}  {'wafer':<12} {'status':<11} {'yield':>7}  {'signature':<12} file / reason")
        for wafer in self.wafers:
            shown = f"{wafer.yield_fraction:.2%}" if wafer.yield_fraction is not None else "-"
            note = (
                str(wafer.path) if wafer.status in ("ok", "skipped") else f"{wafer.stage}: {wafer.message}".strip(": ")
            )
            slot = "" if wafer.slot is None else str(wafer.slot)
            lines.append(
                f"  {slot:>4}  {wafer.wafer_id:<12} {wafer.status:<11} {shown:>7}  {wafer.signature:<12} {note}"
            )
        yields = [wafer.yield_fraction for wafer in self.wafers if wafer.yield_fraction is not None]
        if yields:
            lines.append(f"  mean yield {sum(yields) / len(yields):.2%}, lowest {min(yields):.2%}")
        if self.fatal:
            lines.append(f"  stopped: {self.fatal}")
        return "\n".join(lines)


@dataclass
class BatchHooks:
    """What a user interface hears from :func:`run_batch` (every hook optional)."""

    wafer_started: Callable[[int, int, BatchWafer], None] | None = None  # (index, count, wafer)
    load_wafer: Callable[[BatchWafer], None] | None = None  # before scanning: e.g. ask the operator to load it
    on_plan: Callable[[ScanPlan, str], None] | None = None
    on_progress: Callable[[ScanProgress], None] | None = None
    on_engine: Callable[[ScanEngine], None] | None = None
    analysis_progress: Callable[[str, float, str], None] | None = None  # (stage, fraction, message)
    wafer_done: Callable[[WaferResult], None] | None = None  # on a cluster: when the wafer's analysis is back


class _StationSession:
    """One station connection for the lot, opened when first needed and opened again after an instrument error."""

    def __init__(self, config: StationConfig) -> None:
        self.config = config
        self._stack: contextlib.ExitStack | None = None
        self.station: Station | None = None

    def get(self) -> Station:
        if self.station is None:
            stack = contextlib.ExitStack()
            self.station = stack.enter_context(connect(self.config))
            self._stack = stack
        return self.station

    def reset(self) -> None:
        stack, self._stack, self.station = self._stack, None, None
        if stack is not None:
            with contextlib.suppress(InstrumentError, OSError):
                stack.close()


def run_batch(
    plan: BatchPlan,
    *,
    station: str | Path | StationConfig | None = None,
    resume: bool = False,
    analysis: AnalysisSettings | None = None,
    classifier: ClassifyOptions | None = None,
    classify: bool = True,
    hooks: BatchHooks | None = None,
    stop: threading.Event | None = None,
    record: Recorder | bool = True,
    cluster: ClusterSettings | None = None,
) -> BatchResult:
    """Scan, analyse and classify every wafer of ``plan`` in turn; a failed wafer does not stop the lot.

    Parameters
    ----------
    station
        Station file or configuration (default: the plan's, else the virtual station).
    resume
        Continue a stopped lot: complete wafers are skipped (analysed and classified first if they are not),
        interrupted scans resumed.
    analysis, classifier, classify
        Analysis settings; the classifier (default: the station's deployed model, else the rules); ``classify``
        False stops after the analysis.
    stop
        Set it (from another thread, or a Ctrl-C handler that also aborts the engine) to stop after the current
        wafer's scan: the wafer is ``stopped``, the rest ``not started``. Analyses already on a cluster finish.
    cluster
        Analyse and classify on Dask (:class:`inspection.distributed.ClusterSettings`: a local cluster of
        ``workers`` processes, or an existing one at ``scheduler``; the tiling of big wafers), each wafer as soon
        as its scan is complete, while the next one is scanned; None (default): in this process, one wafer after
        the other.

    Raises
    ------
    SettingsError
        The plan does not pass :func:`check_plan` (nothing was started).
    inspection.distributed.ClusterEnvironmentError, inspection.distributed.ClusterConnectionError
        The cluster's workers run other software, or its scheduler cannot be reached (nothing was started).
    """
    check_plan(plan, resume=resume)
    if isinstance(station, StationConfig):
        config = station
    else:
        config = load_station_config(station or plan.station or api.DEFAULT_STATION)
    if classify and classifier is None:
        classifier = api.classifier_options()
    recorder = record if isinstance(record, Recorder) else Recorder(True if record else None)
    runner = _LotRunner(
        plan,
        session=_StationSession(config),
        resume=resume,
        analysis=analysis,
        classifier=classifier if classify else None,
        hooks=hooks or BatchHooks(),
        stop=stop or threading.Event(),
        recorder=recorder,
    )
    try:
        if cluster is None:
            return runner.run()
        with cluster.pool(
            classify=classify,
            settings=analysis,
            classify_options=classifier if classify else None,
            progress=runner.cluster_progress,
            record=recorder,
        ) as pool:
            runner.pool = pool
            return runner.run()
    finally:
        if recorder is not record:
            recorder.close()


@dataclass
class _LotRunner:
    plan: BatchPlan
    session: _StationSession
    resume: bool
    analysis: AnalysisSettings | None
    classifier: ClassifyOptions | None
    hooks: BatchHooks
    stop: threading.Event
    recorder: Recorder
    pool: AnalysisPool | None = None  # analyses on a Dask cluster (None: in this process)
    pending: dict[Path, tuple[WaferResult, float]] = field(default_factory=dict)  # on the cluster: (result, scan s)
    waiting: bool = False  # every scan is done: the cluster's progress is reported

    def run(self) -> BatchResult:
        plan, hooks = self.plan, self.hooks
        started = time.monotonic()
        result = self.result = BatchResult(
            plan, [WaferResult(wafer.slot, wafer.wafer_id, wafer.out) for wafer in plan.wafers]
        )
        result.batch_id = self.recorder.begin_batch(plan.lot_id, plan.source or "", len(plan.wafers))
        try:
            for index, (wafer, outcome) in enumerate(zip(plan.wafers, result.wafers, strict=True)):
                if self.stop.is_set() or result.fatal:
                    break
                if hooks.wafer_started is not None:
                    hooks.wafer_started(index, len(plan.wafers), wafer)
                wafer_started = time.monotonic()
                try:
                    self.wafer(wafer, outcome)
                except KeyboardInterrupt:
                    outcome.status, outcome.message = "stopped", "stopped by Ctrl-C"
                    result.stopped = True
                outcome.seconds = time.monotonic() - wafer_started
                key = outcome.path.absolute()
                if key in self.pending:  # on the cluster: its scan time so far
                    self.pending[key] = (outcome, outcome.seconds)
                elif hooks.wafer_done is not None:
                    hooks.wafer_done(outcome)
                if self.pool is not None:
                    self.collect(self.pool.poll())
                if result.stopped:
                    break
            self.wait_for_cluster()
        finally:
            self.session.reset()
            result.stopped = result.stopped or self.stop.is_set()
            result.seconds = time.monotonic() - started
            self.recorder.end_batch(result.batch_id, result.status, succeeded=result.succeeded, failed=result.failed)
        return result

    def wafer(self, wafer: BatchWafer, outcome: WaferResult) -> None:
        """One wafer: scan (or resume, or skip), analysis, classification; fills in ``outcome``."""
        previous = _existing_state(wafer.out) if self.resume and wafer.out.exists() else None
        if previous is not None and previous[0] == ScanStatus.COMPLETE.value and previous[1]:
            outcome.status, outcome.scan_status, outcome.message = "skipped", previous[0], "already done"
            _read_outcome(outcome)
            return
        if previous is None or previous[0] != ScanStatus.COMPLETE.value:
            if not self.scan(wafer, outcome, resume=previous is not None):
                return
        else:
            outcome.scan_status = previous[0]
        outcome.stage = "analysis"
        if self.pool is not None:  # the station is free for the next wafer while the cluster analyses this one
            self.pool.submit(wafer.out)
            self.pending[wafer.out.absolute()] = (outcome, 0.0)
            return
        report = self.hooks.analysis_progress or (lambda stage, fraction, message: None)
        try:
            api.analyze(
                wafer.out, settings=self.analysis, progress=lambda f, m: report("analysis", f, m), record=self.recorder
            )
        except (RegistrationError, ScanFileError, ValueError, OSError) as error:
            outcome.status, outcome.message = "failed", str(error)
            return
        if self.classifier is not None:
            outcome.stage = "classification"
            try:
                classification = api.classify(
                    wafer.out,
                    options=self.classifier,
                    progress=lambda f, m: report("classification", f, m),
                    record=self.recorder,
                )
            except (ValueError, OSError) as error:
                outcome.status, outcome.message = "failed", str(error)
                return
            _classification_outcome(outcome, classification)
        outcome.status, outcome.stage = "ok", ""

    def collect(self, outcomes: list[WaferOutcome]) -> None:
        """Fill in the results of wafers whose analysis came back from the cluster."""
        from inspection.distributed import FailureKind  # noqa: PLC0415 (Dask only for lots on a cluster)

        for analysed in outcomes:
            outcome, scan_seconds = self.pending.pop(analysed.path)
            outcome.seconds = scan_seconds + analysed.seconds
            if analysed.ok:
                if analysed.classification is not None:
                    _summary_outcome(outcome, analysed.classification)
                outcome.status, outcome.stage, outcome.message = "ok", "", ""
            else:
                outcome.stage = "analysis" if analysed.analysis is None else "classification"
                outcome.status = "stopped" if analysed.failure == FailureKind.STOPPED else "failed"
                outcome.message = analysed.error.removeprefix(f"{outcome.stage}: ")
            if self.hooks.wafer_done is not None:
                self.hooks.wafer_done(outcome)

    def wait_for_cluster(self) -> None:
        """Every scan is done (or the lot stopped): wait for the analyses still on the cluster. After a Ctrl-C (one
        that interrupted a scan, or one now) the rest are left ``stopped``: their scans are complete and closing
        the pool leaves their files as they were, so ``--resume`` analyses them."""
        if self.pool is None:
            return
        self.waiting = True
        try:
            while self.pending and not self.result.stopped:
                self.collect(self.pool.poll())
                if self.pending:
                    time.sleep(0.1)
        except KeyboardInterrupt:
            self.result.stopped = True
        if self.pending:
            self.collect(self.pool.poll())  # what has finished meanwhile is kept
            for outcome, _ in self.pending.values():
                outcome.status, outcome.message = "stopped", "analysis stopped by Ctrl-C (the scan is complete)"
                if self.hooks.wafer_done is not None:
                    self.hooks.wafer_done(outcome)
            self.pending.clear()

    def cluster_progress(self, message: WaferProgress) -> None:
        """The cluster's progress, shown once every scan is done (the scan's progress is shown until then)."""
        entry = self.pending.get(message.path)
        if self.waiting and entry is not None and message.outcome is None and self.hooks.analysis_progress:
            self.hooks.analysis_progress("analysis", message.fraction, f"{entry[0].wafer_id}: {message.message}")

    def scan(self, wafer: BatchWafer, outcome: WaferResult, *, resume: bool) -> bool:
        """Scan (or resume) one wafer; True when its scan is complete."""
        outcome.stage = "scan"
        try:
            connection = self.session.get()
        except InstrumentError as error:
            self.result.fatal = f"the station cannot be reached: {error}"
            outcome.status, outcome.message = "not started", str(error)
            return False
        if self.hooks.load_wafer is not None:
            self.hooks.load_wafer(wafer)
        try:
            scanned = api.scan(
                wafer.out,
                recipe=wafer.recipe,
                station=self.session.config,
                lot=self.plan.lot_id,
                wafer=wafer.wafer_id,
                operator=self.plan.operator or None,
                resume=resume,
                on_plan=self.hooks.on_plan,
                on_progress=self.hooks.on_progress,
                on_engine=self.hooks.on_engine,
                connection=connection,
                record=self.recorder,
                batch_id=self.result.batch_id,
                slot=wafer.slot,
            )
        except (InstrumentError, AlignmentError) as error:
            self.session.reset()  # the next wafer starts from a fresh connection
            outcome.status, outcome.message = "failed", str(error)
            return False
        except (SettingsError, ScanFileError, FileExistsError, FileNotFoundError, ValueError) as error:
            outcome.status, outcome.message = "failed", str(error)
            return False
        outcome.scan_status = scanned.status.value
        if scanned.status is ScanStatus.COMPLETE:
            return True
        if self.stop.is_set():
            outcome.status, outcome.message = "stopped", f"{scanned.message} (resumable with --resume)"
        else:
            self.session.reset()
            outcome.status, outcome.message = "failed", f"scan {scanned.status.value}: {scanned.message}"
        return False


def _existing_state(path: Path) -> tuple[str, bool] | None:
    """(scan status, classified) of an existing scan file, or None if it is no readable scan file."""
    try:
        status = read_scan_identity(path)["status"]
    except (OSError, ScanFileError):
        return None
    try:
        with open_hdf5(path) as file:
            done = "results" in file and "classification" in file
    except OSError:
        done = False
    return status, done


def _read_outcome(outcome: WaferResult) -> None:
    classification = read_classification(outcome.path)
    if classification is not None:
        _classification_outcome(outcome, classification)


def _summary_outcome(outcome: WaferResult, summary: Any) -> None:
    """Yield, bins and signature of a classification done on a cluster (a ClassificationSummary)."""
    value = summary.yield_fraction
    outcome.yield_fraction = None if math.isnan(value) else float(value)  # NaN: nothing inspected
    outcome.bins = {name: chips for _, name, _, chips in summary.bins if chips}
    outcome.signature = summary.signature


def _classification_outcome(outcome: WaferResult, classification: Any) -> None:
    value = classification.yield_fraction()
    outcome.yield_fraction = None if math.isnan(value) else float(value)  # NaN: nothing inspected
    counts = classification.bin_counts()
    outcome.bins = {entry.name: counts[entry.code] for entry in classification.bin_table.bins if counts[entry.code]}
    outcome.signature = classification.signature
