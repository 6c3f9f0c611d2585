"""One wafer inspection, start to finish: recipe → station → plan → scan file.

:func:`run_scan` is what ``plmapper scan`` and the Python API call. It loads and checks the recipe, connects the
station (starting the virtual one if the station file says so), plans the scan and shows the plan, creates the
scan file (or reopens an interrupted one to resume it), runs the :class:`~inspection.scan.ScanEngine`, and
returns what happened. A recipe or file problem is reported before anything moves.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from drivers.interfaces import Axis
from drivers.station import Station, StationConfig, connect
from inspection.alignment import AlignmentResult, align_wafer
from inspection.plan import ScanPlan, plan_scan
from inspection.recipe import Recipe, load_recipe, recipe_from_text, recipe_to_toml
from inspection.scan import (
    LineMotion,
    ScanEngine,
    ScanOptions,
    ScanProgress,
    acquire_line,
    check_laser_matches,
    stage_acceleration_um_s2,
)
from inspection.scanfile import ScanFile, ScanFileError, ScanFileWriter, ScanStatus
from inspection.wafer import Placement


@dataclass(frozen=True)
class ScanIdentity:
    """Who scans what: written into the scan file."""

    operator: str
    lot_id: str
    wafer_id: str


@dataclass(frozen=True)
class ScanOutcome:
    """The result of :func:`run_scan`."""

    path: Path
    status: ScanStatus
    message: str
    plan: ScanPlan


def software_version() -> str:
    try:
        return importlib.metadata.version("plmapper")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def run_scan(
    recipe_path: str | Path,
    station_config: StationConfig,
    output: str | Path,
    identity: ScanIdentity,
    *,
    resume: bool = False,
    on_plan: Callable[[ScanPlan, str], None] | None = None,
    on_progress: Callable[[ScanProgress], None] | None = None,
    options: ScanOptions | None = None,
    station: Station | None = None,
    on_engine: Callable[[ScanEngine], None] | None = None,
) -> ScanOutcome:
    """Scan one wafer into ``output`` (a new file), or continue the interrupted scan in ``output`` (``resume``).

    A resumed scan uses the recipe stored in the file, not ``recipe_path``, so the two halves always match.
    ``station`` is an already open station to use instead of connecting to ``station_config``'s. ``on_engine``
    receives the engine before it starts, so the caller can pause, resume or abort it from another thread.
    """
    output = Path(output)
    if resume:
        with ScanFile(output) as stored:
            recipe_text, alignment, stored_lines = stored.recipe_toml, stored.alignment(), stored.plan_lines
        recipe = recipe_from_text(recipe_text, source=f"{output} (stored recipe)")
        placement = (
            Placement(alignment["offset_x_um"], alignment["offset_y_um"], alignment["rotation_deg"])
            if alignment is not None
            else Placement()
        )
    else:
        if output.exists():
            raise FileExistsError(f"{output} already exists: choose another name, or --resume it")
        recipe = load_recipe(recipe_path)
        recipe_text = recipe_to_toml(recipe)
        placement = Placement()  # nominal: centred, not rotated, until alignment measures it
    options = options or ScanOptions()
    result: AlignmentResult | None = None
    opened = contextlib.nullcontext(station) if station is not None else connect(station_config)
    with opened as station_in_use:
        station = station_in_use
        accel = stage_acceleration_um_s2(station)
        plan = plan_scan(recipe, placement, accel_um_s2=accel)
        if on_plan is not None:
            on_plan(plan, "stored alignment" if resume and alignment is not None else "nominal placement")
        if resume:
            if not np.array_equal(stored_lines, plan.lines):
                raise ScanFileError(f"{output}: the stored plan no longer matches its recipe; it cannot be resumed")
            writer = ScanFileWriter.resume(output)
        else:
            if recipe.alignment.enabled:
                result = align_with_station(station, recipe, options)
                placement = result.placement
                plan = plan_scan(recipe, placement, accel_um_s2=accel)
                if on_plan is not None:
                    on_plan(
                        plan,
                        f"after alignment: offset ({placement.offset_x_um:.1f}, {placement.offset_y_um:.1f}) µm, "
                        f"rotation {placement.rotation_deg:.4f}°, residual {result.residual_um:.2f} µm",
                    )
            identities = {role: str(ident) for role, ident in station.identities().items()}
            writer = ScanFileWriter.create(
                output,
                recipe_toml=recipe_text,
                station_toml=_station_text(station_config),
                identities=identities,
                plan_lines=plan.lines,
                powers_w=plan.powers_w,
                plan_summary=plan.summary(),
                operator=identity.operator,
                lot_id=identity.lot_id,
                wafer_id=identity.wafer_id,
                software_version=software_version(),
                extra={"host": os.uname().nodename},
            )
        with writer:
            if result is not None:
                writer.write_alignment(
                    offset_x_um=placement.offset_x_um,
                    offset_y_um=placement.offset_y_um,
                    rotation_deg=placement.rotation_deg,
                    residual_um=result.residual_um,
                    sites=result.sites,
                )
            engine = ScanEngine(
                station, recipe, plan, writer, placement=placement, on_progress=on_progress, options=options
            )
            if on_engine is not None:
                on_engine(engine)
            status = engine.run()
    return ScanOutcome(output, status, engine.status_message, plan)


def align_with_station(station: Station, recipe: Recipe, options: ScanOptions) -> AlignmentResult:
    """Measure the wafer's placement with the recipe's highest power; the laser is off again afterwards."""
    laser = station.laser
    check_laser_matches(station, recipe)
    try:
        station.stage.move_absolute_um(Axis.Z, recipe.focus.focus_z_um)
        laser.set_power_w(max(recipe.excitation.powers_w))
        laser.set_emission(True)
        motion = LineMotion(
            velocity_um_s=recipe.sampling.velocity_um_s,
            sample_rate_hz=recipe.sampling.sample_rate_hz,
            accel_um_s2=stage_acceleration_um_s2(station),
            run_up_um=recipe.sampling.run_up_um,
        )

        def acquire(start: tuple[float, float], stop: tuple[float, float], count: int) -> np.ndarray:
            return acquire_line(station, start, stop, count, motion=motion, options=options).samples_v

        return align_wafer(recipe, acquire)
    finally:
        laser.set_emission(False)


def _station_text(config: StationConfig) -> str:
    return Path(config.source).read_text() if config.source else ""
