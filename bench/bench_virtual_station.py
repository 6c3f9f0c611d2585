"""Benchmark: how fast the virtual station serves a digitizer line.

Measured in one run, on the demo 2" wafer, for one 100 k-sample line through chip centres:

* the Cython line renderer (``cext.pl_render.render_line``) against its NumPy reference (``cext.reference``)
  and against a pure read of the same number of samples (``np.sum`` of a 100 k array: the floor), and how far
  apart the two renderers' signals are (relative to the line's peak; the kernel documents 1e-9),
* the whole world call, noiseless and with noise, and what it spends on the band of lit chips
  (``line_band``) and on their truth (``WaferWorld.chip_truth``); and the call again over the same chips, whose
  truth the world keeps from the line before (raster lines closer than the chip pitch),
* the same world calls on a line along a row of the 20 µm-pitch green 8" wafer, and on a slanted one,
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
from drivers.virtual.world import WaferWorld

PROFILES = Path(__file__).resolve().parent.parent / "resources" / "profiles"
PROFILE = PROFILES / "demo-2in.toml"
GREEN_PROFILE = PROFILES / "green-8in.toml"
SAMPLES = 100_000


def median_of(function: Callable[[], object], repeats: int) -> float:
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
        "x_um", "y_um", "power_w", "frame", "col0", "band_row0", "band_start", "a_coeff", "c_coeff", "shunt",
        "shunt_saturation", "excitation", "pl_gain_v_per_w", "scatter_v_per_w", "half_width", "half_height",
        "sigma_col", "sigma_row", "generation_per_w", "reach", "noise_key", "read_noise_v", "shot_noise_v",
        "background_v",
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


def cold(world, call: Callable[[], object]) -> Callable[[], object]:
    """``call`` as a line over chips the world has not kept from the line before (see WaferWorld._band_chips)."""
    return lambda: (world.forget_kept_band(), call())


def world_parts(world, x_um: np.ndarray, y_um: np.ndarray, power_w: np.ndarray) -> dict[str, float]:
    """Median times (s) of a world's noiseless and noisy calls, and of its band and truth look-ups."""
    arguments = capture_render_arguments(world, x_um, y_um, power_w)
    geometry = [arguments[name] for name in ("half_width", "half_height", "sigma_col", "sigma_row", "reach")]
    col0, band_row0, band_start = pl_render.line_band(x_um, y_um, arguments["frame"], *geometry)
    counts = np.diff(band_start)
    cols = np.repeat(np.arange(col0, col0 + counts.size), counts)
    rows = np.repeat(band_row0 - band_start[:-1], counts) + np.arange(int(band_start[-1]))
    inside = world.layout.in_box(cols, rows)
    return {
        "clean": median_of(cold(world, lambda: world.pl_signal_clean_v(x_um, y_um, power_w)), 21),
        "noisy": median_of(cold(world, lambda: world.pl_signal_v(x_um, y_um, power_w, x_um)), 21),
        "noisy_same_chips": median_of(lambda: world.pl_signal_v(x_um, y_um, power_w, x_um), 21),
        "band": median_of(lambda: pl_render.line_band(x_um, y_um, arguments["frame"], *geometry), 21),
        "truth": median_of(lambda: world.chip_truth(cols[inside], rows[inside]), 21),
        "kernel": median_of(lambda: pl_render.render_line(**arguments), 21),
        "chips": float(inside.sum()),
    }


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

    floor_s = median_of(lambda: np.sum(x_um), 50)
    kernel_s = median_of(lambda: pl_render.render_line(**arguments), 21)
    reference_s = median_of(lambda: reference.render_line(**arguments), 2)
    kernel_signal, reference_signal = pl_render.render_line(**arguments), reference.render_line(**arguments)
    error = float(np.abs(kernel_signal - reference_signal).max() / np.abs(reference_signal).max())
    assert error < 1e-9, error
    demo = world_parts(world, x_um, y_um, power_w)
    world_s = demo["noisy"]
    green = WaferWorld(load_profile(GREEN_PROFILE))
    green_x0, green_y0 = green.layout.chip_center_um(*green.layout.anchor_index)
    green_x = float(green_x0) - 10_000.0 + np.arange(SAMPLES) * 0.2
    green_row = world_parts(green, green_x, np.full(SAMPLES, float(green_y0)), power_w)
    # a slanted line, as on a wafer loaded 1° rotated: the row coordinate changes at every sample
    slant = float(green_y0) + (green_x - float(green_x0)) * np.tan(np.radians(1.0))
    green_slanted = world_parts(green, green_x, slant, power_w)
    # what the digitizer twin computes per line: stage positions at the sample instants, laser drift, world
    sample_times_s = np.arange(SAMPLES) / 1e6
    bench.laser.setpoint_w, bench.laser.emission = 0.01, True
    twin_s = median_of(cold(world, lambda: bench.detector_signal_v(sample_times_s)), 10)

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
        world.forget_kept_band()  # the same line each time: time it as a line over new chips
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

    serve_s = median_of(one_line, 5)
    samples = one_line()
    assert samples.size == SAMPLES
    detector.close()
    server.shutdown()

    print(f"virtual station line of {SAMPLES:,} samples on {PROFILE.name} ({grid.pitch_x_um:g} µm pitch)")
    print(f"  pure read (np.sum), floor            {floor_s * 1e3:8.3f} ms")
    print(f"  NumPy reference renderer            {reference_s * 1e3:8.1f} ms")
    print(
        f"  Cython renderer (2 threads)         {kernel_s * 1e3:8.2f} ms   "
        f"{reference_s / kernel_s:6.0f}x faster than the reference, {kernel_s / floor_s:6.0f}x the floor, "
        f"within {error:.1e} of the reference's peak"
    )
    for label, parts in ((f"{PROFILE.name}, along a row", demo), (f"{GREEN_PROFILE.name}, along a row", green_row),
                         (f"{GREEN_PROFILE.name}, slanted 1°", green_slanted)):  # fmt: skip
        print(f"  world call on {label} ({parts['chips']:.0f} chips lit)")
        print(
            f"    noiseless                         {parts['clean'] * 1e3:8.2f} ms   "
            f"{parts['clean'] / parts['kernel']:6.2f}x its kernel ({parts['kernel'] * 1e3:.2f} ms), "
            f"band {parts['band'] / parts['clean']:4.0%}, truth {parts['truth'] / parts['clean']:4.0%} of it"
        )
        print(
            f"    with noise                        {parts['noisy'] * 1e3:8.2f} ms   "
            f"{parts['noisy'] / parts['clean']:6.2f}x the noiseless call"
        )
        print(
            f"    with noise, same chips as before  {parts['noisy_same_chips'] * 1e3:8.2f} ms   "
            f"{parts['noisy_same_chips'] / parts['noisy']:6.2f}x a line over new chips (truth kept)"
        )
    print(f"  digitizer twin's samples (+ motion) {twin_s * 1e3:8.1f} ms   {twin_s / world_s:6.2f}x the world call")
    print(
        f"  one line end to end (moves, arm,    {serve_s * 1e3:8.1f} ms   {serve_s / twin_s:6.2f}x the twin's samples, "
        f"{SAMPLES / serve_s / 1e6:.2f} M samples/s"
    )
    print("    trigger, poll, read over loopback)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
