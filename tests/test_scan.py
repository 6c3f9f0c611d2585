"""The scan engine on the virtual station: complete scans, resume after a killed process, abort, pause, faults.

The coarse test wafer (tests/data) has its laser drift switched off and its noise seeded by position, so the same
line measured twice gives the same samples: a resumed scan must equal an uninterrupted one line for line.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from drivers.errors import InstrumentError
from drivers.interfaces import Axis
from drivers.station import Station, load_station_config, open_station
from drivers.virtual.profile import load_profile
from drivers.virtual.station import VirtualStation, VirtualStationServer, build_bench
from drivers.virtual.world import WaferWorld
from inspection.job import ScanIdentity, run_scan
from inspection.plan import plan_scan, spectrum_sites
from inspection.recipe import load_recipe
from inspection.scan import (
    LineMotion,
    ScanEngine,
    ScanOptions,
    ScanPhase,
    ScanProgress,
    acquire_line,
    stage_acceleration_um_s2,
)
from inspection.scanfile import ScanFile, ScanFileWriter, ScanStatus
from inspection.station_check import run_station_check
from inspection.wafer import Placement

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "tests" / "data"
PROFILE = DATA / "coarse-profile.toml"
RECIPE = DATA / "coarse-recipe.toml"
STATION = DATA / "coarse-station.toml"
IDENTITY = ScanIdentity(operator="test", lot_id="LOT1", wafer_id="W01")


@pytest.fixture(scope="module")
def virtual() -> VirtualStation:
    with VirtualStation.start(PROFILE) as running:
        yield running


@contextlib.contextmanager
def station_on(virtual: VirtualStation):
    virtual.control(op="clear_faults")
    virtual.control(op="interlock", closed=True)
    station = open_station(load_station_config(STATION), resources=virtual.resources)
    try:
        yield station
    finally:
        with contextlib.suppress(InstrumentError):
            station.close()
        virtual.control(op="clear_faults")


def scan(virtual: VirtualStation, path: Path, *, resume: bool = False, **options) -> tuple:
    with station_on(virtual) as station:
        outcome = run_scan(
            RECIPE, load_station_config(STATION), path, IDENTITY, resume=resume, station=station, **options
        )
    return outcome, virtual.control(op="status")


@pytest.fixture(scope="module")
def reference(virtual: VirtualStation, tmp_path_factory) -> ScanFile:
    path = tmp_path_factory.mktemp("reference") / "reference.h5"
    before = virtual.control(op="status")["commands"]
    outcome, status = scan(virtual, path)
    assert outcome.status is ScanStatus.COMPLETE, outcome.message
    after = status["commands"]
    reference = ScanFile(path)
    reference.commands_per_scan = {role: after[role] - before.get(role, 0) for role in after}  # type: ignore[attr-defined]
    return reference


def assert_same_lines(result: ScanFile, reference: ScanFile, *, complete: bool = True) -> None:
    """Every line in ``result`` equals the reference's line of the same index, sample for sample."""
    for pass_index in range(len(reference.powers_w)):
        count = result.lines_complete(pass_index)
        if complete:
            assert count == reference.lines_complete(pass_index)
        for line in range(count):
            # equal to float32 precision: the virtual clock's absolute time can change the last bit of a position
            expected = reference.line_samples(pass_index, line)
            np.testing.assert_allclose(result.line_samples(pass_index, line), expected, rtol=1e-6, atol=1e-9)


def test_complete_scan(reference: ScanFile) -> None:
    recipe = load_recipe(RECIPE)
    assert reference.status is ScanStatus.COMPLETE
    plan = reference.plan_lines
    for pass_index, power in enumerate(recipe.excitation.powers_w):
        records = reference.line_records(pass_index)
        assert reference.lines_complete(pass_index) == len(plan)
        np.testing.assert_array_equal(records["sample_count"], plan["sample_count"])
        assert np.all(np.abs(records["power_before_w"] / power - 1) < 0.05)
        assert np.all(records["laser_setpoint_w"] == power)
    # the high-power pass sees the chips brightly, the low-power pass dimly
    assert reference.line_samples(1, 40).max() > 5 * reference.line_samples(0, 40).max()
    spectra = reference.spectra()
    assert sum(spectrum["reason"] == "grid" for spectrum in spectra) == len(spectrum_sites(recipe)[0])
    assert 0 < sum(spectrum["reason"] == "flagged" for spectrum in spectra) <= recipe.spectra.max_flagged
    assert reference.identities["laser"].startswith("Coherent")
    assert "powers_w" in reference.recipe_toml


def test_alignment_in_the_file_puts_every_chip_index_right(reference: ScanFile) -> None:
    truth = WaferWorld(load_profile(PROFILE)).placement
    stored = reference.alignment()
    layout = load_recipe(RECIPE).layout()
    cols, rows = layout.usable_chips()
    x, y = layout.chip_center_um(cols, rows)
    stage = truth.wafer_to_stage(x, y)
    found = Placement(stored["offset_x_um"], stored["offset_y_um"], stored["rotation_deg"])
    col_found, row_found, hit = layout.chip_at(*found.stage_to_wafer(*stage))
    assert hit.all()
    np.testing.assert_array_equal(col_found, cols)
    np.testing.assert_array_equal(row_found, rows)


def test_flagged_chips_are_defective_and_their_spectra_peak_at_their_wavelength(reference: ScanFile) -> None:
    world = WaferWorld(load_profile(PROFILE))
    for spectrum in reference.spectra():
        truth = world.chip_truth(np.array([spectrum["col"]]), np.array([spectrum["row"]]))
        if spectrum["reason"] == "flagged":
            assert truth.flags[0] != 0, f"chip ({spectrum['col']}, {spectrum['row']}) was flagged but is good"
        if truth.flags[0] == 0:
            peak = spectrum["wavelength_nm"][np.argmax(spectrum["power_w_per_nm"])]
            assert abs(peak - truth.wavelength_nm[0]) < 1.0


def test_laser_is_off_after_a_complete_scan(virtual: VirtualStation, reference: ScanFile) -> None:
    assert virtual.control(op="status")["laser_emission"] is False


def start_cli_scan(path: Path) -> subprocess.Popen[bytes]:
    """``plmapper scan`` of the coarse wafer into ``path`` in its own process group (with its virtual station)."""
    command = [sys.executable, "-m", "app.cli", "scan", "--recipe", str(RECIPE), "--station", str(STATION),
               "--out", str(path)]  # fmt: skip
    return subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": str(REPO)}, start_new_session=True)  # fmt: skip


def wait_for_lines(path: Path, lines: int) -> None:
    """Wait until the first pass of the scan being written to ``path`` has ``lines`` complete lines."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception), ScanFile(path) as running:
            if running.lines_complete(0) >= lines:
                return
        time.sleep(0.02)
    pytest.fail(f"the scan did not reach {lines} lines")


def test_resume_after_killed_process_gives_identical_result(virtual, reference, tmp_path: Path) -> None:
    path = tmp_path / "killed.h5"
    process = start_cli_scan(path)
    try:
        wait_for_lines(path, 30)
    finally:
        os.killpg(process.pid, signal.SIGKILL)  # the process and its virtual station, mid-line
        process.communicate()
    with ScanFile(path) as interrupted:
        assert interrupted.status is ScanStatus.INTERRUPTED
        done = interrupted.lines_complete(0)
        assert 30 <= done < len(interrupted.plan_lines) or interrupted.lines_complete(1) < len(interrupted.plan_lines)
        assert_same_lines(interrupted, reference, complete=False)

    outcome, status = scan(virtual, path, resume=True)
    assert outcome.status is ScanStatus.COMPLETE, outcome.message
    assert status["laser_emission"] is False
    with ScanFile(path) as resumed:
        assert_same_lines(resumed, reference)
        assert len(resumed.spectra()) == len(reference.spectra())


def test_ctrl_c_stops_the_scan_resumably(virtual, reference, tmp_path: Path) -> None:
    path = tmp_path / "interrupted.h5"
    process = start_cli_scan(path)
    wait_for_lines(path, 10)
    os.killpg(process.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130
    assert b"stopping after the current line" in stderr and b"Traceback" not in stderr
    with ScanFile(path) as stopped:
        assert stopped.status is ScanStatus.ABORTED
        assert_same_lines(stopped, reference, complete=False)
    outcome, _ = scan(virtual, path, resume=True)
    assert outcome.status is ScanStatus.COMPLETE


def test_abort_then_resume(virtual, reference, tmp_path: Path) -> None:
    path = tmp_path / "aborted.h5"
    engines = []

    def abort_after_20_lines(progress: ScanProgress) -> None:
        if progress.lines_done >= 20:
            engines[0].abort()

    outcome, status = scan(virtual, path, on_progress=abort_after_20_lines, on_engine=engines.append)
    assert outcome.status is ScanStatus.ABORTED
    assert "resume" in outcome.message
    assert status["laser_emission"] is False
    with ScanFile(path) as stopped:
        assert stopped.status is ScanStatus.ABORTED and 20 <= stopped.lines_complete(0) < len(stopped.plan_lines)
    outcome, _ = scan(virtual, path, resume=True)
    assert outcome.status is ScanStatus.COMPLETE
    with ScanFile(path) as resumed:
        assert_same_lines(resumed, reference)


def test_a_failed_file_write_stops_the_scan_without_a_gap_and_resumes(virtual, reference, tmp_path: Path) -> None:
    path = tmp_path / "disk-full.h5"

    def fail_at_line_25(engine: ScanEngine) -> None:
        write_line = engine.writer.write_line

        def failing(pass_index: int, line_index: int, *arguments) -> None:
            if line_index == 25:
                raise OSError(28, "No space left on device")
            write_line(pass_index, line_index, *arguments)

        engine.writer.write_line = failing  # type: ignore[method-assign]

    outcome, status = scan(virtual, path, on_engine=fail_at_line_25)
    assert outcome.status is ScanStatus.FAILED
    assert "writing the scan file failed" in outcome.message and "No space left" in outcome.message
    assert status["laser_emission"] is False
    with ScanFile(path) as stopped:
        assert stopped.status is ScanStatus.FAILED
        assert stopped.lines_complete(0) == 25  # the lines acquired after the failure were not written out of order
        assert_same_lines(stopped, reference, complete=False)
    outcome, _ = scan(virtual, path, resume=True)
    assert outcome.status is ScanStatus.COMPLETE, outcome.message
    with ScanFile(path) as resumed:
        assert_same_lines(resumed, reference)


def commands_at(reference: ScanFile, role: str, fraction: float) -> int:
    return max(1, int(reference.commands_per_scan[role] * fraction))  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("role", "kind", "fraction"),
    [
        ("detector", "disconnect", 0.6),
        ("detector", "timeout", 0.6),
        ("detector", "garbage", 0.6),
        ("stage", "disconnect", 0.7),
        ("stage", "timeout", 0.7),
        ("stage", "garbage", 0.7),
        ("power_meter", "timeout", 0.6),
        ("power_meter", "garbage", 0.6),
    ],
)
def test_instrument_faults_are_retried_and_lose_nothing(virtual, reference, tmp_path: Path, *, role, kind, fraction):
    path = tmp_path / f"{role}-{kind}.h5"
    with station_on(virtual) as station:
        virtual.inject_fault(role, kind, at_command=commands_at(reference, role, fraction))
        outcome = run_scan(RECIPE, load_station_config(STATION), path, IDENTITY, station=station)
    assert outcome.status is ScanStatus.COMPLETE, outcome.message
    with ScanFile(path) as result:
        assert any("reconnected" in message for _, _, message in result.events())
        assert_same_lines(result, reference)
    assert virtual.control(op="status")["laser_emission"] is False


@pytest.mark.parametrize(
    ("role", "kind", "fraction", "expected"),
    [
        ("laser", "interlock", 0.5, "interlock open"),
        ("stage", "stall", 0.6, "stage stopped"),
        ("stage", "limit", 0.6, "stage stopped"),
        ("detector", "timeout", 0.6, "after retries"),
    ],
)
def test_unrecoverable_faults_stop_cleanly_and_resume(
    virtual, reference, tmp_path: Path, *, role, kind, fraction, expected
):
    path = tmp_path / f"{role}-{kind}.h5"
    with station_on(virtual) as station:
        count = 1000 if kind == "timeout" else 1  # a detector that stays silent is beyond retries
        virtual.inject_fault(role, kind, at_command=commands_at(reference, role, fraction), count=count)
        outcome = run_scan(RECIPE, load_station_config(STATION), path, IDENTITY, station=station)
        status = virtual.control(op="status")
    assert outcome.status is ScanStatus.FAILED
    assert expected in outcome.message
    assert status["laser_emission"] is False
    with ScanFile(path) as stopped:
        assert stopped.status is ScanStatus.FAILED
        assert_same_lines(stopped, reference, complete=False)  # what was written is right
    outcome, _ = scan(virtual, path, resume=True)
    assert outcome.status is ScanStatus.COMPLETE, outcome.message
    with ScanFile(path) as resumed:
        assert_same_lines(resumed, reference)


def test_pause_switches_the_laser_off_and_resume_continues(virtual, reference, tmp_path: Path) -> None:
    recipe = load_recipe(RECIPE)
    stored = reference.alignment()
    placement = Placement(stored["offset_x_um"], stored["offset_y_um"], stored["rotation_deg"])
    paused = threading.Event()
    with station_on(virtual) as station:
        plan = plan_scan(recipe, placement, accel_um_s2=stage_acceleration_um_s2(station))
        writer = ScanFileWriter.create(
            tmp_path / "paused.h5",
            recipe_toml=reference.recipe_toml,
            station_toml="",
            identities={},
            plan_lines=plan.lines,
            powers_w=plan.powers_w,
            plan_summary=plan.summary(),
            operator="t",
            lot_id="l",
            wafer_id="w",
            software_version="test",
        )

        def on_progress(progress: ScanProgress) -> None:
            if progress.phase is ScanPhase.PAUSED:
                paused.set()
            elif progress.lines_done == 10 and not paused.is_set():
                engine.pause()

        with writer:
            engine = ScanEngine(station, recipe, plan, writer, placement=placement, on_progress=on_progress)
            engine.start()
            assert paused.wait(30)
            laser_while_paused = virtual.control(op="status")["laser_emission"]
            lines_while_paused = writer.next_line(0)
            time.sleep(0.2)
            assert writer.next_line(0) == lines_while_paused  # nothing moves while paused
            engine.resume()
            assert engine.wait(60) is ScanStatus.COMPLETE
    assert laser_while_paused is False
    with ScanFile(tmp_path / "paused.h5") as result:
        assert_same_lines(result, reference)


def test_existing_output_is_refused(virtual, reference, tmp_path: Path) -> None:
    path = tmp_path / "exists.h5"
    path.write_bytes(b"")
    with pytest.raises(FileExistsError, match="already exists"):
        scan(virtual, path)


def test_station_check_still_passes_after_scans(virtual, reference) -> None:
    with station_on(virtual) as station:
        assert isinstance(station, Station)
        results = run_station_check(station)
    assert all(result.passed for result in results), [r for r in results if not r.passed]


def test_grid_locked_lines_run_through_every_chip_of_their_row(virtual, tmp_path: Path) -> None:
    recipe_path = tmp_path / "grid-locked.toml"
    recipe_path.write_text(RECIPE.read_text().replace('mode = "raster"', 'mode = "grid-locked"'))
    with station_on(virtual) as station:
        outcome = run_scan(recipe_path, load_station_config(STATION), tmp_path / "grid.h5", IDENTITY, station=station)
    assert outcome.status is ScanStatus.COMPLETE, outcome.message
    recipe = load_recipe(recipe_path)
    layout = recipe.layout()
    with ScanFile(tmp_path / "grid.h5") as result:
        assert len(result.plan_lines) == int(np.count_nonzero(layout.row_extent(np.arange(layout.row_count))[0] >= 0))
        pitch_samples = recipe.grid.pitch_x_um / recipe.sampling.sample_pitch_um
        peaks_per_line = []
        for line in range(len(result.plan_lines)):
            samples = result.line_samples(1, line)
            usable = samples[int(pitch_samples / 2) : -int(pitch_samples / 2)]
            # one value per chip pitch: the brightest sample within it
            chips = usable[: usable.size // int(pitch_samples) * int(pitch_samples)].reshape(-1, int(pitch_samples))
            peaks_per_line.append(chips.max(axis=1))
    full_brightness = np.percentile(np.concatenate(peaks_per_line), 95)
    bright_fractions = [np.mean(peaks > 0.7 * full_brightness) for peaks in peaks_per_line]
    # a line through the chip centres sees nearly every chip at full brightness (defects are the exceptions);
    # a raster line at an arbitrary height mostly grazes chips or runs along a street
    assert np.median(bright_fractions) > 0.85


EXAMPLES = REPO / "resources" / "recipes"


@pytest.mark.slow
@pytest.mark.parametrize("name", ["demo-2in", "red-4in", "blue-6in", "green-8in"])
def test_every_example_recipe_scans_its_virtual_wafer(tmp_path: Path, name: str) -> None:
    """Each example recipe on the virtual wafer made for it: aligned with every chip index right, a documented
    scan file, lines of the planned length. Stopped after a few lines: whole 4–8" scans take hours here."""
    recipe_path, profile = EXAMPLES / f"{name}.toml", REPO / "resources" / "profiles" / f"{name}.toml"
    recipe, truth = load_recipe(recipe_path), load_profile(profile)
    assert (recipe.substrate, recipe.grid) == (truth.substrate, truth.grid)
    engines: list[ScanEngine] = []

    def stop_after_three_lines(progress: ScanProgress) -> None:
        if progress.lines_done >= 3:
            engines[0].abort()

    config = load_station_config(REPO / "resources" / "stations" / "virtual.toml")
    path = tmp_path / f"{name}.h5"
    with VirtualStation.start(profile) as virtual, open_station(config, resources=virtual.resources) as station:
        outcome = run_scan(recipe_path, config, path, IDENTITY, station=station, on_engine=engines.append,
                           on_progress=stop_after_three_lines)  # fmt: skip
        assert virtual.control(op="status")["laser_emission"] is False
    assert outcome.status is ScanStatus.ABORTED, outcome.message
    with ScanFile(path) as result:
        assert result.lines_complete(0) >= 3
        records = result.line_records(0)
        np.testing.assert_array_equal(records["sample_count"], result.plan_lines["sample_count"][: len(records)])
        assert "powers_w" in result.recipe_toml and result.identities["stage"].startswith("Zaber")
        stored = result.alignment()
    found = Placement(stored["offset_x_um"], stored["offset_y_um"], stored["rotation_deg"])
    placed = WaferWorld(truth).placement
    layout = recipe.layout()
    cols, rows = layout.usable_chips()
    chosen = np.random.default_rng(0).choice(cols.size, size=min(cols.size, 200_000), replace=False)
    x, y = layout.chip_center_um(cols[chosen], rows[chosen])
    col_found, row_found, hit = layout.chip_at(*found.stage_to_wafer(*placed.wafer_to_stage(x, y)))
    assert hit.all()
    np.testing.assert_array_equal(col_found, cols[chosen])
    np.testing.assert_array_equal(row_found, rows[chosen])


def test_a_recipe_for_another_laser_is_refused_before_anything_moves(virtual, tmp_path: Path) -> None:
    recipe_path = tmp_path / "green-laser.toml"
    recipe_path.write_text(RECIPE.read_text().replace("laser_wavelength_nm = 405.0", "laser_wavelength_nm = 532.0"))
    with station_on(virtual) as station, pytest.raises(InstrumentError, match="excites at 532 nm but this laser"):
        run_scan(recipe_path, load_station_config(STATION), tmp_path / "never.h5", IDENTITY, station=station)
    assert not (tmp_path / "never.h5").exists()


@pytest.mark.parametrize(("velocity_um_s", "angle_deg"), [(100_000.0, 0.3), (300_000.0, 0.25), (300_000.0, 0.04)])
def test_slanted_line_is_straight_regression(velocity_um_s: float, angle_deg: float) -> None:
    """Regressions: at time scale 0 the Y move used to start only after X had finished (an L, not a line); with
    equal accelerations the slow axis ran ahead by micrometres; and the controller's coarse acceleration unit
    made the slow axis ramp 10 % longer than the fast one, so a 300 mm/s line at 0.25° ran 5.7 µm beside its
    plan (found as 20 % dimmer chips on the 8" example). Both axes must follow one straight path."""
    bench = build_bench(load_profile(PROFILE))
    server = VirtualStationServer(bench)
    count = 4001
    pitch_um = 10.0
    try:
        with open_station(load_station_config(STATION), resources=server.resources) as station:
            angle = math.radians(angle_deg)
            start = (-20_000.0 * math.cos(angle), -20_000.0 * math.sin(angle))
            stop = (20_000.0 * math.cos(angle), 20_000.0 * math.sin(angle))
            motion = LineMotion(velocity_um_s=velocity_um_s, sample_rate_hz=velocity_um_s / pitch_um,
                                accel_um_s2=stage_acceleration_um_s2(station), run_up_um=100.0)  # fmt: skip
            acquire_line(station, start, stop, count, motion=motion, options=ScanOptions())
            t0 = bench.trigger_times_s[-1]
            times = t0 + np.arange(count) * pitch_um / velocity_um_s
            x = bench.axes[Axis.X].position_um(times)
            y = bench.axes[Axis.Y].position_um(times)
    finally:
        server.shutdown()
    # every sample on the line through start and stop, and where the sample clock says it is along it
    across = -math.sin(angle) * x + math.cos(angle) * y
    along = math.cos(angle) * x + math.sin(angle) * y
    assert np.max(np.abs(across)) < 0.5
    np.testing.assert_allclose(along, -20_000.0 + np.arange(count) * pitch_um, atol=1.0)


class _RecordingStage:
    """Just what :func:`acquire_line` asks of a stage, each call logged; moves end at once."""

    def __init__(self, log: list[str]) -> None:
        self.log = log
        self.accelerations = {Axis.X: 1e6, Axis.Y: 1e6}

    def set_velocity_um_s(self, axis: Axis, velocity_um_s: float) -> None:
        self.log.append(f"velocity {axis.value}")

    def set_acceleration_um_s2(self, axis: Axis, acceleration_um_s2: float) -> None:
        self.accelerations[axis] = acceleration_um_s2

    def acceleration_um_s2(self, axis: Axis) -> float:
        return self.accelerations[axis]

    def move_absolute_um(self, axis: Axis, position_um: float, *, wait: bool = True) -> None:
        self.log.append(f"move {axis.value} {position_um:g}")

    def wait_idle_positions_um(self, timeout_s: float) -> dict[Axis, float]:
        self.log.append("wait and read positions")
        return {Axis.X: 1.0, Axis.Y: 2.0, Axis.Z: 3.0}

    def arm_position_trigger(self, axis: Axis, position_um: float, direction: object) -> None:
        self.log.append("arm trigger")

    def disarm_position_trigger(self) -> None:
        self.log.append("disarm trigger")


class _RecordingDetector:
    def __init__(self, log: list[str]) -> None:
        self.log = log
        self.name = "detector"

    def configure_triggered_acquisition(self, sample_rate_hz: float, sample_count: int) -> None:
        self.log.append("configure")

    def arm(self) -> None:
        self.log.append("arm detector")

    def samples_acquired(self) -> int:
        self.log.append("count samples")
        return 10

    def read_samples_v(self, start: int, count: int) -> np.ndarray:
        self.log.append("read samples")
        return np.zeros(count)


def test_line_ends_with_the_stage_and_the_next_run_up_before_the_samples_are_read() -> None:
    """The samples stay in the digitizer until the next arm: the engine first finishes with the stage (one
    status-and-position poll, trigger reset), lets the caller start the next line's run-up, then reads them, so
    the transfer overlaps the move. A run-up started that way is not sent again."""
    log: list[str] = []
    station = type("FakeStation", (), {"stage": _RecordingStage(log), "detector": _RecordingDetector(log)})()
    motion = LineMotion(velocity_um_s=1000.0, sample_rate_hz=1e5, accel_um_s2=1e6, run_up_um=0.0)
    line = acquire_line(
        station, (0.0, 0.0), (100.0, 0.0), 10, motion=motion, options=ScanOptions(),
        run_up_started=True, after_motion=lambda: log.append("after motion"),
    )  # fmt: skip
    assert log == [
        "wait and read positions",
        "velocity x",
        "configure",
        "arm detector",
        "arm trigger",
        "move x 100.5",
        "count samples",
        "wait and read positions",
        "disarm trigger",
        "after motion",
        "read samples",
    ]
    assert line.start_readback_um == (1.0, 2.0) and line.stop_readback_um == (1.0, 2.0)
    log.clear()
    acquire_line(station, (0.0, 0.0), (100.0, 0.0), 10, motion=motion, options=ScanOptions())
    assert log[:5] == ["velocity x", "move x -0.5", "velocity y", "move y 0", "wait and read positions"]
