"""The station as a whole: station files, opening every role, the virtual station process, the self-check, CLI."""

from __future__ import annotations

import contextlib
import inspect
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from app.cli import DEFAULT_STATION, main
from drivers.errors import InstrumentError, InterlockOpenError
from drivers.station import DRIVERS, ROLES, StationError, load_station_config, open_station
from drivers.virtual.station import TWINS, VirtualStation
from inspection.settings import SettingsError
from inspection.station_check import run_station_check

REPO = Path(__file__).resolve().parent.parent
PROFILE = REPO / "resources" / "profiles" / "demo-2in.toml"


def write_station(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "station.toml"
    path.write_text(textwrap.dedent(body))
    return path


REAL_STATION = """
    [station]
    name = "bench"
    [instruments.stage]
    driver = "zaber-x-mcc"
    resource = "{stage}"
    [instruments.laser]
    driver = "coherent-obis"
    resource = "{laser}"
    [instruments.power_meter]
    driver = "thorlabs-pm100d"
    resource = "{power_meter}"
    [instruments.detector]
    driver = "keithley-dmm6500"
    resource = "{detector}"
    [instruments.spectrometer]
    driver = "yokogawa-aq6373"
    resource = "{spectrometer}"
    [instruments.smu]
    driver = "keithley-2450"
    resource = "{smu}"
    timeout_s = 0.3
"""


def test_every_driver_implements_its_role_completely() -> None:
    for name, driver in DRIVERS.items():
        assert not inspect.isabstract(driver), f"{name} leaves abstract methods: {driver.__abstractmethods__}"
        assert any(issubclass(driver, interface) for interface in ROLES.values()), name
    assert set(TWINS) == set(ROLES)


def test_default_station_file_is_valid() -> None:
    config = load_station_config(DEFAULT_STATION)
    assert config.profile_path() is not None and config.profile_path().is_file()


def test_bad_station_file_lists_every_problem(tmp_path: Path) -> None:
    path = write_station(
        tmp_path,
        """
        [station]
        virtual_profile = "nowhere.toml"
        [instruments.stage]
        driver = "zaber-x-mcd"
        [instruments.laser]
        driver = "coherent-obis"
        timeout_s = -1
        [instruments.power_meter]
        driver = "thorlabs-pm100d"
        colour = "blue"
        """,
    )
    with pytest.raises(SettingsError) as caught:
        load_station_config(path)
    text = str(caught.value)
    assert "instruments.stage.driver: 'zaber-x-mcd' is not one of" in text
    assert "instruments.laser.timeout_s: -1 is outside the allowed range" in text
    assert "instruments.power_meter.colour: unknown setting" in text
    assert "instruments.detector: missing" in text
    assert str(path) in text


def test_wrong_driver_for_a_role_and_missing_resource(tmp_path: Path) -> None:
    body = REAL_STATION.format(
        stage="TCPIP0::127.0.0.1::1::SOCKET", laser="", power_meter="x", detector="x", spectrometer="x", smu="x"
    )
    body = body.replace('driver = "zaber-x-mcc"', 'driver = "coherent-obis"')
    with pytest.raises(SettingsError) as caught:
        load_station_config(write_station(tmp_path, body))
    text = str(caught.value)
    assert "instruments.stage.driver: 'coherent-obis' is not a stage (use zaber-x-mcc)" in text
    assert "instruments.laser.resource: missing" in text


def test_missing_profile_file_is_named(tmp_path: Path) -> None:
    path = write_station(tmp_path, DEFAULT_STATION.read_text().replace("../profiles/demo-2in.toml", "gone.toml"))
    with pytest.raises(SettingsError, match=r"station\.virtual_profile: file not found"):
        load_station_config(path)


def test_unreachable_instruments_give_one_line_per_role(tmp_path: Path) -> None:
    with VirtualStation.start(PROFILE) as virtual:
        resources = dict(virtual.resources)
        resources["laser"] = "TCPIP0::127.0.0.1::1::SOCKET"  # nothing listens on port 1
        resources["smu"] = "NOT-A-RESOURCE"
        config = load_station_config(write_station(tmp_path, REAL_STATION.format(**resources)))
        with pytest.raises(StationError) as caught:
            open_station(config)
        problems = caught.value.problems
        assert len(problems) == 2
        assert problems[0].startswith(
            "laser: laser (Coherent OBIS at TCPIP0::127.0.0.1::1::SOCKET): connection refused"
        )
        assert problems[1].startswith("smu: smu (Keithley 2450 at NOT-A-RESOURCE): 'NOT-A-RESOURCE' is not a VISA")
        # the roles that did open were closed again: a fresh station opens fine on the same twins
        resources = dict(virtual.resources)
        with open_station(load_station_config(write_station(tmp_path, REAL_STATION.format(**resources)))) as station:
            assert station.stage.identity().manufacturer == "Zaber"


@pytest.fixture(scope="module")
def virtual() -> VirtualStation:
    with VirtualStation.start(PROFILE) as running:
        yield running


@pytest.fixture
def station(virtual: VirtualStation):
    virtual.control(op="interlock", closed=True)
    with open_station(load_station_config(DEFAULT_STATION), resources=virtual.resources) as opened:
        yield opened


def test_virtual_station_serves_every_role_on_loopback(virtual: VirtualStation) -> None:
    assert set(virtual.resources) == set(ROLES)
    for resource in virtual.resources.values():
        assert resource.startswith("TCPIP0::127.0.0.1::") and resource.endswith("::SOCKET")
    status = virtual.control(op="status")
    assert status["interlock_closed"] is True


def test_self_check_passes_on_the_virtual_station(station, virtual: VirtualStation) -> None:
    results = run_station_check(station)
    failed = [result for result in results if not result.passed]
    assert not failed, failed
    assert {result.role for result in results} == set(ROLES)
    status = virtual.control(op="status")
    assert status["laser_emission"] is False and status["smu_output"] is False


def test_open_interlock_stops_the_check_with_laser_off(station, virtual: VirtualStation) -> None:
    virtual.control(op="interlock", closed=False)
    results = run_station_check(station)
    interlock = next(result for result in results if result.check == "interlock")
    assert not interlock.passed and "OPEN" in interlock.detail
    with pytest.raises(InterlockOpenError):
        station.laser.set_emission(True)
    assert virtual.control(op="status")["laser_emission"] is False


@pytest.mark.parametrize("kind", ["disconnect", "timeout", "garbage"])
def test_detector_fault_mid_check_is_reported_and_laser_ends_off(
    virtual: VirtualStation, kind: str, tmp_path: Path
) -> None:
    virtual.control(op="interlock", closed=True)
    quick = DEFAULT_STATION.read_text().replace("timeout_s = 10.0", "timeout_s = 0.5")
    quick = quick.replace("../profiles/demo-2in.toml", str(PROFILE))
    config = load_station_config(write_station(tmp_path, quick))
    station = open_station(config, resources=virtual.resources)
    # from its 10th command on (the triggered line, laser on) the detector drops, hangs or talks garbage
    virtual.inject_fault("detector", kind, at_command=10, count=1000)
    try:
        results = run_station_check(station)
        aborted = [result for result in results if result.check == "aborted"]
        assert aborted and "detector" in aborted[0].detail
        assert virtual.control(op="status")["laser_emission"] is False
    finally:
        # closing makes every instrument safe and then reports the detector that could not be reached
        with pytest.raises(InstrumentError):
            station.close()
        virtual.control(op="clear_faults")
    assert virtual.control(op="status")["laser_emission"] is False


def test_virtual_station_exits_when_its_parent_is_killed(tmp_path: Path) -> None:
    script = tmp_path / "parent.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import sys, time
            from drivers.virtual.station import VirtualStation
            with VirtualStation.start({str(PROFILE)!r}) as station:
                print(station.process.pid, flush=True)
                time.sleep(600)
            """
        )
    )
    parent = subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}
    )
    child_pid = int(parent.stdout.readline())
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    parent.stdout.close()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(child_pid, 0)
        except ProcessLookupError:
            return
        with contextlib.suppress(ChildProcessError):  # reap it if it became our zombie
            os.waitpid(child_pid, os.WNOHANG)
        time.sleep(0.05)
    os.kill(child_pid, signal.SIGKILL)
    pytest.fail("the virtual station outlived its parent")


def test_cli_check_bad_station_file_exits_2(tmp_path: Path, capsys) -> None:
    path = write_station(tmp_path, "[station]\nname = 3\n")
    assert main(["station", "check", "--station", str(path)]) == 2
    error = capsys.readouterr().err
    assert "station.name: expected text, got 3" in error
    assert "Traceback" not in error


def test_cli_truth_export(tmp_path: Path, capsys) -> None:
    profile = tmp_path / "coarse.toml"
    profile.write_text(
        "seed = 4\n[grid]\npitch_x_um = 2000.0\npitch_y_um = 2000.0\nchip_width_um = 1200.0\nchip_height_um = 1200.0\n"
    )
    out = tmp_path / "truth.h5"
    assert main(["station", "truth", "--profile", str(profile), "--out", str(out)]) == 0
    assert out.is_file() and "wrote ground truth" in capsys.readouterr().out


def test_cli_without_command_shows_help(capsys) -> None:
    assert main([]) == 2
    assert "station" in capsys.readouterr().out
