"""Benchmark: scan ingest, from the virtual station into the scan file, and planned scan times.

Measured in one run, with ratios to baselines from the same run:

1. the scan file's ``write_line`` (commit + fsync per line) against a bare h5py append of the same lines;
2. end to end at time scale 0: the scan engine acquiring long position-triggered lines from the virtual station
   (stage, trigger, digitizer, binary transfer, file), against the virtual station's own physics render of the
   same lines (the simulator's ceiling: the engine cannot take samples faster than the simulator makes them),
   with the CPU time each of the two processes spent per line (their sum bounds the rate on this machine's cores);
3. the physical scan time the plan predicts for the 6" example recipe, raster against grid-locked, next to
   camera-based PL imaging's ~5 minutes for a 6" wafer.

Run: ``python bench/bench_scan.py`` (about a minute).
"""

from __future__ import annotations

import dataclasses
import os
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

from drivers.station import Station, load_station_config, open_station
from drivers.virtual.profile import load_profile
from drivers.virtual.station import VirtualStation
from drivers.virtual.world import WaferWorld
from inspection.memory import retain_freed_memory
from inspection.plan import LINE_DTYPE, ScanPlan, plan_scan
from inspection.recipe import Recipe, ScanMode, SpectraSettings, load_recipe
from inspection.scan import ScanEngine, stage_acceleration_um_s2
from inspection.scanfile import ScanFileWriter
from inspection.wafer import Placement

REPO = Path(__file__).resolve().parent.parent
PROFILE = REPO / "resources" / "profiles" / "demo-2in.toml"
RECIPE = REPO / "resources" / "recipes" / "demo-2in.toml"
STATION = REPO / "resources" / "stations" / "virtual.toml"
SIX_INCH = REPO / "resources" / "recipes" / "blue-6in.toml"

LINE_SAMPLES = 100_000
LINES = 40


def bench_file_writes(folder: Path) -> tuple[float, float]:
    """Samples/s of ``write_line`` and of a bare h5py append of the same data."""
    samples = np.random.default_rng(0).random(LINE_SAMPLES).astype(np.float32)
    plan_lines = np.zeros(LINES, dtype=LINE_DTYPE)
    plan_lines["line_index"] = np.arange(LINES)
    plan_lines["sample_count"] = LINE_SAMPLES
    record = {
        "trigger_time_s": 0.0, "wall_time_unix_s": 0.0, "x_start_readback_um": 0.0, "y_start_readback_um": 0.0,
        "x_stop_readback_um": 0.0, "y_stop_readback_um": 0.0, "power_before_w": 0.0, "power_after_w": 0.0,
        "laser_setpoint_w": 0.01,
    }  # fmt: skip
    writer = ScanFileWriter.create(
        folder / "writes.h5", recipe_toml="", station_toml="", identities={}, plan_lines=plan_lines,
        powers_w=[0.01], plan_summary="bench", operator="bench", lot_id="bench", wafer_id="bench",
        software_version="bench",
    )  # fmt: skip
    with writer:
        started = time.perf_counter()
        for line in range(LINES):
            writer.write_line(0, line, samples, {"line_index": float(line), **record})
        file_rate = LINES * LINE_SAMPLES / (time.perf_counter() - started)
    with h5py.File(folder / "bare.h5", "w") as bare:
        dataset = bare.create_dataset("samples", shape=(0,), maxshape=(None,), dtype="f4", chunks=(131072,))
        started = time.perf_counter()
        for line in range(LINES):
            dataset.resize(((line + 1) * LINE_SAMPLES,))
            dataset[line * LINE_SAMPLES :] = samples
            bare.flush()
        bare_rate = LINES * LINE_SAMPLES / (time.perf_counter() - started)
    return file_rate, bare_rate


def long_line_plan(recipe, placement: Placement, accel_um_s2: float) -> ScanPlan:
    """Raster lines of ``LINE_SAMPLES`` samples each through the middle of the wafer."""
    base = plan_scan(recipe, placement, accel_um_s2=accel_um_s2)
    pitch = recipe.sampling.sample_pitch_um
    length = (LINE_SAMPLES - 1) * pitch
    lines = np.zeros(LINES, dtype=LINE_DTYPE)
    lines["line_index"] = np.arange(LINES)
    y = np.arange(LINES) * recipe.sampling.line_pitch_um
    forward = np.arange(LINES) % 2 == 0
    lines["x_start_um"] = np.where(forward, -length / 2, length / 2)
    lines["x_stop_um"] = -lines["x_start_um"]
    lines["y_start_um"] = lines["y_stop_um"] = y
    lines["sample_count"] = LINE_SAMPLES
    return dataclasses.replace(base, lines=lines)


def run_engine(station: Station, recipe: Recipe, plan: ScanPlan, path: Path) -> None:
    """Run ``plan`` (no spectra) into a new scan file at ``path``."""
    writer = ScanFileWriter.create(
        path, recipe_toml="", station_toml="", identities={}, plan_lines=plan.lines, powers_w=plan.powers_w,
        plan_summary="bench", operator="bench", lot_id="bench", wafer_id="bench", software_version="bench",
    )  # fmt: skip
    with writer:
        ScanEngine(station, dataclasses.replace(recipe, spectra=SpectraSettings()), plan, writer,
                   placement=Placement()).run()  # fmt: skip


@dataclasses.dataclass(frozen=True)
class EndToEnd:
    """What :func:`bench_end_to_end` measured (rates in samples/s, CPU in seconds per line)."""

    rate: float  # end to end, wall clock
    render_rate: float  # the simulator's render of the same lines alone, wall clock (its two threads)
    render_cpu_s: float  # CPU of that render per line (both threads)
    engine_cpu_s: float  # CPU of the engine process per line (all its threads)
    station_cpu_s: float | None  # CPU of the virtual station's process per line (None where /proc is missing)


def process_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of process ``pid`` so far (all its threads), from ``/proc`` (Linux); None
    elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def bench_end_to_end(folder: Path) -> EndToEnd:
    """The engine end to end against the virtual station at time scale 0, with the CPU each process spent per
    line, and the simulator's render of the same lines on its own: the engine cannot take samples faster than
    the simulator makes them, and on two cores the two processes' CPU per line bounds the rate."""
    recipe = load_recipe(RECIPE)
    config = load_station_config(STATION)
    with VirtualStation.start(PROFILE) as virtual:
        station = open_station(config, resources=virtual.resources)
        try:
            accel = stage_acceleration_um_s2(station)
            plan = long_line_plan(recipe, Placement(), accel)
            plan = dataclasses.replace(plan, powers_w=plan.powers_w[-1:])
            station_started = process_cpu_s(virtual.process.pid)
            started, cpu_started = time.perf_counter(), time.process_time()
            run_engine(station, recipe, plan, folder / "ingest.h5")
            elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
            station_ended = process_cpu_s(virtual.process.pid)
        finally:
            station.close()
    station_cpu = None if station_started is None or station_ended is None else station_ended - station_started
    # the simulator's part: the same lines through the profile's world (its placement maps them onto the wafer),
    # in scan order, as the station renders them
    world = WaferWorld(load_profile(PROFILE))
    power_w = np.full(LINE_SAMPLES, plan.powers_w[-1])
    render_started, render_cpu_started = time.perf_counter(), time.process_time()
    for line in plan.lines:
        x, y = world.placement.stage_to_wafer(
            np.linspace(line["x_start_um"], line["x_stop_um"], LINE_SAMPLES), np.full(LINE_SAMPLES, line["y_start_um"])
        )
        world.pl_signal_v(x, y, power_w, x * 0)
    render_s, render_cpu = time.perf_counter() - render_started, time.process_time() - render_cpu_started
    return EndToEnd(
        rate=LINES * LINE_SAMPLES / elapsed,
        render_rate=LINES * LINE_SAMPLES / render_s,
        render_cpu_s=render_cpu / LINES,
        engine_cpu_s=cpu / LINES,
        station_cpu_s=None if station_cpu is None else station_cpu / LINES,
    )


def bench_real_time_cpu(folder: Path, lines: int = 10) -> tuple[float, float]:
    """The engine's CPU time as a fraction of wall time while the virtual station runs in real time with the
    digitizer at 1 MS/s (hardware speed); the station's own process is not counted. Returns (fraction, wall s)."""
    recipe = load_recipe(RECIPE)
    recipe = dataclasses.replace(recipe, sampling=dataclasses.replace(recipe.sampling, sample_rate_hz=1e6))
    config = load_station_config(STATION)
    with VirtualStation.start(PROFILE, time_scale=1.0) as virtual:
        station = open_station(config, resources=virtual.resources)
        try:
            plan = long_line_plan(recipe, Placement(), stage_acceleration_um_s2(station))
            plan = dataclasses.replace(plan, lines=plan.lines[:lines], powers_w=plan.powers_w[-1:])
            cpu_before, wall_before = time.process_time(), time.perf_counter()
            run_engine(station, recipe, plan, folder / "real-time.h5")
            cpu, wall = time.process_time() - cpu_before, time.perf_counter() - wall_before
        finally:
            station.close()
    return cpu / wall, wall


def planned_six_inch() -> tuple[float, float]:
    recipe = load_recipe(SIX_INCH)
    accel = 3e6
    durations = []
    for mode in (ScanMode.RASTER, ScanMode.GRID_LOCKED):
        variant = dataclasses.replace(recipe, sampling=dataclasses.replace(recipe.sampling, mode=mode))
        durations.append(plan_scan(variant, Placement(), accel_um_s2=accel).estimated_duration_s)
    return durations[0], durations[1]


def main() -> int:
    retain_freed_memory()  # as the plmapper command does
    with tempfile.TemporaryDirectory(dir=REPO) as folder:
        file_rate, bare_rate = bench_file_writes(Path(folder))
        load_before = os.getloadavg()[0]
        ingest = bench_end_to_end(Path(folder))
        load_after = os.getloadavg()[0]
        busy, wall = bench_real_time_cpu(Path(folder))
    raster_s, grid_s = planned_six_inch()
    engine_cpu_rate = LINE_SAMPLES / ingest.engine_cpu_s
    print(f"scan ingest, {LINES} lines of {LINE_SAMPLES:,} samples (load average {load_before:.2f} before the "
          f"end-to-end run, {load_after:.2f} after, on {os.cpu_count()} cores)")  # fmt: skip
    print(f"  bare h5py append + flush (baseline)      {bare_rate / 1e6:7.1f} M samples/s")
    print(f"  scan file write_line (commit + fsync)     {file_rate / 1e6:7.1f} M samples/s  "
          f"{file_rate / bare_rate:5.2f}x the bare append")  # fmt: skip
    print(f"  virtual station physics render (ceiling) {ingest.render_rate / 1e6:7.1f} M samples/s  "
          f"({ingest.render_cpu_s * 1e3:.1f} ms CPU per line)")  # fmt: skip
    print(f"  end to end, virtual station, time scale 0 {ingest.rate / 1e6:7.1f} M samples/s  "
          f"{ingest.rate / ingest.render_rate:5.2f}x the simulator's render")  # fmt: skip
    print(f"  per second of the engine's own CPU time   {engine_cpu_rate / 1e6:7.1f} M samples/s  "
          f"{engine_cpu_rate / 1e6:5.1f}x real hardware's 1 M samples/s")  # fmt: skip
    if ingest.station_cpu_s is not None:
        both_s = ingest.engine_cpu_s + ingest.station_cpu_s
        cores = os.cpu_count() or 1
        print(f"  CPU per line: engine {ingest.engine_cpu_s * 1e3:.1f} ms, virtual station "
              f"{ingest.station_cpu_s * 1e3:.1f} ms (its render alone {ingest.render_cpu_s * 1e3:.1f} ms): "
              f"at most {cores * LINE_SAMPLES / both_s / 1e6:.1f} M samples/s on {cores} cores")  # fmt: skip
    print(f"  real time, digitizer at 1 MS/s: engine CPU {busy:.1%} of wall time ({wall:.1f} s for 10 lines)")
    print("planned physical scan time, 6-inch example recipe (blue-6in)")
    print(f"  raster        {raster_s / 3600:6.2f} h")
    print(f"  grid-locked   {grid_s / 3600:6.2f} h   ({raster_s / grid_s:.1f}x faster than raster)")
    print(f"  camera PL imaging (LumiTop, published)  0.08 h (5 min); grid-locked is {grid_s / 300:.0f}x slower")
    return 0


if __name__ == "__main__":
    sys.exit(main())
