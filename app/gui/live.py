"""The live map of a running scan, from the lines already committed to its scan file (no Qt here).

:meth:`LiveMap.update` runs on a worker thread: it reopens the scan file (SWMR read: it sees the lines the engine
has committed), takes the lines added since the last update, and puts each chip's brightest sample into that
pass's map with the pipeline's per-chip kernel (as the first-pass flags do, :mod:`inspection.flagging`). The maps
stay here; the GUI is only told which pass changed. Large wafers are kept at the overview resolution (the
block's centre chip, :func:`app.gui.mapdata.overview_factor`).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from app.gui.mapdata import overview_factor
from cext import chip_kernels as kernels
from inspection.pipeline import line_geometry
from inspection.recipe import Recipe, recipe_from_text
from inspection.scanfile import ScanFile
from inspection.wafer import Placement, WaferLayout


class LiveMap:
    """Per-pass maps of the brightest sample on each chip, updated from a scan file being written."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.recipe: Recipe | None = None
        self.layout: WaferLayout | None = None
        self.placement: Placement | None = None
        self.factor = 1
        self.images: list[np.ndarray] = []
        self.lines_read: list[int] = []
        self.current_pass = 0
        self.powers_w: tuple[float, ...] = ()

    def update(self) -> bool:
        """Read the lines committed since the last call; True if a map changed. A file that does not exist yet (the
        engine creates it after the alignment) is not an error: nothing changes."""
        if not self.path.exists():
            return False
        with ScanFile(self.path) as scan:
            if self.recipe is None:
                self._start(scan)
            if self.placement is None:
                alignment = scan.alignment()
                self.placement = (
                    Placement(alignment["offset_x_um"], alignment["offset_y_um"], alignment["rotation_deg"])
                    if alignment is not None
                    else Placement()
                )
            changed = False
            for pass_index in range(scan.pass_count):
                records = scan.line_records(pass_index)
                new = records[self.lines_read[pass_index] :]
                if new.size:
                    self._add_lines(scan, pass_index, new)
                    self.lines_read[pass_index] = records.size
                    self.current_pass = pass_index
                    changed = True
            return changed

    def _start(self, scan: ScanFile) -> None:
        self.recipe = recipe_from_text(scan.recipe_toml, source=f"{self.path} (stored recipe)")
        self.layout = self.recipe.layout()
        shape = (self.layout.row_count, self.layout.column_count)
        self.factor = overview_factor(shape)
        reduced = (math.ceil(shape[0] / self.factor), math.ceil(shape[1] / self.factor))
        self.powers_w = scan.powers_w
        self.images = [np.full(reduced, np.nan, dtype=np.float32) for _ in scan.powers_w]
        self.lines_read = [0] * scan.pass_count
        self.plan_lines = scan.plan_lines

    def _add_lines(self, scan: ScanFile, pass_index: int, records: np.ndarray) -> None:
        assert self.recipe is not None and self.layout is not None and self.placement is not None
        layout, grid = self.layout, self.layout.grid
        geometry = line_geometry(
            self.plan_lines[records["line_index"]], layout, self.placement, self.recipe.sampling.sample_pitch_um
        )
        offsets = records["sample_offset"].astype(np.int64)
        counts = records["sample_count"].astype(np.int64)
        low, high = geometry.rows_spanned(counts)
        first_row = max(0, math.floor(float(low.min())) - 1)
        last_row = min(layout.row_count, math.ceil(float(high.max())) + 2)
        if last_row <= first_row:
            return
        start = int(offsets.min())
        samples = scan.samples_between(pass_index, start, int((offsets + counts).max()))
        acc = kernels.accumulators(last_row - first_row, layout.column_count)  # zeros, MAX_FOOT at -inf
        half_width = 0.5 * grid.chip_width_um / grid.pitch_x_um
        half_height = 0.5 * grid.chip_height_um / grid.pitch_y_um
        kernels.accumulate_lines(
            samples, offsets - start, counts, geometry.col0, geometry.row0, geometry.dcol, geometry.drow,
            half_width, half_height, half_width, half_height, np.inf, 0, first_row, acc,
        )  # fmt: skip
        peaks = acc[kernels.MAX_FOOT].astype(np.float32)
        peaks[~np.isfinite(peaks)] = np.nan
        d, offset = self.factor, self.factor // 2
        image = self.images[pass_index]
        for local, row in enumerate(range(first_row, last_row)):
            if row % d != offset:
                continue
            values = peaks[local, offset::d]
            target = image[row // d, : values.size]
            np.fmax(target, values, out=target)
