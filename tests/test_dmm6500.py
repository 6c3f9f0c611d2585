"""Keithley DMM6500 digitizer: exact protocol, error replies, range checks, and the driver against its twin."""

from __future__ import annotations

import math
import struct
from typing import ClassVar

import numpy as np
import pytest

from drivers.errors import InstrumentConnectionError, InstrumentReplyError, InstrumentTimeoutError
from drivers.interfaces import Axis, IntensityDetector, TriggerDirection
from drivers.keithley_dmm6500 import KeithleyDMM6500
from drivers.testing import TIMEOUT, expected_protocol
from drivers.virtual.bench import FaultKind, FaultRule, VirtualBench
from drivers.virtual.dmm6500_twin import DMM6500Twin
from tests.twin_fixtures import UniformWorld, make_bench, serve_twin

NO_ERROR = b'0,"No error;0;0 0"\n'


def write(command: str) -> list[tuple[bytes, bytes | None]]:
    """A command and the error-queue check that follows it."""
    return [(command.encode() + b"\n", None), (b":SYST:ERR?\n", NO_ERROR)]


def block(values: list[float]) -> bytes:
    """The DMM6500's binary answer in single precision: ``#0``, little-endian floats, newline."""
    return b"#0" + struct.pack(f"<{len(values)}f", *values) + b"\n"


def configure_exchanges(range_text: str, rate_text: str, count: int, points: int) -> list[tuple[bytes, bytes | None]]:
    """Everything ``configure_triggered_acquisition`` sends, in order."""
    return [
        *write(":ABOR"),
        *write(':DIG:FUNC "VOLT"'),
        *write(f":DIG:VOLT:RANG {range_text}"),
        *write(f":DIG:VOLT:SRAT {rate_text}"),
        *write(f":DIG:COUN {count}"),
        *write(f':TRAC:POIN {points}, "defbuffer1"'),
        *write(':TRAC:CLE "defbuffer1"'),
        *write(":FORM:DATA SRE"),
        *write(":FORM:BORD SWAP"),
        *write(":TRIG:EXT:IN:EDGE RIS"),
        *write(':TRIG:LOAD "Empty"'),
        *write(':TRIG:BLOC:BUFF:CLE 1, "defbuffer1"'),
        *write(":TRIG:BLOC:WAIT 2, EXT, ENT"),
        *write(':TRIG:BLOC:MDIG 3, "defbuffer1", AUTO'),
    ]


CONFIGURE_100K_1000 = configure_exchanges("10", "100000", 1000, 1000)


def without_command(exchanges: list[tuple[bytes, bytes | None]], command: str) -> list[tuple[bytes, bytes | None]]:
    """``exchanges`` less one command and the error-queue check after it."""
    index = exchanges.index((command.encode() + b"\n", None))
    return exchanges[:index] + exchanges[index + 2 :]


# -- protocol ------------------------------------------------------------------------------------------------------


def test_implements_the_detector_role() -> None:
    with expected_protocol(KeithleyDMM6500, []) as dmm:
        assert isinstance(dmm, IntensityDetector)
        assert dmm.max_sample_rate_hz() == 1e6


def test_connect_clears_the_event_log_and_identity_parses_idn() -> None:
    exchanges = [
        *write("*CLS"),
        (b"*IDN?\n", b"KEITHLEY INSTRUMENTS,MODEL DMM6500,04512345,1.7.12b\n"),
    ]
    with expected_protocol(KeithleyDMM6500, exchanges, connect=True) as dmm:
        identity = dmm.identity()
    assert (identity.manufacturer, identity.model, identity.serial, identity.firmware) == (
        "KEITHLEY INSTRUMENTS",
        "DMM6500",
        "04512345",
        "1.7.12b",
    )


def test_configure_builds_the_external_trigger_model() -> None:
    with expected_protocol(KeithleyDMM6500, CONFIGURE_100K_1000) as dmm:
        dmm.configure_triggered_acquisition(100e3, 1000)


def test_next_line_with_the_same_set_up_only_changes_the_count() -> None:
    exchanges = [
        *CONFIGURE_100K_1000,
        *write(":INIT"),
        # fits the buffer: the trigger model stays loaded, and the new count goes out with :INIT
        *write(":ABOR;:DIG:COUN 800;:INIT"),
        # another rate: everything again, but the data format, already binary, is not sent twice
        *without_command(configure_exchanges("10", "200000", 1200, 1200), ":FORM:DATA SRE"),
        *write(":INIT"),
    ]
    with expected_protocol(KeithleyDMM6500, exchanges) as dmm:
        dmm.configure_triggered_acquisition(100e3, 1000)
        dmm.arm()
        dmm.configure_triggered_acquisition(100e3, 800)
        dmm.arm()
        dmm.configure_triggered_acquisition(200e3, 1200)
        dmm.arm()


def test_a_dc_reading_makes_the_next_line_load_its_trigger_model_again() -> None:
    exchanges = [
        *CONFIGURE_100K_1000,
        *write(":FORM:DATA ASC"),
        (b':MEAS:VOLT:DC? "defbuffer2"\n', b"1.5E-01\n"),
        *CONFIGURE_100K_1000,
    ]
    with expected_protocol(KeithleyDMM6500, exchanges) as dmm:
        dmm.configure_triggered_acquisition(100e3, 1000)
        assert dmm.read_voltage_v() == pytest.approx(0.15)
        dmm.configure_triggered_acquisition(100e3, 1000)


def test_configure_sends_the_chosen_range_and_never_sizes_the_buffer_below_ten() -> None:
    exchanges = configure_exchanges("0.1", "1000000", 3, 10)
    with expected_protocol(KeithleyDMM6500, exchanges, digitize_range_v=0.1) as dmm:
        dmm.configure_triggered_acquisition(1e6, 3)


def test_arm_count_and_abort() -> None:
    exchanges = [
        # nothing configured yet: the driver makes sure the digitize function is on, in the same message
        *write(':DIG:FUNC "VOLT";:INIT'),
        (b':TRAC:ACT? "defbuffer1"\n', b"734\n"),
        *write(":ABOR"),
        *write(":INIT"),  # the function is known to be selected now
    ]
    with expected_protocol(KeithleyDMM6500, exchanges) as dmm:
        dmm.arm()
        assert dmm.samples_acquired() == 734
        dmm.abort()
        dmm.arm()


def test_read_samples_is_one_binary_query_with_one_based_inclusive_indices() -> None:
    # a float whose bytes are all 0x0A: a newline inside the data must not end the block
    values = [0.125, -0.25, struct.unpack("<f", b"\n" * 4)[0], 9.9e37, -9.9e37]
    exchanges = [
        *write(":FORM:DATA SRE"),
        (b':TRAC:DATA? 101, 105, "defbuffer1", READ\n', block(values)),
        (b':TRAC:DATA? 1, 1, "defbuffer1", READ\n', block([0.5])),  # the format is known: not sent again
    ]
    with expected_protocol(KeithleyDMM6500, exchanges) as dmm:
        samples = dmm.read_samples_v(100, 5)
        assert dmm.read_samples_v(0, 1).tolist() == [0.5]
    assert samples.dtype == np.float64
    assert samples[:3].tolist() == values[:3]
    assert samples[3] == math.inf and samples[4] == -math.inf  # over-range readings are not voltages


def test_read_samples_splits_large_reads_into_chunks() -> None:
    exchanges = [
        *write(":FORM:DATA SRE"),
        (b':TRAC:DATA? 11, 13, "defbuffer1", READ\n', block([1.0, 2.0, 3.0])),
        (b':TRAC:DATA? 14, 16, "defbuffer1", READ\n', block([4.0, 5.0, 6.0])),
        (b':TRAC:DATA? 17, 17, "defbuffer1", READ\n', block([7.0])),
    ]
    with expected_protocol(KeithleyDMM6500, exchanges) as dmm:
        dmm.max_samples_per_query = 3
        assert dmm.read_samples_v(10, 7).tolist() == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]


def test_reading_no_samples_sends_nothing() -> None:
    with expected_protocol(KeithleyDMM6500, []) as dmm:
        samples = dmm.read_samples_v(0, 0)
    assert samples.shape == (0,) and samples.dtype == np.float64


def test_dc_reading_goes_to_defbuffer2_in_ascii_and_arm_restores_digitize() -> None:
    exchanges = [
        *CONFIGURE_100K_1000,
        *write(":FORM:DATA ASC"),
        (b':MEAS:VOLT:DC? "defbuffer2"\n', b"1.010000E-01\n"),
        *write(':DIG:FUNC "VOLT";:INIT'),
        *write(":FORM:DATA SRE"),
        (b':TRAC:DATA? 1, 2, "defbuffer1", READ\n', block([0.125, 0.25])),
    ]
    with expected_protocol(KeithleyDMM6500, exchanges) as dmm:
        dmm.configure_triggered_acquisition(100e3, 1000)
        assert dmm.read_voltage_v() == pytest.approx(0.101)
        dmm.arm()
        assert dmm.read_samples_v(0, 2).tolist() == [0.125, 0.25]


def test_declared_settings_read_back() -> None:
    exchanges = [
        (b":DIG:VOLT:SRAT?\n", b"1.000000E+05\n"),
        (b":DIG:COUN?\n", b"1000\n"),
        (b":DIG:VOLT:RANG?\n", b"1.000000E+01\n"),
        *write(":DIG:VOLT:SRAT 2500"),
        *write(":DIG:VOLT:RANG 1"),
    ]
    with expected_protocol(KeithleyDMM6500, exchanges) as dmm:
        assert dmm.sample_rate_hz == 1e5
        assert dmm.sample_count == 1000
        assert dmm.digitize_range_v == 10.0
        dmm.sample_rate_hz = 2500
        dmm.digitize_range_v = 1


def test_reset_and_close() -> None:
    exchanges = [*write("*RST"), *write(":FORM:DATA SRE"), (b':TRAC:DATA? 1, 1, "defbuffer1", READ\n', block([0.0]))]
    exchanges += write(":ABOR")  # close() makes safe first
    with expected_protocol(KeithleyDMM6500, exchanges) as dmm:
        dmm.reset()
        dmm.read_samples_v(0, 1)  # *RST selected ASCII, so binary is selected again
        dmm.close()
        dmm.close()  # a second close sends nothing


# -- error replies ---------------------------------------------------------------------------------------------------


def test_rejected_command_raises_with_command_and_reply() -> None:
    rejected = b'-222,"Data out of range;1;2024/01/01 00:00:12.345"\n'
    exchanges = [
        (b":DIG:VOLT:SRAT 1000\n", None),
        (b":SYST:ERR?\n", rejected),
        (b":SYST:ERR?\n", b'-221,"Settings conflict;1;2024/01/01 00:00:12.346"\n'),
        (b":SYST:ERR?\n", NO_ERROR),  # the whole queue is drained so the next command is not blamed
    ]
    with expected_protocol(KeithleyDMM6500, exchanges) as dmm, pytest.raises(InstrumentReplyError) as caught:
        dmm.sample_rate_hz = 1000
    assert caught.value.command == ":DIG:VOLT:SRAT 1000"
    assert caught.value.reply == rejected.decode().strip()
    assert "-222" in str(caught.value) and "Data out of range" in str(caught.value) and "1 more" in str(caught.value)


def test_malformed_error_queue_reply_is_a_reply_error() -> None:
    exchanges = [(b":ABOR\n", None), (b":SYST:ERR?\n", b"what?\n")]
    with expected_protocol(KeithleyDMM6500, exchanges) as dmm, pytest.raises(InstrumentReplyError) as caught:
        dmm.abort()
    assert caught.value.command == ":SYST:ERR?" and caught.value.reply == "what?"


@pytest.mark.parametrize(
    ("command", "reply", "call"),
    [
        (b"*IDN?\n", b"KEITHLEY INSTRUMENTS,MODEL DMM6500\n", lambda dmm: dmm.identity()),
        (b':TRAC:ACT? "defbuffer1"\n', b"-5\n", lambda dmm: dmm.samples_acquired()),
        (b':TRAC:ACT? "defbuffer1"\n', b"many\n", lambda dmm: dmm.samples_acquired()),
    ],
)
def test_unexpected_replies_are_reply_errors(command: bytes, reply: bytes, call: object) -> None:
    with expected_protocol(KeithleyDMM6500, [(command, reply)]) as dmm, pytest.raises(InstrumentReplyError) as caught:
        call(dmm)  # type: ignore[operator]
    assert caught.value.command == command.decode().strip()
    assert caught.value.reply == reply.decode().strip()


@pytest.mark.parametrize(
    "reply",
    [b"1.0,2.0\n", block([1.0, 2.0]), b"#0\x01\x02\n"],
    ids=["ascii-instead-of-binary", "too-few-readings", "partial-float"],
)
def test_malformed_binary_block_is_a_reply_error(reply: bytes) -> None:
    exchanges = [*write(":FORM:DATA SRE"), (b':TRAC:DATA? 1, 3, "defbuffer1", READ\n', reply)]
    with expected_protocol(KeithleyDMM6500, exchanges) as dmm, pytest.raises(InstrumentReplyError) as caught:
        dmm.read_samples_v(0, 3)
    assert caught.value.command == ':TRAC:DATA? 1, 3, "defbuffer1", READ'


def test_over_range_dc_reading_raises() -> None:
    exchanges = [*write(":FORM:DATA ASC"), (b':MEAS:VOLT:DC? "defbuffer2"\n', b"9.900000E+37\n")]
    with expected_protocol(KeithleyDMM6500, exchanges) as dmm, pytest.raises(InstrumentReplyError, match="over range"):
        dmm.read_voltage_v()


# -- timeout ----------------------------------------------------------------------------------------------------------


def test_silent_instrument_times_out_naming_the_command() -> None:
    exchanges = [(b':TRAC:ACT? "defbuffer1"\n', TIMEOUT)]
    with expected_protocol(KeithleyDMM6500, exchanges) as dmm, pytest.raises(InstrumentTimeoutError) as caught:
        dmm.samples_acquired()
    assert caught.value.command == ':TRAC:ACT? "defbuffer1"'


def test_silent_binary_read_times_out() -> None:
    exchanges = [*write(":FORM:DATA SRE"), (b':TRAC:DATA? 1, 2, "defbuffer1", READ\n', TIMEOUT)]
    with expected_protocol(KeithleyDMM6500, exchanges) as dmm, pytest.raises(InstrumentTimeoutError):
        dmm.read_samples_v(0, 2)


# -- range validation: nothing is sent ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rate_hz", "count", "pattern"),
    [
        (999.0, 1000, r"sample_rate_hz: 999.0 is outside the allowed range 1000 to 1e\+06 Hz"),
        (1.000001e6, 1000, r"sample_rate_hz: 1000001.0 is outside"),
        (math.nan, 1000, r"sample_rate_hz: nan is outside"),
        (1e5, 0, r"sample_count: 0 is outside the allowed range 1 to 6000000"),
        (1e5, 6_000_001, r"sample_count: 6000001 is outside"),
        (1e5, 10.5, r"sample_count: 10.5 is not an integer"),
    ],
)
def test_configure_checks_ranges_before_sending(rate_hz: float, count: float, pattern: str) -> None:
    with expected_protocol(KeithleyDMM6500, []) as dmm, pytest.raises(ValueError, match=pattern):
        dmm.configure_triggered_acquisition(rate_hz, count)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("start", "count", "pattern"),
    [(-1, 5, r"start: -1 is outside"), (0, -1, r"count: -1 is outside"), (5_999_999, 2, r"start \+ count")],
)
def test_read_samples_checks_indices_before_sending(start: int, count: int, pattern: str) -> None:
    with expected_protocol(KeithleyDMM6500, []) as dmm, pytest.raises(ValueError, match=pattern):
        dmm.read_samples_v(start, count)


def test_settings_check_ranges_before_sending() -> None:
    with expected_protocol(KeithleyDMM6500, []) as dmm:
        with pytest.raises(ValueError, match=r"digitize_range_v: 2 is not one of 0.1, 1.0, 10.0, 100.0, 1000.0"):
            dmm.digitize_range_v = 2
        with pytest.raises(ValueError, match=r"sample_rate_hz: 2000000.0 is outside"):
            dmm.sample_rate_hz = 2e6
    with pytest.raises(ValueError, match=r"digitize_range_v: 3.0 is not one of"):
        KeithleyDMM6500(None, digitize_range_v=3.0)


# -- against the twin -----------------------------------------------------------------------------------------------


class RecordingTwin(DMM6500Twin):
    """The twin, remembering its instances so a test can look at the instrument's state."""

    instances: ClassVar[list[DMM6500Twin]] = []

    def __init__(self, bench: VirtualBench) -> None:
        super().__init__(bench)
        RecordingTwin.instances.append(self)


class RampWorld(UniformWorld):
    """PL voltage proportional to the spot's x position, so each sample shows where it was taken."""

    def pl_signal_v(self, x_um: np.ndarray, y_um: np.ndarray, power_w: np.ndarray, t_s: np.ndarray) -> np.ndarray:
        return 1e-4 * np.asarray(x_um, dtype=float)


def lit_bench(world: object | None = None) -> VirtualBench:
    bench = make_bench(world=world)
    with bench.lock:
        bench.laser.setpoint_w = 0.01
        bench.laser.emission = True
    return bench


def sweep_stage_through_trigger(bench: VirtualBench) -> float:
    """Move X from 0 through a rising trigger at 10 mm to 50 mm, as the stage twin would; return the trigger time."""
    with bench.lock:
        bench.arm_trigger(Axis.X, 10_000.0, TriggerDirection.RISING)
        bench.axes[Axis.X].move_to(bench.now(), 50_000.0)
        bench.update_trigger()
        trigger_s = bench.first_trigger_after(0.0)
    assert trigger_s is not None
    return trigger_s


def test_triggered_line_through_the_twin() -> None:
    bench = lit_bench()
    with serve_twin(DMM6500Twin, bench) as resource, KeithleyDMM6500.open(resource) as dmm:
        dmm.configure_triggered_acquisition(100e3, 1000)
        dmm.arm()
        assert dmm.samples_acquired() == 0  # armed, no trigger yet
        sweep_stage_through_trigger(bench)
        assert dmm.samples_acquired() == 1000
        samples = dmm.read_samples_v(0, 1000)
    # UniformWorld: 10 V/W × 10 mW + 1 mV background
    assert samples.shape == (1000,)
    np.testing.assert_allclose(samples, 0.101, rtol=1e-7)  # single precision on the wire


def test_samples_sit_at_trigger_time_plus_i_over_rate() -> None:
    bench = lit_bench(RampWorld())
    with serve_twin(DMM6500Twin, bench) as resource, KeithleyDMM6500.open(resource) as dmm:
        dmm.configure_triggered_acquisition(100e3, 1000)
        dmm.arm()
        trigger_s = sweep_stage_through_trigger(bench)
        samples = dmm.read_samples_v(0, 1000)
        tail = dmm.read_samples_v(990, 10)
    expected_x_um = bench.axes[Axis.X].position_um(trigger_s + np.arange(1000) / 100e3)
    # the trigger fires where the stage reaches cruise speed (200 mm/s): 2 µm per sample from 10 mm on
    np.testing.assert_allclose(expected_x_um[:3], [10_000.0, 10_002.0, 10_004.0], rtol=1e-9)
    np.testing.assert_allclose(samples, 1e-4 * expected_x_um, rtol=1e-7)  # single precision on the wire
    np.testing.assert_array_equal(tail, samples[990:])


def test_trigger_before_arming_does_not_start_the_line() -> None:
    bench = lit_bench()
    with serve_twin(DMM6500Twin, bench) as resource, KeithleyDMM6500.open(resource) as dmm:
        dmm.configure_triggered_acquisition(100e3, 1000)
        sweep_stage_through_trigger(bench)  # an edge from the previous line
        dmm.arm()
        assert dmm.samples_acquired() == 0


def test_dc_reading_between_lines_keeps_the_next_line_working() -> None:
    bench = lit_bench()
    with serve_twin(DMM6500Twin, bench) as resource, KeithleyDMM6500.open(resource) as dmm:
        dmm.configure_triggered_acquisition(100e3, 500)
        assert dmm.read_voltage_v() == pytest.approx(0.101, rel=1e-6)
        dmm.arm()
        sweep_stage_through_trigger(bench)
        assert dmm.samples_acquired() == 500
        np.testing.assert_allclose(dmm.read_samples_v(0, 500), 0.101, rtol=1e-7)
        dmm.reset()
        assert dmm.samples_acquired() == 0


def test_twin_rejects_bad_commands_in_the_real_error_format() -> None:
    bench = lit_bench()
    with serve_twin(DMM6500Twin, bench) as resource, KeithleyDMM6500.open(resource) as dmm:
        with pytest.raises(InstrumentReplyError) as caught:
            dmm.write(":DIG:VOLT:SRAT 5")  # bypasses the driver's own range check
        assert caught.value.command == ":DIG:VOLT:SRAT 5"
        assert caught.value.reply.startswith('-222,"Data out of range;1;')
        with pytest.raises(InstrumentReplyError, match="-113 'Undefined header'"):
            dmm.write(":BOGUS 1")
        dmm.abort()  # the queue was drained: the next command is clean


def test_twin_runs_every_unit_of_a_compound_message_and_stops_at_an_error() -> None:
    bench = lit_bench()
    with serve_twin(DMM6500Twin, bench) as resource, KeithleyDMM6500.open(resource) as dmm:
        dmm.write(":ABOR;:DIG:COUN 800;:DIG:VOLT:RANG 1;SRAT 2500")  # SRAT continues in the :DIG:VOLT: path
        assert dmm.sample_count == 800
        assert dmm.digitize_range_v == 1
        assert dmm.query(":DIG:COUN?;:DIG:VOLT:SRAT?") == "800;2.500000E+03"
        with pytest.raises(InstrumentReplyError, match="-113 'Undefined header'"):
            dmm.write(":DIG:COUN 900;:BOGUS;:DIG:COUN 700")
        assert dmm.sample_count == 900  # the unit after the error was dropped, as the parser does


def test_twin_garbage_reply_is_a_reply_error() -> None:
    bench = lit_bench()
    # commands 1-2 are the connection's *CLS and :SYST:ERR?; 3 is *IDN?
    bench.faults.add(FaultRule("detector", FaultKind.GARBAGE, at_command=3))
    with serve_twin(DMM6500Twin, bench) as resource, KeithleyDMM6500.open(resource) as dmm:
        with pytest.raises(InstrumentReplyError) as caught:
            dmm.identity()
        assert caught.value.command == "*IDN?"


def test_twin_garbage_instead_of_binary_block_is_a_reply_error() -> None:
    bench = lit_bench()
    with serve_twin(DMM6500Twin, bench) as resource, KeithleyDMM6500.open(resource) as dmm:
        dmm.configure_triggered_acquisition(100e3, 10)
        dmm.arm()
        sweep_stage_through_trigger(bench)
        with bench.lock:
            next_command = bench.faults.command_counts["detector"] + 1
            bench.faults.add(FaultRule("detector", FaultKind.GARBAGE, at_command=next_command))
        with pytest.raises(InstrumentReplyError, match="malformed binary block"):
            dmm.read_samples_v(0, 10)


def test_twin_dropped_connection_is_a_connection_error() -> None:
    bench = lit_bench()
    bench.faults.add(FaultRule("detector", FaultKind.DISCONNECT, at_command=3))
    with serve_twin(DMM6500Twin, bench) as resource:
        dmm = KeithleyDMM6500.open(resource, timeout_s=0.3)
        with pytest.raises(InstrumentConnectionError) as caught:
            dmm.identity()
        assert caught.value.command == "*IDN?"
        dmm._close_resource()  # the instrument is gone: nothing to make safe


def test_close_stops_a_waiting_acquisition() -> None:
    bench = lit_bench()
    RecordingTwin.instances.clear()
    with serve_twin(RecordingTwin, bench) as resource:
        dmm = KeithleyDMM6500.open(resource)
        dmm.configure_triggered_acquisition(100e3, 1000)
        dmm.arm()
        (twin,) = RecordingTwin.instances
        with bench.lock:
            assert twin.running
        dmm.close()
        with bench.lock:
            assert not twin.running
        sweep_stage_through_trigger(bench)  # a trigger after close starts nothing
        with bench.lock:
            assert not twin.running


def test_complete_line_is_computed_from_the_bench_as_at_the_first_command_after_it() -> None:
    """The twin computes a finished line in the background: the samples are the bench's signal at the moment of
    the first command after the line (here the count query), bit for bit, even if the laser changes before the
    samples are read."""
    bench = lit_bench(RampWorld())
    with serve_twin(DMM6500Twin, bench) as resource, KeithleyDMM6500.open(resource) as dmm:
        dmm.configure_triggered_acquisition(100e3, 20_000)
        dmm.arm()
        trigger_s = sweep_stage_through_trigger(bench)
        assert dmm.samples_acquired() == 20_000
        with bench.lock:
            expected = bench.detector_signal_v(trigger_s + np.arange(20_000, dtype=np.float64) / 100e3)
            bench.laser.emission = False  # after the line: must not reach back into its samples
        samples = dmm.read_samples_v(0, 20_000)
    np.testing.assert_array_equal(samples, expected.astype(np.float32).astype(np.float64))


class FailingWorld(UniformWorld):
    def pl_signal_v(self, x_um: np.ndarray, y_um: np.ndarray, power_w: np.ndarray, t_s: np.ndarray) -> np.ndarray:
        raise FloatingPointError("the world failed")


def test_a_failing_background_render_surfaces_in_the_twin() -> None:
    """A render that fails on the render thread fails the read that needed it (the server thread reports it and
    drops the connection), instead of hanging or sending made-up samples."""
    bench = lit_bench(FailingWorld())
    with serve_twin(DMM6500Twin, bench) as resource:
        dmm = KeithleyDMM6500.open(resource, timeout_s=2.0)
        try:
            dmm.configure_triggered_acquisition(100e3, 100)
            dmm.arm()
            sweep_stage_through_trigger(bench)
            assert dmm.samples_acquired() == 100  # counting needs no samples
            with pytest.raises(InstrumentConnectionError):
                dmm.read_samples_v(0, 100)
        finally:
            dmm._close_resource()  # the twin has dropped the connection: nothing to make safe
