"""Coherent OBIS driver: exact protocol bytes, error replies, validation, and driver ↔ twin over a socket."""

from __future__ import annotations

import inspect
import math
from collections.abc import Iterator

import pytest

from drivers.errors import (
    InstrumentConnectionError,
    InstrumentReplyError,
    InstrumentTimeoutError,
    InterlockOpenError,
)
from drivers.interfaces import InstrumentIdentity, Laser
from drivers.obis import CoherentOBIS, OBISFault, OBISInterlockError, OBISStatus
from drivers.testing import TIMEOUT, expected_protocol
from drivers.virtual.bench import FaultKind, FaultRule, VirtualBench
from drivers.virtual.obis_twin import OBISTwin
from tests.twin_fixtures import make_bench, serve_twin

CONNECT = [
    (b"SYST:COMM:HAND ON\r\n", b"OK\r\n"),
    (b"SOUR:AM:INT CWP\r\n", b"OK\r\n"),
    (b"SOUR:POW:LIM:LOW?\r\n", b"0.00000\r\nOK\r\n"),
    (b"SOUR:POW:LIM:HIGH?\r\n", b"0.10000\r\nOK\r\n"),
]


# -- protocol ----------------------------------------------------------------------------------------------------


def test_implements_the_laser_interface() -> None:
    assert issubclass(CoherentOBIS, Laser)
    assert not inspect.isabstract(CoherentOBIS)


def test_connect_sets_handshake_and_cw_power_mode_and_reads_limits() -> None:
    with expected_protocol(CoherentOBIS, CONNECT, connect=True) as laser:
        assert laser.power_limits_w() == (0.0, 0.1)  # cached: no second query


def test_every_command_and_query_byte_for_byte() -> None:
    script = [
        (b"*IDN?\r\n", b"Coherent, Inc - OBIS 405nm 100mW C - V1.0.1 - Dec 14 2010\r\nOK\r\n"),
        (b"SYST:INF:SNUM?\r\n", b"123456\r\nOK\r\n"),
        (b"SYST:INF:WAV?\r\n", b"405.0\r\nOK\r\n"),
        (b"SOUR:POW:LEV:IMM:AMPL 0.012500\r\n", b"OK\r\n"),
        (b"SOUR:POW:LEV:IMM:AMPL?\r\n", b"0.01250\r\nOK\r\n"),
        (b"SOUR:POW:LEV?\r\n", b"0.01247\r\nOK\r\n"),
        (b"SYST:LOCK?\r\n", b"ON\r\nOK\r\n"),
        (b"SOUR:AM:STAT ON\r\n", b"OK\r\n"),
        (b"SOUR:AM:STAT?\r\n", b"ON\r\nOK\r\n"),
        (b"SYST:LOCK?\r\n", b"ON\r\nOK\r\n"),
        (b"SYST:STAT?\r\n", b"00001002\r\nOK\r\n"),
        (b"SYST:FAUL?\r\n", b"00000000\r\nOK\r\n"),
        (b"SOUR:AM:STAT OFF\r\n", b"OK\r\n"),
        (b"SOUR:AM:STAT?\r\n", b"OFF\r\nOK\r\n"),
    ]
    with expected_protocol(CoherentOBIS, CONNECT + script, connect=True) as laser:
        assert laser.identity() == InstrumentIdentity(
            "Coherent, Inc", "OBIS 405nm 100mW C", "123456", "V1.0.1 (Dec 14 2010)"
        )
        assert laser.wavelength_nm() == 405.0
        laser.set_power_w(0.0125)
        assert laser.power_setpoint_w() == 0.0125
        assert laser.measured_power_w() == 0.01247
        laser.set_emission(True)
        assert laser.emission() is True
        assert laser.interlock_closed() is True
        assert laser.system_status() == OBISStatus.LASER_EMISSION | OBISStatus.LASER_POWER_VOLTAGE
        assert laser.system_faults() == OBISFault(0)
        laser.set_emission(False)
        assert laser.emission() is False


def test_limits_are_read_on_first_use_without_connect() -> None:
    script = [
        (b"SOUR:POW:LIM:LOW?\r\n", b"0.00100\r\nOK\r\n"),
        (b"SOUR:POW:LIM:HIGH?\r\n", b"0.05000\r\nOK\r\n"),
        (b"SOUR:POW:LEV:IMM:AMPL 0.050000\r\n", b"OK\r\n"),
    ]
    with expected_protocol(CoherentOBIS, script) as laser:
        laser.set_power_w(0.05)


def test_status_and_fault_words_decode_to_flags() -> None:
    script = [
        (b"SYST:STAT?\r\n", b"04000008\r\nOK\r\n"),
        (b"SYST:FAUL?\r\n", b"00000003\r\nOK\r\n"),
    ]
    with expected_protocol(CoherentOBIS, script) as laser:
        assert laser.system_status() == OBISStatus.CONTROLLER_INTERLOCK | OBISStatus.LASER_STANDBY
        assert laser.system_faults() == OBISFault.BASE_PLATE_TEMPERATURE | OBISFault.DIODE_TEMPERATURE


def test_close_switches_emission_off_then_closes() -> None:
    with expected_protocol(CoherentOBIS, [(b"SOUR:AM:STAT OFF\r\n", b"OK\r\n")]) as laser:
        laser.close()
        laser.close()  # idempotent: nothing more is sent
    assert laser._resource.closed


# -- error replies -----------------------------------------------------------------------------------------------


def test_error_reply_to_a_query_names_command_and_reply() -> None:
    with (
        expected_protocol(CoherentOBIS, [(b"SYST:INF:WAV?\r\n", b"ERR-100\r\n")]) as laser,
        pytest.raises(InstrumentReplyError, match="unrecognized command") as caught,
    ):
        laser.wavelength_nm()
    assert caught.value.command == "SYST:INF:WAV?"
    assert caught.value.reply == "ERR-100"
    assert not isinstance(caught.value, InterlockOpenError)


def test_error_reply_to_a_command_names_command_and_reply() -> None:
    script = [*CONNECT, (b"SOUR:POW:LEV:IMM:AMPL 0.010000\r\n", b"ERR-220\r\n")]
    with (
        expected_protocol(CoherentOBIS, script, connect=True) as laser,
        pytest.raises(InstrumentReplyError, match="invalid parameter") as caught,
    ):
        laser.set_power_w(0.01)
    assert caught.value.command == "SOUR:POW:LEV:IMM:AMPL 0.010000"
    assert caught.value.reply == "ERR-220"


def test_missing_ok_after_a_value_is_a_reply_error() -> None:
    with (
        expected_protocol(CoherentOBIS, [(b"SOUR:AM:STAT?\r\n", b"ON\r\nON\r\n")]) as laser,
        pytest.raises(InstrumentReplyError, match="expected OK") as caught,
    ):
        laser.emission()
    assert caught.value.reply == "ON"


def test_unparsable_value_is_a_reply_error() -> None:
    with (
        expected_protocol(CoherentOBIS, [(b"SOUR:POW:LEV?\r\n", b"lots\r\nOK\r\n")]) as laser,
        pytest.raises(InstrumentReplyError) as caught,
    ):
        laser.measured_power_w()
    assert caught.value.command == "SOUR:POW:LEV?"
    assert caught.value.reply == "lots"


def test_identity_that_is_not_an_obis_is_a_reply_error() -> None:
    with (
        expected_protocol(CoherentOBIS, [(b"*IDN?\r\n", b"ACME laser\r\nOK\r\n")]) as laser,
        pytest.raises(InstrumentReplyError, match="Coherent"),
    ):
        laser.identity()


def test_emission_on_with_interlock_open_is_refused_before_sending() -> None:
    with (
        expected_protocol(CoherentOBIS, [(b"SYST:LOCK?\r\n", b"OFF\r\nOK\r\n")]) as laser,
        pytest.raises(InterlockOpenError, match="interlock open") as caught,
    ):
        laser.set_emission(True)
    assert caught.value.command == "SYST:LOCK?"


def test_emission_on_refused_by_the_laser_is_an_interlock_error_with_the_reply() -> None:
    script = [
        (b"SYST:LOCK?\r\n", b"ON\r\nOK\r\n"),
        (b"SOUR:AM:STAT ON\r\n", b"ERR-241\r\n"),
    ]
    with (
        expected_protocol(CoherentOBIS, script) as laser,
        pytest.raises(InterlockOpenError) as caught,
    ):
        laser.set_emission(True)
    assert isinstance(caught.value, OBISInterlockError)
    assert isinstance(caught.value, InstrumentReplyError)
    assert caught.value.command == "SOUR:AM:STAT ON"
    assert caught.value.reply == "ERR-241"


def test_silence_is_a_timeout_naming_the_command() -> None:
    with (
        expected_protocol(CoherentOBIS, [(b"SOUR:POW:LEV?\r\n", TIMEOUT)]) as laser,
        pytest.raises(InstrumentTimeoutError) as caught,
    ):
        laser.measured_power_w()
    assert caught.value.command == "SOUR:POW:LEV?"


def test_silence_after_a_command_is_a_timeout() -> None:
    with (
        expected_protocol(CoherentOBIS, [(b"SOUR:AM:STAT OFF\r\n", TIMEOUT)]) as laser,
        pytest.raises(InstrumentTimeoutError),
    ):
        laser.set_emission(False)


# -- validation: nothing is sent ---------------------------------------------------------------------------------


@pytest.mark.parametrize("power_w", [-0.001, math.nan, math.inf, "ten", None])
def test_impossible_power_is_refused_without_talking_to_the_laser(power_w: object) -> None:
    with expected_protocol(CoherentOBIS, []) as laser, pytest.raises(ValueError, match="power_w"):
        laser.set_power_w(power_w)  # type: ignore[arg-type]


def test_power_above_the_lasers_limit_is_refused_before_sending() -> None:
    with (
        expected_protocol(CoherentOBIS, CONNECT, connect=True) as laser,
        pytest.raises(ValueError, match=r"power_w: 0\.2 is outside the allowed range 0 to 0\.1 W"),
    ):
        laser.set_power_w(0.2)


@pytest.mark.parametrize("on", [1, "ON", None])
def test_emission_needs_a_bool(on: object) -> None:
    with expected_protocol(CoherentOBIS, []) as laser, pytest.raises(ValueError, match="on"):
        laser.set_emission(on)  # type: ignore[arg-type]


# -- driver ↔ twin over a real loopback socket -----------------------------------------------------------------


@pytest.fixture
def bench() -> VirtualBench:
    return make_bench()


@pytest.fixture
def resource(bench: VirtualBench) -> Iterator[str]:
    with serve_twin(OBISTwin, bench) as resource_name:
        yield resource_name


@pytest.fixture
def laser(resource: str) -> Iterator[CoherentOBIS]:
    laser = CoherentOBIS.open(resource, timeout_s=0.3)
    yield laser
    laser.close()


def _fault_on_next_command(bench: VirtualBench, kind: FaultKind) -> None:
    with bench.lock:
        next_command = bench.faults.command_counts.get("laser", 0) + 1
        bench.faults.add(FaultRule("laser", kind, at_command=next_command))


def test_twin_round_trip(laser: CoherentOBIS, bench: VirtualBench) -> None:
    identity = laser.identity()
    assert identity.manufacturer == "Coherent, Inc"
    assert identity.model == "OBIS 405nm 100mW C"
    assert laser.wavelength_nm() == 405.0
    assert laser.power_limits_w() == (0.0, 0.1)
    laser.set_power_w(0.03)
    assert laser.power_setpoint_w() == pytest.approx(0.03)
    assert laser.measured_power_w() == 0.0  # emission still off
    laser.set_emission(True)
    assert laser.emission() is True
    assert bench.laser.emission is True
    assert laser.measured_power_w() == pytest.approx(0.03, abs=1e-5)
    assert OBISStatus.LASER_EMISSION in laser.system_status()
    assert laser.system_faults() == OBISFault(0)


def test_twin_accepts_long_forms_and_refuses_unknown_commands(laser: CoherentOBIS) -> None:
    assert laser.query("SOURce:AM:STATe?") == "OFF"
    assert laser.query("syst1:inf:wav?") == "405.0"
    with pytest.raises(InstrumentReplyError) as caught:
        laser.query("SOUR:AM:FOO?")
    assert caught.value.reply == "ERR-100"
    with pytest.raises(InstrumentReplyError) as caught:
        laser.write("SOUR:POW:LEV:IMM:AMPL 0.5")  # past the driver's validation, the laser refuses it itself
    assert caught.value.reply == "ERR-220"


def test_interlock_opening_mid_session_stops_emission_and_blocks_it(laser: CoherentOBIS, bench: VirtualBench) -> None:
    laser.set_power_w(0.02)
    laser.set_emission(True)
    with bench.lock:
        bench.laser.open_interlock()
    assert laser.emission() is False
    assert laser.interlock_closed() is False
    assert laser.measured_power_w() == 0.0
    assert OBISStatus.CONTROLLER_INTERLOCK in laser.system_status()
    with pytest.raises(InterlockOpenError):
        laser.set_emission(True)
    assert bench.laser.emission is False


def test_twin_refuses_emission_with_the_real_error_when_interlock_open(
    laser: CoherentOBIS, bench: VirtualBench
) -> None:
    with bench.lock:
        bench.laser.open_interlock()
    with pytest.raises(OBISInterlockError) as caught:
        laser.write("SOUR:AM:STAT ON")  # bypasses the driver's SYST:LOCK? check: the laser's own refusal
    assert caught.value.reply == "ERR-241"


def test_twin_garbage_reply_is_a_reply_error_and_the_session_recovers(laser: CoherentOBIS, bench: VirtualBench) -> None:
    _fault_on_next_command(bench, FaultKind.GARBAGE)
    with pytest.raises(InstrumentReplyError) as caught:
        laser.emission()
    assert caught.value.command == "SOUR:AM:STAT?"
    assert laser.emission() is False


def test_twin_dropped_connection_is_a_connection_error(laser: CoherentOBIS, bench: VirtualBench) -> None:
    _fault_on_next_command(bench, FaultKind.DISCONNECT)
    with pytest.raises(InstrumentConnectionError) as caught:
        laser.measured_power_w()
    assert caught.value.command == "SOUR:POW:LEV?"
    with pytest.raises(InstrumentConnectionError):
        laser.close()  # the laser could not be told to stop: the operator must hear about it


def test_close_leaves_the_laser_off(resource: str, bench: VirtualBench) -> None:
    laser = CoherentOBIS.open(resource)
    laser.set_power_w(0.05)
    laser.set_emission(True)
    assert bench.laser.emission is True
    laser.close()
    assert bench.laser.emission is False
    assert float(bench.laser.output_power_w(bench.now())) == 0.0


def test_connect_switches_handshake_back_on(resource: str) -> None:
    first = CoherentOBIS.open(resource)
    first._resource.write("SYST:COMM:HAND OFF")  # as a terminal program might leave it: no OK from now on
    second = CoherentOBIS.open(resource)  # its SYST:COMM:HAND ON is acknowledged, then all is as before
    assert second.query("SYST:COMM:HAND?") == "ON"
    assert second.emission() is False
    second.close()
    first.close()
