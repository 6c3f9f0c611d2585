"""The virtual bench's models: stage kinematics, triggers, laser drift, placement, fault schedules, clock."""

from __future__ import annotations

import math

import numpy as np
import pytest
from cext.pl_render import spot_path_um

from drivers.interfaces import Axis, TriggerDirection
from drivers.virtual.bench import AxisModel, FaultKind, FaultPlan, FaultRule, LaserModel, SimClock
from inspection.wafer import Placement


def axis(**overrides: float) -> AxisModel:
    options = {"limits_um": (-100_000.0, 100_000.0), "max_velocity_um_s": 10_000.0, "accel_um_s2": 100_000.0}
    return AxisModel(Axis.X, **{**options, **overrides})


def test_trapezoidal_move_known_answer() -> None:
    model = axis()
    end = model.move_to(0.0, 10_000.0)
    # 0.1 s ramp (500 µm) up, 0.9 s cruise (9000 µm), 0.1 s ramp down
    assert end == pytest.approx(1.1)
    assert float(model.position_um(0.1)) == pytest.approx(500.0)
    assert float(model.position_um(0.6)) == pytest.approx(5500.0)
    assert float(model.position_um(5.0)) == 10_000.0
    assert model.velocity_at(0.5) == pytest.approx(10_000.0)
    assert not model.is_busy(1.2) and model.is_busy(1.0)


def test_short_move_is_triangular() -> None:
    model = axis()
    end = model.move_to(0.0, 100.0)  # too short to reach full speed
    assert end == pytest.approx(2 * math.sqrt(100.0 / 100_000.0))
    assert float(model.position_um(end / 2)) == pytest.approx(50.0)


def test_move_outside_limits_is_refused() -> None:
    with pytest.raises(ValueError, match="outside limits"):
        axis().move_to(0.0, 200_000.0)


def test_sorted_and_general_position_paths_agree() -> None:
    model = axis()
    model.move_to(0.0, 30_000.0)
    model.move_to(1.0, -20_000.0)
    model.stop(1.5)
    times = np.sort(np.random.default_rng(3).uniform(-0.5, 4.0, 5000))
    general = np.array([float(model.position_um(t)) for t in times])
    np.testing.assert_allclose(model.position_um(times), general, rtol=0, atol=1e-9)


def random_motion(rng: np.random.Generator, moves: int) -> AxisModel:
    """An axis after ``moves`` moves at random speeds, each commanded at a random moment of the one before."""
    model = axis(max_velocity_um_s=100_000.0, accel_um_s2=float(rng.uniform(1e5, 3e6)))
    now_s = 0.0
    for _ in range(moves):
        model.velocity_um_s = float(rng.uniform(1e3, 1e5))
        end_s = model.move_to(now_s, float(rng.uniform(-100_000.0, 100_000.0)))
        now_s = float(rng.uniform(now_s, end_s + 0.01))
    return model


def test_one_instant_and_many_give_the_same_bits() -> None:
    """The scalar path (plain floats, for status replies and triggers) is the array path, to the last bit."""
    rng = np.random.default_rng(11)
    for moves in range(6):
        model = random_motion(rng, moves)
        for instant in [*rng.uniform(-0.01, 0.3, 40), *(phase.t0_s for phase in model.phases)]:
            one = model.position_um(float(instant))
            assert isinstance(one, np.float64)
            assert one.tobytes() == np.asarray(model.position_um(np.asarray(instant))).tobytes()
            assert model.velocity_at(float(instant)) == model.velocity_at(np.float64(instant))


def test_compiled_spot_path_gives_the_numpy_bits() -> None:
    """``cext.pl_render.spot_path_um`` (the digitizer twin's sample positions) is the NumPy path through
    ``AxisModel.position_um`` and ``Placement.stage_to_wafer``, bit for bit: a build with fused multiply-adds would
    fail here (and change the virtual wafer's samples)."""
    rng = np.random.default_rng(12)
    for trial in range(60):
        x_axis, y_axis = random_motion(rng, trial % 6), random_motion(rng, (trial + 3) % 6)
        times = rng.uniform(-0.01, 0.3) + np.arange(int(rng.integers(1, 3000))) / rng.uniform(1e3, 1e6)
        if trial % 3 == 0:  # instants exactly at phase starts
            times = np.sort(np.concatenate([times, [phase.t0_s for phase in x_axis.phases]]))
        placement = Placement(rng.uniform(-500, 500), rng.uniform(-500, 500), rng.uniform(-2, 2))
        expected = placement.stage_to_wafer(x_axis.position_um(times), y_axis.position_um(times))
        rotation = math.radians(placement.rotation_deg)
        found = spot_path_um(
            times, x_axis.phase_table(), y_axis.phase_table(), placement.offset_x_um, placement.offset_y_um,
            math.cos(rotation), math.sin(rotation),
        )  # fmt: skip
        for want, got in zip(expected, found, strict=True):
            assert np.asarray(want).tobytes() == got.tobytes()


def test_stall_stops_dead_and_flags_fs() -> None:
    model = axis()
    model.move_to(0.0, 10_000.0)
    model.stall(0.5)
    assert float(model.position_um(2.0)) == pytest.approx(float(model.position_um(0.5)))
    assert "FS" in model.warnings


@pytest.mark.parametrize(
    ("threshold", "direction"), [(2000.0, TriggerDirection.RISING), (-5.0, TriggerDirection.FALLING)]
)
def test_trigger_crossing_time(threshold: float, direction: TriggerDirection) -> None:
    model = axis()
    target = 10_000.0 if direction is TriggerDirection.RISING else -10_000.0
    model.move_to(0.0, target)
    crossing = model.first_crossing_s(0.0, threshold, direction)
    assert crossing is not None
    assert float(model.position_um(crossing)) == pytest.approx(threshold, abs=1e-6)
    assert model.first_crossing_s(0.0, 50_000.0, TriggerDirection.RISING) is None


def test_laser_drift_is_smooth_and_interpolation_exact() -> None:
    laser = LaserModel(wavelength_nm=405.0, min_power_w=0.0, max_power_w=0.1, drift_fraction=0.01, seed=2)
    laser.setpoint_w, laser.emission = 0.01, True
    times = np.linspace(0.0, 100.0, 50_000)
    power = laser.output_power_w(times)
    np.testing.assert_allclose(power, laser._power_at(times), rtol=1e-7)
    assert power.min() > 0.0098 and power.max() < 0.0102
    laser.open_interlock()
    assert not laser.output_power_w(times).any() and not laser.emission


def test_placement_round_trip() -> None:
    placement = Placement(offset_x_um=350.0, offset_y_um=-120.0, rotation_deg=0.8)
    x, y = np.array([0.0, 1000.0, -2500.0]), np.array([0.0, 50.0, 700.0])
    back = placement.stage_to_wafer(*placement.wafer_to_stage(x, y))
    np.testing.assert_allclose(back, (x, y), atol=1e-9)
    assert placement.wafer_to_stage(0.0, 0.0) == pytest.approx((350.0, -120.0))


def test_fault_window_and_rate() -> None:
    plan = FaultPlan(seed=1)
    plan.add(FaultRule("laser", FaultKind.TIMEOUT, at_command=3, count=2))
    fired = [bool(plan.next_command("laser")) for _ in range(6)]
    assert fired == [False, False, True, True, False, False]
    assert plan.next_command("stage") == []
    plan.add(FaultRule("stage", FaultKind.GARBAGE, rate=0.25, count=0))
    hits = sum(bool(plan.next_command("stage")) for _ in range(4000))
    assert 850 < hits < 1150


def test_clock_scales() -> None:
    clock = SimClock(0.0)
    assert clock.now() == 0.0
    clock.advance_to(5.0)
    clock.advance_to(2.0)  # never backwards
    assert clock.now() == 5.0
    with pytest.raises(ValueError, match="time_scale"):
        SimClock(-1.0)
