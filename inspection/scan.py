"""The scan engine: from a recipe and a station to a complete, crash-safe scan file.

One :class:`ScanEngine` runs one wafer scan on a worker thread:

1. prepare: interlock check, laser off, probe at safe height, stage speeds;
2. one pass per excitation power: set the power, laser on, read the power meter, then one position-triggered
   constant-velocity line after another (the stage's position trigger starts the digitizer, so sample ``i`` sits
   at ``start + i·v/fs``), each written to the scan file and flushed before the next starts;
3. spectra at the recipe's sites;
4. finish: laser off, probe lifted, status written.

The caller's thread only gets small :class:`ScanProgress` messages; the data goes to the file (consumers read it
from there). :meth:`ScanEngine.pause`, :meth:`~ScanEngine.resume` and :meth:`~ScanEngine.abort` act between
lines. The laser is switched off on every way out (finish, abort, instrument fault, interlock, an exception, a
KeyboardInterrupt in the caller), and a line in flight when something fails is never half-written: the file
always ends at the last complete line and :meth:`ScanEngine.run` on a reopened file continues from there.

Instrument trouble during a line (a timeout, a dropped connection, a garbled reply) is retried after
reconnecting the instrument, up to :attr:`ScanOptions.line_retries` times; an open interlock or a stage fault is
never retried, since it needs a person.
"""

from __future__ import annotations

import contextlib
import math
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

import numpy as np

from drivers.errors import (
    InstrumentConnectionError,
    InstrumentError,
    InstrumentReplyError,
    InstrumentTimeoutError,
    InterlockOpenError,
    StageFaultError,
    StageLimitError,
)
from drivers.interfaces import Axis, IntensityDetector, Stage, TriggerDirection
from drivers.station import Station
from inspection.flagging import flag_chips
from inspection.plan import ScanPlan, spectrum_sites
from inspection.recipe import Recipe
from inspection.scanfile import ScanFile, ScanFileWriter, ScanStatus
from inspection.wafer import Placement

RETRYABLE_ERRORS = (InstrumentTimeoutError, InstrumentConnectionError, InstrumentReplyError)
"""Instrument trouble a reconnect can cure."""

NEEDS_A_PERSON = (InterlockOpenError, StageLimitError, StageFaultError)
"""Never retried, even when also a reply error: an open enclosure, a refused or stalled move."""


class ScanPhase(StrEnum):
    """What the engine is doing."""

    PREPARING = "preparing"
    MAPPING = "mapping"
    SPECTRA = "spectra"
    PAUSED = "paused"
    FINISHED = "finished"


@dataclass(frozen=True)
class ScanProgress:
    """A small progress message for the caller (never carries data arrays)."""

    phase: ScanPhase
    pass_index: int
    pass_count: int
    lines_done: int  # over all passes
    lines_total: int
    samples_done: int
    samples_per_s: float
    eta_s: float
    message: str = ""

    @property
    def fraction(self) -> float:
        return self.lines_done / self.lines_total if self.lines_total else 1.0


@dataclass(frozen=True)
class ScanOptions:
    """How the engine behaves when things go wrong, and how long it waits."""

    line_retries: int = 3
    line_timeout_margin_s: float = 5.0  # on top of twice the line's own duration
    move_timeout_s: float = 120.0
    poll_interval_s: float = 0.002
    spectrum_timeout_s: float = 60.0


class ScanFileWriteError(Exception):
    """Writing a line into the scan file failed (a full disk, a lost network share); the cause is chained."""


class ScanAborted(Exception):  # noqa: N818 - a control-flow signal, not an error
    """Raised inside the worker when the operator aborts."""


class ScanEngine:
    """Runs one scan of ``plan`` with ``station`` into ``writer``.

    Parameters
    ----------
    station
        The open station (role interfaces only).
    recipe, plan
        What to scan; the plan's lines are in the stage frame.
    writer
        A new or resumed scan file; lines already complete in it are skipped.
    placement
        Where the wafer lies on the chuck (from alignment), to find chips in the stage frame.
    on_progress
        Called from the worker thread with each :class:`ScanProgress` (keep it quick; a GUI posts it to its thread).
    options
        Retries and timeouts.
    """

    def __init__(
        self,
        station: Station,
        recipe: Recipe,
        plan: ScanPlan,
        writer: ScanFileWriter,
        *,
        placement: Placement,
        on_progress: Callable[[ScanProgress], None] | None = None,
        options: ScanOptions | None = None,
    ) -> None:
        self.station = station
        self.placement = placement
        self.recipe = recipe
        self.plan = plan
        self.writer = writer
        self.options = options or ScanOptions()
        self._on_progress = on_progress
        self._abort = threading.Event()
        self._running = threading.Event()
        self._running.set()
        self._thread: threading.Thread | None = None
        self.status: ScanStatus | None = None
        self.status_message = ""
        self._samples_done = 0
        self._started_s = 0.0
        self._lines = _LineWriter(writer)
        self._power_reading_w: float | None = None  # the last reading, if nothing has touched the laser since
        self._run_up_started_for: int | None = None  # the line whose run-up move the last line already started

    # -- control (any thread) ---------------------------------------------------------------------------------
    def start(self) -> None:
        """Run the scan on a worker thread and return at once."""
        if self._thread is not None:
            raise RuntimeError("this scan has already been started")
        self._thread = threading.Thread(target=self.run, name="plmapper-scan", daemon=True)
        self._thread.start()

    def pause(self) -> None:
        """Stop after the current line, laser off, until :meth:`resume`."""
        self._running.clear()

    def resume(self) -> None:
        self._running.set()

    def abort(self) -> None:
        """Stop after the current line (or at once while paused); the file stays resumable."""
        self._abort.set()
        self._running.set()

    def wait(self, timeout_s: float | None = None) -> ScanStatus | None:
        """Wait for the worker; return the final status (None if still running after ``timeout_s``)."""
        if self._thread is not None:
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                return None
        return self.status

    # -- the scan (worker thread, or the caller's for a blocking run) ----------------------------------------
    def run(self) -> ScanStatus:
        """Run the whole scan in this thread; return the status written to the file."""
        self._started_s = time.monotonic()
        try:
            self._prepare()
            for pass_index, power_w in enumerate(self.plan.powers_w):
                self._map_pass(pass_index, power_w)
            self._measure_spectra()
            self._finish(ScanStatus.COMPLETE, "scan complete")
        except ScanAborted:
            self._finish(ScanStatus.ABORTED, "aborted by the operator; resume to continue from the last complete line")
        except InterlockOpenError as error:
            self._finish(ScanStatus.FAILED, f"laser interlock open: close the enclosure, then resume ({error})")
        except (StageLimitError, StageFaultError) as error:
            self._finish(ScanStatus.FAILED, f"stage stopped: check the stage and the wafer, then resume ({error})")
        except InstrumentError as error:
            self._finish(ScanStatus.FAILED, f"instrument failure after retries: {error}; fix it, then resume")
        except ScanFileWriteError as error:
            self._finish(ScanStatus.FAILED, str(error))
        except KeyboardInterrupt:
            self._finish(ScanStatus.ABORTED, "interrupted (Ctrl-C); resume to continue from the last complete line")
            raise
        except BaseException as error:
            self._finish(ScanStatus.FAILED, f"internal error: {type(error).__name__}: {error}")
            raise
        finally:
            self._make_safe()
        return self.status  # type: ignore[return-value]

    # -- steps ------------------------------------------------------------------------------------------------
    def _prepare(self) -> None:
        station, focus = self.station, self.recipe.focus
        self._report(ScanPhase.PREPARING, 0, "preparing the station")
        station.laser.set_emission(False)
        station.smu.set_output(False)
        if not station.laser.interlock_closed():
            raise InterlockOpenError(station.laser.name, "the interlock is open")
        check_laser_matches(station, self.recipe)
        low_w, high_w = station.laser.power_limits_w()
        for power in self.plan.powers_w:
            if not low_w <= power <= high_w:
                raise InstrumentError(
                    station.laser.name,
                    f"recipe power {power * 1e3:g} mW is outside the laser's {low_w * 1e3:g}..{high_w * 1e3:g} mW",
                )
        # Z goes to the safe height before any XY move, then to focus height for mapping (never above max)
        station.stage.move_absolute_um(Axis.Z, focus.safe_z_um)
        station.power_meter.set_wavelength_nm(station.laser.wavelength_nm())
        self._acceleration_um_s2 = stage_acceleration_um_s2(station)
        self.writer.event("info", "station prepared")

    def _map_pass(self, pass_index: int, power_w: float) -> None:
        first = self.writer.next_line(pass_index)
        lines = self.plan.lines
        if first >= len(lines):
            return
        station = self.station
        station.stage.move_absolute_um(Axis.Z, self.recipe.focus.focus_z_um)
        self._laser_on(power_w)
        self.writer.event("info", f"pass {pass_index}: {power_w * 1e3:g} mW from line {first}")
        self._run_up_started_for = None
        for position in range(first, len(lines)):
            line = lines[position]
            next_line = lines[position + 1] if position + 1 < len(lines) else None
            self._between_lines(pass_index, power_w)
            record, samples = self._measure_line_with_retries(line, power_w, next_line)
            # written on the line writer's thread while the next line is acquired
            self._lines.submit(pass_index, int(line["line_index"]), samples, record)
            self._samples_done += samples.size
            self._report(ScanPhase.MAPPING, pass_index, "")
        self._lines.drain()
        station.laser.set_emission(False)

    def _laser_on(self, power_w: float) -> None:
        laser = self.station.laser
        laser.set_power_w(power_w)
        laser.set_emission(True)
        time.sleep(self.recipe.excitation.settle_s)
        self._power_reading_w = self.station.power_meter.power_w()
        self._lines.drain()
        self.writer.log_power(time.time(), self._power_reading_w)

    def _between_lines(self, pass_index: int, power_w: float) -> None:
        if self._abort.is_set():
            raise ScanAborted
        if self._running.is_set():
            return
        self.station.laser.set_emission(False)  # nobody watches a paused scan: no light on the wafer
        self._lines.drain()
        self.writer.event("info", "paused")
        self._report(ScanPhase.PAUSED, pass_index, "paused")
        self._running.wait()
        if self._abort.is_set():
            raise ScanAborted
        self.writer.event("info", "resumed")
        self._run_up_started_for = None  # whatever the stage did meanwhile, the next line runs up afresh
        self._laser_on(power_w)

    def _measure_line_with_retries(
        self, line: np.void, power_w: float, next_line: np.void | None
    ) -> tuple[dict[str, float], np.ndarray]:
        for attempt in range(self.options.line_retries + 1):
            try:
                return self._measure_line(line, power_w, next_line)
            except RETRYABLE_ERRORS as error:
                if attempt == self.options.line_retries or isinstance(error, NEEDS_A_PERSON):
                    raise
                self._power_reading_w = None
                self._run_up_started_for = None
                self._lines.drain()
                self.writer.event("warning", f"line {int(line['line_index'])} attempt {attempt + 1} failed: {error}")
                self._recover(error, power_w)
        raise AssertionError("unreachable")

    def _recover(self, error: InstrumentError, power_w: float) -> None:
        """Reconnect the instrument that failed and put it back in the state the scan needs."""
        role = next((role for role in self.station.roles() if error.instrument.startswith(role)), None)
        if role is None:
            raise error
        if role != "laser":
            with contextlib.suppress(InstrumentError):
                self.station.laser.set_emission(False)
        self.station.reconnect(role)
        self.writer.event("info", f"reconnected {role}")
        if role == "stage":
            self.station.stage.wait_idle(self.options.move_timeout_s)
        self._laser_on(power_w)

    def _measure_line(
        self, line: np.void, power_w: float, next_line: np.void | None
    ) -> tuple[dict[str, float], np.ndarray]:
        station, sampling = self.station, self.recipe.sampling
        # lines follow each other within milliseconds while the laser drifts over minutes: the reading after
        # the last line is this line's reading before (taken afresh after anything that touched the laser)
        power_before = self._power_reading_w
        self._power_reading_w = None  # in case this line fails
        if power_before is None:
            power_before = station.power_meter.power_w()
        motion = LineMotion(
            velocity_um_s=sampling.velocity_um_s,
            sample_rate_hz=sampling.sample_rate_hz,
            accel_um_s2=self._acceleration_um_s2,
            run_up_um=sampling.run_up_um,
        )
        run_up_started = self._run_up_started_for == int(line["line_index"])
        self._run_up_started_for = None
        power_after = math.nan

        def after_motion() -> None:
            # the stage has finished the line: read the power meter and send the stage on to the next line's
            # run-up before the samples are transferred, so the transfer overlaps the move (and, on the virtual
            # station, these exchanges overlap its computing the line's samples)
            nonlocal power_after
            power_after = station.power_meter.power_w()
            if next_line is not None:
                start_run_up(station.stage, *_line_ends(next_line), motion)
                self._run_up_started_for = int(next_line["line_index"])

        start_um, stop_um = _line_ends(line)
        acquired = acquire_line(
            station,
            start_um,
            stop_um,
            int(line["sample_count"]),
            motion=motion,
            options=self.options,
            run_up_started=run_up_started,
            after_motion=after_motion,
        )
        record = {
            "line_index": float(line["line_index"]),
            "trigger_time_s": math.nan,  # the digitizer does not time-stamp its trigger
            "wall_time_unix_s": time.time(),
            "x_start_readback_um": acquired.start_readback_um[0],
            "y_start_readback_um": acquired.start_readback_um[1],
            "x_stop_readback_um": acquired.stop_readback_um[0],
            "y_stop_readback_um": acquired.stop_readback_um[1],
            "power_before_w": power_before,
            "power_after_w": power_after,
            "laser_setpoint_w": power_w,
        }
        self._power_reading_w = power_after
        return record, acquired.samples_v

    def _measure_spectra(self) -> None:
        site_cols, site_rows, reasons = self._spectrum_targets()
        done = self.writer.spectra_count()
        if done >= site_cols.size:
            return
        station, spectra = self.station, self.recipe.spectra
        layout = self.recipe.layout()
        placement = self.placement
        station.spectrometer.configure(spectra.start_nm, spectra.stop_nm, spectra.resolution_nm, spectra.points)
        self._laser_on(self.plan.powers_w[-1])
        for col, row, reason in zip(site_cols[done:], site_rows[done:], reasons[done:], strict=True):
            if self._abort.is_set():
                raise ScanAborted
            x_um, y_um = layout.chip_center_um(np.array([col]), np.array([row]))
            stage_x, stage_y = placement.wafer_to_stage(float(x_um[0]), float(y_um[0]))
            station.stage.move_absolute_um(Axis.X, float(stage_x), wait=False)
            station.stage.move_absolute_um(Axis.Y, float(stage_y), wait=False)
            station.stage.wait_idle(self.options.move_timeout_s)
            spectrum = station.spectrometer.acquire(self.options.spectrum_timeout_s)
            self.writer.write_spectrum(
                col=int(col),
                row=int(row),
                x_um=float(x_um[0]),
                y_um=float(y_um[0]),
                reason=reason,
                wavelength_nm=spectrum.wavelength_nm,
                power_w_per_nm=spectrum.power_w_per_nm,
            )
            self._report(ScanPhase.SPECTRA, len(self.plan.powers_w) - 1, f"spectrum of chip ({col}, {row})")
        station.laser.set_emission(False)

    def _spectrum_targets(self) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """Chips to take spectra of, in a fixed order: the recipe's pattern, then chips the passes flagged."""
        spectra = self.recipe.spectra
        cols, rows = spectrum_sites(self.recipe)
        reasons = [spectra.pattern.value] * cols.size
        if spectra.include_flagged and spectra.max_flagged:
            with ScanFile(self.writer.path) as scan:
                flagged_cols, flagged_rows = flag_chips(
                    scan, self.recipe, self.placement, max_count=spectra.max_flagged
                )
            taken = set(zip(cols.tolist(), rows.tolist(), strict=True))
            extra = [
                (c, r) for c, r in zip(flagged_cols.tolist(), flagged_rows.tolist(), strict=True) if (c, r) not in taken
            ]
            cols = np.concatenate([cols, np.array([c for c, _ in extra], dtype=np.int64)])
            rows = np.concatenate([rows, np.array([r for _, r in extra], dtype=np.int64)])
            reasons += ["flagged"] * len(extra)
        return cols, rows, reasons

    def _finish(self, status: ScanStatus, message: str) -> None:
        self.status, self.status_message = status, message
        with contextlib.suppress(Exception):  # the file must get its status even if the laser is unreachable
            self.station.laser.set_emission(False)
        try:
            self._lines.close()  # every line acquired is written before the status
        except ScanFileWriteError as error:
            status, message = ScanStatus.FAILED, str(error)
            self.status, self.status_message = status, message
        self.writer.event("info" if status is ScanStatus.COMPLETE else "error", message)
        self.writer.finish(status, message)
        self._report(ScanPhase.FINISHED, len(self.plan.powers_w) - 1, message)

    def _make_safe(self) -> None:
        for action in (self.station.laser.make_safe, self.station.smu.make_safe):
            with contextlib.suppress(Exception):
                action()
        with contextlib.suppress(Exception):
            self.station.stage.move_absolute_um(Axis.Z, self.recipe.focus.safe_z_um)

    def _report(self, phase: ScanPhase, pass_index: int, message: str) -> None:
        if self._on_progress is None:
            return
        per_pass = len(self.plan.lines)
        done = self._lines.lines_written()
        total = per_pass * len(self.plan.powers_w)
        elapsed = max(time.monotonic() - self._started_s, 1e-9)
        rate = self._samples_done / elapsed
        remaining_samples = (total - done) * float(np.mean(self.plan.lines["sample_count"])) if per_pass else 0.0
        eta = remaining_samples / rate if rate > 0 else math.inf
        self._on_progress(
            ScanProgress(
                phase, pass_index, len(self.plan.powers_w), done, total, self._samples_done, rate, eta, message
            )
        )


@dataclass(frozen=True)
class LineMotion:
    """How a constant-velocity line is driven and sampled."""

    velocity_um_s: float
    sample_rate_hz: float
    accel_um_s2: float
    run_up_um: float


@dataclass(frozen=True)
class LineAcquisition:
    """One acquired line: the samples and where the stage really was at its ends."""

    samples_v: np.ndarray
    start_readback_um: tuple[float, float]
    stop_readback_um: tuple[float, float]


def acquire_line(
    station: Station,
    start_um: tuple[float, float],
    stop_um: tuple[float, float],
    sample_count: int,
    *,
    motion: LineMotion,
    options: ScanOptions,
    run_up_started: bool = False,
    after_motion: Callable[[], None] | None = None,
) -> LineAcquisition:
    """Drive the stage from ``start_um`` to ``stop_um`` (stage frame) at constant velocity and digitize
    ``sample_count`` samples from the moment the spot crosses ``start_um``: sample ``i`` lies at
    ``start + i · velocity / sample_rate`` along the line.

    The stage first travels to a run-up point before the start (far enough to reach the line speed), and goes
    on past the stop by the same distance. A slanted line moves X and Y at speeds in proportion to its
    direction, so both axes follow the same time profile and the path is straight.

    Parameters
    ----------
    run_up_started
        The caller has already sent the stage to this line's run-up point with :func:`start_run_up` (while the
        previous line's samples were read); the function then only waits for the stage.
    after_motion
        Called once the stage has finished the line (trigger reset, end position read), before the samples are
        read from the digitizer: a scan reads its power meter there and starts the next line's run-up, so the
        transfer of the samples overlaps that move.
    """
    stage, detector = station.stage, station.detector
    start, stop = np.asarray(start_um, dtype=float), np.asarray(stop_um, dtype=float)
    direction, _, run_out = _line_path(start, stop, motion)
    if not run_up_started:
        start_run_up(stage, start_um, stop_um, motion)
    start_readback = _xy(stage.wait_idle_positions_um(options.move_timeout_s))
    moving = [(Axis.X, run_out[0], abs(direction[0])), (Axis.Y, run_out[1], abs(direction[1]))]
    moving = [(axis, target, share) for axis, target, share in moving if share > 1e-9]
    try:
        return _drive_line(
            stage,
            detector,
            start_readback=start_readback,
            start=start,
            direction=direction,
            run_out=run_out,
            moving=moving,
            sample_count=sample_count,
            motion=motion,
            options=options,
            after_motion=after_motion,
        )
    finally:
        # leave the stage with its full acceleration, whatever happened: the next line's run-up relies on it
        for axis, _, _ in moving:
            with contextlib.suppress(InstrumentError):
                stage.set_acceleration_um_s2(axis, motion.accel_um_s2)


def _drive_line(
    stage: Stage,
    detector: IntensityDetector,
    *,
    start_readback: tuple[float, float],
    start: np.ndarray,
    direction: np.ndarray,
    run_out: np.ndarray,
    moving: list[tuple[Axis, float, float]],
    sample_count: int,
    motion: LineMotion,
    options: ScanOptions,
    after_motion: Callable[[], None] | None,
) -> LineAcquisition:
    for axis, _, share in moving:
        stage.set_velocity_um_s(axis, motion.velocity_um_s * share)
    _set_line_accelerations(stage, moving, motion)
    detector.configure_triggered_acquisition(motion.sample_rate_hz, sample_count)
    detector.arm()
    index = 0 if abs(direction[0]) >= abs(direction[1]) else 1
    trigger_axis = (Axis.X, Axis.Y)[index]
    trigger_direction = TriggerDirection.RISING if direction[index] > 0 else TriggerDirection.FALLING
    stage.arm_position_trigger(trigger_axis, float(start[index]), trigger_direction)
    for axis, target, _ in moving:
        stage.move_absolute_um(axis, float(target), wait=False)
    started_s = time.monotonic()
    line_s = sample_count / motion.sample_rate_hz + motion.velocity_um_s / motion.accel_um_s2
    # a line that takes much longer than it should has lost its trigger or a command on the way
    timeout_s = 2 * (line_s + motion.velocity_um_s / motion.accel_um_s2) + options.line_timeout_margin_s
    deadline = started_s + timeout_s
    if detector.samples_acquired() < sample_count:
        # not done at once (a simulated station can be): the line cannot end before the stage has run up and
        # crossed it, so the next poll waits for most of that time (each poll is an exchange, and on real
        # hardware polling all along would cost CPU for nothing)
        first_poll_s = started_s + line_s * EXPECTED_LINE_FRACTION
        while (remaining_s := first_poll_s - time.monotonic()) > 0:
            time.sleep(min(remaining_s, 0.05))
        while detector.samples_acquired() < sample_count:
            if time.monotonic() > deadline:
                detector.abort()
                raise InstrumentTimeoutError(detector.name, f"line not acquired within {timeout_s:.1f} s")
            time.sleep(options.poll_interval_s)
    # the samples stay in the digitizer's buffer until the next arm: first finish with the stage (and let the
    # caller start the next line's run-up), then transfer them while the stage moves
    stop_readback = _xy(stage.wait_idle_positions_um(options.move_timeout_s))
    stage.disarm_position_trigger()
    if after_motion is not None:
        after_motion()
    samples = detector.read_samples_v(0, sample_count)
    return LineAcquisition(samples, start_readback, stop_readback)


def _line_path(start: np.ndarray, stop: np.ndarray, motion: LineMotion) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The line's unit direction, its run-up point before ``start`` and its run-out point past ``stop``."""
    direction = (stop - start) / max(float(np.hypot(*(stop - start))), 1e-9)
    run_up_um = motion.velocity_um_s**2 / (2 * motion.accel_um_s2) + motion.run_up_um
    return direction, start - direction * run_up_um, stop + direction * run_up_um


def _line_ends(line: np.void) -> tuple[tuple[float, float], tuple[float, float]]:
    """A plan line's start and stop (stage frame, µm)."""
    return (float(line["x_start_um"]), float(line["y_start_um"])), (float(line["x_stop_um"]), float(line["y_stop_um"]))


def start_run_up(stage: Stage, start_um: tuple[float, float], stop_um: tuple[float, float], motion: LineMotion) -> None:
    """Send the stage (at travel speed and the line's acceleration) to the run-up point of the line from
    ``start_um`` to ``stop_um``, without waiting: :func:`acquire_line` with ``run_up_started=True`` then waits.
    """
    start, stop = np.asarray(start_um, dtype=float), np.asarray(stop_um, dtype=float)
    _, run_up, _ = _line_path(start, stop, motion)
    for axis, target in ((Axis.X, run_up[0]), (Axis.Y, run_up[1])):
        stage.set_velocity_um_s(axis, max(motion.velocity_um_s, TRAVEL_SPEED_UM_S))
        stage.set_acceleration_um_s2(axis, motion.accel_um_s2)
        stage.move_absolute_um(axis, float(target), wait=False)


def _set_line_accelerations(stage: Stage, moving: list[tuple[Axis, float, float]], motion: LineMotion) -> None:
    """Accelerations that give every moving axis the same ramp time, so the path is straight from the trigger on.

    Speeds are in proportion to the line's direction; accelerations must be too. A controller stores them in
    coarse units (the Zaber's is about 1.2 mm/s² on our axes), which for the slow axis of a slightly slanted line
    is a 10 % error: its ramp then ends milliseconds after the fast axis', and the whole line runs micrometres
    beside its plan. So the slow axis gets its share (at least MIN_ACCELERATION_SHARE), the value it really took
    is read back, and the fast axes are set to ramp in exactly the same time (never above MAX_ACCELERATION_FACTOR
    times the planned acceleration; a ramp that short only happens when the slow axis barely moves).
    """
    if len(moving) == 1:
        stage.set_acceleration_um_s2(moving[0][0], motion.accel_um_s2)
        return
    slow_axis, _, slow_share = min(moving, key=lambda item: item[2])
    stage.set_acceleration_um_s2(slow_axis, motion.accel_um_s2 * max(slow_share, MIN_ACCELERATION_SHARE))
    ramp_s = motion.velocity_um_s * slow_share / stage.acceleration_um_s2(slow_axis)
    for axis, _, share in moving:
        if axis is not slow_axis:
            wanted = motion.velocity_um_s * share / ramp_s
            stage.set_acceleration_um_s2(axis, min(wanted, MAX_ACCELERATION_FACTOR * motion.accel_um_s2))


def _xy(positions: dict[Axis, float]) -> tuple[float, float]:
    return positions[Axis.X], positions[Axis.Y]


class _LineWriter:
    """Writes lines into the scan file on a thread of its own, so that the engine acquires the next line while
    the last one is made durable (each line is flushed and fsynced twice, see :meth:`ScanFileWriter.write_line`).

    At most ``depth`` lines wait in memory. A write that fails is raised in the engine's thread at its next call,
    and nothing after it is written (the file stays resumable from the line before).
    """

    def __init__(self, writer: ScanFileWriter, depth: int = 2) -> None:
        self._writer = writer
        self._queue: queue.Queue[tuple[int, int, np.ndarray, dict[str, float]] | None] = queue.Queue(depth)
        self._error: BaseException | None = None  # raised once in the engine's thread
        self._failed = False  # sticky: after a failed write nothing more is written
        self._thread: threading.Thread | None = None
        self._written = sum(writer.next_line(index) for index in range(writer.pass_count))

    def submit(self, pass_index: int, line_index: int, samples_v: np.ndarray, record: dict[str, float]) -> None:
        self._raise_error()
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="plmapper-line-writer", daemon=True)
            self._thread.start()
        self._queue.put((pass_index, line_index, samples_v, record))

    def drain(self) -> None:
        """Return once every submitted line is in the file."""
        self._queue.join()
        self._raise_error()

    def close(self) -> None:
        """Write what is queued, then stop the thread (idempotent)."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None
        self._raise_error()

    def lines_written(self) -> int:
        return self._written

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            try:
                if not self._failed:  # after a failed write, later lines would leave a gap: drop them
                    self._writer.write_line(*item)
                    self._written += 1
            except Exception as error:  # noqa: BLE001 - handed to the engine's thread
                self._error, self._failed = error, True
            finally:
                self._queue.task_done()
        self._queue.task_done()

    def _raise_error(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise ScanFileWriteError(
                f"writing the scan file failed: {type(error).__name__}: {error}; the lines before are safe: "
                "free disk space or fix the storage, then resume"
            ) from error


LASER_WAVELENGTH_TOLERANCE_NM = 2.0
"""How far the station's laser may be from the recipe's excitation wavelength (diode lasers vary by ~±1 nm)."""


def check_laser_matches(station: Station, recipe: Recipe) -> None:
    """Refuse a recipe written for another excitation wavelength than the station's laser has."""
    wavelength_nm = station.laser.wavelength_nm()
    wanted_nm = recipe.excitation.laser_wavelength_nm
    if abs(wavelength_nm - wanted_nm) > LASER_WAVELENGTH_TOLERANCE_NM:
        raise InstrumentError(
            station.laser.name,
            f"the recipe excites at {wanted_nm:g} nm but this laser emits at {wavelength_nm:g} nm: use a recipe for "
            "this station's laser, or fit the right laser",
        )


def stage_acceleration_um_s2(station: Station) -> float:
    """The XY acceleration lines are planned with. The larger of the two axes: a line leaves the axis it barely
    moves with a low acceleration for a moment, and the other axis still holds the stage's setting."""
    return max(station.stage.acceleration_um_s2(axis) for axis in (Axis.X, Axis.Y))


EXPECTED_LINE_FRACTION = 0.9
"""Polling for a line's samples starts after this fraction of its expected duration (the stage's run-up and the
line itself): late enough to skip pointless polls, early enough that a quick stage does not wait."""

TRAVEL_SPEED_UM_S = 100_000.0
"""Speed of moves between lines (a line's own speed when faster)."""

MIN_ACCELERATION_SHARE = 0.002
"""Floor of the slow axis' share of the line acceleration (stages cannot accelerate arbitrarily slowly); the fast
axis is then matched to it (see ``_set_line_accelerations``)."""

MAX_ACCELERATION_FACTOR = 4.0
"""The fast axis of a slanted line never accelerates harder than this times the planned acceleration."""
