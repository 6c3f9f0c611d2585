"""Helpers for tests that run a driver against its virtual twin over a real loopback socket.

``UniformWorld`` is a deliberately simple world (every position is the same perfect chip) so driver and twin
tests check the protocol and the bench mechanics; the wafer physics has its own tests.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np

from drivers.interfaces import Axis
from drivers.virtual.bench import AxisModel, FaultPlan, LaserModel, SimClock, VirtualBench
from drivers.virtual.server import LOOPBACK, InstrumentTwin, TwinServer
from inspection.wafer import Placement


class UniformWorld:
    """Every spot position sees the same chip: PL voltage = 10 V/W × power; a 450 nm Gaussian spectrum."""

    volts_per_watt = 10.0
    background_v = 0.001
    peak_nm = 450.0
    fwhm_nm = 20.0

    def pl_signal_v(self, x_um: np.ndarray, y_um: np.ndarray, power_w: np.ndarray, t_s: np.ndarray) -> np.ndarray:
        return self.background_v + self.volts_per_watt * np.broadcast_to(power_w, np.shape(x_um)).astype(float)

    def pl_spectrum_w_per_nm(self, x_um: float, y_um: float, power_w: float, wavelength_nm: np.ndarray) -> np.ndarray:
        sigma = self.fwhm_nm / (2 * math.sqrt(2 * math.log(2)))
        return 1e-6 * power_w * np.exp(-0.5 * ((np.asarray(wavelength_nm) - self.peak_nm) / sigma) ** 2)

    def chip_under(self, x_um: float, y_um: float) -> tuple[int, int] | None:
        return (int(x_um // 100), int(y_um // 100))

    def el_voltage_v(self, chip: tuple[int, int], current_a: float) -> float:
        # ideal diode, n = 2, I0 = 1e-20 A, 10 Ω series; reverse: 1 GΩ shunt
        if current_a <= 0:
            return current_a * 1e9
        return 2 * 0.02585 * math.log1p(current_a / 1e-20) + 10.0 * current_a

    def el_current_a(self, chip: tuple[int, int], voltage_v: float) -> float:
        if voltage_v <= 0:
            return voltage_v / 1e9
        low, high = 0.0, 1.0
        for _ in range(200):  # bisection on the monotonic forward characteristic
            middle = 0.5 * (low + high)
            if self.el_voltage_v(chip, middle) < voltage_v:
                low = middle
            else:
                high = middle
        return 0.5 * (low + high)

    def el_light_v(self, chip: tuple[int, int], current_a: float) -> float:
        return 50.0 * max(current_a, 0.0)


def make_bench(
    *, time_scale: float = 0.0, world: object | None = None, placement: Placement | None = None
) -> VirtualBench:
    """A bench with a 300 mm × 300 mm × 10 mm stage, a 405 nm 0.1 W laser and the given world."""
    axes = {
        Axis.X: AxisModel(Axis.X, limits_um=(-150_000.0, 150_000.0), max_velocity_um_s=200_000.0, accel_um_s2=2e6),
        Axis.Y: AxisModel(Axis.Y, limits_um=(-150_000.0, 150_000.0), max_velocity_um_s=200_000.0, accel_um_s2=2e6),
        Axis.Z: AxisModel(Axis.Z, limits_um=(0.0, 10_000.0), max_velocity_um_s=5_000.0, accel_um_s2=5e4),
    }
    laser = LaserModel(wavelength_nm=405.0, min_power_w=0.0, max_power_w=0.1, drift_fraction=0.0, seed=1)
    return VirtualBench(
        world=world or UniformWorld(),  # type: ignore[arg-type]
        placement=placement or Placement(),
        axes=axes,
        laser=laser,
        clock=SimClock(time_scale),
        faults=FaultPlan(seed=1),
        probe_contact_z_um=5_000.0,
    )


@contextmanager
def serve_twin(twin_class: type[InstrumentTwin], bench: VirtualBench) -> Iterator[str]:
    """Serve ``twin_class`` on a free loopback port; yield its VISA resource string."""
    server = TwinServer(twin_class(bench), bench)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"TCPIP0::{LOOPBACK}::{server.port}::SOCKET"
    finally:
        server.stopping.set()
        server.shutdown()
        server.server_close()
