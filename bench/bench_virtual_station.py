"""Benchmark: how fast the virtual station serves a digitizer line.

Measured in one run, on the demo 2" wafer, for one 100 k-sample line through chip centres:

* the Cython line renderer (``cext.pl_render.render_line``) against its NumPy reference (``cext.reference``)
  and against a pure read of the same number of samples (``np.sum`` of a 100 k array: the floor),
* the whole world call (band set-up, per-chip truth, render, noise),
* end to end: the digitizer twin serving the line over a loopback socket to the DMM6500 driver
  (trigger from the stage twin, ``:TRAC:DATA?`` binary block, parse), as the scan engine will use it.

Every figure is printed with its ratio to a baseline from the same run. Run: ``python bench/bench_virtual_station.py``.
"""

from __future__ import annotations

import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

import drivers.virtual.world as world_module
from cext import pl_render, reference
from drivers.interfaces import Axis, TriggerDirection
from drivers.keithley_dmm6500 import KeithleyDMM6500
from drivers.virtual.dmm6500_twin import DMM6500Twin
from drivers.virtual.profile import load_profile
from drivers.virtual.server import LOOPBACK, TwinServer
from drivers.virtual.station import build_bench

PROFILE = Path(__file__).resolve().parent.parent / "resources" / "profiles" / "demo-2in.toml"
SAMPLES = 100_000


def best_of(function: Callable[[], object], repeats: int) -> float:
    """Median wall time of ``repeats`` calls, in seconds (after one warm-up call)."""
    function()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def capture_render_arguments(world, x_um: np.ndarray, y_um: np.ndarray, power_w: np.ndarray) -> dict:
    """Run the world once with the kernel swapped for a recorder, to time the kernel alone on real arguments."""
    captured: dict = {}
    names = [
        "col_f", "row_f", "power_w", "col0", "band_row0", "band_height", "a_coeff", "c_coeff", "shunt",
        "shunt_saturation", "excitation", "pl_gain_v_per_w", "scatter_v_per_w", "half_width", "half_height",
        "sigma_col", "sigma_row", "generation_per_w", "reach",
    ]  # fmt: skip
    original = world_module.render_line

    def record(*arguments):
        captured.update(zip(names, arguments, strict=True))
        return original(*arguments)

    world_module.render_line = record
    try:
        world.pl_signal_clean_v(x_um, y_um, power_w)
    finally:
        world_module.render_line = original
    return captured


def main() -> int:
    bench = build_bench(load_profile(PROFILE))
    world = bench.world
    grid = world.layout.grid
    # a line along a chip row, in the wafer frame, at 10 mm/s-equivalent sampling of 0.2 µm
    x0, y0 = world.layout.chip_center_um(*world.layout.anchor_index)
    x_um = float(x0) - 10_000.0 + np.arange(SAMPLES) * 0.2
    y_um = np.full(SAMPLES, float(y0))
    power_w = np.full(SAMPLES, 0.01)
    arguments = capture_render_arguments(world, x_um, y_um, power_w)

    floor_s = best_of(lambda: np.sum(x_um), 50)
    kernel_s = best_of(lambda: pl_render.render_line(**arguments), 10)
    reference_s = best_of(lambda: reference.render_line(**arguments), 2)
    world_s = best_of(lambda: world.pl_signal_v(x_um, y_um, power_w, x_um), 10)
    # what the digitizer twin computes per line: stage positions at the sample instants, laser drift, world
    sample_times_s = np.arange(SAMPLES) / 1e6
    bench.laser.setpoint_w, bench.laser.emission = 0.01, True
    twin_s = best_of(lambda: bench.detector_signal_v(sample_times_s), 10)
    np.testing.assert_allclose(pl_render.render_line(**arguments), reference.render_line(**arguments), rtol=1e-8)

    # end to end through a socket: stage trigger → digitizer twin → pyvisa → driver
    server = TwinServer(DMM6500Twin(bench), bench)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    velocity_um_s = 100_000.0
    sample_rate_hz = velocity_um_s / 0.2 if velocity_um_s / 0.2 <= 1e6 else 1e6
    detector = KeithleyDMM6500.open(f"TCPIP0::{LOOPBACK}::{server.port}::SOCKET", timeout_s=10.0)
    detector.configure_triggered_acquisition(sample_rate_hz, SAMPLES)
    bench.laser.setpoint_w, bench.laser.emission = 0.01, True
    stage_x0, stage_y0 = bench.placement.wafer_to_stage(x_um[0], y0)
    axis_x = bench.axes[Axis.X]

    def one_line() -> np.ndarray:
        with bench.lock:
            bench.axes[Axis.Y].move_to(bench.now(), float(stage_y0))
            axis_x.move_to(bench.now(), float(stage_x0) - 2000.0)
            bench.settle()
        detector.arm()
        with bench.lock:
            axis_x.velocity_um_s = velocity_um_s
            bench.arm_trigger(Axis.X, float(stage_x0), TriggerDirection.RISING)
            axis_x.move_to(bench.now(), float(stage_x0) + 25_000.0)
            bench.update_trigger()
        while detector.samples_acquired() < SAMPLES:
            pass
        return detector.read_samples_v(0, SAMPLES)

    serve_s = best_of(one_line, 5)
    samples = one_line()
    assert samples.size == SAMPLES
    detector.close()
    server.shutdown()

    print(f"virtual station line of {SAMPLES:,} samples on {PROFILE.name} ({grid.pitch_x_um:g} µm pitch)")
    print(f"  pure read (np.sum), floor            {floor_s * 1e3:8.3f} ms")
    print(f"  NumPy reference renderer            {reference_s * 1e3:8.1f} ms")
    print(
        f"  Cython renderer (2 threads)         {kernel_s * 1e3:8.1f} ms   "
        f"{reference_s / kernel_s:6.1f}x faster than the reference, {kernel_s / floor_s:6.0f}x the floor"
    )
    print(f"  world call (truth + render + noise) {world_s * 1e3:8.1f} ms   {world_s / kernel_s:6.2f}x the kernel")
    print(f"  digitizer twin's samples (+ motion) {twin_s * 1e3:8.1f} ms   {twin_s / world_s:6.2f}x the world call")
    print(
        f"  one line end to end (moves, arm,    {serve_s * 1e3:8.1f} ms   {serve_s / twin_s:6.2f}x the twin's samples, "
        f"{SAMPLES / serve_s / 1e6:.2f} M samples/s"
    )
    print("    trigger, poll, read over loopback)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
