"""One wafer inspection, start to finish: recipe → station → plan → scan file.

:func:`run_scan` is what ``plmapper scan`` and the Python API call. It loads and checks the recipe, connects the
station (starting the virtual one if the station file says so), plans the scan and shows the plan, creates the
scan file (or reopens an interrupted one to resume it), runs the :class:`~inspection.scan.ScanEngine`, and
returns what happened. A recipe or file problem is reported before anything moves.
"""

from __future__ import annotations

import importlib.metadata
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from drivers.interfaces import Axis
from drivers.station import StationConfig, connect
from drivers.virtual.bench import Placement
from inspection.plan import ScanPlan, plan_scan
from inspection.recipe import load_recipe, recipe_from_text, recipe_to_toml
from inspection.scan import ScanEngine, ScanOptions, ScanProgress
from inspection.scanfile import ScanFile, ScanFileWriter, ScanStatus


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
    on_plan: Callable[[ScanPlan], None] | None = None,
    on_progress: Callable[[ScanProgress], None] | None = None,
    options: ScanOptions | None = None,
) -> ScanOutcome:
    """Scan one wafer into ``output`` (a new file), or continue the interrupted scan in ``output`` (``resume``).

    A resumed scan uses the recipe stored in the file, not ``recipe_path``, so the two halves always match.
    """
    output = Path(output)
    if resume:
        stored = ScanFile(output)
        recipe = recipe_from_text(stored.recipe_toml, source=f"{output} (stored recipe)")
        recipe_text = stored.recipe_toml
    else:
        if output.exists():
            raise FileExistsError(f"{output} already exists: choose another name, or --resume it")
        recipe = load_recipe(recipe_path)
        recipe_text = recipe_to_toml(recipe)
    with connect(station_config) as station:
        accel = min(station.stage.acceleration_um_s2(axis) for axis in (Axis.X, Axis.Y))
        placement = Placement()  # the nominal placement; alignment (recipe.alignment) refines it
        plan = plan_scan(recipe, placement, accel_um_s2=accel)
        if on_plan is not None:
            on_plan(plan)
        if resume:
            writer = ScanFileWriter.resume(output)
        else:
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
            engine = ScanEngine(
                station, recipe, plan, writer, placement=placement, on_progress=on_progress, options=options
            )
            status = engine.run()
    return ScanOutcome(output, status, engine.status_message, plan)


def _station_text(config: StationConfig) -> str:
    return Path(config.source).read_text() if config.source else ""
