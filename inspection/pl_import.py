"""Import PL maps acquired on other tools (camera PL imaging, other mappers) as plmapper scan files.

A wafer imaged elsewhere arrives as one intensity image per excitation power (16-bit or float32 TIFF) and a small
sidecar TOML file that says where the pixels are on the wafer, which chip grid the wafer carries (a recipe's
``[substrate]`` and ``[grid]`` sections), which power each image was taken at, and how pixel values turn into
intensity. :func:`import_pl_map` turns that into a *new* scan file that the rest of plmapper reads like a scanned
one: the scan-level metadata of :class:`~inspection.scanfile.ScanFileWriter` (a recipe built from the sidecar,
the tool as the instrument identity, lot and wafer, ``settings/extra/source = "imported"``, the placement as the
alignment, status ``complete``, no raw lines) and a ``/results`` group in exactly the format of docs/results.md,
written by the pipeline's own writers, so :class:`~inspection.pipeline.ChipResults` and the classifier open it
unchanged. The format of the sidecar, the conventions and the limits are in docs/pl-import.md.

How a chip is measured from an image
------------------------------------
Pixel ``(k, r)`` (column ``k``, row ``r`` of the file; row 0 is the file's first row, which image viewers draw at
the top) has its centre at ``origin + (k - k0)·pixel_x·ex + (r - r0)·pixel_y·ey`` in the tool frame, ``(k0, r0)``
the sidecar's reference pixel and ``ex``, ``ey`` its column and row directions (±x, ±y); the sidecar's placement
(identity by default) takes the tool frame to the wafer frame, as an alignment takes the stage frame there::

    file row 0 ─▶ ┌───────────────┐  ─▶ column k grows ("+x")
                  │ ·  ·  ·  ·  · │
                  │ ·  ■  ·  ■  · │   ■ chip cores, · pixels
                  │ ·  ·  ·  ·  · │
                  └───────────────┘
                  ▼ row r grows ("-y": down the wafer)

Each image row is then exactly a scan line to the per-chip kernel (:func:`cext.chip_kernels.accumulate_lines`):
its pixels sit at ``(col0 + k·dcol, row0 + k·drow)`` in chip units, so each chip's footprint, core
(:attr:`AnalysisSettings.core_fraction`) and street get the same sums a scan gives them, and the chip records,
neighbour medians and efficiency ratio come from the pipeline's :func:`~inspection.pipeline.chip_records` and
:func:`~inspection.pipeline.write_chip_band`. Intensity = mean of the core pixels minus the dark level (the
sidecar's, else the median of the dimmest 0.2 % of 200 rows spread over the image, as the pipeline does). The
pipeline's sampling-phase correction does not apply: a camera sees the whole chip at once.

Before anything is written, the chip comb in each image must sit on whole chip indices (in 3 × 3 windows across
the image, so a wrong pixel size or pitch shows as a drift between windows), within
:attr:`AnalysisSettings.registration_tolerance`: a sidecar that places the grid wrongly is an error, never a
shifted map.

Memory and speed
----------------
The chip box is processed in bands of chip rows sized by :attr:`AnalysisSettings.memory_mb`; each band reads only
the image rows that reach it, in batches of at most 40 % of that memory. Uncompressed TIFFs are read a batch of
rows at a time straight from the file, compressed ones (deflate/zlib without extra codecs) are decoded strip by
strip or tile row by tile row (one strip or tile row is kept decoded), so an 8" image of 40 000 × 40 000 pixels
needs the band's memory, not the image's 3.2 GB. A compressed image stored as one single strip has to be decoded
whole. Images must be stored with their rows along the wafer's x axis (±5° placement rotation at most):
a band then needs a short run of image rows.

Examples
--------
>>> from inspection.pl_import import import_pl_map  # doctest: +SKIP
>>> import_pl_map("W01-sidecar.toml", "scans/W01-imported.h5")  # doctest: +SKIP
PosixPath('scans/W01-imported.h5')
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.metadata
import json
import math
import os
import struct
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import tifffile

from cext import chip_kernels as kernels
from inspection.alignment import phase_of, wrap
from inspection.pipeline import (
    CHIP_DTYPE,
    DARK_LINES,
    MIN_COMB_STRENGTH,
    AnalysisSettings,
    LineGeometry,
    PassSummary,
    ProgressCallback,
    chip_records,
    line_geometry,
    results_attributes,
    write_pass_bands,
)
from inspection.plan import LINE_DTYPE
from inspection.recipe import (
    CHIP_SAMPLES_MIN,
    MAX_POWERS,
    AlignmentSettings,
    ExcitationSettings,
    FocusSettings,
    GridSettings,
    Recipe,
    SamplingSettings,
    ScanMode,
    SpectraSettings,
    SubstrateSettings,
    recipe_to_toml,
)
from inspection.scanfile import ScanFile, ScanFileWriter, ScanStatus, _publish
from inspection.settings import SettingsError, from_mapping, load_toml, setting
from inspection.spectra_analysis import SPECTRUM_RESULT_DTYPE
from inspection.wafer import ROTATION_LIMIT_DEG, Placement

__all__ = [
    "IMAGE_DTYPES",
    "ExcitationImport",
    "ImageFile",
    "ImageSettings",
    "PlImportError",
    "PlMapImport",
    "PlacementSettings",
    "import_pl_map",
    "load_pl_map_sidecar",
]

IMAGE_DTYPES = (np.dtype(np.uint16), np.dtype(np.float32))
"""Pixel types read: 16-bit unsigned integers (camera counts) and 32-bit floats."""

MAX_IMAGE_PX = 1_000_000
"""Largest image side accepted (pixels)."""
MIN_PIXEL_UM, MAX_PIXEL_UM = 0.05, 500.0
"""Pixel sizes accepted (µm on the wafer)."""
FRAME_LIMIT_UM = 300_000.0
"""Largest tool-frame coordinate accepted for the reference pixel and the placement offset (µm)."""
UINT16_SATURATION = 65535
"""Default over-range level of 16-bit images."""
REGISTRATION_WINDOWS = 3
"""Windows per image axis in which the chip comb's position is checked (3 × 3 across the image)."""
REGISTRATION_WINDOW_PX = 256
"""Largest side of one registration window (pixels)."""
NO_SATURATION_V = float(np.finfo(np.float32).max)
"""Saturation level used for float images without one: no finite float32 pixel reaches it."""


_TIFF_ERRORS = (tifffile.TiffFileError, OSError, ValueError, TypeError, IndexError, KeyError, struct.error)
"""What tifffile raises on a file that is not a TIFF or has a damaged header."""


class PlImportError(SettingsError):
    """The images do not fit the sidecar or cannot be read. ``problems`` lists one message per problem (every image
    is checked before the first problem is reported). A :class:`~inspection.settings.SettingsError`, so the command
    line reports it as bad input."""


# ---------------------------------------------------------------------------------------------------------------------
# The sidecar
# ---------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageSettings:
    """``[image]``: how the pixels of every image sit on the wafer and what their values mean.

    Examples
    --------
    >>> ImageSettings(800, 600, 5.0, 5.0, origin_pixel=(0, 599), origin_x_um=-2000.0, origin_y_um=-1500.0).row_sign
    -1.0
    """

    width_px: int = setting(minimum=1, maximum=MAX_IMAGE_PX, doc="columns of every image")
    height_px: int = setting(minimum=1, maximum=MAX_IMAGE_PX, doc="rows of every image")
    pixel_size_x_um: float = setting(
        minimum=MIN_PIXEL_UM, maximum=MAX_PIXEL_UM, unit="µm", doc="pixel pitch along the image rows, on the wafer"
    )
    pixel_size_y_um: float = setting(
        minimum=MIN_PIXEL_UM, maximum=MAX_PIXEL_UM, unit="µm", doc="pixel pitch along the image columns, on the wafer"
    )
    origin_x_um: float = setting(
        minimum=-FRAME_LIMIT_UM,
        maximum=FRAME_LIMIT_UM,
        unit="µm",
        doc="x of the reference pixel's centre (wafer frame; the tool frame when [placement] is given)",
    )
    origin_y_um: float = setting(
        minimum=-FRAME_LIMIT_UM, maximum=FRAME_LIMIT_UM, unit="µm", doc="y of the reference pixel's centre"
    )
    origin_pixel: tuple[int, ...] = setting(
        (0, 0),
        minimum=0,
        maximum=MAX_IMAGE_PX,
        doc="[column, row] of the reference pixel as stored (row 0 = the file's first row, drawn at the top)",
    )
    column_direction: str = setting("+x", choices=("+x", "-x"), doc="direction in which the column index grows")
    row_direction: str = setting(
        "-y", choices=("-y", "+y"), doc="direction in which the row index grows ('-y': row 0 at the top)"
    )
    scale_v_per_count: float = setting(
        1.0,
        minimum=0.0,
        exclusive_minimum=True,
        maximum=1e9,
        doc="intensity (V or arbitrary units) per raw pixel unit; [[images]] may override it",
    )
    dark_level_counts: float | None = setting(
        None,
        minimum=-1e12,
        maximum=1e12,
        doc="raw pixel value without light; [[images]] may override it (default: from the dimmest pixels)",
    )
    saturation_counts: float | None = setting(
        None,
        minimum=0.0,
        exclusive_minimum=True,
        maximum=1e12,
        doc="raw value at or above which a pixel is over range (default: 65535 for 16-bit, none for float)",
    )
    intensity_unit: str = setting(
        "a.u.", choices=("a.u.", "V"), doc="'V' when the scale gives the station detector's volts"
    )

    def __post_init__(self) -> None:
        problems = []
        if len(self.origin_pixel) != 2:
            problems.append(f"origin_pixel: {list(self.origin_pixel)!r} must be [column, row] (2 integers)")
        else:
            column, row = self.origin_pixel
            if column >= self.width_px or row >= self.height_px:
                problems.append(
                    f"origin_pixel: {list(self.origin_pixel)!r} is not a pixel of a {self.width_px} × "
                    f"{self.height_px} image (columns 0..{self.width_px - 1}, rows 0..{self.height_px - 1})"
                )
        if problems:
            raise ValueError("\n".join(problems))

    @property
    def column_sign(self) -> float:
        """+1 when the column index grows along the wafer's +x, -1 along -x."""
        return 1.0 if self.column_direction == "+x" else -1.0

    @property
    def row_sign(self) -> float:
        """+1 when the row index grows along the wafer's +y, -1 along -y (row 0 at the top)."""
        return 1.0 if self.row_direction == "+y" else -1.0


@dataclass(frozen=True)
class ImageFile:
    """One ``[[images]]`` entry: an image file and the excitation power it was taken at."""

    file: str = setting(doc="TIFF file (relative paths: from the sidecar's folder)")
    power_w: float = setting(
        minimum=0.0, exclusive_minimum=True, maximum=1.0, unit="W", doc="excitation power of this image"
    )
    scale_v_per_count: float | None = setting(
        None, minimum=0.0, exclusive_minimum=True, maximum=1e9, doc="overrides image.scale_v_per_count"
    )
    dark_level_counts: float | None = setting(
        None, minimum=-1e12, maximum=1e12, doc="overrides image.dark_level_counts"
    )


@dataclass(frozen=True)
class ExcitationImport:
    """``[excitation]``: the excitation laser (the powers are the images')."""

    laser_wavelength_nm: float = setting(minimum=200.0, maximum=1100.0, unit="nm", doc="excitation wavelength")


@dataclass(frozen=True)
class PlacementSettings:
    """``[placement]`` (optional): ``wafer = R(-rotation)·(tool - offset)``, as an alignment places a wafer on the
    stage (:class:`~inspection.wafer.Placement`). Without it the image coordinates are wafer coordinates."""

    offset_x_um: float = setting(
        0.0, minimum=-FRAME_LIMIT_UM, maximum=FRAME_LIMIT_UM, unit="µm", doc="tool x of the wafer centre"
    )
    offset_y_um: float = setting(
        0.0, minimum=-FRAME_LIMIT_UM, maximum=FRAME_LIMIT_UM, unit="µm", doc="tool y of the wafer centre"
    )
    rotation_deg: float = setting(
        0.0,
        minimum=-ROTATION_LIMIT_DEG,
        maximum=ROTATION_LIMIT_DEG,
        unit="°",
        doc="wafer axes from the tool axes (counter-clockwise)",
    )

    def placement(self) -> Placement:
        return Placement(self.offset_x_um, self.offset_y_um, self.rotation_deg)


@dataclass(frozen=True)
class PlMapImport:
    """A validated sidecar: everything needed to import a set of PL images. Read with :func:`load_pl_map_sidecar`.

    Rules between sections: 2 to ``MAX_POWERS`` images with different powers and files; at least
    ``CHIP_SAMPLES_MIN`` (4) pixels across the smallest chip side in each direction, as a scan needs samples; the
    substrate and grid make a valid recipe; the image covers at least one usable chip.

    Raises
    ------
    ValueError
        One line per broken rule, each naming the field.
    """

    tool: str = setting(doc="the instrument that took the images (stored as the scan's instrument identity)")
    image: ImageSettings = setting(doc="pixel geometry and values")
    substrate: SubstrateSettings = setting(doc="as a recipe's [substrate]")
    grid: GridSettings = setting(doc="as a recipe's [grid]")
    excitation: ExcitationImport = setting(doc="excitation laser")
    images: tuple[ImageFile, ...] = setting(doc="one [[images]] entry per excitation power")
    lot_id: str = setting("", doc="lot the wafer belongs to")
    wafer_id: str = setting("", doc="the wafer")
    operator: str = setting("", doc="who acquired or imported the images")
    placement: PlacementSettings = setting(PlacementSettings(), doc="tool frame to wafer frame (default: identity)")

    def __post_init__(self) -> None:
        problems = []
        if not self.tool.strip():
            problems.append(f"tool: {self.tool!r} must name the instrument that took the images")
        count = len(self.images)
        if count < 2:
            problems.append(
                f"images: {count} image{'s' if count != 1 else ''} given; at least 2 are needed, one per excitation "
                "power (leakage shows only between a low and a high power)"
            )
        elif count > MAX_POWERS:
            problems.append(f"images: {count} images given; at most {MAX_POWERS} (one per power)")
        for later, entry in enumerate(self.images):
            for earlier in range(later):
                if self.images[earlier].power_w == entry.power_w:
                    problems.append(
                        f"images[{later}].power_w: {entry.power_w!r} W is also images[{earlier}]'s power "
                        "(one image per power)"
                    )
                if Path(self.images[earlier].file) == Path(entry.file):
                    problems.append(f"images[{later}].file: {entry.file!r} is also images[{earlier}]'s file")
        # as many pixels across a chip as a scan needs samples, so core and footprint mean the same
        for size, pixel in (("chip_width_um", "pixel_size_x_um"), ("chip_height_um", "pixel_size_y_um")):
            chip_um, pixel_um = getattr(self.grid, size), getattr(self.image, pixel)
            if pixel_um > chip_um / CHIP_SAMPLES_MIN:
                problems.append(
                    f"image.{pixel}: {pixel_um!r} µm is coarser than a quarter of grid.{size} ({chip_um:g} µm): "
                    f"at least {CHIP_SAMPLES_MIN} pixels must cross every chip (at most "
                    f"{chip_um / CHIP_SAMPLES_MIN:g} µm)"
                )
        if not problems:
            try:
                self.recipe()
            except ValueError as error:
                problems.extend(str(error).splitlines())
        if not problems:
            problems.extend(self._coverage_problems())
        if problems:
            raise ValueError("\n".join(problems))

    # -- derived -------------------------------------------------------------------------------------------------
    @property
    def passes(self) -> tuple[ImageFile, ...]:
        """The images by ascending power: pass ``i`` of the scan file is ``passes[i]``."""
        return tuple(sorted(self.images, key=lambda entry: entry.power_w))

    def recipe(self) -> Recipe:
        """The recipe stored with the import: the sidecar's substrate, grid, laser and powers; raster sampling at the
        pixel pitch (sample pitch = pixel x, line pitch = pixel y); no spectra, no alignment."""
        return self._recipe

    @cached_property
    def _recipe(self) -> Recipe:
        pixel_x = self.image.pixel_size_x_um
        # a power-of-two rate makes velocity / rate exactly the pixel size (the DMM's 1 kHz .. 1 MHz, ≤ 1 m/s)
        rate_hz = float(2 ** min(19, math.floor(math.log2(1e6 / pixel_x))))
        return Recipe(
            name=f"imported from {self.tool.strip()}",
            substrate=self.substrate,
            grid=self.grid,
            excitation=ExcitationSettings(
                self.excitation.laser_wavelength_nm, tuple(entry.power_w for entry in self.passes)
            ),
            sampling=SamplingSettings(
                ScanMode.RASTER, pixel_x * rate_hz, rate_hz, line_pitch_um=self.image.pixel_size_y_um
            ),
            spectra=SpectraSettings(),
            focus=FocusSettings(focus_z_um=0.0, safe_z_um=0.0, max_z_um=0.0),
            alignment=AlignmentSettings(enabled=False),
        )

    def placement_of_tool(self) -> Placement:
        """Where the wafer lies in the tool frame (stored as the scan's alignment)."""
        return self.placement.placement()

    def pixel_to_tool_um(self, column: Any, row: Any) -> tuple[np.ndarray, np.ndarray]:
        """Tool-frame position (µm) of pixel centres at (column, row) of the file."""
        image = self.image
        column0, row0 = self.image.origin_pixel
        x = (
            image.origin_x_um
            + (np.asarray(column, dtype=np.float64) - column0) * image.pixel_size_x_um * image.column_sign
        )
        y = image.origin_y_um + (np.asarray(row, dtype=np.float64) - row0) * image.pixel_size_y_um * image.row_sign
        return x, y

    def row_geometry(self) -> LineGeometry:
        """Every image row as a scan line on the chip grid: pixel ``k`` of row ``r`` sits at
        ``(col0[r] + k·dcol[r], row0[r] + k·drow[r])`` (box indices, chip centres at integers)."""
        image = self.image
        rows = np.arange(image.height_px)
        lines = np.zeros(image.height_px, dtype=LINE_DTYPE)
        lines["line_index"] = rows
        lines["x_start_um"], lines["y_start_um"] = self.pixel_to_tool_um(np.zeros(rows.size), rows)
        lines["x_stop_um"], lines["y_stop_um"] = self.pixel_to_tool_um(np.full(rows.size, image.width_px - 1), rows)
        lines["sample_count"] = image.width_px
        return line_geometry(lines, self.recipe().layout(), self.placement_of_tool(), image.pixel_size_x_um)

    def image_corners_um(self) -> tuple[np.ndarray, np.ndarray]:
        """Wafer-frame (x, y) of the image's four outer corners (pixel edges, not centres)."""
        image = self.image
        column, row = np.meshgrid([-0.5, image.width_px - 0.5], [-0.5, image.height_px - 0.5])
        return self.placement_of_tool().stage_to_wafer(*self.pixel_to_tool_um(column.ravel(), row.ravel()))

    def _coverage_problems(self) -> list[str]:
        """The image must cover at least one usable chip entirely (a wrong origin or placement puts it elsewhere)."""
        layout = self.recipe().layout()
        grid = layout.grid
        x, y = self.image_corners_um()
        cols, rows = layout.grid_position(x, y)
        half_col, half_row = 0.5 * grid.chip_width_um / grid.pitch_x_um, 0.5 * grid.chip_height_um / grid.pitch_y_um
        col_low = max(0, math.ceil(float(cols.min()) + half_col))
        col_high = min(layout.column_count - 1, math.floor(float(cols.max()) - half_col))
        row_low = max(0, math.ceil(float(rows.min()) + half_row))
        row_high = min(layout.row_count - 1, math.floor(float(rows.max()) - half_row))
        if col_low <= col_high and row_low <= row_high:
            first, last = layout.row_extent(np.arange(row_low, row_high + 1))
            if np.any((first >= 0) & (first <= col_high) & (last >= col_low)):
                return []
        return [
            f"image: the image covers x {x.min():.0f}..{x.max():.0f} µm, y {y.min():.0f}..{y.max():.0f} µm of the "
            f"wafer, where the grid has no usable chip (the {self.substrate.diameter_mm:g} mm wafer's usable area "
            f"lies within {layout.substrate.radius_um - layout.substrate.edge_exclusion_um:.0f} µm of its centre): "
            "check image.origin_x_um, image.origin_y_um, image.origin_pixel, the axis directions and [placement]"
        ]


def load_pl_map_sidecar(path: str | Path) -> PlMapImport:
    """Read and validate a sidecar file; every problem is reported at once.

    Relative image paths are taken from the sidecar's folder (the returned entries hold the resolved paths).

    Raises
    ------
    SettingsError
        A missing or malformed file, or bad fields: one problem per field, naming the file, the field, the value
        and what is allowed.

    Examples
    --------
    >>> plmap = load_pl_map_sidecar("W01-sidecar.toml")  # doctest: +SKIP
    >>> [entry.power_w for entry in plmap.passes]  # doctest: +SKIP
    [0.0005, 0.02]
    """
    path = Path(path)
    data = load_toml(path)
    entries = data.get("images")
    if isinstance(entries, list):
        for entry in entries:
            if isinstance(entry, dict) and isinstance(entry.get("file"), str) and entry["file"]:
                entry["file"] = str(path.parent / entry["file"])  # an absolute path stays as it is
    return from_mapping(PlMapImport, data, source=str(path))


# ---------------------------------------------------------------------------------------------------------------------
# Reading images
# ---------------------------------------------------------------------------------------------------------------------


class _Image:
    """One image file, read a band of rows at a time.

    Uncompressed, contiguous pixel data is read straight from the file; anything else is decoded segment by segment
    (a strip, or a row of tiles), so reading rows never needs more than those rows and one row of segments.
    """

    def __init__(self, name: str, path: Path, tiff: tifffile.TiffFile) -> None:
        self.name, self.path, self._tiff = name, path, tiff
        self._page = tiff.pages[0]
        self.shape: tuple[int, int] = tuple(self._page.shape)  # type: ignore[assignment]
        self.dtype = np.dtype(self._page.dtype)
        page = self._page
        # uncompressed and contiguous: rows are read straight from the file (a memory map would leave every page
        # read resident in the process, the whole image by the end); otherwise strip by strip or tile row by row
        self._offset: int | None = int(page.dataoffsets[0]) if page.is_final else None
        self._stored = self.dtype.newbyteorder(tiff.byteorder)
        self._decode = None if self._offset is not None else page.decode
        if page.is_tiled:
            self._segment_rows, self._segments_across = page.tilelength, math.ceil(self.shape[1] / page.tilewidth)
        else:
            self._segment_rows, self._segments_across = min(page.rowsperstrip or self.shape[0], self.shape[0]), 1
        self._cached: tuple[int, np.ndarray] | None = None

    @classmethod
    def open(cls, name: str, path: Path, width_px: int, height_px: int) -> tuple[_Image | None, list[str]]:
        """The image, or the problems that make it unusable (each naming the file)."""
        if not path.exists():
            return None, [f"{name}: {path} does not exist"]
        if not path.is_file():
            return None, [f"{name}: {path} is not a file"]
        try:
            tiff = tifffile.TiffFile(path)
        except _TIFF_ERRORS as error:
            return None, [f"{name}: {path} is not a readable TIFF file ({error})"]
        problems = []
        try:
            page = tiff.pages[0]
            pages = len(tiff.pages)
            shape = tuple(page.shape)
            dtype = np.dtype(page.dtype) if page.dtype is not None else None
        except _TIFF_ERRORS as error:
            tiff.close()
            return None, [f"{name}: {path} is a damaged TIFF file ({error})"]
        if pages > 1:
            problems.append(f"{name}: {path} holds {pages} images (pages); one image per file is read")
        if len(shape) != 2:
            problems.append(
                f"{name}: {path} holds an image of shape {shape}; one grey-level image (rows × columns) is read"
            )
        elif shape != (height_px, width_px):
            problems.append(
                f"{name}: {path} is {shape[1]} × {shape[0]} pixels (columns × rows), but the sidecar says "
                f"image.width_px × image.height_px = {width_px} × {height_px}"
            )
        if dtype not in IMAGE_DTYPES:
            problems.append(
                f"{name}: {path} has {dtype} pixels; 16-bit unsigned integer (uint16) or 32-bit float (float32) "
                "pixels are read"
            )
        size = path.stat().st_size
        ends = [int(offset) + int(count) for offset, count in zip(page.dataoffsets, page.databytecounts, strict=False)]
        if ends and max(ends) > size:
            problems.append(
                f"{name}: {path} is truncated or damaged: its pixel data reach byte {max(ends):,}, the file has "
                f"{size:,} bytes"
            )
        if not problems and not page.is_final:
            try:
                page.decode  # noqa: B018 - builds the decoder: an unsupported compression fails here
            except (ValueError, NotImplementedError) as error:
                problems.append(f"{name}: {path} cannot be decoded ({error}); store it uncompressed or with zlib")
        if problems:
            tiff.close()
            return None, problems
        return cls(name, path, tiff), []

    def rows(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start .. stop - 1`` as stored (stop - start, width)."""
        if self._offset is not None:
            width = self.shape[1]
            handle = self._tiff.filehandle
            handle.seek(self._offset + start * width * self.dtype.itemsize)
            out = np.empty((stop - start, width), dtype=self._stored)
            if handle.readinto(out) != out.nbytes:
                raise PlImportError([f"{self.name}: {self.path} ended before row {stop - 1}: truncated"])
            return out
        out = np.empty((stop - start, self.shape[1]), dtype=self.dtype)
        for segment_row in range(start // self._segment_rows, (stop - 1) // self._segment_rows + 1):
            top = segment_row * self._segment_rows
            block = self._decoded(segment_row)
            low, high = max(top, start), min(top + block.shape[0], stop)
            out[low - start : high - start] = block[low - top : high - top]
        return out

    def _decoded(self, segment_row: int) -> np.ndarray:
        """One strip, or one row of tiles, decoded (the last one is kept: rows are mostly read in order, a few at a
        time, and a strip or tile row holds many)."""
        if self._cached is not None and self._cached[0] == segment_row:
            return self._cached[1]
        page = self._page
        height, width = self.shape
        top = segment_row * self._segment_rows
        block = np.zeros((min(self._segment_rows, height - top), width), dtype=self.dtype)  # empty segments: 0
        handle = self._tiff.filehandle
        for segment_col in range(self._segments_across):
            index = segment_row * self._segments_across + segment_col
            offset, count = int(page.dataoffsets[index]), int(page.databytecounts[index])
            if offset == 0 or count == 0:
                continue
            handle.seek(offset)
            data = handle.read(count)
            try:
                segment, indices, _ = self._decode(data, index, jpegtables=page.jpegtables)
            except (ValueError, RuntimeError, zlib.error, NotImplementedError) as error:
                raise PlImportError(
                    [f"{self.name}: {self.path} is damaged: segment {index} cannot be decoded ({error})"]
                ) from None
            if segment is None:
                continue
            pixels = np.asarray(segment).reshape(segment.shape[1:3])  # (1, length, width, 1): one grey plane
            left = int(indices[3])
            rows, right = min(pixels.shape[0], block.shape[0]), min(left + pixels.shape[1], width)
            block[:rows, left:right] = pixels[:rows, : right - left]  # edge tiles are padded past the image
        self._cached = (segment_row, block)
        return block

    def samples(self, start: int, stop: int, scale: np.float32) -> np.ndarray:
        """Rows ``start .. stop - 1`` as float32 intensity (raw × scale); NaN or infinite pixels are an error."""
        raw = self.rows(start, stop)
        if raw.dtype.kind == "f":
            bad = ~np.isfinite(raw)
            if bad.any():
                rows, cols = np.nonzero(bad)
                value = raw[rows[0], cols[0]]
                raise PlImportError(
                    [
                        f"{self.name}: {self.path} has {int(bad.sum()):,} non-finite pixel(s) ({value}) in rows "
                        f"{start}..{stop - 1}, the first at row {start + int(rows[0])}, column {int(cols[0])}: "
                        "replace them (e.g. by the dark level) before importing"
                    ]
                )
        # float32 times float32: the same rounding as the saturation level, so a pixel at the level is saturated
        samples = raw.astype(np.float32)
        samples *= scale
        return samples

    def close(self) -> None:
        self._cached = None
        self._tiff.close()


@dataclass(frozen=True)
class _Pass:
    """One image as one pass: its file, power and how its values become intensity."""

    entry: ImageFile
    image: _Image
    scale: np.float32  # intensity per raw unit
    saturation_v: float  # samples at or above this are over range
    dark_v: float  # filled in by the dark estimate when the sidecar gives none
    dark_given: bool


# ---------------------------------------------------------------------------------------------------------------------
# Import
# ---------------------------------------------------------------------------------------------------------------------


def import_pl_map(
    sidecar_path: str | Path,
    out_scan_path: str | Path,
    settings: AnalysisSettings | None = None,
    *,
    progress: ProgressCallback | None = None,
) -> Path:
    """Import the PL images a sidecar describes into a new scan file with per-chip results.

    Parameters
    ----------
    sidecar_path
        The sidecar TOML file (docs/pl-import.md).
    out_scan_path
        The scan file to create; it must not exist (a scan file is never overwritten).
    settings
        Core fraction, minimum core samples, memory and registration tolerance as for the analysis of a scan
        (default :class:`AnalysisSettings`); its ``saturation_v`` and ``drift_exponent`` do not apply (the
        sidecar sets saturation, an image has no laser drift record).
    progress
        Called with (fraction done, message) now and then.

    Returns
    -------
    Path
        ``out_scan_path``. The file appears there only when complete: it is built under a temporary name in the
        same folder and linked to its name at the end, so a failure leaves nothing behind.

    Raises
    ------
    SettingsError
        The sidecar is missing, malformed or has bad fields (all listed).
    PlImportError
        An image is missing, unreadable, damaged, of the wrong size or pixel type, holds NaNs, or its chips do not
        sit where the sidecar's grid puts them (every image is checked before the first problem is reported, except
        non-finite pixels, which are found while the image is read).
    FileExistsError
        ``out_scan_path`` exists.
    FileNotFoundError
        ``out_scan_path``'s folder does not exist.
    """
    settings = settings or AnalysisSettings()
    report = progress or (lambda fraction, message: None)
    sidecar_path, out = Path(sidecar_path), Path(out_scan_path)
    plmap = load_pl_map_sidecar(sidecar_path)
    if out.exists():
        raise FileExistsError(f"{out} already exists: a scan file is never overwritten (choose another name)")
    if not out.parent.is_dir():
        raise FileNotFoundError(f"{out.parent}: no such folder for the scan file")
    source = f"the images of {sidecar_path}"
    passes = _open_passes(plmap, source)
    temporary = out.with_name(f".{out.name}.{uuid.uuid4().hex[:8]}.importing")
    try:
        report(0.0, "checking where the chips sit in the images")
        geometry = plmap.row_geometry()
        registrations = _check_registration(plmap, passes, geometry, settings, source)
        passes = [_with_dark_level(item) for item in passes]
        _write_scan(temporary, plmap, passes, sidecar_path)
        with ScanFile(temporary, for_update=True) as scan:
            group = scan.h5file.create_group("results")
            _Importer(plmap, passes, geometry, settings, group=group, report=report).run(registrations)
            scan.h5file.flush()
        with open(temporary, "rb+") as handle:  # the data on disk before the name points at it
            os.fsync(handle.fileno())
        _publish(temporary, out)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
        raise
    finally:
        for item in passes:
            item.image.close()
    report(1.0, "import complete")
    return out


def _open_passes(plmap: PlMapImport, source: str) -> list[_Pass]:
    """Open every image and check it against the sidecar (all problems at once, in the sidecar's order); the
    passes by ascending power."""
    image_settings = plmap.image
    problems: list[str] = []
    opened: list[tuple[ImageFile, _Image]] = []
    for index, entry in enumerate(plmap.images):
        name = f"images[{index}].file"
        image, found = _Image.open(name, Path(entry.file), image_settings.width_px, image_settings.height_px)
        problems += found
        if image is not None:
            opened.append((entry, image))
    if problems:
        for _, image in opened:
            image.close()
        raise PlImportError(problems, source=source)
    passes = []
    for entry, image in sorted(opened, key=lambda pair: pair[0].power_w):
        given_scale = entry.scale_v_per_count
        scale = np.float32(image_settings.scale_v_per_count if given_scale is None else given_scale)
        level = image_settings.saturation_counts
        if level is None and image.dtype == np.uint16:
            level = UINT16_SATURATION
        saturation_v = NO_SATURATION_V if level is None else float(np.float32(level) * scale)
        dark_counts = (
            entry.dark_level_counts if entry.dark_level_counts is not None else image_settings.dark_level_counts
        )
        dark_v = math.nan if dark_counts is None else float(np.float32(dark_counts) * scale)
        passes.append(_Pass(entry, image, scale, saturation_v, dark_v, dark_counts is not None))
    return passes


def _with_dark_level(item: _Pass) -> _Pass:
    """The pass with its dark level: the sidecar's, or (as the pipeline measures a scan's) the median of the
    dimmest 0.2 % of the pixels of up to DARK_LINES rows spread over the image (off-wafer area, streets, dead
    chips)."""
    if item.dark_given:
        return item
    height = item.image.shape[0]
    rows = np.unique(np.linspace(0, height - 1, min(DARK_LINES, height)).astype(np.int64))
    samples = np.concatenate([item.image.samples(int(row), int(row) + 1, item.scale).ravel() for row in rows])
    samples = samples[samples < item.saturation_v]
    if samples.size == 0:
        return dataclasses.replace(item, dark_v=0.0)
    keep = max(1, samples.size // 500)
    return dataclasses.replace(item, dark_v=float(np.median(np.partition(samples, keep)[:keep])))


def _check_registration(
    plmap: PlMapImport, passes: list[_Pass], geometry: LineGeometry, settings: AnalysisSettings, source: str
) -> list[tuple[float, float]]:
    """Per image, the chip comb's offset from whole indices (columns, rows; pitches), measured in windows across the
    image; every image's misfit is reported at once."""
    grid = plmap.recipe().layout().grid
    tolerance = settings.registration_tolerance
    height, width = passes[0].image.shape
    window_rows, window_cols = min(REGISTRATION_WINDOW_PX, height), min(REGISTRATION_WINDOW_PX, width)
    taper = np.outer(np.hanning(window_rows + 2)[1:-1], np.hanning(window_cols + 2)[1:-1])
    fractions = (np.arange(REGISTRATION_WINDOWS) + 0.5) / REGISTRATION_WINDOWS
    row_starts = np.unique(np.clip(np.round(fractions * height - window_rows / 2), 0, height - window_rows))
    col_starts = np.unique(np.clip(np.round(fractions * width - window_cols / 2), 0, width - window_cols))
    problems: list[tuple[int, str]] = []  # (image index in the sidecar, message): reported in the sidecar's order
    results = []
    hint = (
        "check image.pixel_size_*_um, image.origin_*, the axis directions, [placement] and the grid's pitch and origin"
    )
    for item in passes:
        phases: dict[str, list[float]] = {"col": [], "row": []}
        for row_start in row_starts.astype(np.int64).tolist():
            rows = np.arange(row_start, row_start + window_rows)
            band = item.image.samples(row_start, row_start + window_rows, item.scale).astype(np.float64)
            for col_start in col_starts.astype(np.int64).tolist():
                values = band[:, col_start : col_start + window_cols]
                # a tapered window: chips cut by its edges would pull the comb's phase
                weight = taper * (values < item.saturation_v)
                total = float(weight.sum())
                if total <= 0:
                    continue
                k = np.arange(col_start, col_start + window_cols)
                positions = {
                    "col": geometry.col0[rows, None] + k[None, :] * geometry.dcol[rows, None],
                    "row": geometry.row0[rows, None] + k[None, :] * geometry.drow[rows, None],
                }
                deviation = values - float(np.sum(weight * values)) / total
                spread = float(np.sum(weight * np.abs(deviation))) / total
                for axis, position in positions.items():
                    component = complex(np.sum(weight * deviation * np.exp(-2j * np.pi * position)))
                    if spread > 0 and abs(component) / total > MIN_COMB_STRENGTH * spread / 2:
                        phases[axis].append(wrap(phase_of(component, 1.0), 1.0))
        index = plmap.images.index(item.entry)
        name = f"images[{index}] ({Path(item.entry.file).name})"
        if not phases["col"] or not phases["row"]:
            problems.append(
                (
                    index,
                    f"{name}: no chip grid at the grid's pitch ({grid.pitch_x_um:g} × {grid.pitch_y_um:g} µm) is "
                    f"seen in the image: {hint}",
                )
            )
            results.append((math.nan, math.nan))
            continue
        for axis, pitch, along in (("col", grid.pitch_x_um, "column (x)"), ("row", grid.pitch_y_um, "row (y)")):
            worst = max(phases[axis], key=abs)
            if abs(worst) > tolerance:
                measured = ", ".join(f"{phase * pitch:+.1f}" for phase in phases[axis])
                problems.append(
                    (
                        index,
                        f"{name}: the chips sit {worst * pitch:+.1f} µm along the grid's {along} axis off where the "
                        f"sidecar puts them (tolerance {tolerance * pitch:.1f} µm; in windows across the image: "
                        f"{measured} µm): {hint}",
                    )
                )
        results.append((float(np.mean(phases["col"])), float(np.mean(phases["row"]))))
    if problems:
        raise PlImportError([message for _, message in sorted(problems, key=lambda pair: pair[0])], source=source)
    return results


def _write_scan(path: Path, plmap: PlMapImport, passes: list[_Pass], sidecar_path: Path) -> None:
    """The scan-level metadata: recipe, identity, lot and wafer, where the import came from, the placement as the
    alignment, and status complete (an import has no raw lines: its plan is empty)."""
    image = plmap.image
    placement = plmap.placement_of_tool()
    height, width = passes[0].image.shape
    described = [
        {
            "file": str(item.entry.file),
            "power_w": item.entry.power_w,
            "dtype": str(item.image.dtype),
            "scale_v_per_count": float(item.scale),
            "dark_v": item.dark_v,
            "dark_from": "sidecar" if item.dark_given else "dimmest pixels",
            "saturation_v": item.saturation_v,
        }
        for item in passes
    ]
    summary = (
        f"imported from {plmap.tool}: {len(passes)} images of {width} × {height} pixels of "
        f"{image.pixel_size_x_um:g} × {image.pixel_size_y_um:g} µm; no raw lines"
    )
    writer = ScanFileWriter.create(
        path,
        recipe_toml=recipe_to_toml(plmap.recipe()),
        station_toml="",
        identities={"imager": plmap.tool},
        plan_lines=np.zeros(0, dtype=LINE_DTYPE),
        powers_w=[item.entry.power_w for item in passes],
        plan_summary=summary,
        operator=plmap.operator,
        lot_id=plmap.lot_id,
        wafer_id=plmap.wafer_id,
        software_version=_software_version(),
        extra={
            "source": "imported",
            "tool": plmap.tool,
            "sidecar": str(sidecar_path),
            "sidecar_toml": sidecar_path.read_text(encoding="utf-8", errors="replace"),
            "images_json": json.dumps(described),
            "intensity_unit": image.intensity_unit,
            "pixel_size_um": f"{image.pixel_size_x_um!r} x {image.pixel_size_y_um!r}",
        },
        fsync=False,  # a temporary file: it is fsync'ed once, complete, before it gets its name
    )
    with writer:
        writer.write_alignment(
            offset_x_um=placement.offset_x_um,
            offset_y_um=placement.offset_y_um,
            rotation_deg=placement.rotation_deg,
            residual_um=math.nan,
            sites=np.zeros(0),
        )
        writer.event("info", f"imported from {plmap.tool} with {sidecar_path.name}")
        writer.finish(ScanStatus.COMPLETE, summary)


def _software_version() -> str:
    try:
        return importlib.metadata.version("plmapper")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


class _Importer:
    """Per-chip results of every image into ``/results``, band by band of chip rows (as the pipeline's passes)."""

    def __init__(
        self,
        plmap: PlMapImport,
        passes: list[_Pass],
        geometry: LineGeometry,
        settings: AnalysisSettings,
        *,
        group: h5py.Group,
        report: ProgressCallback,
    ) -> None:
        self.plmap, self.passes, self.geometry, self.settings = plmap, passes, geometry, settings
        self.group, self.report = group, report
        self.layout = plmap.recipe().layout()
        grid = self.layout.grid
        self.shape = (self.layout.row_count, self.layout.column_count)
        self.half_width = 0.5 * grid.chip_width_um / grid.pitch_x_um
        self.half_height = 0.5 * grid.chip_height_um / grid.pitch_y_um
        self.sample_area_um2 = plmap.image.pixel_size_x_um * plmap.image.pixel_size_y_um
        self.usable = self.layout.usable_mask()
        height, width = passes[0].image.shape
        self.width = width
        self.counts = np.full(height, width, dtype=np.int64)
        # the pipeline's split: 60 % for a band's accumulators and records, 40 % for the pixels read at once
        per_row = self.shape[1] * (kernels.FIELD_COUNT * 8 + CHIP_DTYPE.itemsize + 16)
        self.band_rows = int(max(1, min(self.shape[0], settings.memory_mb * 2**20 * 0.6 // per_row)))
        raw_bytes = max(item.image.dtype.itemsize for item in passes)
        self.rows_per_read = int(max(1, settings.memory_mb * 2**20 * 0.4 // ((4 + raw_bytes) * width)))
        self.chunks = (min(64, self.shape[0]), min(1024, self.shape[1]))  # as the pipeline's (docs/results.md)

    def run(self, registrations: list[tuple[float, float]]) -> None:
        count = len(self.passes)
        self.ratio: h5py.Dataset | None = None
        summaries = []
        for index, (item, (registration_col, registration_row)) in enumerate(
            zip(self.passes, registrations, strict=True)
        ):
            if count > 1 and index == count - 1:  # written band by band with the last pass
                self.ratio = self.group.create_dataset(
                    "efficiency_ratio", shape=self.shape, dtype="<f4", chunks=self.chunks
                )
                self.ratio.attrs["passes"] = [0, count - 1]
            measured = self._pass(index, item)
            summaries.append(
                PassSummary(
                    power_w=item.entry.power_w,
                    lines=int(self.counts.size),
                    bidirectional_offset_um=0.0,
                    registration_col=registration_col,
                    registration_row=registration_row,
                    dark_v=item.dark_v,
                    power_spread=0.0,
                    chips_measured=measured,
                    line_phase_loss=[],
                )
            )
        self.group.create_dataset("spectra", data=np.zeros(0, SPECTRUM_RESULT_DTYPE))
        powers = [item.entry.power_w for item in self.passes]
        self.group.attrs.update(results_attributes(self.settings, self.plmap.placement_of_tool(), summaries, powers))

    def _pass(self, index: int, item: _Pass) -> int:
        dataset = self.group.create_dataset(
            f"pass_{index:03d}/chips", shape=self.shape, dtype=CHIP_DTYPE, chunks=self.chunks
        )
        dataset.attrs["power_w"] = item.entry.power_w
        low_pass = self.group["pass_000/chips"] if self.ratio is not None else None
        return write_pass_bands(dataset, self._bands(index, item), ratio=self.ratio, low_pass=low_pass)

    def _bands(self, index: int, item: _Pass) -> Iterator[tuple[int, np.ndarray]]:
        """The pass's chip records, band by band of chip rows, reporting progress as each band starts."""
        for first_row in range(0, self.shape[0], self.band_rows):
            last_row = min(first_row + self.band_rows, self.shape[0])
            self.report(
                0.05 + 0.95 * (index + first_row / self.shape[0]) / len(self.passes),
                f"image {index} ({item.entry.power_w * 1e3:g} mW): chip rows {first_row}..{last_row - 1}",
            )
            yield (
                first_row,
                chip_records(
                    self._accumulate(item, first_row, last_row),
                    self.usable[first_row:last_row],
                    grid=self.layout.grid,
                    power_w=item.entry.power_w,
                    dark_v=item.dark_v,
                    sample_area_um2=self.sample_area_um2,
                    min_core_samples=self.settings.min_core_samples,
                ),
            )

    def _accumulate(self, item: _Pass, first_row: int, last_row: int) -> np.ndarray:
        """The kernel's per-chip sums over chip rows ``first_row .. last_row - 1``, each image row a scan line."""
        geometry, settings = self.geometry, self.settings
        acc = kernels.accumulators(last_row - first_row, self.shape[1])  # zeros, MAX_FOOT at -inf
        chosen = geometry.lines_in_rows(self.counts, first_row, last_row)
        if chosen.size == 0:
            return acc
        # image rows run along the chip rows: the ones reaching a band are consecutive
        for start in range(int(chosen[0]), int(chosen[-1]) + 1, self.rows_per_read):
            stop = min(start + self.rows_per_read, int(chosen[-1]) + 1)
            samples = item.image.samples(start, stop, item.scale)
            kernels.accumulate_lines(
                samples.reshape(-1),
                np.arange(stop - start, dtype=np.int64) * self.width,
                self.counts[start:stop],
                geometry.col0[start:stop],
                geometry.row0[start:stop],
                geometry.dcol[start:stop],
                geometry.drow[start:stop],
                self.half_width,
                self.half_height,
                self.half_width * settings.core_fraction,
                self.half_height * settings.core_fraction,
                item.saturation_v,
                0,
                first_row,
                acc,
            )
        return acc
