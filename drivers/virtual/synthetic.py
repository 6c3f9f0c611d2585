"""Scan files rendered straight from a virtual wafer, without instruments or sockets.

The analysis tests and the pipeline benchmark need whole-wafer scans quickly, up to 8" with a billion samples,
and with known imperfections. :func:`write_synthetic_scan` plans the recipe's lines for the wafer's true
placement (as the engine does after a perfect alignment), renders every line with the same physics the virtual
station uses (:meth:`WaferWorld.pl_signal_v`, noise included), and writes an ordinary scan file. What a real
station adds on top can be injected: a digitizer latency (forward and reverse lines drift apart), an error in
the stored alignment, a laser power drift that the power meter records.

:func:`write_reference_wafer` adds what a classifier needs to learn from: the analysis and the virtual prober's
EL results of every chip.

The scan file says where it came from (``settings/extra``: ``source = synthetic``); it is never mistaken for a
measurement.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np

from drivers.virtual.profile import WaferProfile
from drivers.virtual.world import WaferWorld, export_el_csv
from inspection.el_reference import import_el_csv
from inspection.pipeline import analyze_scan
from inspection.plan import plan_scan
from inspection.recipe import Recipe, recipe_to_toml
from inspection.scanfile import ScanFileWriter, ScanStatus
from inspection.wafer import Placement


def write_synthetic_scan(
    path: str | Path,
    profile: WaferProfile,
    recipe: Recipe,
    *,
    lines: slice = slice(None),
    latency_um: float = 0.0,
    stored_placement: Placement | None = None,
    power_drift_fraction: float = 0.0,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Render the recipe's scan of ``profile``'s wafer into a new scan file at ``path``.

    Parameters
    ----------
    lines
        Which of the plan's lines to render (all by default); the file's plan holds just those, renumbered.
    latency_um
        Each sample is taken this far beyond its planned place in the direction of travel.
    stored_placement
        The alignment written to the file (default: the wafer's true placement, a perfect alignment).
    power_drift_fraction
        The laser power ramps by this fraction over each pass, line by line; the power meter's readings in the
        line records follow it, so the analysis can correct it.
    progress
        Called with (lines done, lines total).
    """
    world = WaferWorld(profile)
    placement = world.placement
    plan = plan_scan(recipe, placement, accel_um_s2=3e6)
    chosen = np.arange(len(plan.lines))[lines]
    plan_lines = plan.lines[chosen].copy()
    plan_lines["line_index"] = np.arange(chosen.size)
    powers = plan.powers_w
    stored = stored_placement or placement
    writer = ScanFileWriter.create(
        path,
        recipe_toml=recipe_to_toml(recipe),
        station_toml="",
        identities={},
        plan_lines=plan_lines,
        powers_w=powers,
        plan_summary=plan.summary(),
        operator="synthetic",
        lot_id="SYNTHETIC",
        wafer_id=profile.name,
        software_version="plmapper synthetic",
        extra={"source": "synthetic", "profile": profile.name, "latency_um": str(latency_um)},
        fsync=False,
    )
    total = chosen.size * len(powers)
    with writer:
        writer.write_alignment(
            offset_x_um=stored.offset_x_um,
            offset_y_um=stored.offset_y_um,
            rotation_deg=stored.rotation_deg,
            residual_um=math.nan,
            sites=np.zeros(0),
        )
        done = 0
        for pass_index, power_w in enumerate(powers):
            for position, line in enumerate(plan_lines):
                count = int(line["sample_count"])
                start = np.array([line["x_start_um"], line["y_start_um"]], dtype=np.float64)
                stop = np.array([line["x_stop_um"], line["y_stop_um"]], dtype=np.float64)
                direction = (stop - start) / max(float(np.hypot(*(stop - start))), 1e-9)
                along = np.arange(count) * recipe.sampling.sample_pitch_um + latency_um
                x_wafer, y_wafer = placement.stage_to_wafer(
                    start[0] + direction[0] * along, start[1] + direction[1] * along
                )
                line_power = power_w * (1.0 + power_drift_fraction * position / max(chosen.size - 1, 1))
                samples = world.pl_signal_v(
                    np.asarray(x_wafer), np.asarray(y_wafer), np.full(count, line_power), np.zeros(count)
                )
                writer.write_line(
                    pass_index,
                    position,
                    samples.astype(np.float32),
                    {
                        "trigger_time_s": math.nan,
                        "wall_time_unix_s": 0.0,
                        "x_start_readback_um": float(start[0]),
                        "y_start_readback_um": float(start[1]),
                        "x_stop_readback_um": float(stop[0]),
                        "y_stop_readback_um": float(stop[1]),
                        "power_before_w": line_power,
                        "power_after_w": line_power,
                        "laser_setpoint_w": power_w,
                    },
                )
                done += 1
                if progress is not None:
                    progress(done, total)
        writer.finish(ScanStatus.COMPLETE, "synthetic scan complete")
    return Path(path)


def write_reference_wafer(
    path: str | Path, profile: WaferProfile, recipe: Recipe, *, lines: slice = slice(None)
) -> Path:
    """An EL reference wafer for classifier training and evaluation: the synthetic scan of ``profile``'s wafer,
    analysed, with the virtual prober's results of every chip imported as its ``/el_reference``.

    The prober's CSV is written next to the scan file (same name, ``.csv``), as a real prober's export would be.
    """
    path = Path(path)
    write_synthetic_scan(path, profile, recipe, lines=lines)
    analyze_scan(path)
    csv = path.with_suffix(".csv")
    export_el_csv(WaferWorld(profile), csv)
    import_el_csv(path, csv)
    return path
