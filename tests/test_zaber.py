"""Zaber X-MCC stage driver: exact protocol bytes, error replies, timeouts, range checks, and the driver against
its virtual twin over a loopback socket (moves, homing, faults, position trigger, safe close)."""

from __future__ import annotations

import math

import pytest

from drivers.errors import (
    InstrumentConnectionError,
    InstrumentReplyError,
    InstrumentTimeoutError,
    StageFaultError,
    StageLimitError,
)
from drivers.interfaces import Axis, InstrumentIdentity, TriggerDirection
from drivers.testing import TIMEOUT, expected_protocol
from drivers.virtual.bench import FaultKind, FaultRule, VirtualBench
from drivers.virtual.zaber_twin import ZaberTwin
from drivers.zaber import (
    DEFAULT_MICROSTEP_UM,
    OutsideTravelError,
    ZaberFaultError,
    ZaberLimitRejectedError,
    ZaberXMCC,
)
from tests.twin_fixtures import make_bench, serve_twin

XY_STEP_UM = 0.49609375  # 6.35 mm lead / 12800 microsteps per turn
Z_STEP_UM = 0.09921875  # 1.27 mm lead / 12800

LIMITS_X = [
    (b"/1 1 get limit.min\n", b"@01 1 OK IDLE -- -302362\r\n"),
    (b"/1 1 get limit.max\n", b"@01 1 OK IDLE -- 302362\r\n"),
]


# -- protocol: every command the driver sends ----------------------------------------------------------------


def test_default_microsteps_are_the_documented_peripherals() -> None:
    assert DEFAULT_MICROSTEP_UM == {Axis.X: XY_STEP_UM, Axis.Y: XY_STEP_UM, Axis.Z: Z_STEP_UM}


def test_identity_protocol() -> None:
    exchanges = [
        (b"/1 get deviceid\n", b"@01 0 OK IDLE -- 30342\r\n"),
        (b"/1 get system.serial\n", b"@01 0 OK IDLE -- 123456\r\n"),
        (b"/1 get version\n", b"@01 0 OK IDLE -- 7.38\r\n"),
    ]
    with expected_protocol(ZaberXMCC, exchanges) as stage:
        assert stage.identity() == InstrumentIdentity("Zaber", "X-MCC4", "123456", "7.38")


def test_unknown_device_id_is_still_named() -> None:
    exchanges = [
        (b"/1 get deviceid\n", b"@01 0 OK IDLE -- 30999\r\n"),
        (b"/1 get system.serial\n", b"@01 0 OK IDLE -- 7\r\n"),
        (b"/1 get version\n", b"@01 0 OK IDLE -- 7.40\r\n"),
    ]
    with expected_protocol(ZaberXMCC, exchanges) as stage:
        assert stage.identity().model == "X-MCC (device ID 30999)"


def test_position_and_limits_protocol() -> None:
    exchanges = [
        (b"/1 1 get pos\n", b"@01 1 OK IDLE -- 20157\r\n"),
        (b"/1 3 get pos\n", b"@01 3 OK IDLE -- -100\r\n"),
        (b"/1 get pos\n", b"@01 0 OK IDLE -- 10 -20 30 0\r\n"),
        *LIMITS_X,
    ]
    with expected_protocol(ZaberXMCC, exchanges) as stage:
        assert stage.position_um(Axis.X) == pytest.approx(20157 * XY_STEP_UM)
        assert stage.position_um(Axis.Z) == pytest.approx(-100 * Z_STEP_UM)
        assert stage.positions_um() == pytest.approx(
            {Axis.X: 10 * XY_STEP_UM, Axis.Y: -20 * XY_STEP_UM, Axis.Z: 30 * Z_STEP_UM}
        )
        assert stage.limits_um(Axis.X) == pytest.approx((-302362 * XY_STEP_UM, 302362 * XY_STEP_UM))


def test_moves_protocol() -> None:
    exchanges = [
        *LIMITS_X,  # read once, then kept
        (b"/1 1 move abs 20157\n", b"@01 1 OK BUSY -- 0\r\n"),
        (b"/1 1\n", b"@01 1 OK BUSY -- 0\r\n"),
        (b"/1 1\n", b"@01 1 OK IDLE -- 0\r\n"),
        (b"/1 1 move abs -100787\n", b"@01 1 OK BUSY -- 0\r\n"),
        (b"/1 1 get pos\n", b"@01 1 OK BUSY -- 5000\r\n"),
        (b"/1 1 move rel -5039\n", b"@01 1 OK BUSY NI 0\r\n"),
        (b"/1 1\n", b"@01 1 OK IDLE NI 0\r\n"),  # a notice, not a fault
    ]
    with expected_protocol(ZaberXMCC, exchanges, poll_interval_s=0.001) as stage:
        stage.move_absolute_um(Axis.X, 10_000.0)
        stage.move_absolute_um(Axis.X, -50_000.0, wait=False)
        stage.move_relative_um(Axis.X, -2_500.0)


def test_home_protocol() -> None:
    exchanges = [
        (b"/1 2 home\n", b"@01 2 OK BUSY -- 0\r\n"),
        (b"/1 2\n", b"@01 2 OK IDLE -- 0\r\n"),
        # all axes: Z goes down first, X and Y follow
        (b"/1 3 home\n", b"@01 3 OK BUSY -- 0\r\n"),
        (b"/1 3\n", b"@01 3 OK IDLE -- 0\r\n"),
        (b"/1 1 home\n", b"@01 1 OK BUSY -- 0\r\n"),
        (b"/1 2 home\n", b"@01 2 OK BUSY -- 0\r\n"),
        (b"/1\n", b"@01 0 OK IDLE -- 0\r\n"),
    ]
    with expected_protocol(ZaberXMCC, exchanges) as stage:
        stage.home(Axis.Y)
        stage.home()


def test_stop_status_and_wait_protocol() -> None:
    exchanges = [
        (b"/1 stop\n", b"@01 0 OK BUSY NI 0\r\n"),
        (b"/1\n", b"@01 0 OK BUSY -- 0\r\n"),
        (b"/1\n", b"@01 0 OK BUSY -- 0\r\n"),
        (b"/1\n", b"@01 0 OK IDLE -- 0\r\n"),
    ]
    with expected_protocol(ZaberXMCC, exchanges, poll_interval_s=0.001) as stage:
        stage.stop()
        assert stage.is_busy()
        stage.wait_idle(timeout_s=1.0)


def test_speed_and_acceleration_protocol() -> None:
    exchanges = [
        (b"/1 1 set maxspeed 330260\n", b"@01 1 OK IDLE -- 0\r\n"),
        (b"/1 1 get maxspeed\n", b"@01 1 OK IDLE -- 330260\r\n"),
        (b"/1 3 set maxspeed 33026\n", b"@01 3 OK IDLE -- 0\r\n"),
        (b"/1 2 set accel 331\n", b"@01 2 OK IDLE -- 0\r\n"),  # 330.x rounded up
        (b"/1 2 get accel\n", b"@01 2 OK IDLE -- 330\r\n"),
    ]
    with expected_protocol(ZaberXMCC, exchanges) as stage:
        stage.set_velocity_um_s(Axis.X, 100_000.0)
        # data = microsteps/s × 1.6384
        assert stage.velocity_um_s(Axis.X) == pytest.approx(330260 / 1.6384 * XY_STEP_UM)
        stage.set_velocity_um_s(Axis.Z, 2_000.0)
        stage.set_acceleration_um_s2(Axis.Y, 1e6)
        # data = microsteps/s² × 1.6384 / 10000
        assert stage.acceleration_um_s2(Axis.Y) == pytest.approx(330 * 10_000 / 1.6384 * XY_STEP_UM)


def test_warnings_protocol() -> None:
    exchanges = [
        (b"/1 3 warnings\n", b"@01 3 OK IDLE FS 02 FS NI\r\n"),
        (b"/1 1 warnings\n", b"@01 1 OK IDLE -- 00\r\n"),
        (b"/1 3 warnings clear\n", b"@01 3 OK IDLE -- 02 FS NI\r\n"),
    ]
    with expected_protocol(ZaberXMCC, exchanges) as stage:
        assert stage.warnings(Axis.Z) == frozenset({"FS", "NI"})
        assert stage.warnings(Axis.X) == frozenset()
        assert stage.clear_warnings(Axis.Z) == frozenset({"FS", "NI"})


def test_position_trigger_protocol() -> None:
    ok = b"@01 0 OK IDLE -- 0\r\n"
    exchanges = [
        *LIMITS_X,
        # first arm: the trigger's state is unknown, so it is disabled and its output reset first
        (b"/1 trigger 1 disable\n", ok),
        (b"/1 io set do 1 0\n", ok),
        (b"/1 trigger 1 when 1 pos >= 20157\n", ok),
        (b"/1 trigger 1 action a io set do 1 1\n", ok),
        (b"/1 trigger 1 enable 1\n", ok),
        (b"/1 trigger 1 disable\n", ok),
        (b"/1 io set do 1 0\n", ok),
        # the next line: disabled, output low and action kept, so only the condition and the enable go out
        (b"/1 trigger 1 when 1 pos <= -100787\n", ok),
        (b"/1 trigger 1 enable 1\n", ok),
    ]
    with expected_protocol(ZaberXMCC, exchanges) as stage:
        stage.arm_position_trigger(Axis.X, 10_000.0, TriggerDirection.RISING)
        stage.disarm_position_trigger()
        stage.arm_position_trigger(Axis.X, -50_000.0, TriggerDirection.FALLING)


def test_position_trigger_is_reset_in_full_after_a_failed_exchange() -> None:
    ok = b"@01 0 OK IDLE -- 0\r\n"
    exchanges = [
        *LIMITS_X,
        (b"/1 trigger 1 disable\n", ok),
        (b"/1 io set do 1 0\n", ok),
        (b"/1 trigger 1 when 1 pos >= 20157\n", ok),
        (b"/1 trigger 1 action a io set do 1 1\n", TIMEOUT),  # the action may or may not have been set
        (b"/1 trigger 1 disable\n", ok),
        (b"/1 io set do 1 0\n", ok),
        (b"/1 trigger 1 when 1 pos >= 20157\n", ok),
        (b"/1 trigger 1 action a io set do 1 1\n", ok),
        (b"/1 trigger 1 enable 1\n", ok),
    ]
    with expected_protocol(ZaberXMCC, exchanges) as stage:
        with pytest.raises(InstrumentTimeoutError):
            stage.arm_position_trigger(Axis.X, 10_000.0, TriggerDirection.RISING)
        stage.arm_position_trigger(Axis.X, 10_000.0, TriggerDirection.RISING)


def test_close_stops_and_disarms() -> None:
    ok = b"@01 0 OK IDLE -- 0\r\n"
    exchanges = [(b"/1 stop\n", ok), (b"/1 trigger 1 disable\n", ok), (b"/1 io set do 1 0\n", ok)]
    with expected_protocol(ZaberXMCC, exchanges) as stage:
        stage.close()
        stage.close()  # once closed, nothing more is sent
        assert stage._resource.closed


def test_other_device_number_and_microsteps() -> None:
    exchanges = [
        (b"/2 1 get pos\n", b"@02 1 OK IDLE -- 1000\r\n"),
        (b"/2 get deviceid\n", b"@02 0 OK IDLE -- 30342\r\n"),
    ]
    with expected_protocol(ZaberXMCC, exchanges, device_number=2, microstep_um={"x": 0.1}) as stage:
        assert stage.position_um(Axis.X) == pytest.approx(100.0)
        assert stage.query("/2 get deviceid") == "30342"


# -- error replies --------------------------------------------------------------------------------------------


def test_rejected_command_names_command_and_reply() -> None:
    exchanges = [(b"/1 1 get pos\n", b"@01 1 RJ IDLE -- BADCOMMAND\r\n")]
    with expected_protocol(ZaberXMCC, exchanges) as stage, pytest.raises(InstrumentReplyError) as caught:
        stage.position_um(Axis.X)
    assert caught.value.command == "/1 1 get pos"
    assert caught.value.reply == "@01 1 RJ IDLE -- BADCOMMAND"
    assert "BADCOMMAND" in str(caught.value)
    assert not isinstance(caught.value, StageLimitError)


def test_rejected_setting_is_a_reply_error() -> None:
    exchanges = [(b"/1 2 set accel 331\n", b"@01 2 RJ IDLE -- BADDATA\r\n")]
    with expected_protocol(ZaberXMCC, exchanges) as stage, pytest.raises(InstrumentReplyError) as caught:
        stage.set_acceleration_um_s2(Axis.Y, 1e6)
    assert not isinstance(caught.value, StageLimitError)  # BADDATA on a setting is not a travel limit


def test_move_refused_by_controller_is_a_limit_error() -> None:
    exchanges = [*LIMITS_X, (b"/1 1 move abs 20157\n", b"@01 1 RJ IDLE -- BADDATA\r\n")]
    with expected_protocol(ZaberXMCC, exchanges) as stage, pytest.raises(StageLimitError) as caught:
        stage.move_absolute_um(Axis.X, 10_000.0)
    assert isinstance(caught.value, ZaberLimitRejectedError)
    assert isinstance(caught.value, InstrumentReplyError)
    assert caught.value.command == "/1 1 move abs 20157"
    assert caught.value.reply == "@01 1 RJ IDLE -- BADDATA"


@pytest.mark.parametrize(
    "reply",
    [
        b"@01 2 OK IDLE -- 5\r\n",  # another axis answered
        b"@02 1 OK IDLE -- 5\r\n",  # another device answered
        b"#01 1 info line\r\n",  # not a reply
        b"@01 1 OK IDLE -- \r\n",  # no data
        b"@01 1 OK IDLE -- 5.5\r\n",  # position is not an integer
        b"@01 1 OK WAIT -- 5\r\n",  # no such status
    ],
)
def test_malformed_replies(reply: bytes) -> None:
    with (
        expected_protocol(ZaberXMCC, [(b"/1 1 get pos\n", reply)]) as stage,
        pytest.raises(InstrumentReplyError) as caught,
    ):
        stage.position_um(Axis.X)
    assert caught.value.command == "/1 1 get pos"


def test_warnings_with_wrong_count_are_a_reply_error() -> None:
    exchanges = [(b"/1 1 warnings\n", b"@01 1 OK IDLE FS 02 FS\r\n")]
    with expected_protocol(ZaberXMCC, exchanges) as stage, pytest.raises(InstrumentReplyError):
        stage.warnings(Axis.X)


def test_wait_idle_raises_fault_naming_the_axis() -> None:
    exchanges = [
        (b"/1\n", b"@01 0 OK IDLE FS 0\r\n"),
        (b"/1 1 warnings\n", b"@01 1 OK IDLE -- 00\r\n"),
        (b"/1 2 warnings\n", b"@01 2 OK IDLE NI 01 NI\r\n"),
        (b"/1 3 warnings\n", b"@01 3 OK IDLE FS 02 FS NI\r\n"),
    ]
    with expected_protocol(ZaberXMCC, exchanges) as stage, pytest.raises(StageFaultError) as caught:
        stage.wait_idle(timeout_s=1.0)
    error = caught.value
    assert isinstance(error, ZaberFaultError)
    assert error.faults == {Axis.Z: frozenset({"FS"})}
    assert "axis z" in str(error) and "FS (stalled and stopped)" in str(error)
    assert error.command == "/1 3 warnings"
    assert error.reply == "@01 3 OK IDLE FS 02 FS NI"


def test_move_that_stalls_raises_fault() -> None:
    exchanges = [
        *LIMITS_X,
        (b"/1 1 move abs 20157\n", b"@01 1 OK BUSY -- 0\r\n"),
        (b"/1 1\n", b"@01 1 OK IDLE FS 0\r\n"),
        (b"/1 1 warnings\n", b"@01 1 OK IDLE FS 01 FS\r\n"),
    ]
    with expected_protocol(ZaberXMCC, exchanges) as stage, pytest.raises(ZaberFaultError) as caught:
        stage.move_absolute_um(Axis.X, 10_000.0)
    assert caught.value.faults == {Axis.X: frozenset({"FS"})}


def test_controller_fault_without_axis_fault_still_raises() -> None:
    exchanges = [
        (b"/1\n", b"@01 0 OK IDLE FD 0\r\n"),
        (b"/1 1 warnings\n", b"@01 1 OK IDLE -- 00\r\n"),
        (b"/1 2 warnings\n", b"@01 2 OK IDLE -- 00\r\n"),
        (b"/1 3 warnings\n", b"@01 3 OK IDLE -- 00\r\n"),
    ]
    with expected_protocol(ZaberXMCC, exchanges) as stage, pytest.raises(ZaberFaultError, match="FD"):
        stage.wait_idle(timeout_s=1.0)


# -- timeouts -------------------------------------------------------------------------------------------------


def test_silent_controller_times_out() -> None:
    with (
        expected_protocol(ZaberXMCC, [(b"/1 1 get pos\n", TIMEOUT)]) as stage,
        pytest.raises(InstrumentTimeoutError) as caught,
    ):
        stage.position_um(Axis.X)
    assert caught.value.command == "/1 1 get pos"


def test_wait_idle_positions_polls_with_get_pos_and_returns_the_idle_reply() -> None:
    """One exchange per poll: ``get pos`` carries the device's BUSY/IDLE status, so waiting for the end of a move
    and reading where it ended need no separate status poll."""
    exchanges = [
        (b"/1 get pos\n", b"@01 0 OK BUSY -- 5 6 7 0\r\n"),  # positions of a moving stage are not returned
        (b"/1 get pos\n", b"@01 0 OK IDLE NI 10 -20 30 0\r\n"),  # a notice, not a fault
    ]
    with expected_protocol(ZaberXMCC, exchanges, poll_interval_s=0.001) as stage:
        assert stage.wait_idle_positions_um(timeout_s=1.0) == pytest.approx(
            {Axis.X: 10 * XY_STEP_UM, Axis.Y: -20 * XY_STEP_UM, Axis.Z: 30 * Z_STEP_UM}
        )


def test_wait_idle_positions_raises_a_fault_as_wait_idle_does() -> None:
    exchanges = [
        (b"/1 get pos\n", b"@01 0 OK IDLE FS 10 -20 30 0\r\n"),
        (b"/1 1 warnings\n", b"@01 1 OK IDLE FS 01 FS\r\n"),
        (b"/1 2 warnings\n", b"@01 2 OK IDLE -- 00\r\n"),
        (b"/1 3 warnings\n", b"@01 3 OK IDLE -- 00\r\n"),
    ]
    with expected_protocol(ZaberXMCC, exchanges) as stage, pytest.raises(ZaberFaultError) as caught:
        stage.wait_idle_positions_um(timeout_s=1.0)
    assert caught.value.faults == {Axis.X: frozenset({"FS"})}


@pytest.mark.parametrize("data", [b"10 -20", b"10 x 30 0"])
def test_wait_idle_positions_rejects_a_reply_without_three_positions(data: bytes) -> None:
    exchanges = [(b"/1 get pos\n", b"@01 0 OK IDLE -- " + data + b"\r\n")]
    with expected_protocol(ZaberXMCC, exchanges) as stage, pytest.raises(InstrumentReplyError) as caught:
        stage.wait_idle_positions_um(timeout_s=1.0)
    assert caught.value.command == "/1 get pos"
    assert caught.value.reply == data.decode()


def test_wait_idle_positions_times_out_while_busy() -> None:
    with (
        expected_protocol(ZaberXMCC, [(b"/1 get pos\n", b"@01 0 OK BUSY -- 1 2 3 0\r\n")]) as stage,
        pytest.raises(InstrumentTimeoutError, match="still moving"),
    ):
        stage.wait_idle_positions_um(timeout_s=0.0)


def test_wait_idle_times_out_while_busy() -> None:
    with (
        expected_protocol(ZaberXMCC, [(b"/1\n", b"@01 0 OK BUSY -- 0\r\n")]) as stage,
        pytest.raises(InstrumentTimeoutError, match="still moving"),
    ):
        stage.wait_idle(timeout_s=0.0)


# -- range checks: nothing is sent ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "call",
    [
        lambda s: s.set_velocity_um_s(Axis.X, 300_001.0),  # above the peripheral's top speed
        lambda s: s.set_velocity_um_s(Axis.Z, 5_001.0),
        lambda s: s.set_velocity_um_s(Axis.X, 0.0),
        lambda s: s.set_velocity_um_s(Axis.X, math.nan),
        lambda s: s.set_acceleration_um_s2(Axis.X, 1e9),  # above 32767 data units
        lambda s: s.set_acceleration_um_s2(Axis.X, 100.0),  # below 1 data unit
        lambda s: s.move_absolute_um(Axis.X, math.inf),
        lambda s: s.move_absolute_um(Axis.X, "far"),
        lambda s: s.move_relative_um(Axis.Y, math.nan),
        lambda s: s.move_absolute_um("w", 0.0),
        lambda s: s.position_um(1),
        lambda s: s.arm_position_trigger(Axis.X, 0.0, "=>"),
        lambda s: s.wait_idle(-1.0),
        lambda s: s.wait_idle(math.nan),
        lambda s: s.wait_idle_positions_um(-1.0),
    ],
)
def test_invalid_values_send_nothing(call) -> None:
    with expected_protocol(ZaberXMCC, []) as stage, pytest.raises(ValueError):
        call(stage)


def test_velocity_message_names_field_value_and_range() -> None:
    with expected_protocol(ZaberXMCC, []) as stage, pytest.raises(ValueError) as caught:
        stage.set_velocity_um_s(Axis.X, 350_000.0)
    assert "velocity_um_s" in str(caught.value)
    assert "350000" in str(caught.value)
    assert "300000" in str(caught.value)


def test_move_outside_travel_is_refused_before_sending() -> None:
    # the limits are read once; the refused moves themselves never reach the wire
    with expected_protocol(ZaberXMCC, LIMITS_X) as stage:
        with pytest.raises(OutsideTravelError) as caught:
            stage.move_absolute_um(Axis.X, 150_001.0)
        assert isinstance(caught.value, StageLimitError)
        assert isinstance(caught.value, ValueError)
        assert "position_um" in str(caught.value) and "150001" in str(caught.value)
        with pytest.raises(StageLimitError):
            stage.move_absolute_um(Axis.X, -150_001.0)
        with pytest.raises(ValueError):
            stage.arm_position_trigger(Axis.X, 200_000.0, TriggerDirection.RISING)


def test_relative_move_outside_travel_is_refused_before_sending() -> None:
    exchanges = [(b"/1 1 get pos\n", b"@01 1 OK IDLE -- 302000\r\n"), *LIMITS_X]
    with expected_protocol(ZaberXMCC, exchanges) as stage, pytest.raises(OutsideTravelError):
        stage.move_relative_um(Axis.X, 1_000.0)


@pytest.mark.parametrize(
    "options",
    [
        {"device_number": 0},
        {"device_number": 100},
        {"microstep_um": {"w": 0.1}},
        {"microstep_um": {"x": 0.0}},
        {"max_velocity_um_s": {"z": -1.0}},
        {"poll_interval_s": 0.0},
    ],
)
def test_invalid_constructor_options(options: dict) -> None:
    with pytest.raises(ValueError):
        ZaberXMCC(object(), **options)


# -- driver against the twin over a loopback socket ----------------------------------------------------------


def _next_command(bench: VirtualBench) -> int:
    """The stage command number the next command will have (for FaultRule.at_command)."""
    with bench.lock:
        return bench.faults.command_counts.get("stage", 0) + 1


def test_twin_identity_limits_and_moves() -> None:
    bench = make_bench()
    with serve_twin(ZaberTwin, bench) as resource, ZaberXMCC.open(resource) as stage:
        assert stage.identity() == InstrumentIdentity("Zaber", "X-MCC4", "123456", "7.38")
        low, high = stage.limits_um(Axis.X)
        assert low == pytest.approx(-150_000.0, abs=XY_STEP_UM)
        assert high == pytest.approx(150_000.0, abs=XY_STEP_UM)
        assert low >= -150_000.0 and high <= 150_000.0
        assert stage.limits_um(Axis.Z) == pytest.approx((0.0, 10_000.0), abs=Z_STEP_UM)

        stage.move_absolute_um(Axis.X, 50_000.0)
        stage.move_absolute_um(Axis.Y, -20_000.0)
        stage.move_absolute_um(Axis.Z, 1_000.0)
        stage.move_relative_um(Axis.X, -2_500.0)
        positions = stage.positions_um()
        assert positions[Axis.X] == pytest.approx(47_500.0, abs=XY_STEP_UM)
        assert positions[Axis.Y] == pytest.approx(-20_000.0, abs=XY_STEP_UM)
        assert positions[Axis.Z] == pytest.approx(1_000.0, abs=Z_STEP_UM)
        with bench.lock:
            assert float(bench.axes[Axis.X].position_um(bench.now())) == pytest.approx(47_500.0, abs=XY_STEP_UM)
        assert not stage.is_busy()
        assert stage.warnings(Axis.X) == frozenset()


def test_twin_speed_acceleration_and_home() -> None:
    bench = make_bench()
    with serve_twin(ZaberTwin, bench) as resource, ZaberXMCC.open(resource) as stage:
        assert stage.velocity_um_s(Axis.X) == pytest.approx(200_000.0, rel=1e-5)
        stage.set_velocity_um_s(Axis.X, 50_000.0)
        stage.set_acceleration_um_s2(Axis.X, 1e6)
        assert stage.velocity_um_s(Axis.X) == pytest.approx(50_000.0, rel=1e-5)
        assert stage.acceleration_um_s2(Axis.X) == pytest.approx(1e6, rel=5e-3)  # rounded up to the unit
        with bench.lock:
            assert bench.axes[Axis.X].velocity_um_s == pytest.approx(50_000.0, rel=1e-5)
            assert bench.axes[Axis.X].accel_um_s2 == pytest.approx(1e6, rel=5e-3)

        stage.home()
        positions = stage.positions_um()
        assert positions[Axis.X] == pytest.approx(-150_000.0, abs=XY_STEP_UM)
        assert positions[Axis.Y] == pytest.approx(-150_000.0, abs=XY_STEP_UM)
        assert positions[Axis.Z] == pytest.approx(0.0, abs=Z_STEP_UM)
        with bench.lock:
            assert all(axis.homed for axis in bench.axes.values())


def test_twin_rejects_unknown_commands_and_bad_data() -> None:
    bench = make_bench()
    with serve_twin(ZaberTwin, bench) as resource, ZaberXMCC.open(resource) as stage:
        with pytest.raises(InstrumentReplyError) as caught:
            stage.query("/1 1 frobnicate")
        assert caught.value.reply == "@01 1 RJ IDLE -- BADCOMMAND"
        with pytest.raises(InstrumentReplyError) as caught:
            stage.query("/1 1 set maxspeed 999999999")
        assert caught.value.reply == "@01 1 RJ IDLE -- BADDATA"
        with pytest.raises(InstrumentReplyError) as caught:
            stage.query("/1 1 get deviceid")
        assert caught.value.reply == "@01 1 RJ IDLE -- DEVICEONLY"
        with pytest.raises(InstrumentReplyError) as caught:
            stage.query("/1 4 move abs 0")
        assert caught.value.reply == "@01 4 RJ IDLE -- BADAXIS"
        # the controller's own limit check, bypassing the driver's
        with pytest.raises(ZaberLimitRejectedError) as caught:
            stage.write("/1 1 move abs 400000")
        assert caught.value.reply == "@01 1 RJ IDLE -- BADDATA"
        assert stage.query("/1 get pos") == "0 0 0 0"
        # within the driver's default top speed but above this bench's peripheral: the controller refuses it
        with pytest.raises(InstrumentReplyError) as caught:
            stage.set_velocity_um_s(Axis.X, 250_000.0)
        assert caught.value.reply == "@01 1 RJ IDLE -- BADDATA"


def test_twin_refused_move_is_a_limit_error() -> None:
    bench = make_bench()
    with serve_twin(ZaberTwin, bench) as resource, ZaberXMCC.open(resource) as stage:
        stage.limits_um(Axis.X)
        bench.faults.add(FaultRule("stage", FaultKind.LIMIT, at_command=_next_command(bench)))
        with pytest.raises(ZaberLimitRejectedError) as caught:
            stage.move_absolute_um(Axis.X, 10_000.0)
        assert caught.value.command == "/1 1 move abs 20157"
        stage.move_absolute_um(Axis.X, 10_000.0)  # the refusal was a one-off
        assert stage.position_um(Axis.X) == pytest.approx(10_000.0, abs=XY_STEP_UM)


def test_twin_stall_half_way_raises_fault_and_clears() -> None:
    bench = make_bench()
    with serve_twin(ZaberTwin, bench) as resource, ZaberXMCC.open(resource) as stage:
        stage.limits_um(Axis.X)
        bench.faults.add(FaultRule("stage", FaultKind.STALL, at_command=_next_command(bench)))
        with pytest.raises(ZaberFaultError) as caught:
            stage.move_absolute_um(Axis.X, 50_000.0)
        assert caught.value.faults == {Axis.X: frozenset({"FS"})}
        # a symmetric trapezoid is half-way in distance when it is half-way in time
        assert stage.position_um(Axis.X) == pytest.approx(25_000.0, abs=1.0)
        assert stage.clear_warnings(Axis.X) == frozenset({"FS"})
        assert stage.warnings(Axis.X) == frozenset()
        stage.move_absolute_um(Axis.X, 50_000.0)
        assert stage.position_um(Axis.X) == pytest.approx(50_000.0, abs=XY_STEP_UM)


def test_twin_z_stalls_at_probe_card() -> None:
    bench = make_bench()
    crash_um = bench.probe_contact_z_um + bench.probe_overtravel_um
    with serve_twin(ZaberTwin, bench) as resource, ZaberXMCC.open(resource) as stage:
        stage.move_absolute_um(Axis.Z, bench.probe_contact_z_um + 50.0)  # within overtravel: fine
        with pytest.raises(StageFaultError) as caught:
            stage.move_absolute_um(Axis.Z, 8_000.0)
        assert "axis z" in str(caught.value)
        assert stage.position_um(Axis.Z) == pytest.approx(crash_um, abs=Z_STEP_UM)
        assert Axis.Z in caught.value.faults
        stage.move_absolute_um(Axis.Z, 0.0)  # moving away is allowed and clears the stall
        assert stage.warnings(Axis.Z) == frozenset()


def test_twin_position_trigger_fires_at_the_crossing() -> None:
    bench = make_bench()
    with serve_twin(ZaberTwin, bench) as resource, ZaberXMCC.open(resource) as stage:
        stage.move_absolute_um(Axis.X, 0.0)
        stage.arm_position_trigger(Axis.X, 10_000.0, TriggerDirection.RISING)
        assert stage.query("/1 io get do 1") == "0"
        with bench.lock:
            assert bench.trigger_times_s == []
            start_s = bench.now()  # the move starts at the virtual time of its command
        stage.move_absolute_um(Axis.X, 50_000.0)

        assert len(bench.trigger_times_s) == 1
        # from rest with a = 2 m/s² the crossing of s = 20157 microsteps comes at t = sqrt(2 s / a), which is
        # still in the acceleration ramp (the ramp to 200 mm/s covers 10 mm)
        threshold_um = 20157 * XY_STEP_UM
        expected_s = start_s + math.sqrt(2 * threshold_um / 2e6)
        assert bench.trigger_times_s[0] == pytest.approx(expected_s, abs=1e-9)
        with bench.lock:
            position = float(bench.axes[Axis.X].position_um(bench.trigger_times_s[0]))
        assert position == pytest.approx(threshold_um, abs=1e-6)
        assert stage.query("/1 io get do 1") == "1"

        stage.disarm_position_trigger()
        assert stage.query("/1 io get do 1") == "0"
        # once fired and disarmed, moving back over the threshold fires nothing
        stage.move_absolute_um(Axis.X, 0.0)
        stage.move_absolute_um(Axis.X, 50_000.0)
        assert len(bench.trigger_times_s) == 1


def test_twin_falling_trigger_during_constant_velocity() -> None:
    bench = make_bench()
    with serve_twin(ZaberTwin, bench) as resource, ZaberXMCC.open(resource) as stage:
        stage.move_absolute_um(Axis.Y, 50_000.0)
        stage.set_velocity_um_s(Axis.Y, 100_000.0)  # ramps take 2.5 mm; the crossing is at constant speed
        stage.arm_position_trigger(Axis.Y, 20_000.0, TriggerDirection.FALLING)
        with bench.lock:
            start_s = bench.now()
            velocity = bench.axes[Axis.Y].velocity_um_s
            accel = bench.axes[Axis.Y].accel_um_s2
        stage.move_absolute_um(Axis.Y, 0.0)
        start_um = round(50_000.0 / XY_STEP_UM) * XY_STEP_UM
        threshold_um = round(20_000.0 / XY_STEP_UM) * XY_STEP_UM
        ramp_um = velocity**2 / (2 * accel)
        expected_s = start_s + velocity / accel + (start_um - threshold_um - ramp_um) / velocity
        assert bench.trigger_times_s == [pytest.approx(expected_s, abs=1e-9)]


def test_twin_garbage_reply_is_a_reply_error() -> None:
    bench = make_bench()
    with serve_twin(ZaberTwin, bench) as resource, ZaberXMCC.open(resource) as stage:
        bench.faults.add(FaultRule("stage", FaultKind.GARBAGE, at_command=_next_command(bench)))
        with pytest.raises(InstrumentReplyError) as caught:
            stage.position_um(Axis.X)
        assert caught.value.command == "/1 1 get pos"
        assert stage.position_um(Axis.X) == pytest.approx(0.0)  # the next exchange is in step again


def test_twin_dropped_connection_is_a_connection_error() -> None:
    bench = make_bench()
    with serve_twin(ZaberTwin, bench) as resource:
        # pyvisa-py only notices the hang-up when the read times out, so keep the timeout short
        stage = ZaberXMCC.open(resource, timeout_s=0.2)
        bench.faults.add(FaultRule("stage", FaultKind.DISCONNECT, at_command=_next_command(bench)))
        with pytest.raises(InstrumentConnectionError) as caught:
            stage.position_um(Axis.X)
        assert caught.value.command == "/1 1 get pos"
        # close() still tries to make the stage safe, reports that it could not, and closes anyway
        with pytest.raises(InstrumentConnectionError):
            stage.close()
        with pytest.raises(InstrumentConnectionError, match="closed"):
            stage.position_um(Axis.X)


def test_twin_close_stops_motion_and_disarms_trigger() -> None:
    bench = make_bench(time_scale=1.0)  # real time, so the stop lands while the move is under way
    with serve_twin(ZaberTwin, bench) as resource:
        stage = ZaberXMCC.open(resource)
        stage.arm_position_trigger(Axis.Y, 140_000.0, TriggerDirection.RISING)
        stage.move_absolute_um(Axis.X, 140_000.0, wait=False)  # 0.8 s at full speed
        stage.close()
        with bench.lock:
            x = bench.axes[Axis.X]
            rest_um = float(x.position_um(x.busy_until_s()))
            assert bench.trigger is None
            assert not bench.trigger_output_high
        assert rest_um < 100_000.0  # stopped short of the target, decelerating to rest
        assert x.busy_until_s() < 0.7
