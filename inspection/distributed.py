"""Analysis and classification of many wafers, and of big wafers tile by tile, on a Dask cluster.

A fab analyses thousands of wafers. :func:`analyze_many` (or :class:`AnalysisPool`, to hand wafers over one at a
time, e.g. as a lot's scans finish) runs :func:`inspection.pipeline.analyze_scan` and
:func:`inspection.classify.classify_scan` on the workers of a Dask cluster: a ``LocalCluster`` of worker processes
on this machine by default, an existing cluster given its scheduler address. The results are the single-process
results, bit for bit (every array of ``/results`` and ``/classification``). docs/scale-out.md says how to set up a
cluster.

What is distributed
-------------------
* **Per wafer** (every wafer): one task per wafer analyses and classifies it in one worker process and returns a
  small :class:`WaferOutcome`; the arrays stay in the scan file, which the worker reads and writes on the shared
  filesystem. A wafer that fails (a grid that does not register, a corrupt or missing file, a worker that died
  three times) is reported in its outcome; the others go on. Progress comes back as small
  :class:`WaferProgress` messages (Dask's worker events), at most a few per second per wafer.
* **Per tile** (wafers of at least ``tile_min_chips`` usable chips, 8" wafers by default, when there are fewer
  wafers than workers, or always with ``tiles=True``): the wafer's task
  becomes the *coordinator*. It has each pass's prerequisites measured on the workers (one task per pass: dark
  level, bidirectional offset, registration, drift gains, sampling-phase loss; a few arrays per line come back),
  then has the bands of chip rows ("tiles", ``tile_rows`` rows, ~96 MB of chip records each; a tile is worked in
  bands of the pipeline's ``memory_mb``) accumulated on the workers, and writes them itself, in row order, through
  :func:`inspection.pipeline.write_pass_bands`: the function the single-process pipeline writes with, so the
  neighbour medians (one held-back tile gives the halo row) and the efficiency ratio are the same computation on
  the same numbers. At most 1 GB of tiles (at least ``2 × workers + 1`` tiles) are in flight, so the memory does
  not grow with the wafer; tile records go from the worker that made them straight to the coordinator, never
  through the scheduler. The classification of a tiled wafer runs in the coordinator (docs/scale-out.md: why).

Why the results are equal
-------------------------
Every number is made by the same functions on the same inputs: a band's chips depend only on the pass's
prerequisites and the samples of the lines crossing it (the pipeline's own test shows any band size gives the
same bits), the kernel's sums are bit-identical for any thread count, and the writer is the pipeline's own. The
workers must run the same plmapper build, NumPy, h5py, SciPy and scikit-learn as the caller: :func:`analyze_many`
compares them (and the chip kernel binary) with the caller's before anything starts, and refuses a cluster that
differs (:class:`ClusterEnvironmentError`). CPUs with different SIMD extensions are allowed with a warning (NumPy
may round a few transcendental functions differently by one unit in the last place).

One writer per file
-------------------
HDF5 takes one writer per file. Per wafer, only that wafer's task opens its file. Per tile, the workers read the
scan's samples while the coordinator writes ``/results``: the coordinator holds the scan file's writer lock and
writes in HDF5's single-writer/multiple-reader mode (SWMR), in which readers always see a consistent file; the
tile workers open it read-only and see SWMR (:class:`inspection.scanfile.ScanFile` does so by itself). The file's
superblock carries SWMR marks while this lasts. If the coordinator's process is killed, Dask runs the wafer again
on another worker, and the new coordinator clears the dead one's marks (only when no process holds the writer
lock and the scan itself is finished) and starts over; the previous ``/results`` stay intact until the new ones
are complete, as in the single-process pipeline. SWMR needs POSIX write ordering: local disks, Lustre, GPFS and
CephFS give it; on NFS set ``tiles=False`` (per-wafer tasks never share a file).

Scan history
------------
The workers never open the scan history (SQLite in WAL mode wants a local disk). With ``record=`` a
:class:`inspection.history.Recorder`, the caller records each wafer as the in-process commands do, once its
outcome is back (:func:`record_outcome`): an analysis operation with the passes' figures, then a classification
with its yield and bins, carrying the worker's start and end times. ``plmapper analyze --workers|--dask`` and
``plmapper batch --workers|--dask`` do.

Example (not run as a doctest: it starts worker processes)::

    from inspection.distributed import analyze_many

    outcomes = analyze_many(["scans/W01.h5", "scans/W02.h5"], workers=2)  # a LocalCluster of 2 processes
    outcomes = analyze_many(paths, scheduler="tcp://10.0.0.5:8786")      # an existing cluster
    failed = [outcome for outcome in outcomes if not outcome.ok]
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.metadata
import os
import platform
import queue
import re
import sys
import threading
import time
import traceback
import uuid
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from distributed import Client, Event, LocalCluster, as_completed, get_worker, worker_client

from inspection.classify import Classification, ClassifyOptions, classify_scan
from inspection.history import ClassificationRecord, Recorder, utc_now
from inspection.memory import retain_freed_memory
from inspection.pipeline import (
    CHIP_DTYPE,
    AnalysisSettings,
    AnalysisSummary,
    PassSummary,
    RegistrationError,
    _Analysis,
    _PassPlan,
    analyze_scan,
    create_results_datasets,
    publish_results,
    write_pass_bands,
)
from inspection.recipe import Recipe, recipe_from_text
from inspection.scanfile import (
    ScanFile,
    ScanFileError,
    ScanStatus,
    _clear_writer_marks,
    _read_superblock,
    _WriterLock,
)
from inspection.wafer import Placement

__all__ = [
    "DEFAULT_TILE_MIN_CHIPS",
    "AnalysisPool",
    "ClassificationSummary",
    "ClusterConnectionError",
    "ClusterEnvironmentError",
    "ClusterSettings",
    "FailureKind",
    "WaferOutcome",
    "WaferProgress",
    "analyze_many",
    "default_tile_rows",
    "parse_tiles",
    "record_outcome",
]

DEFAULT_TILE_MIN_CHIPS = 50_000_000
"""Wafers with at least this many usable chips are analysed tile by tile (an 8" wafer at 20 µm pitch has 73.9 M;
a 6" at 30 µm 17.8 M, which one worker does in about 20 s)."""
TILE_BYTES = 96 * 2**20
"""Chip records per tile (an 8" wafer: 335 rows of 10,000 chips, 30 tiles per pass)."""
TILE_BYTES_IN_FLIGHT = 2**30
"""Chip records of the tiles submitted but not yet written, at most (but at least 2 x workers + 1 tiles, so every
worker has the next tile queued): 10 tiles of an 8" wafer, held by the workers that made them."""
PROGRESS_INTERVAL_S = 0.5
"""A wafer's task sends at most one progress message per this interval (plus its first and last), and looks that
often whether the caller has asked it to stop."""
STOP_WAIT_S = 120.0
"""How long closing a pool with wafers still running waits for them to stop at their next progress report (after
a band of chip rows; an 8" wafer's pass prerequisites, classification trends and spatial analysis have none: 15 s).
A task killed in the middle of writing would leave its file marked as open for writing."""
TILE_PRIORITY = 10
"""Tiles (and pass prerequisites) run before wafers that have not started: a started wafer finishes first."""


class FailureKind(StrEnum):
    """Why a wafer has no (complete) result."""

    REGISTRATION = "registration"  # the chip grid in the data does not fit the recipe and alignment (CLI exit 1)
    INPUT = "input"  # not a usable scan file: missing, corrupt, no recipe, no lines, still being written (exit 2)
    INTERNAL = "internal"  # an unexpected error in the analysis (a bug): the outcome carries the traceback
    WORKER = "worker"  # the wafer's task was lost: its worker died (repeatedly) or the cluster went away
    STOPPED = "stopped"  # the caller stopped (Ctrl-C, closing the pool) before the wafer was done: file unchanged


class ClusterEnvironmentError(RuntimeError):
    """The cluster's workers cannot give the caller's results bit for bit: they run other software, or cannot
    import plmapper at all. ``stale_here`` names the modules this process loaded before their files were changed
    on disk (the workers run the new files: restarting this process is the fix)."""

    def __init__(self, message: str, stale_here: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.stale_here = stale_here


class ClusterConnectionError(OSError):
    """The scheduler of an existing cluster cannot be reached at the address given."""


@dataclass(frozen=True)
class ClassificationSummary:
    """What a classification found, without its maps (they stay in the file's ``/classification``)."""

    bins: tuple[tuple[int, str, bool, int], ...]  # (bin code, bin name, fail, chips) for each bin of the bin table
    yield_fraction: float
    signature: str
    structures: int
    classifier: dict[str, Any]
    warnings: tuple[str, ...]  # the model's input drift warnings

    @classmethod
    def of(cls, classification: Classification) -> ClassificationSummary:
        counts = classification.bin_counts()
        return cls(
            bins=tuple(
                (entry.code, entry.name, bool(entry.fail), int(counts[entry.code]))
                for entry in classification.bin_table.bins
            ),
            yield_fraction=classification.yield_fraction(),
            signature=classification.signature,
            structures=len(classification.structures),
            classifier=dict(classification.classifier),
            warnings=tuple(classification.drift.get("warnings", [])),
        )

    def record(self) -> ClassificationRecord:
        """What the scan history keeps of it (as :func:`inspection.history.classification_record` of the whole
        classification gives in process)."""
        return ClassificationRecord(
            yield_fraction=None if np.isnan(self.yield_fraction) else float(self.yield_fraction),
            bins=self.bins,
            classifier_kind=str(self.classifier.get("kind", "")),
            classifier_name=str(self.classifier.get("name", "")),
            model_id=self.classifier.get("model_id"),
            signature=str(self.signature),
        )


@dataclass(frozen=True)
class WaferOutcome:
    """One wafer's result: small (summaries and messages; the arrays are in the scan file)."""

    path: Path
    analysis: AnalysisSummary | None  # None when the analysis failed
    classification: ClassificationSummary | None = None  # None when not asked for, or when something failed
    failure: FailureKind | None = None
    error: str = ""  # what went wrong, one line ("" when everything asked for was done)
    details: str = ""  # the traceback of an INTERNAL failure
    tiles: int = 0  # bands of chip rows done by tasks of their own (0: the whole wafer in one task)
    worker: str = ""  # the worker that ran (or coordinated) the wafer
    seconds: float = 0.0
    started_utc: str = ""  # when the task started, by the worker's clock ("" when the task was lost)
    analysed_utc: str = ""  # when the analysis ended (and the classification started)
    finished_utc: str = ""  # when the task ended

    @property
    def ok(self) -> bool:
        return self.failure is None


@dataclass(frozen=True)
class WaferProgress:
    """A progress message: ``fraction`` of the wafer done; ``outcome`` is set on the wafer's last message."""

    path: Path
    fraction: float
    message: str
    outcome: WaferOutcome | None = None


ProgressHandler = Callable[[WaferProgress], None]


def _check_cluster_options(
    scheduler: str | Any | None, workers: int | None, tile_min_chips: int, tile_rows: int | None
) -> None:
    if workers is not None and scheduler is not None:
        raise ValueError("workers: sets the size of a local cluster; an existing cluster has its own workers")
    if workers is not None and not 1 <= workers <= 1024:
        raise ValueError(f"workers: {workers!r} is outside 1..1024")
    if tile_rows is not None and tile_rows < 1:
        raise ValueError(f"tile_rows: {tile_rows!r} must be at least 1")
    if tile_min_chips < 0:
        raise ValueError(f"tile_min_chips: {tile_min_chips!r} must be at least 0")


@dataclass(frozen=True)
class ClusterSettings:
    """Where and how wafers are analysed on Dask (e.g. a lot's, :func:`inspection.batch.run_batch`): the
    :class:`AnalysisPool` parameters that do not depend on the wafers. ``scheduler`` None and ``workers`` None: a
    local cluster of one worker process per CPU.

    Raises
    ------
    ValueError
        ``workers`` with a ``scheduler``, or a value out of range (as :class:`AnalysisPool`).
    """

    scheduler: str | None = None
    workers: int | None = None
    tiles: bool | None = None
    tile_min_chips: int = DEFAULT_TILE_MIN_CHIPS
    tile_rows: int | None = None

    def __post_init__(self) -> None:
        _check_cluster_options(self.scheduler, self.workers, self.tile_min_chips, self.tile_rows)

    def pool(self, **options: Any) -> AnalysisPool:
        """An :class:`AnalysisPool` with these settings; ``options`` are its other parameters (``classify``,
        ``settings``, ``classify_options``, ``progress``, ``record``)."""
        return AnalysisPool(
            scheduler=self.scheduler,
            workers=self.workers,
            tiles=self.tiles,
            tile_min_chips=self.tile_min_chips,
            tile_rows=self.tile_rows,
            **options,
        )


_CHIP_COUNT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kKmM]?)\s*$")


def parse_tiles(text: str) -> tuple[bool | None, int]:
    """The command line's ``--tiles`` choice as the ``(tiles, tile_min_chips)`` of :func:`analyze_many` and
    :class:`AnalysisPool`.

    * ``auto``: ``(None, DEFAULT_TILE_MIN_CHIPS)``: wafers of at least 50 M usable chips (8" wafers) are tiled when
      fewer wafers than workers are being analysed (otherwise every worker has a wafer of its own);
    * ``off``: ``(False, DEFAULT_TILE_MIN_CHIPS)``: never (per-wafer tasks only; on NFS);
    * a chip count ``N`` (``20000000``, ``20M``, ``500k``; ``0`` for every wafer): ``(True, N)``: every wafer of at
      least ``N`` usable chips is tiled, however many wafers there are.

    >>> parse_tiles("auto"), parse_tiles("off"), parse_tiles("20M"), parse_tiles("0")
    ((None, 50000000), (False, 50000000), (True, 20000000), (True, 0))

    Raises
    ------
    ValueError
        Anything else, with what is allowed.
    """
    chosen = text.strip().lower()
    if chosen == "auto":
        return None, DEFAULT_TILE_MIN_CHIPS
    if chosen == "off":
        return False, DEFAULT_TILE_MIN_CHIPS
    match = _CHIP_COUNT.match(text)
    if match is None:
        raise ValueError(
            f"tiles: {text!r} is not auto, off or a chip count (a whole number of usable chips from which a wafer "
            "is tiled, e.g. 20M, 500k or 0 for every wafer)"
        )
    value = float(match.group(1)) * {"": 1, "k": 1e3, "m": 1e6}[match.group(2).lower()]
    if value != round(value):
        raise ValueError(f"tiles: {text!r} is not a whole number of chips")
    return True, round(value)


# ---------------------------------------------------------------------------------------------------------------------
# The caller's side
# ---------------------------------------------------------------------------------------------------------------------


def analyze_many(
    paths: Iterable[str | os.PathLike[str]],
    *,
    scheduler: str | Any | None = None,
    workers: int | None = None,
    classify: bool = True,
    settings: AnalysisSettings | None = None,
    classify_options: ClassifyOptions | None = None,
    tiles: bool | None = None,
    tile_min_chips: int = DEFAULT_TILE_MIN_CHIPS,
    tile_rows: int | None = None,
    progress: ProgressHandler | None = None,
    record: Recorder | None = None,
) -> list[WaferOutcome]:
    """Analyse (and classify) scan files on a Dask cluster; one outcome per file, in the order given.

    Parameters
    ----------
    paths
        Scan files, reachable under these paths from every worker (a shared filesystem; relative paths are made
        absolute here). A file named twice is analysed once and has one outcome.
    scheduler
        The address of an existing cluster's scheduler (``"tcp://host:8786"``) or a ``distributed.Client``; None
        starts a ``LocalCluster`` of worker processes (one thread each) for this call.
    workers
        Worker processes of the local cluster (default: one per CPU). Only with ``scheduler=None``.
    classify
        Classify each wafer after its analysis (``/classification``), with ``classify_options`` (default: the rule
        layer and the default bin table; a model in the options is sent to each worker once).
    settings
        The pipeline's settings (``memory_mb`` bounds each task's working memory).
    tiles
        Whether wafers of at least ``tile_min_chips`` usable chips are analysed tile by tile over the workers. None
        (default): when there are fewer wafers than workers (otherwise every worker has a wafer of its own, and
        tiles would only add their overhead); False: never (per-wafer tasks only, e.g. on NFS); True: always.
    tile_min_chips
        The size from which a wafer is tiled (default: 50 M chips, 8" wafers).
    tile_rows
        Chip rows per tile (default :func:`default_tile_rows`).
    progress
        Called in the caller's thread with each :class:`WaferProgress`, the last one of a wafer carrying its
        outcome.
    record
        Record each wafer in this scan history (:class:`inspection.history.Recorder`) as the in-process
        ``plmapper analyze`` does, from the caller's side once its outcome is back (:func:`record_outcome`); None
        (default) records nothing.

    Raises
    ------
    ClusterEnvironmentError
        The workers run other software than this process.
    ValueError
        ``workers`` with a scheduler address, or a setting out of range.
    ClusterConnectionError
        The scheduler cannot be reached (an ``OSError``).
    """
    unique = list(dict.fromkeys(Path(path).absolute() for path in paths))
    with AnalysisPool(
        scheduler=scheduler,
        workers=workers,
        classify=classify,
        settings=settings,
        classify_options=classify_options,
        tiles=tiles,
        tile_min_chips=tile_min_chips,
        tile_rows=tile_rows,
        progress=progress,
        record=record,
    ) as pool:
        for path in unique:
            pool.submit(path, tiles=tiles if tiles is not None else len(unique) < pool.worker_count)
        return pool.outcomes()


class AnalysisPool:
    """Wafers handed to a Dask cluster one at a time (:func:`analyze_many` in pieces), e.g. each wafer of a lot as
    soon as its scan is complete, while the station scans the next.

    ``submit(path)`` starts a wafer; ``outcomes()`` waits for all submitted wafers and returns their outcomes in
    submission order; ``poll()`` calls the progress handler with what has arrived and returns the outcomes
    finished since the last call, without waiting. The parameters are those of :func:`analyze_many`; ``tiles=None``
    tiles a big wafer when, as it is submitted, fewer wafers than workers are being analysed. Use it as a
    context manager: leaving it (also by Ctrl-C) stops the wafers not finished, their files unchanged (see
    :meth:`close`), and closes the local cluster or the connection to an existing one.
    """

    def __init__(
        self,
        *,
        scheduler: str | Any | None = None,
        workers: int | None = None,
        classify: bool = True,
        settings: AnalysisSettings | None = None,
        classify_options: ClassifyOptions | None = None,
        tiles: bool | None = None,
        tile_min_chips: int = DEFAULT_TILE_MIN_CHIPS,
        tile_rows: int | None = None,
        progress: ProgressHandler | None = None,
        record: Recorder | None = None,
    ) -> None:
        _check_cluster_options(scheduler, workers, tile_min_chips, tile_rows)
        self._settings = settings or AnalysisSettings()
        self._tiles, self._tile_min_chips, self._tile_rows = tiles, tile_min_chips, tile_rows
        self._progress = progress
        self._recorder = record
        self._classifier: str | None = None  # how the wafers are classified, as the history records it
        self._messages: queue.SimpleQueue[dict[str, Any]] = queue.SimpleQueue()
        self._topic = f"plmapper-progress-{uuid.uuid4().hex}"
        self._stop_name = f"plmapper-stop-{uuid.uuid4().hex}"
        self._futures: dict[Path, Any] = {}
        self._outcomes: dict[Path, WaferOutcome] = {}
        self._order: list[Path] = []
        self._stack = contextlib.ExitStack()
        try:
            self._client = self._stack.enter_context(_connect(scheduler, workers))
            check_cluster_environment(self._client)
            self._worker_count = len(self._client.scheduler_info(n_workers=-1)["workers"])
            self._stop = Event(self._stop_name, client=self._client)
            self._client.subscribe_topic(self._topic, lambda event: self._messages.put(event[1]))
            self._stack.callback(self._client.unsubscribe_topic, self._topic)
            options = (classify_options or ClassifyOptions()) if classify else None
            if options is not None:
                from inspection.api import describe_classifier  # noqa: PLC0415 (the caller's side only)

                self._classifier = describe_classifier(options)
            # sent once; each worker fetches it once (a model can be tens of MB)
            self._options = self._client.scatter(options, hash=False) if options is not None else None
        except BaseException:
            self._stack.close()
            raise
        self._done = as_completed(loop=self._client.loop)

    def __enter__(self) -> AnalysisPool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the wafers not finished (their files keep their previous results) and let go of the cluster. Running
        wafers stop at their next progress report, waited for up to STOP_WAIT_S; a second Ctrl-C meanwhile stops
        at once."""
        try:
            if self._futures:
                self._stop.set()
                deadline = time.monotonic() + STOP_WAIT_S
                while time.monotonic() < deadline and not all(future.done() for future in self._futures.values()):
                    time.sleep(0.05)
        finally:
            for future in self._futures.values():
                future.cancel()
            self._futures.clear()
            if self._options is not None:  # released before the workers go: no "lost scattered data" complaint
                self._options.release()
                self._options = None
            self._stack.close()

    @property
    def client(self) -> Client:
        """The ``distributed.Client`` the pool works through (e.g. for ``client.dashboard_link``)."""
        return self._client

    @property
    def worker_count(self) -> int:
        """Workers in the cluster when the pool started."""
        return self._worker_count

    def submit(self, path: str | os.PathLike[str], *, tiles: bool | None = None) -> None:
        """Start analysing ``path`` (made absolute). A path still being analysed is not submitted again; one that
        is finished is analysed again, its new outcome replacing the old. ``tiles`` overrides the pool's."""
        path = Path(path).absolute()
        if path in self._futures:
            return
        if tiles is None:
            tiles = self._tiles if self._tiles is not None else len(self._futures) + 1 < self._worker_count
        future = self._client.submit(
            _wafer_task,
            str(path),
            settings=self._settings,
            options=self._options,
            tile_min_chips=self._tile_min_chips if tiles else None,
            tile_rows=self._tile_rows,
            topic=self._topic,
            stop=self._stop_name,
            key=f"plmapper-wafer-{uuid.uuid4().hex}",
            pure=False,
            retries=0,
        )
        self._futures[path] = future
        if path not in self._outcomes:
            self._order.append(path)
        self._done.add(future)

    def poll(self) -> list[WaferOutcome]:
        """Report the progress that has arrived and return the outcomes finished since the last call."""
        finished = [self._collect(future) for future in self._done.next_batch(block=False)]
        self._drain()
        for outcome in finished:
            self._report(WaferProgress(outcome.path, 1.0, _final_message(outcome), outcome))
        return finished

    def outcomes(self) -> list[WaferOutcome]:
        """Wait for every submitted wafer; their outcomes in submission order."""
        while self._futures:
            self.poll()
            if self._futures:
                time.sleep(0.05)
        self.poll()
        return [self._outcomes[path] for path in self._order]

    def _collect(self, future: Any) -> WaferOutcome:
        path = next(path for path, pending in self._futures.items() if pending is future)
        try:
            outcome = future.result()
        except Exception as error:  # noqa: BLE001 - the task itself reports every error; this is a lost task
            outcome = WaferOutcome(
                path, None, failure=FailureKind.WORKER, error=f"{type(error).__name__}: {error}".rstrip(": ")
            )
        future.release()
        del self._futures[path]
        self._outcomes[path] = outcome
        if self._recorder is not None:
            record_outcome(self._recorder, outcome, classifier=self._classifier)
        return outcome

    def _drain(self) -> None:
        while True:
            try:
                message = self._messages.get_nowait()
            except queue.Empty:
                return
            self._report(WaferProgress(Path(message["path"]), float(message["fraction"]), str(message["message"])))

    def _report(self, message: WaferProgress) -> None:
        if self._progress is not None:
            self._progress(message)


def record_outcome(recorder: Recorder, outcome: WaferOutcome, *, classifier: str | None) -> None:
    """Write a wafer's outcome into the scan history as the in-process analysis and classification would have
    (:func:`inspection.api.analyze`, :func:`inspection.api.classify`): an ``analysis`` operation (``ok`` with the
    pass details, or ``failed`` / ``stopped`` with the error), then, if the wafer was to be classified
    (``classifier``: its description, None when not) and its analysis succeeded, a ``classification`` operation
    whose yield and bins become the scan's current ones. The operations carry the worker's start and end times;
    their details also name the worker and the number of tiles. A file the history cannot read (missing, not a
    scan) is not recorded, as in process; the recorder never raises (it warns once and stops recording)."""
    from inspection.api import analysis_details  # noqa: PLC0415 (the caller's side only)

    now = utc_now()
    started, analysed, finished = (outcome.started_utc or now, outcome.analysed_utc or now, outcome.finished_utc or now)
    status = "stopped" if outcome.failure is FailureKind.STOPPED else "failed"
    where = {"worker": outcome.worker, "tiles": outcome.tiles}
    if outcome.analysis is None:
        recorder.add_operation(
            outcome.path,
            "analysis",
            status,
            started_utc=started,
            finished_utc=finished,
            message=outcome.error,
            details=where,
        )
        return
    details = {**analysis_details(outcome.analysis), **where}
    recorder.add_operation(outcome.path, "analysis", "ok", started_utc=started, finished_utc=analysed, details=details)
    if classifier is None:
        return
    summary = outcome.classification
    if summary is None:
        recorder.add_operation(
            outcome.path,
            "classification",
            status,
            started_utc=analysed,
            finished_utc=finished,
            message=outcome.error,
            details={"classifier": classifier, **where},
        )
        return
    details = {
        "classifier": classifier,
        "structures": summary.structures,
        "warnings": list(summary.warnings),
        **where,
    }
    recorder.add_operation(
        outcome.path,
        "classification",
        "ok",
        started_utc=analysed,
        finished_utc=finished,
        details=details,
        classification=summary.record(),
    )


def _final_message(outcome: WaferOutcome) -> str:
    if not outcome.ok:
        return f"failed ({outcome.failure}): {outcome.error}"
    done = "analysed and classified" if outcome.classification is not None else "analysed"
    how = f"in {outcome.tiles} tiles" if outcome.tiles else "in one task"
    return f"{done} {how} in {outcome.seconds:.1f} s"


@contextlib.contextmanager
def _connect(scheduler: str | Any | None, workers: int | None) -> Iterator[Any]:
    """A ``distributed.Client``: of the given one, of an existing cluster, or of a LocalCluster made here."""
    if isinstance(scheduler, Client):
        yield scheduler
        return
    if scheduler is None:
        count = workers or os.cpu_count() or 1
        with (
            LocalCluster(n_workers=count, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster,
            Client(cluster, set_as_default=False) as client,
        ):
            yield client
        return
    try:
        client = Client(scheduler, set_as_default=False, timeout="20s")
    except (OSError, TimeoutError) as error:
        raise ClusterConnectionError(
            f"cannot reach the Dask scheduler at {scheduler}: {error} (is `dask scheduler` running there, and the "
            "port open? docs/scale-out.md)"
        ) from None
    with client:
        yield client


# ---------------------------------------------------------------------------------------------------------------------
# The workers' software must be the caller's
# ---------------------------------------------------------------------------------------------------------------------

try:
    from numpy._core._multiarray_umath import __cpu_features__ as _cpu_features
except ImportError:  # pragma: no cover - a NumPy that moved it: no CPU comparison
    _cpu_features = {}

_PACKAGES = ("numpy", "h5py", "scipy", "scikit-learn", "skops", "dask", "distributed")


def _file_digest(location: str) -> str:
    return hashlib.sha256(Path(location).read_bytes()).hexdigest()[:16]


def _plmapper_modules() -> dict[str, str]:
    """Name and file of every plmapper module loaded in this process."""
    return {
        name: module.__file__
        for name, module in sorted(sys.modules.items())
        if name.split(".")[0] in ("inspection", "cext") and getattr(module, "__file__", None)
    }


@functools.cache
def _code_digests() -> dict[str, str]:
    """sha256 (16 hex digits) of the source (or binary) of every plmapper module loaded in this process, taken once:
    the code this process runs (a file edited afterwards is not what it runs)."""
    return {name: _file_digest(location) for name, location in _plmapper_modules().items()}


def environment() -> dict[str, Any]:
    """What decides this process's analysis results bit for bit: Python and package versions, a digest of each
    loaded plmapper module (the compiled chip kernel included), and NumPy's SIMD extensions."""
    versions = {"python": platform.python_version(), "hdf5": h5py.version.hdf5_version}
    for name in _PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return {
        "software": versions,
        "code": _code_digests(),
        "cpu": sorted(name for name, enabled in _cpu_features.items() if enabled),
    }


def check_cluster_environment(client: Any) -> None:
    """Refuse a cluster whose workers run other software than this process (:class:`ClusterEnvironmentError`):
    other package versions, or another version of a plmapper module both have loaded (every module the analysis
    and classification use is loaded by this module); warn when their CPUs' SIMD extensions differ. Workers that
    join the cluster later are not checked."""
    mine = environment()
    try:
        theirs = client.run(environment)
    except Exception as error:  # noqa: BLE001 - any failure to run plmapper's own code on a worker means the same
        raise ClusterEnvironmentError(
            f"the workers cannot run plmapper ({type(error).__name__}: {error}); install the same plmapper build, "
            "with its compiled extension, in the workers' environment (docs/scale-out.md)"
        ) from None
    problems, stale = [], set()
    files = _plmapper_modules()
    for address, reported in sorted(theirs.items()):
        differ = [
            f"{name} {reported['software'].get(name)} (here {value})"
            for name, value in mine["software"].items()
            if reported["software"].get(name) != value
        ]
        differ += [
            f"{name} (code {reported['code'][name]}, here {digest})"
            for name, digest in mine["code"].items()
            if reported["code"].get(name, digest) != digest
        ]
        stale.update(
            name
            for name, digest in mine["code"].items()
            if reported["code"].get(name, digest) != digest and _file_digest(files[name]) == reported["code"][name]
        )
        if differ:
            problems.append(f"{address}: " + ", ".join(differ))
        elif reported["cpu"] != mine["cpu"]:
            missing = sorted(set(mine["cpu"]) ^ set(reported["cpu"]))
            warnings.warn(
                f"worker {address}: CPU extensions differ from this machine's ({', '.join(missing)}): NumPy may round "
                "some functions differently, so results may differ from a single-process run here in the last bit",
                stacklevel=3,
            )
    if problems:
        advice = (
            f"this process loaded {', '.join(sorted(stale))} before the file changed on disk: restart it"
            if stale
            else "install the same plmapper build and packages on the workers, and restart them after an update"
        )
        raise ClusterEnvironmentError(
            "the workers' software differs from this process's, so their results would not be bit-identical: "
            + "; ".join(problems)
            + f" ({advice})",
            stale_here=tuple(sorted(stale)),
        )


# ---------------------------------------------------------------------------------------------------------------------
# A wafer's task (on a worker)
# ---------------------------------------------------------------------------------------------------------------------


class _Stopped(Exception):  # noqa: N818 - not an error: the caller asked the wafer's task to stop
    """Raised from a progress report when the caller has stopped the pool: the analysis unwinds and closes its file
    (its results are written under a temporary name, so the previous ones stay)."""


class _Messenger:
    """Progress of one wafer as small worker events, at most one per PROGRESS_INTERVAL_S; at the same pace, whether
    the caller asked to stop (then the report raises :class:`_Stopped`)."""

    def __init__(self, topic: str, path: str, stop: str) -> None:
        self._worker = get_worker()
        self._topic, self._path = topic, path
        self._stop = Event(stop)
        self._last = -np.inf
        self._lock = threading.Lock()

    def part(self, low: float, high: float) -> Callable[[float, str], None]:
        """A ``(fraction, message)`` callback for a stage that is ``low .. high`` of the wafer. Its last report
        (fraction 1: ``analyze_scan`` sends it after its results are in place) never stops the stage."""
        return lambda fraction, message: self.send(
            low + (high - low) * fraction, message, force=fraction >= 1.0, may_stop=fraction < 1.0
        )

    def send(self, fraction: float, message: str, *, force: bool = False, may_stop: bool = True) -> None:
        with self._lock:
            now = time.monotonic()
            if not force and now - self._last < PROGRESS_INTERVAL_S:
                return
            self._last = now
        if may_stop and self._stop.is_set():
            raise _Stopped("stopped by the caller before the wafer was done; its file keeps its previous results")
        self._worker.log_event(self._topic, {"path": self._path, "fraction": float(fraction), "message": message})


def _wafer_task(
    path_text: str,
    *,
    settings: AnalysisSettings,
    options: ClassifyOptions | None,
    tile_min_chips: int | None,
    tile_rows: int | None,
    topic: str,
    stop: str,
) -> WaferOutcome:
    """Analyse (and classify) one wafer; every error becomes the outcome's failure."""
    started, started_utc = time.perf_counter(), utc_now()
    retain_freed_memory()  # as the command line does; Dask's workers are started with MALLOC_TRIM_THRESHOLD_=64k
    path = Path(path_text)
    worker = get_worker().address
    send = _Messenger(topic, path_text, stop)
    analysed = 0.8 if options is not None else 1.0
    summary: AnalysisSummary | None = None
    tiles, analysed_utc = 0, ""

    def outcome(**result: Any) -> WaferOutcome:
        """The outcome as things stand now, with ``result`` (the classification, or the failure)."""
        return WaferOutcome(
            path,
            summary,
            tiles=tiles,
            worker=worker,
            seconds=time.perf_counter() - started,
            started_utc=started_utc,
            analysed_utc=analysed_utc,
            finished_utc=utc_now(),
            **result,
        )

    try:
        send.send(0.0, f"started on {worker}", force=True)
        if tile_min_chips is not None and _usable_chips(path) >= tile_min_chips:
            summary, tiles = _analyze_tiled(path, settings, tile_rows, send.part(0.0, analysed))
        else:
            summary = analyze_scan(path, settings, progress=send.part(0.0, analysed))
        analysed_utc = utc_now()
        classification = None
        if options is not None:
            classification = ClassificationSummary.of(classify_scan(path, options, progress=send.part(analysed, 1.0)))
        return outcome(classification=classification)
    except _Stopped as stopped:
        failure, message, details = FailureKind.STOPPED, str(stopped), ""
    except RegistrationError as error:
        failure, message, details = FailureKind.REGISTRATION, str(error), ""
    except (ScanFileError, ValueError, OSError, KeyError) as error:  # a file that is not a usable scan
        failure, message, details = FailureKind.INPUT, str(error) or type(error).__name__, ""
    except Exception as error:  # noqa: BLE001 - reported with its traceback in the outcome; the other wafers go on
        failure, message = FailureKind.INTERNAL, f"{type(error).__name__}: {error}"
        details = "".join(traceback.format_exception(error))
    stage = "analysis" if summary is None else "classification"
    return outcome(failure=failure, error=f"{stage}: {message}", details=details)


def _usable_chips(path: Path) -> int:
    with ScanFile(path) as scan:
        recipe = _stored_recipe(scan)
    return recipe.layout().chip_count


def _stored_recipe(scan: ScanFile) -> Recipe:
    if not scan.recipe_toml:
        raise ValueError(f"{scan.path}: the file holds no recipe; the chip grid is unknown")
    return recipe_from_text(scan.recipe_toml, source=f"{scan.path}:/settings/recipe_toml")


def _stored_placement(scan: ScanFile) -> Placement:
    """The alignment's placement, as :func:`inspection.pipeline.analyze_scan` takes it."""
    alignment = scan.alignment()
    if alignment is None:
        return Placement()
    return Placement(alignment["offset_x_um"], alignment["offset_y_um"], alignment["rotation_deg"])


def default_tile_rows(column_count: int) -> int:
    """Chip rows per tile: TILE_BYTES of chip records (at least one row)."""
    return max(1, TILE_BYTES // (column_count * CHIP_DTYPE.itemsize))


# ---------------------------------------------------------------------------------------------------------------------
# A wafer tile by tile: the coordinator (a wafer's task) and its tasks
# ---------------------------------------------------------------------------------------------------------------------


def _quiet(fraction: float, message: str) -> None:
    pass


def _open_analysis(path: str, settings: AnalysisSettings) -> _Analysis:
    """The pipeline's analysis of ``path``, read-only (writes nothing; close its ``scan``)."""
    scan = ScanFile(path)
    try:
        return _Analysis(scan, _stored_recipe(scan), _stored_placement(scan), settings, group=None, report=_quiet)
    except BaseException:
        scan.close()
        raise


_SESSIONS: dict[str, list[_Analysis]] = {}
"""Per tiled wafer (its session id), the analyses this worker process has open and not in use: opening the scan
file and the layout's masks costs up to 0.3 s for an 8" wafer, per tile otherwise."""
_SESSIONS_LOCK = threading.Lock()
MAX_SESSIONS = 2
"""Tiled wafers whose analyses a worker process keeps open at once (the oldest are closed first)."""


@contextlib.contextmanager
def _session_analysis(session: str, path: str, settings: AnalysisSettings) -> Iterator[_Analysis]:
    """An open analysis of a tiled wafer's scan file, reused by the session's tiles on this worker (each in use by
    one thread at a time). Only for tiles: they run while the coordinator writes in SWMR mode, and a file opened
    then is opened for SWMR reading; a handle opened before the writer started must not be used after."""
    with _SESSIONS_LOCK:
        idle = _SESSIONS.setdefault(session, [])
        analysis = idle.pop() if idle else None
        stale = list(_SESSIONS)[:-MAX_SESSIONS]
        closing = [item for name in stale for item in _SESSIONS.pop(name)]
    for item in closing:
        item.scan.close()
    if analysis is None:
        analysis = _open_analysis(path, settings)
    try:
        yield analysis
    except BaseException:
        analysis.scan.close()
        raise
    with _SESSIONS_LOCK:
        if session in _SESSIONS:
            _SESSIONS[session].append(analysis)
            return
    analysis.scan.close()


def _close_session(session: str) -> int:
    """Close this worker process's analyses of a tiled wafer (the coordinator's last call); returns how many."""
    with _SESSIONS_LOCK:
        analyses = _SESSIONS.pop(session, [])
    for analysis in analyses:
        analysis.scan.close()
    return len(analyses)


def _prepare_task(path: str, settings: AnalysisSettings, pass_index: int) -> _PassPlan:
    """A pass's prerequisites (raises RegistrationError like the pipeline)."""
    retain_freed_memory()
    analysis = _open_analysis(path, settings)
    try:
        return analysis.prepare_pass(pass_index)
    finally:
        analysis.scan.close()


def _tile_task(
    session: str, path: str, *, settings: AnalysisSettings, plan: _PassPlan, first_row: int, last_row: int
) -> np.ndarray:
    """Chip records of rows ``first_row .. last_row - 1`` of a pass, in the pipeline's bands (its memory bound)."""
    retain_freed_memory()
    with _session_analysis(session, path, settings) as analysis:
        chips = np.empty((last_row - first_row, analysis.shape[1]), dtype=CHIP_DTYPE)
        for start in range(first_row, last_row, analysis.band_rows):
            stop = min(start + analysis.band_rows, last_row)
            chips[start - first_row : stop - first_row] = analysis.band_chips(plan, start, stop)
        return chips


def _analyze_tiled(
    path: Path, settings: AnalysisSettings, tile_rows: int | None, report: Callable[[float, str], None]
) -> tuple[AnalysisSummary, int]:
    """:func:`inspection.pipeline.analyze_scan` with the passes' prerequisites and the tiles done by other tasks;
    this task writes. Returns the summary and the number of tiles."""
    started = time.perf_counter()
    with ScanFile(path) as scan:
        recipe, placement = _stored_recipe(scan), _stored_placement(scan)
        passes = [index for index in range(scan.pass_count) if scan.lines_complete(index) > 0]
        powers_w = scan.powers_w
        spectra = scan.spectra()
    if not passes:
        raise ScanFileError(f"{path}: no complete raw line to analyse")
    layout = recipe.layout()
    shape = (layout.row_count, layout.column_count)
    rows_per_tile = min(tile_rows or default_tile_rows(shape[1]), shape[0])
    starts = list(range(0, shape[0], rows_per_tile))
    session = uuid.uuid4().hex
    in_flight: deque[tuple[int, int, Any]] = deque()
    with worker_client() as client:  # leaves this worker's thread to the tiles while it waits
        workers = max(1, len(client.scheduler_info(n_workers=-1)["workers"]))
        report(0.0, f"measuring the prerequisites of {len(passes)} passes")
        plan_futures = [
            client.submit(_prepare_task, str(path), settings, index, pure=False, priority=TILE_PRIORITY)
            for index in passes
        ]
        try:
            plans: list[_PassPlan] = client.gather(plan_futures)  # a RegistrationError stops here: nothing written
            tile_bytes = rows_per_tile * shape[1] * CHIP_DTYPE.itemsize
            window = max(2 * workers + 1, TILE_BYTES_IN_FLIGHT // tile_bytes)
            jobs = iter([(position, first) for position in range(len(passes)) for first in starts])
            total = len(passes) * len(starts)

            def top_up() -> None:
                while len(in_flight) < window:
                    job = next(jobs, None)
                    if job is None:
                        return
                    position, first = job
                    last = min(first + rows_per_tile, shape[0])
                    future = client.submit(
                        _tile_task,
                        session,
                        str(path),
                        settings=settings,
                        plan=plan_futures[position],
                        first_row=first,
                        last_row=last,
                        pure=False,
                        priority=TILE_PRIORITY,
                    )
                    in_flight.append((position, first, future))

            def tiles_of(position: int) -> Iterator[tuple[int, np.ndarray]]:
                for _ in starts:
                    top_up()
                    tile_position, first, future = in_flight.popleft()
                    if tile_position != position:
                        raise RuntimeError("tiles out of order")  # cannot happen: jobs are pass-major
                    chips = future.result()
                    future.release()
                    top_up()  # keep the workers busy while this tile is written
                    written = position * len(starts) + first // rows_per_tile + 1
                    report(
                        0.95 * written / total,
                        f"pass {passes[position]}: chip rows {first}..{first + chips.shape[0] - 1} "
                        f"({written}/{total} tiles)",
                    )
                    yield first, chips

            summaries: list[PassSummary] = []
            with _results_writer(path) as (file, group):
                datasets, ratio = create_results_datasets(group, shape, passes, powers_w)
                file.swmr_mode = True  # from here the tile workers may read the file while it is written
                for position, index in enumerate(passes):
                    last = ratio is not None and index == passes[-1]
                    measured = write_pass_bands(
                        datasets[index],
                        tiles_of(position),
                        ratio=ratio if last else None,
                        low_pass=datasets[passes[0]] if last else None,
                    )
                    summaries.append(plans[position].summary(measured))
        finally:
            for _, _, future in in_flight:
                future.cancel()
            for future in plan_futures:
                future.cancel()
            client.run(_close_session, session, on_error="ignore")  # a worker that died has nothing open
    with ScanFile(path, for_update=True) as scan:
        file = scan.h5file
        group = file["results_partial"]
        _Analysis(scan, recipe, placement, settings, group=group, report=_quiet).write_spectra(spectra)
        publish_results(file, settings, placement, summaries, scan.powers_w)
    report(1.0, "analysis complete")
    return AnalysisSummary(path, tuple(summaries), len(spectra), time.perf_counter() - started), total


_SWMR_WRITE_MARK = 0x04  # superblock status flag: open for SWMR write (0x01, open for write, is any writer's)


@contextlib.contextmanager
def _results_writer(path: Path) -> Iterator[tuple[h5py.File, h5py.Group]]:
    """The scan file open for writing in the HDF5 1.10 format (SWMR needs it), under the scan file's writer lock,
    with a fresh ``/results_partial`` group. A dead coordinator's SWMR marks are cleared first (see the module
    docstring); a live writer (a scan, or another analysis of the file) is refused."""
    lock = _WriterLock(path)
    try:
        lock.acquire()
    except ScanFileError:
        raise ScanFileError(
            f"{path}: another process is writing this file (a scan or an analysis); wait until it has stopped"
        ) from None
    try:
        superblock = _read_superblock(path)
        if superblock is not None and superblock[1] & _SWMR_WRITE_MARK:
            # left by a dead SWMR writer (live ones hold the lock we hold now): a scan writer, which leaves the
            # status "running" (the scan must be resumed), or a tiled analysis's coordinator, whose marks go
            with ScanFile(path) as scan:
                stored = scan.stored_status
            if stored is ScanStatus.RUNNING:
                raise ScanFileError(f"{path}: the scan was interrupted; resume it (plmapper scan --resume) first")
            _clear_writer_marks(path)
        access = h5py.h5p.create(h5py.h5p.FILE_ACCESS)
        access.set_libver_bounds(h5py.h5f.LIBVER_V110, h5py.h5f.LIBVER_V110)
        access.set_file_locking(False, False)  # as every plmapper reader and writer (the writer lock replaces it)
        access.set_alignment(1, 8)
        try:
            file_id = h5py.h5f.open(os.fsencode(path), h5py.h5f.ACC_RDWR, fapl=access)
        except OSError as error:
            raise ScanFileError(f"{path}: HDF5 cannot open the file for writing: {error}") from None
        with h5py.File(file_id) as file:
            if "results_partial" in file:
                del file["results_partial"]
            yield file, file.create_group("results_partial")
    finally:
        lock.release()
