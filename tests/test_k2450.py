"""Keithley 2450 SourceMeter: exact protocol bytes, error and timeout handling, range checks, and the driver
against its virtual twin over a loopback socket (UniformWorld's diode under the probes)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import numpy as np
import pytest

from drivers.errors import InstrumentConnectionError, InstrumentReplyError, InstrumentTimeoutError
from drivers.interfaces import Axis, InstrumentIdentity, SourceMeter
from drivers.keithley_2450 import Keithley2450, SmuFunction
from drivers.testing import TIMEOUT, expected_protocol
from drivers.virtual.bench import FaultKind, FaultRule, VirtualBench
from drivers.virtual.k2450_twin import IDENTITY, MEASURE_TIME_S, Keithley2450Twin
from tests.twin_fixtures import UniformWorld, make_bench, serve_twin

NO_ERROR = b'0,"No error;0;0 0"\n'
ERROR_QUERY = (b":SYST:ERR?\n", NO_ERROR)
OUT_OF_RANGE = b'-222,"Parameter data out of range;1;2024/01/01 00:00:03.250"\n'


def checked(command: str) -> list[tuple[bytes, bytes | object | None]]:
    """A write and the error-queue check the driver follows it with."""
    return [(command.encode("ascii") + b"\n", None), ERROR_QUERY]


# -- the interface ------------------------------------------------------------------------------------------------


def test_driver_implements_the_source_meter_interface() -> None:
    assert issubclass(Keithley2450, SourceMeter)
    assert not Keithley2450.__abstractmethods__


# -- protocol: every command and query, byte for byte --------------------------------------------------------------


def test_connect_checks_identity_and_clears_the_event_log() -> None:
    exchanges = [(b"*IDN?\n", IDENTITY.encode() + b"\n"), *checked("*CLS")]
    with expected_protocol(Keithley2450, exchanges, connect=True):
        pass


def test_connect_refuses_another_model() -> None:
    reply = b"KEITHLEY INSTRUMENTS,MODEL 2460,04412345,1.7.3c\n"
    with pytest.raises(InstrumentReplyError, match="Model 2450, not '2460'"):  # noqa: SIM117
        with expected_protocol(Keithley2450, [(b"*IDN?\n", reply)], connect=True):
            pass


def test_identity() -> None:
    with expected_protocol(Keithley2450, [(b"*IDN?\n", IDENTITY.encode() + b"\n")]) as smu:
        assert smu.identity() == InstrumentIdentity("KEITHLEY INSTRUMENTS", "2450", "04412345", "1.7.3c")


def test_reset() -> None:
    with expected_protocol(Keithley2450, checked("*RST")) as smu:
        smu.reset()


def test_source_current_sets_function_then_limit_then_level() -> None:
    exchanges = checked(":SOUR:FUNC CURR") + checked(":SOUR:CURR:VLIM 5") + checked(":SOUR:CURR:LEV 0.001")
    with expected_protocol(Keithley2450, exchanges) as smu:
        smu.source_current(1e-3, voltage_limit_v=5.0)


def test_source_voltage_sets_function_then_limit_then_level() -> None:
    exchanges = checked(":SOUR:FUNC VOLT") + checked(":SOUR:VOLT:ILIM 1e-06") + checked(":SOUR:VOLT:LEV -5")
    with expected_protocol(Keithley2450, exchanges) as smu:
        smu.source_voltage(-5.0, current_limit_a=1e-6)


@pytest.mark.parametrize(("on", "command"), [(True, ":OUTP ON"), (False, ":OUTP OFF")])
def test_set_output(on: bool, command: str) -> None:
    with expected_protocol(Keithley2450, checked(command)) as smu:
        smu.set_output(on)


@pytest.mark.parametrize(("reply", "on"), [(b"1\n", True), (b"0\n", False)])
def test_output_query(reply: bytes, on: bool) -> None:
    with expected_protocol(Keithley2450, [(b":OUTP?\n", reply)]) as smu:
        assert smu.output() is on


@pytest.mark.parametrize(
    ("function", "commands"),
    [
        (SmuFunction.VOLTAGE, [':SENS:FUNC "VOLT"', ":SENS:VOLT:RANG:AUTO ON"]),
        (SmuFunction.CURRENT, [':SENS:FUNC "CURR"', ":SENS:CURR:RANG:AUTO ON"]),
    ],
)
def test_set_measure_function_with_autorange(function: SmuFunction, commands: list[str]) -> None:
    with expected_protocol(Keithley2450, checked(commands[0]) + checked(commands[1])) as smu:
        smu.set_measure_function(function)


def test_measurements() -> None:
    exchanges = [
        (b":MEAS:VOLT?\n", b"2.033742E+00\n"),
        (b":MEAS:CURR?\n", b"-5.000000E-09\n"),
        (b":READ?\n", b"1.000000E-03\n"),
    ]
    with expected_protocol(Keithley2450, exchanges) as smu:
        assert smu.measure_voltage_v() == pytest.approx(2.033742)
        assert smu.measure_current_a() == pytest.approx(-5e-9)
        assert smu.reading == pytest.approx(1e-3)


@pytest.mark.parametrize(
    ("function_reply", "trip_query", "trip_reply", "expected"),
    [
        (b"CURR\n", b":SOUR:CURR:VLIM:TRIP?\n", b"1\n", True),
        (b"CURR\n", b":SOUR:CURR:VLIM:TRIP?\n", b"0\n", False),
        (b"VOLT\n", b":SOUR:VOLT:ILIM:TRIP?\n", b"1\n", True),
        (b"VOLT\n", b":SOUR:VOLT:ILIM:TRIP?\n", b"0\n", False),
    ],
)
def test_in_compliance_asks_the_limit_of_the_active_source(
    function_reply: bytes, trip_query: bytes, trip_reply: bytes, expected: bool
) -> None:
    exchanges = [(b":SOUR:FUNC?\n", function_reply), (trip_query, trip_reply)]
    with expected_protocol(Keithley2450, exchanges) as smu:
        assert smu.in_compliance() is expected


@pytest.mark.parametrize(
    ("name", "query", "reply", "value"),
    [
        ("source_function", b":SOUR:FUNC?\n", b"VOLT\n", SmuFunction.VOLTAGE),
        ("source_current_a", b":SOUR:CURR:LEV?\n", b"1.000000E-03\n", 1e-3),
        ("source_voltage_v", b":SOUR:VOLT:LEV?\n", b"-5.000000E+00\n", -5.0),
        ("voltage_limit_v", b":SOUR:CURR:VLIM?\n", b"2.100000E+01\n", 21.0),
        ("current_limit_a", b":SOUR:VOLT:ILIM?\n", b"1.050000E-04\n", 105e-6),
        ("output_enabled", b":OUTP?\n", b"1\n", True),
        ("voltage_limit_tripped", b":SOUR:CURR:VLIM:TRIP?\n", b"0\n", False),
        ("current_limit_tripped", b":SOUR:VOLT:ILIM:TRIP?\n", b"1\n", True),
    ],
)
def test_declared_property_queries(name: str, query: bytes, reply: bytes, value: object) -> None:
    with expected_protocol(Keithley2450, [(query, reply)]) as smu:
        assert getattr(smu, name) == value


def test_sweep_current_protocol() -> None:
    exchanges = [
        *checked(":SOUR:FUNC CURR"),
        *checked(":SOUR:CURR:VLIM 10"),
        *checked(':SENS:FUNC "VOLT"'),
        *checked(":SENS:VOLT:RANG:AUTO ON"),
        *checked(":SOUR:SWE:CURR:LIN 0, 0.002, 3, 0.01, 1, BEST, OFF"),
        *checked(':TRAC:CLE "defbuffer1"'),
        *checked(":INIT"),
        *checked("*WAI"),
        (
            b':TRAC:DATA? 1, 3, "defbuffer1", SOUR, READ\n',
            b"0.000000E+00,0.000000E+00,1.000000E-03,2.033742E+00,2.000000E-03,2.059705E+00\n",
        ),
    ]
    with expected_protocol(Keithley2450, exchanges) as smu:
        current_a, voltage_v = smu.sweep_current(0.0, 2e-3, 3, voltage_limit_v=10.0, delay_s=0.01)
        assert smu._resource.timeout == 1000  # lengthened only for the wait on *WAI
    np.testing.assert_allclose(current_a, [0.0, 1e-3, 2e-3])
    np.testing.assert_allclose(voltage_v, [0.0, 2.033742, 2.059705])


def test_make_safe_turns_output_off_then_zeroes_both_levels() -> None:
    exchanges = checked(":OUTP OFF") + checked(":SOUR:CURR:LEV 0") + checked(":SOUR:VOLT:LEV 0")
    with expected_protocol(Keithley2450, exchanges) as smu:
        smu.make_safe()


def test_close_makes_safe_once_and_closes_the_connection() -> None:
    exchanges = checked(":OUTP OFF") + checked(":SOUR:CURR:LEV 0") + checked(":SOUR:VOLT:LEV 0")
    with expected_protocol(Keithley2450, exchanges) as smu:
        smu.close()
        smu.close()  # a second close sends nothing
    assert smu._resource.closed


# -- error replies -------------------------------------------------------------------------------------------------


def test_rejected_write_raises_with_command_and_reply() -> None:
    exchanges = [(b":SOUR:CURR:LEV 0.001\n", None), (b":SYST:ERR?\n", OUT_OF_RANGE), ERROR_QUERY]
    with expected_protocol(Keithley2450, exchanges) as smu, pytest.raises(InstrumentReplyError) as caught:
        smu.source_current_a = 1e-3
    assert caught.value.command == ":SOUR:CURR:LEV 0.001"
    assert caught.value.reply == OUT_OF_RANGE.decode().strip()
    assert "-222 Parameter data out of range" in str(caught.value)


def test_error_queue_is_drained_and_the_first_error_reported() -> None:
    undefined = b'-113,"Undefined header;1;2024/01/01 00:00:03.250"\n'
    exchanges = [(b"*RST\n", None), (b":SYST:ERR?\n", undefined), (b":SYST:ERR?\n", OUT_OF_RANGE), ERROR_QUERY]
    with expected_protocol(Keithley2450, exchanges) as smu, pytest.raises(InstrumentReplyError) as caught:
        smu.reset()
    assert "-113 Undefined header (and 1 more)" in str(caught.value)
    assert caught.value.reply == undefined.decode().strip()


def test_malformed_error_queue_reply_raises() -> None:
    exchanges = [(b":OUTP ON\n", None), (b":SYST:ERR?\n", b"ERR\n")]
    with expected_protocol(Keithley2450, exchanges) as smu, pytest.raises(InstrumentReplyError) as caught:
        smu.set_output(True)
    assert caught.value.command == ":OUTP ON"
    assert caught.value.reply == "ERR"
    assert "error-queue check ':SYST:ERR?' failed: not an error-queue entry (reply 'ERR')" in str(caught.value)


@pytest.mark.parametrize("reply", [b"volts\n", b"9.900000E+37\n", b"-9.9E+37\n"])
def test_unreadable_or_overflowed_reading_raises(reply: bytes) -> None:
    with expected_protocol(Keithley2450, [(b":MEAS:VOLT?\n", reply)]) as smu, pytest.raises(InstrumentReplyError) as e:
        smu.measure_voltage_v()
    assert e.value.command == ":MEAS:VOLT?"
    assert e.value.reply == reply.decode().strip()


def test_unexpected_source_function_reply_raises() -> None:
    with expected_protocol(Keithley2450, [(b":SOUR:FUNC?\n", b"RES\n")]) as smu, pytest.raises(InstrumentReplyError):
        smu.in_compliance()


def test_short_sweep_data_raises() -> None:
    exchanges = [
        *checked(":SOUR:FUNC CURR"),
        *checked(":SOUR:CURR:VLIM 10"),
        *checked(':SENS:FUNC "VOLT"'),
        *checked(":SENS:VOLT:RANG:AUTO ON"),
        *checked(":SOUR:SWE:CURR:LIN 0, 0.001, 2, 0, 1, BEST, OFF"),
        *checked(':TRAC:CLE "defbuffer1"'),
        *checked(":INIT"),
        *checked("*WAI"),
        (b':TRAC:DATA? 1, 2, "defbuffer1", SOUR, READ\n', b"0.000000E+00,0.000000E+00\n"),
    ]
    with expected_protocol(Keithley2450, exchanges) as smu, pytest.raises(InstrumentReplyError, match="expected 4"):
        smu.sweep_current(0.0, 1e-3, 2, voltage_limit_v=10.0)


# -- timeouts ------------------------------------------------------------------------------------------------------


def test_silent_query_times_out() -> None:
    with expected_protocol(Keithley2450, [(b":OUTP?\n", TIMEOUT)]) as smu, pytest.raises(InstrumentTimeoutError) as e:
        smu.output()
    assert e.value.command == ":OUTP?"


def test_silent_error_query_after_a_write_names_the_write() -> None:
    exchanges = [(b":OUTP ON\n", None), (b":SYST:ERR?\n", TIMEOUT)]
    with expected_protocol(Keithley2450, exchanges) as smu, pytest.raises(InstrumentTimeoutError) as caught:
        smu.set_output(True)
    assert caught.value.command == ":OUTP ON"
    assert ":SYST:ERR?" in str(caught.value)


# -- range validation: ValueError naming the field, nothing sent ---------------------------------------------------


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda smu: smu.source_current(1.1, voltage_limit_v=5.0), "current_a: 1.1 is outside the allowed range -1.05"),
        (lambda smu: smu.source_current(-1.06, voltage_limit_v=5.0), "current_a: -1.06 is outside"),
        (lambda smu: smu.source_current(math.nan, voltage_limit_v=5.0), "current_a: nan is outside"),
        (
            lambda smu: smu.source_current(1e-3, voltage_limit_v=0.01),
            "voltage_limit_v: 0.01 is outside .* 0.02 to 210 V",
        ),
        (lambda smu: smu.source_current(1e-3, voltage_limit_v=211), "voltage_limit_v: 211 is outside"),
        (lambda smu: smu.source_voltage(-210.5, current_limit_a=1e-3), "voltage_v: -210.5 is outside .* -210 to 210 V"),
        (lambda smu: smu.source_voltage(-5, current_limit_a=0), "current_limit_a: 0 is outside .* 1e-09 to 1.05 A"),
        (lambda smu: smu.source_voltage(-5, current_limit_a=1.1), "current_limit_a: 1.1 is outside"),
        (lambda smu: smu.source_voltage("five", current_limit_a=1e-3), "voltage_v: 'five' is not a number"),
        (lambda smu: setattr(smu, "source_current_a", 2.0), "source_current_a: 2.0 is outside"),
        (lambda smu: setattr(smu, "source_voltage_v", 300), "source_voltage_v: 300 is outside"),
        (lambda smu: setattr(smu, "voltage_limit_v", 0), "voltage_limit_v: 0 is outside"),
        (lambda smu: setattr(smu, "current_limit_a", -1e-3), "current_limit_a: -0.001 is outside"),
        (lambda smu: setattr(smu, "source_function", "RES"), "source_function: 'RES' is not one of"),
        (lambda smu: smu.set_output("yes"), "output_enabled: 'yes' is not one of"),
        (lambda smu: smu.set_measure_function("RES"), "function: 'RES' is not one of"),
        (lambda smu: smu.sweep_current(0, 1.2, 10, voltage_limit_v=5), "stop_a: 1.2 is outside"),
        (lambda smu: smu.sweep_current(-1.2, 0, 10, voltage_limit_v=5), "start_a: -1.2 is outside"),
        (lambda smu: smu.sweep_current(0, 1e-3, 1, voltage_limit_v=5), "points: 1 is outside the allowed range 2 to"),
        (lambda smu: smu.sweep_current(0, 1e-3, 100_001, voltage_limit_v=5), "points: 100001 is outside"),
        (lambda smu: smu.sweep_current(0, 1e-3, 2.5, voltage_limit_v=5), "points: 2.5 is not an integer"),
        (lambda smu: smu.sweep_current(0, 1e-3, 10, voltage_limit_v=300), "voltage_limit_v: 300 is outside"),
        (lambda smu: smu.sweep_current(0, 1e-3, 10, voltage_limit_v=5, delay_s=1e-5), "delay_s: 1e-05 is outside"),
        (lambda smu: smu.sweep_current(0, 1e-3, 10, voltage_limit_v=5, delay_s=-1), "delay_s: -1 is outside"),
    ],
)
def test_out_of_range_values_are_refused_before_sending(call: Callable[[Keithley2450], object], message: str) -> None:
    with expected_protocol(Keithley2450, []) as smu, pytest.raises(ValueError, match=message):
        call(smu)


# -- driver against the twin over a loopback socket ----------------------------------------------------------------


def move_z(bench: VirtualBench, z_um: float) -> None:
    """Raise the chuck to ``z_um`` and let the move finish (the probes touch the chip from contact height on)."""
    with bench.lock:
        bench.axes[Axis.Z].move_to(bench.now(), z_um)
        bench.settle()


def diode_voltage_v(current_a: float) -> float:
    """UniformWorld's chip: ideal diode (n = 2, I0 = 1e-20 A) plus 10 Ω, forward-biased."""
    return 2 * 0.02585 * math.log1p(current_a / 1e-20) + 10.0 * current_a


@pytest.fixture
def bench() -> VirtualBench:
    return make_bench()


@pytest.fixture
def resource(bench: VirtualBench) -> Iterator[str]:
    with serve_twin(Keithley2450Twin, bench) as name:
        yield name


def test_twin_identity_and_empty_error_queue(resource: str) -> None:
    with Keithley2450.open(resource) as smu:
        assert smu.identity() == InstrumentIdentity("KEITHLEY INSTRUMENTS", "2450", "04412345", "1.7.3c")
        assert smu.query(":SYST:ERR?") == NO_ERROR.decode().strip()


def test_twin_forward_current_gives_the_diode_forward_voltage(bench: VirtualBench, resource: str) -> None:
    move_z(bench, bench.probe_contact_z_um)
    with Keithley2450.open(resource) as smu:
        smu.source_current(1e-3, voltage_limit_v=5.0)
        smu.set_output(True)
        assert smu.output()
        forward_v = smu.measure_voltage_v()
        assert forward_v == pytest.approx(diode_voltage_v(1e-3), rel=1e-6)
        assert forward_v == pytest.approx(2.0337, abs=1e-4)  # what UniformWorld's diode gives at 1 mA
        assert smu.measure_current_a() == pytest.approx(1e-3, rel=1e-6)
        assert not smu.in_compliance()


def test_twin_reverse_voltage_gives_the_shunt_leakage(bench: VirtualBench, resource: str) -> None:
    move_z(bench, bench.probe_contact_z_um)
    with Keithley2450.open(resource) as smu:
        smu.source_voltage(-5.0, current_limit_a=1e-6)
        smu.set_output(True)
        assert smu.measure_current_a() == pytest.approx(-5e-9, rel=1e-6)  # -5 V across the 1 GΩ shunt
        assert smu.measure_voltage_v() == pytest.approx(-5.0)
        assert not smu.in_compliance()


def test_twin_open_contact_goes_to_the_voltage_limit_and_reports_compliance(bench: VirtualBench, resource: str) -> None:
    move_z(bench, 0.0)  # chuck down: the probes touch nothing
    with Keithley2450.open(resource) as smu:
        smu.source_current(1e-3, voltage_limit_v=8.0)
        smu.set_output(True)
        assert smu.measure_voltage_v() == pytest.approx(8.0)
        assert smu.measure_current_a() == pytest.approx(0.0)
        assert smu.in_compliance()


def test_twin_voltage_limit_clamps_a_forward_current_on_a_contacted_chip(bench: VirtualBench, resource: str) -> None:
    move_z(bench, bench.probe_contact_z_um)
    with Keithley2450.open(resource) as smu:
        smu.source_current(1e-3, voltage_limit_v=1.5)  # below the 2.03 V the chip needs at 1 mA
        smu.set_output(True)
        assert smu.measure_voltage_v() == pytest.approx(1.5)
        assert smu.in_compliance()


def test_twin_output_off_reads_nothing(bench: VirtualBench, resource: str) -> None:
    move_z(bench, bench.probe_contact_z_um)
    with Keithley2450.open(resource) as smu:
        smu.source_current(1e-3, voltage_limit_v=5.0)
        assert not smu.output()
        assert smu.measure_voltage_v() == 0.0
        assert not smu.in_compliance()


def test_twin_sweep_follows_the_diode(bench: VirtualBench, resource: str) -> None:
    move_z(bench, bench.probe_contact_z_um)
    with Keithley2450.open(resource) as smu:
        started_s = bench.now()
        current_a, voltage_v = smu.sweep_current(0.0, 2e-3, 5, voltage_limit_v=10.0)
        expected_a = np.linspace(0.0, 2e-3, 5)
        np.testing.assert_allclose(current_a, expected_a, rtol=1e-6, atol=1e-12)
        expected_v = [0.0] + [diode_voltage_v(i) for i in expected_a[1:]]
        np.testing.assert_allclose(voltage_v, expected_v, rtol=1e-6)
        assert np.all(np.diff(voltage_v) > 0)
        assert not smu.output()  # the sweep's trigger model ends with the output off
        assert bench.now() >= started_s + 5 * MEASURE_TIME_S  # virtual time passed for the sweep
    assert bench.smu.source_level == 0.0


def test_twin_sweep_on_an_open_contact_reads_the_limit_at_every_point(bench: VirtualBench, resource: str) -> None:
    move_z(bench, 0.0)
    with Keithley2450.open(resource) as smu:
        current_a, voltage_v = smu.sweep_current(1e-4, 1e-3, 4, voltage_limit_v=6.0)
    np.testing.assert_allclose(voltage_v, 6.0)
    np.testing.assert_allclose(current_a, 0.0)


def test_twin_rejects_unknown_headers_in_the_real_error_format(resource: str) -> None:
    with Keithley2450.open(resource) as smu:
        with pytest.raises(InstrumentReplyError) as caught:
            smu.write(":SOUR:CURR:BOGUS 1")
        assert caught.value.command == ":SOUR:CURR:BOGUS 1"
        assert caught.value.reply.startswith('-113,"Undefined header;1;2024/01/01 ')
        smu.set_output(False)  # the queue was drained: the next command is clean


def test_twin_rejects_out_of_range_levels(bench: VirtualBench, resource: str) -> None:
    with Keithley2450.open(resource) as smu:
        with pytest.raises(InstrumentReplyError) as caught:
            smu.write(":SOUR:CURR:LEV 2")  # past the driver's own check, to see what the instrument says
        assert caught.value.reply.startswith('-222,"Parameter data out of range;1;')
        with bench.lock:
            assert bench.smu.source_level == 0.0


def test_twin_accepts_long_forms_and_optional_nodes(resource: str) -> None:
    with Keithley2450.open(resource) as smu:
        smu.write(":SOURce1:FUNCtion:MODE CURRent")
        smu.write(":sour:curr:level:immediate:amplitude 0.002")
        smu.write(":SOURce:CURRent:VLIMit MAX")
        smu.write(":OUTPut1:STATe ON")
        assert smu.source_function is SmuFunction.CURRENT
        assert smu.source_current_a == pytest.approx(2e-3)
        assert smu.voltage_limit_v == pytest.approx(210.0)
        assert smu.query(":SYSTem:ERRor:NEXT?") == NO_ERROR.decode().strip()
        assert smu.output()


def test_twin_reset_restores_the_2450_defaults(bench: VirtualBench, resource: str) -> None:
    with Keithley2450.open(resource) as smu:
        smu.source_current(1e-3, voltage_limit_v=5.0)
        smu.set_output(True)
        smu.reset()
        assert not smu.output()
        assert smu.source_function is SmuFunction.VOLTAGE
        assert smu.voltage_limit_v == pytest.approx(21.0)
        assert smu.current_limit_a == pytest.approx(105e-6)


def _fault_on_next_command(bench: VirtualBench, kind: FaultKind) -> None:
    with bench.lock:
        next_command = bench.faults.command_counts.get(Keithley2450Twin.role, 0) + 1
        bench.faults.add(FaultRule(Keithley2450Twin.role, kind, at_command=next_command))


def test_twin_garbage_reply_raises_reply_error(bench: VirtualBench, resource: str) -> None:
    with Keithley2450.open(resource) as smu:
        _fault_on_next_command(bench, FaultKind.GARBAGE)
        with pytest.raises(InstrumentReplyError) as caught:
            smu.measure_voltage_v()
        assert caught.value.command == ":MEAS:VOLT?"


def test_twin_garbage_error_queue_reply_raises_reply_error(bench: VirtualBench, resource: str) -> None:
    with Keithley2450.open(resource) as smu:
        with bench.lock:
            next_command = bench.faults.command_counts.get(Keithley2450Twin.role, 0) + 2
            bench.faults.add(FaultRule(Keithley2450Twin.role, FaultKind.GARBAGE, at_command=next_command))
        with pytest.raises(InstrumentReplyError) as caught:
            smu.set_output(True)  # command 1: ":OUTP ON", command 2: ":SYST:ERR?" answered with garbage
        assert caught.value.command == ":OUTP ON"


def test_twin_dropped_connection_raises_connection_error(bench: VirtualBench, resource: str) -> None:
    # pyvisa-py reports a closed socket only after its timeout: keep that short
    smu = Keithley2450.open(resource, timeout_s=0.3)
    _fault_on_next_command(bench, FaultKind.DISCONNECT)
    with pytest.raises(InstrumentConnectionError) as caught:
        smu.output()
    assert caught.value.command == ":OUTP?"
    with pytest.raises(InstrumentConnectionError):
        smu.close()  # making safe fails loudly on a dead connection; the connection is closed all the same
    with pytest.raises(InstrumentConnectionError, match="connection is closed"):
        smu.output()


def test_twin_connection_dropped_after_a_write_names_the_write(bench: VirtualBench, resource: str) -> None:
    smu = Keithley2450.open(resource, timeout_s=0.3)
    _fault_on_next_command(bench, FaultKind.DISCONNECT)
    with pytest.raises(InstrumentConnectionError) as caught:
        smu.set_output(True)
    assert caught.value.command == ":OUTP ON"
    with pytest.raises(InstrumentConnectionError):
        smu.close()


def test_twin_silence_raises_timeout(bench: VirtualBench, resource: str) -> None:
    with Keithley2450.open(resource, timeout_s=0.2) as smu:
        _fault_on_next_command(bench, FaultKind.TIMEOUT)
        with pytest.raises(InstrumentTimeoutError) as caught:
            smu.measure_current_a()
        assert caught.value.command == ":MEAS:CURR?"


def test_twin_close_leaves_the_output_off_and_the_source_at_zero(bench: VirtualBench, resource: str) -> None:
    move_z(bench, bench.probe_contact_z_um)
    smu = Keithley2450.open(resource)
    smu.source_current(5e-3, voltage_limit_v=5.0)
    smu.set_output(True)
    with bench.lock:
        assert bench.smu.output_on
        assert bench.smu.source_level == pytest.approx(5e-3)
    smu.close()
    with bench.lock:
        assert not bench.smu.output_on
        assert bench.smu.source_level == 0.0
        assert bench.smu_current_a() == 0.0
    with Keithley2450.open(resource) as again:  # the voltage level was zeroed too
        assert again.source_voltage_v == 0.0
        assert again.source_current_a == 0.0


# -- the twin's parser, without a socket ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "code"),
    [
        (":SOUR2:CURR:LEV 0.001", "-114"),  # one channel only
        (":SOUR:FUNC", "-109"),  # missing parameter
        (":OUTP ON, OFF", "-108"),
        (":SOUR:FUNC RES", "-224"),
        (":SOUR:CURR:LEV fast", "-104"),
        (":SOUR:VOLT:ILIM 2", "-222"),
        (':TRAC:DATA? 1, 5, "defbuffer1", SOUR, READ', "-222"),  # the buffer is empty
        (":SOUR:SWE:VOLT:LIN 0, 1, 5", "-221"),  # the source function is current, not voltage
    ],
)
def test_twin_error_codes(command: str, code: str) -> None:
    bench = make_bench()
    twin = Keithley2450Twin(bench)
    with bench.lock:
        twin.handle(":SOUR:FUNC CURR", {})
        assert twin.handle(command, {}) is None  # a rejected command is not answered
        reply = twin.handle(":SYST:ERR?", {})
        assert reply is not None
        assert reply.decode().startswith(f"{code},")
        assert twin.handle(":SYST:ERR?", {}) == NO_ERROR


def test_twin_sweep_with_fail_abort_stops_at_the_limit() -> None:
    bench = make_bench(world=UniformWorld())
    twin = Keithley2450Twin(bench)  # chuck down: nothing contacted, every point hits the limit
    commands = (
        ':SENS:FUNC "VOLT"',
        ":SOUR:FUNC CURR",
        ":SOUR:CURR:VLIM 3",
        ":SOUR:SWE:CURR:LIN 1e-4, 1e-3, 5",
        ":INIT",
    )
    with bench.lock:
        for command in commands:
            assert twin.handle(command, {}) is None
        assert twin.handle(":TRAC:ACT?", {}) == b"1\n"  # the default failAbort ON stopped it at the first point
        assert twin.handle(':TRAC:DATA? 1, 1, "defbuffer1", SOUR, READ', {}) == b"0.000000E+00,3.000000E+00\n"
        assert not bench.smu.output_on
        assert twin.handle(":SYST:ERR?", {}) == NO_ERROR
