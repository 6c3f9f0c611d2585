"""The station seen from the GUI: every instrument command on one worker thread, outcomes as small signals.

:class:`StationController` owns the open :class:`~drivers.station.Station` (and, for a virtual station, the child
process serving it, started exactly as ``plmapper station check`` and ``plmapper scan`` start it:
:func:`drivers.station.connect`). All instrument I/O runs on its single worker thread, in order, so the
instruments are never talked to from two places at once and the GUI thread never waits for one. A scan
(:func:`inspection.job.run_scan`) runs on that thread too, recorded in the scan history (start, end, status) as
:func:`inspection.api.scan` records the command line's scans; pause, resume and abort go straight to its engine,
which acts on them between lines. While it runs, the jog and laser commands are refused (the engine owns the hardware);
"Laser off" then pauses the scan, which switches the laser off after the current line.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PySide6.QtCore import QObject, Signal

from app.gui.errors import describe_error
from drivers.interfaces import Axis
from drivers.station import Station, StationConfig, connect, load_station_config
from inspection.history import Recorder, read_scan_identity, recipe_name
from inspection.job import ScanIdentity, run_scan
from inspection.scan import ScanEngine, ScanProgress
from inspection.scanfile import ScanFileError

log = logging.getLogger("plmapper.gui")


@dataclass(frozen=True)
class StationState:
    """One poll of the station's live readouts (small: travels in a signal)."""

    x_um: float
    y_um: float
    z_um: float
    emission: bool
    interlock_closed: bool
    power_setpoint_w: float
    power_meter_w: float
    detector_v: float
    laser_wavelength_nm: float


class StationController(QObject):
    """See the module docstring. Every public method returns at once."""

    connected = Signal(str, object)  # station name, {role: identity text}
    disconnected = Signal()
    state = Signal(object)  # StationState
    failed = Signal(str, str)  # title, message (never a traceback)
    busy_changed = Signal(bool)
    scan_plan = Signal(str, str)  # what the plan is based on, the plan's summary
    scan_progress = Signal(object)  # inspection.scan.ScanProgress
    scan_started = Signal(str)  # scan file
    scan_finished = Signal(str, str, str)  # scan file, status, message
    history_warning = Signal(str)  # the scan history could not be written (the scan goes on)

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="plmapper-station")
        self._stack: contextlib.ExitStack | None = None
        self.station: Station | None = None
        self.config: StationConfig | None = None
        self.engine: ScanEngine | None = None
        self.scanning = False
        self._pending = 0
        self._poll_pending = False
        self._lock = threading.Lock()

    # -- plumbing ----------------------------------------------------------------------------------------------------
    def _submit(self, job: Callable[[], Any], *, title: str = "") -> Future:
        with self._lock:
            self._pending += 1
            if self._pending == 1:
                self.busy_changed.emit(True)

        def run() -> Any:
            try:
                return job()
            except BaseException as error:
                log.debug("station job failed", exc_info=error)
                heading, text = describe_error(error)
                self.failed.emit(title or heading, text)
                return None
            finally:
                with self._lock:
                    self._pending -= 1
                    if self._pending == 0:
                        self.busy_changed.emit(False)

        return self._executor.submit(run)

    @property
    def is_connected(self) -> bool:
        return self.station is not None

    # -- connection --------------------------------------------------------------------------------------------------
    def connect_station(self, station_file: str | Path) -> Future:
        """Open the station of ``station_file`` (starting the virtual station first if it names a profile)."""

        def job() -> None:
            if self.station is not None:
                return
            config = load_station_config(station_file)
            stack = contextlib.ExitStack()
            try:
                station = stack.enter_context(connect(config))
                identities = {role: str(identity) for role, identity in station.identities().items()}
            except BaseException:
                stack.close()
                raise
            self._stack, self.station, self.config = stack, station, config
            self.connected.emit(config.station.name, identities)
            self._poll()

        return self._submit(job, title="Cannot connect to the station")

    def disconnect_station(self) -> Future:
        """Make every instrument safe and close it (the virtual station stops too)."""

        def job() -> None:
            self._close()

        return self._submit(job)

    def _close(self) -> None:
        stack, self._stack, self.station = self._stack, None, None
        if stack is not None:
            try:
                stack.close()
            finally:
                self.disconnected.emit()

    def shutdown(self, timeout_s: float = 30.0) -> None:
        """Stop a running scan after its current line, close the station and the worker (on quit)."""
        if self.engine is not None:
            self.engine.abort()
        future = self._executor.submit(self._close)
        with contextlib.suppress(Exception):
            future.result(timeout=timeout_s)
        self._executor.shutdown(wait=False, cancel_futures=True)

    # -- live readouts -----------------------------------------------------------------------------------------------
    def poll(self) -> None:
        """Read the live values once (skipped while a scan runs or a poll is still waiting)."""
        if self.station is None or self.scanning or self._poll_pending:
            return
        self._poll_pending = True

        def job() -> None:
            try:
                self._poll()
            finally:
                self._poll_pending = False

        self._executor.submit(self._quiet(job))

    def _quiet(self, job: Callable[[], None]) -> Callable[[], None]:
        """A poll that fails (a dropped instrument) is reported once, as any other job."""

        def run() -> None:
            try:
                job()
            except BaseException as error:  # noqa: BLE001
                heading, text = describe_error(error)
                self.failed.emit(heading, text)

        return run

    def _poll(self) -> None:
        station = self.station
        if station is None or self.scanning:
            return
        positions = station.stage.positions_um()
        laser = station.laser
        self.state.emit(
            StationState(
                x_um=positions[Axis.X],
                y_um=positions[Axis.Y],
                z_um=positions[Axis.Z],
                emission=laser.emission(),
                interlock_closed=laser.interlock_closed(),
                power_setpoint_w=laser.power_setpoint_w(),
                power_meter_w=station.power_meter.power_w(),
                detector_v=station.detector.read_voltage_v(),
                laser_wavelength_nm=laser.wavelength_nm(),
            )
        )

    # -- manual control ----------------------------------------------------------------------------------------------
    def _manual(self, action: Callable[[Station], None], title: str) -> Future | None:
        if self.scanning:
            self.failed.emit(title, "A scan is running: the stage and the laser belong to it until it stops.")
            return None
        if self.station is None:
            self.failed.emit(title, "The station is not connected: connect it first (Station ▸ Connect).")
            return None

        def job() -> None:
            station = self.station
            if station is None:
                return
            action(station)
            self._poll()

        return self._submit(job, title=title)

    def jog(self, axis: Axis, distance_um: float) -> Future | None:
        """Move one axis by ``distance_um`` (the driver refuses moves beyond its soft limits)."""
        return self._manual(lambda station: station.stage.move_relative_um(axis, distance_um), "Cannot move the stage")

    def move_to(self, x_um: float, y_um: float) -> Future | None:
        """Move the stage to (x, y) in the stage frame."""

        def action(station: Station) -> None:
            station.stage.move_absolute_um(Axis.X, x_um, wait=False)
            station.stage.move_absolute_um(Axis.Y, y_um, wait=False)
            station.stage.wait_idle(60.0)

        return self._manual(action, "Cannot move the stage")

    def move_to_point(self, x_um: float, y_um: float, *, safe_z_um: float, focus_z_um: float) -> Future | None:
        """Bring the spot to (x, y) of the stage frame as a scan does: Z down to the safe height, XY, Z to focus."""

        def action(station: Station) -> None:
            stage = station.stage
            stage.move_absolute_um(Axis.Z, safe_z_um)
            stage.move_absolute_um(Axis.X, x_um, wait=False)
            stage.move_absolute_um(Axis.Y, y_um, wait=False)
            stage.wait_idle(60.0)
            stage.move_absolute_um(Axis.Z, focus_z_um)

        return self._manual(action, "Cannot move to the chip")

    def set_laser_power(self, power_w: float) -> Future | None:
        return self._manual(lambda station: station.laser.set_power_w(power_w), "Cannot set the laser power")

    def set_emission(self, on: bool) -> Future | None:
        return self._manual(lambda station: station.laser.set_emission(on), "Cannot switch the laser")

    def laser_off(self) -> Future | None:
        """Laser off now; during a scan: pause it (the engine switches the laser off after the current line)."""
        if self.scanning and self.engine is not None:
            self.engine.pause()
            return None
        if self.station is None:
            return None
        return self._submit(lambda: (self.station.laser.set_emission(False), self._poll()) if self.station else None)

    # -- scans -------------------------------------------------------------------------------------------------------
    def start_scan(
        self,
        recipe_path: str | Path,
        output: str | Path,
        identity: ScanIdentity,
        *,
        resume: bool = False,
        recipe_source: str | Path | None = None,
    ) -> Future | None:
        """Run a scan (or resume one) on the worker; progress and the end come as signals. The scan history records
        it from the moment its file exists (``recipe_source``: the recipe file to record when ``recipe_path`` is a
        temporary copy of it with edits)."""
        if self.station is None or self.config is None:
            self.failed.emit("Cannot start the scan", "The station is not connected: connect it first.")
            return None
        if self.scanning:
            self.failed.emit("Cannot start the scan", "A scan is already running.")
            return None
        self.scanning = True
        output = Path(output)

        def on_plan(plan, label: str) -> None:
            self.scan_plan.emit(label, plan.summary())

        recorder = Recorder(True, warn=self._warn_history)
        recorded: dict[str, Any] = {}

        def on_engine(engine: ScanEngine) -> None:
            self.engine = engine
            # as inspection.api.scan records a scan: from the moment its file exists
            recorded["handle"] = recorder.begin_scan(output, resume=resume, **recorded["identity"])
            self.scan_started.emit(str(output))

        def job() -> None:
            try:
                assert self.station is not None and self.config is not None
                recorded["identity"] = _history_identity(
                    output, identity, recipe_source or recipe_path, resume, self.config.station.name
                )
                outcome = run_scan(
                    recipe_path,
                    self.config,
                    output,
                    identity,
                    resume=resume,
                    on_plan=on_plan,
                    on_progress=self.scan_progress.emit,
                    station=self.station,
                    on_engine=on_engine,
                )
                recorder.end_scan(
                    recorded.get("handle"), outcome.status.value, outcome.message, uuid=_stored(output, "uuid")
                )
                self.scan_finished.emit(str(outcome.path), outcome.status.value, outcome.message)
            except BaseException as error:
                if recorded.get("handle") is not None:
                    status = _stored(output, "status")  # what the file says now (stopped mid-line: interrupted)
                    status = "interrupted" if status in (None, "running") else status
                    recorder.end_scan(recorded["handle"], status, str(error))
                self.scan_finished.emit(str(output), "not started", "")
                raise
            finally:
                recorder.close()
                self.scanning = False
                self.engine = None

        return self._submit(job, title="The scan could not run")

    def _warn_history(self, message: str) -> None:
        with contextlib.suppress(RuntimeError):  # the window is gone
            self.history_warning.emit(message)

    def pause_scan(self) -> None:
        if self.engine is not None:
            self.engine.pause()

    def resume_scan(self) -> None:
        if self.engine is not None:
            self.engine.resume()

    def abort_scan(self) -> None:
        if self.engine is not None:
            self.engine.abort()


def _history_identity(
    output: Path, identity: ScanIdentity, recipe: str | Path, resume: bool, station: str
) -> dict[str, Any]:
    """What the scan history records of a scan started here, as :func:`inspection.api.scan` gives it: a resumed
    scan is what its file says (found again by its uuid), a new one what the form says."""
    if resume:
        try:
            stored = read_scan_identity(output)
        except (OSError, ScanFileError):
            return {"station": station}  # run_scan reports the problem with the file
        kept = ("lot_id", "wafer_id", "recipe", "operator", "uuid")
        return {"station": station, **{key: stored[key] for key in kept}}
    try:
        name = recipe_name(Path(recipe).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError):
        name = ""  # run_scan reports an unreadable recipe
    return {
        "station": station,
        "lot_id": identity.lot_id,
        "wafer_id": identity.wafer_id,
        "operator": identity.operator,
        "recipe": name,
        "recipe_path": str(Path(recipe).absolute()),
    }


def _stored(path: Path, key: str) -> Any:
    """One value of what a scan file says about itself (None if it cannot be read)."""
    try:
        return read_scan_identity(path)[key]
    except (OSError, ScanFileError):
        return None


def progress_text(progress: ScanProgress, chips_per_line: float) -> str:
    """The progress line under the bar: phase, pass, lines, chips, rate, ETA.

    Examples
    --------
    >>> from inspection.scan import ScanPhase
    >>> p = ScanProgress(ScanPhase.MAPPING, 0, 2, 50, 200, 1_000_000, 2e6, 75.0)
    >>> progress_text(p, 10.0)
    'mapping · pass 1/2 · lines 50/200 (25%) · ~500 chips · 2.00 M samples/s · ETA 0:01:15'
    """
    eta = "?" if not progress.eta_s < 1e9 else _hms(progress.eta_s)
    chips = progress.lines_done * chips_per_line
    text = (
        f"{progress.phase.value} · pass {progress.pass_index + 1}/{progress.pass_count} · lines "
        f"{progress.lines_done:,}/{progress.lines_total:,} ({progress.fraction:.0%}) · ~{chips:,.0f} chips · "
        f"{progress.samples_per_s / 1e6:.2f} M samples/s · ETA {eta}"
    )
    return f"{text} · {progress.message}" if progress.message else text


def _hms(seconds: float) -> str:
    total = round(seconds)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"
