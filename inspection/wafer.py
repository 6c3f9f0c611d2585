"""Wafer geometry: substrate outline, edge exclusion, chip grid and chip index.

Everything here is pure, vectorised numpy and scales to an 8" wafer at 20 µm pitch (~78 M chips): no per-chip
Python objects are ever built. Chip membership is stored as at most two column intervals per row (two only where
the notch splits a row), so counts, per-chip queries and row extents cost O(rows); full masks are filled row by
row, so their peak memory is the mask itself.

Frames
------
Wafer frame: origin at the wafer centre, µm, +x right and +y up, looking at the device (front) side. Angles are
counter-clockwise from +x, in degrees. The default wafer frame has the primary flat (or the notch) at the bottom
(270°). Grid frame: the chip grid's axes, rotated by ``ChipGrid.rotation_deg`` (counter-clockwise, |θ| ≤ 5°) from
the wafer axes, anchored at ``(origin_x_um, origin_y_um)``, the centre of one chip (the anchor chip).

Chip index convention (SEMI E142 defaults: origin lower-left, axes up-right)
---------------------------------------------------------------------------
A chip is labelled ``(col, row)``. Column 0 is the leftmost column and row 0 the bottom row of the *index box*;
``col`` increases to +x (right) and ``row`` to +y (up), along the grid axes::

          row
           ^      . . # # . .
           3      . # # # # .
           2      # # # # # #        # chip fully on the substrate
           1      . # # # # .        . in the box, not fully on it
           0      . . # # . .
                  0 1 2 3 4 5 -> col
                    \\_flat_/        primary flat / notch at the bottom (270°)

The index box is the bounding box of all chips that lie fully on the *physical* substrate. The edge exclusion does
not change it, and neither does the way a view is rotated or flipped: a chip's label depends only on the substrate
and the grid. The centre of chip ``(col, row)`` is::

    centre = origin + R(rotation) · ((col − anchor_col) · pitch_x, (row − anchor_row) · pitch_y)

where ``(anchor_col, anchor_row) = WaferLayout.anchor_index`` is the anchor chip's index (it may lie outside the
box when the grid origin is off the wafer). Arrays indexed by chip use ``mask[row, col]``, row 0 = bottom row, so
display code must flip vertically (``origin="lower"``) to draw the wafer with the flat at the bottom.

Tolerance
---------
Points and chips exactly on a boundary count as inside: every boundary is widened by ``TOLERANCE_UM`` (1e-9 µm),
far above the float64 rounding of coordinates up to 1e5 µm (~1e-11 µm) and far below any physical size.

See docs/wafer-geometry.md for the formulas and figures.

Examples
--------
>>> layout = WaferLayout(Substrate.from_inches(2), ChipGrid(1000.0, 1000.0, 800.0, 800.0))
>>> layout.column_count, layout.row_count, layout.chip_count
(49, 48, 1476)
>>> layout.chip_center_um(*layout.anchor_index)  # the anchor chip sits on the grid origin
(np.float64(0.0), np.float64(0.0))
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = [
    "NOTCH_ANGLE_DEG",
    "NOTCH_DEPTH_MM",
    "ROTATION_LIMIT_DEG",
    "SUBSTRATE_DIAMETERS_MM",
    "TOLERANCE_UM",
    "ChipGrid",
    "Placement",
    "Substrate",
    "WaferLayout",
]

SUBSTRATE_DIAMETERS_MM = (50.8, 76.2, 100.0, 150.0, 200.0)
"""Diameters of the supported substrates: 2", 3", 4", 6" and 8" (200 mm)."""

# SEMI M1 flat lengths (primary, secondary) in mm, from docs/shared domain table section 3. 200 mm has a notch.
_FLAT_LENGTHS_MM = {50.8: (15.88, 8.0), 76.2: (22.22, 11.18), 100.0: (32.5, 18.0), 150.0: (57.5, 37.5)}
_NOTCHED_DIAMETERS_MM = (200.0,)
_DIAMETER_BY_INCHES = {2: 50.8, 3: 76.2, 4: 100.0, 6: 150.0, 8: 200.0}

NOTCH_DEPTH_MM = 1.0
"""Radial depth of the 200 mm notch (SEMI M1: 1.00 mm, +0.25/−0.00)."""
NOTCH_ANGLE_DEG = 90.0
"""Included angle of the notch V (SEMI M1: 90°, +5/−1°). Modelled as a sharp V; the real notch bottom is rounded."""
ROTATION_LIMIT_DEG = 5.0
"""Largest |ChipGrid.rotation_deg| accepted: a loading θ error, not a second grid orientation."""
TOLERANCE_UM = 1e-9
"""Boundary tolerance: a point or chip closer than this to the inside of a boundary counts as inside."""

_MM_TO_UM = 1000.0

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]
BoolArray = NDArray[np.bool_]


def _unit_vector(angle_deg: float) -> tuple[float, float]:
    """(cos, sin) of an angle, exact at multiples of 90° so axis-aligned edges test exactly."""
    quarter, rest = divmod(float(angle_deg), 90.0)
    if rest == 0.0:
        return ((1.0, 0.0), (0.0, 1.0), (-1.0, 0.0), (0.0, -1.0))[int(quarter) % 4]
    angle_rad = math.radians(angle_deg)
    return math.cos(angle_rad), math.sin(angle_rad)


def _as_coordinate(value: ArrayLike) -> FloatArray:
    return np.asarray(value, dtype=np.float64)


def _as_index(value: ArrayLike, name: str) -> IntArray:
    """Integer chip indices as int64; empty input of any dtype is accepted (``np.asarray([])`` is float)."""
    array = np.asarray(value)
    if array.size and not np.issubdtype(array.dtype, np.integer):
        raise TypeError(f"{name} must hold integer chip indices, got dtype {array.dtype}")
    return array.astype(np.int64, copy=False)


# ---------------------------------------------------------------------------------------------------------------------
# Regions: a disc cut by half-planes (flats) and at most one V wedge (notch). The physical substrate and the usable
# area (every boundary offset inward by the edge exclusion) are both regions of this kind.
# ---------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _HalfPlaneCut:
    """Removes the points with ``p · u > distance_um`` (u = unit vector towards the flat's midpoint)."""

    angle_deg: float
    distance_um: float

    @cached_property
    def direction(self) -> tuple[float, float]:
        return _unit_vector(self.angle_deg)


@dataclass(frozen=True)
class _WedgeCut:
    """Removes the open V wedge with apex at ``apex_um · u`` opening outward along u with half-angle α."""

    angle_deg: float
    apex_um: float
    half_angle_deg: float

    @cached_property
    def direction(self) -> tuple[float, float]:
        return _unit_vector(self.angle_deg)

    @cached_property
    def walls(self) -> tuple[tuple[float, float], tuple[float, float]]:
        """Outward directions of the two walls, u rotated by ±α."""
        return _unit_vector(self.angle_deg + self.half_angle_deg), _unit_vector(self.angle_deg - self.half_angle_deg)

    @cached_property
    def inward_normals(self) -> tuple[tuple[float, float], tuple[float, float]]:
        """Unit normals of the walls pointing into the wedge, u rotated by ∓(90° − α)."""
        return (
            _unit_vector(self.angle_deg - (90.0 - self.half_angle_deg)),
            _unit_vector(self.angle_deg + (90.0 - self.half_angle_deg)),
        )

    def penetration_um(self, x_um: FloatArray, y_um: FloatArray) -> FloatArray:
        """Distance into the wedge past its nearer wall (> 0 inside, ≤ 0 outside)."""
        (n1x, n1y), (n2x, n2y) = self.inward_normals
        ux, uy = self.direction
        apex_x, apex_y = self.apex_um * ux, self.apex_um * uy
        return np.minimum((x_um - apex_x) * n1x + (y_um - apex_y) * n1y, (x_um - apex_x) * n2x + (y_um - apex_y) * n2y)


@dataclass(frozen=True)
class _Region:
    radius_um: float
    flats: tuple[_HalfPlaneCut, ...]
    notch: _WedgeCut | None

    def contains(self, x_um: ArrayLike, y_um: ArrayLike) -> BoolArray:
        x, y = np.broadcast_arrays(_as_coordinate(x_um), _as_coordinate(y_um))
        inside = x * x + y * y <= (self.radius_um + TOLERANCE_UM) ** 2
        for flat in self.flats:
            ux, uy = flat.direction
            inside &= x * ux + y * uy <= flat.distance_um + TOLERANCE_UM
        if self.notch is not None:
            inside &= self.notch.penetration_um(x, y) <= TOLERANCE_UM
        return inside

    def convex_interval(
        self, ax: FloatArray, ay: FloatArray, dx: float, dy: float
    ) -> tuple[FloatArray, FloatArray, BoolArray]:
        """The parameters ``t`` in ``[lo, hi]`` at which the points ``a + t·d`` lie in the disc and behind every
        flat (the region's convex part; the notch is the caller's business), and where no ``t`` does."""
        # disc: |a + t·d|² ≤ ρ²  ⇔  A·t² + 2b·t + c ≤ 0
        big_a = dx * dx + dy * dy
        b = ax * dx + ay * dy
        c = ax * ax + ay * ay - (self.radius_um + TOLERANCE_UM) ** 2
        discriminant = b * b - big_a * c
        root = np.sqrt(np.maximum(discriminant, 0.0))
        lo, hi = (-b - root) / big_a, (-b + root) / big_a
        empty = discriminant < 0.0
        for flat in self.flats:
            ux, uy = flat.direction
            slope = dx * ux + dy * uy  # (a + t·d)·u ≤ distance  ⇔  t·slope ≤ distance − a·u
            rhs = flat.distance_um + TOLERANCE_UM - (ax * ux + ay * uy)
            if slope > 0.0:
                hi = np.minimum(hi, rhs / slope)
            elif slope < 0.0:
                lo = np.maximum(lo, rhs / slope)
            else:
                empty |= rhs < 0.0
        return lo, hi, empty

    def row_segments(self, grid: ChipGrid, rows: IntArray) -> IntArray:
        """Column intervals of the chips fully inside the region, per grid row.

        ``rows`` and the returned columns are grid-relative (the anchor chip is (0, 0)). Returns an (n, 4) int64
        array ``(start1, stop1, start2, stop2)`` of inclusive intervals, ``start1 ≤ stop1 < start2 ≤ stop2``;
        an empty interval is (0, −1). Two intervals only where the notch splits a row.

        Chip i of row j is the rectangle centred at ``c0(j) + i·v`` (v = pitch_x along the grid x axis). Each
        convex constraint (disc, flat) holds at all four corners iff it holds for the rectangle, and gives an
        interval of real i: a quadratic for the disc, linear for a flat. The notch is not convex; a rectangle
        overlaps the (convex) wedge iff no separating axis exists among the rectangle's two axes and the wedge's
        two wall normals (separating axis theorem), which also gives an interval of i: the hole.
        """
        rows = np.asarray(rows, dtype=np.int64)
        (exx, exy), (eyx, eyy) = grid.axes
        half_w, half_h = grid.chip_width_um / 2.0, grid.chip_height_um / 2.0
        vx, vy = grid.pitch_x_um * exx, grid.pitch_x_um * exy
        base_x = grid.origin_x_um + rows * grid.pitch_y_um * eyx
        base_y = grid.origin_y_um + rows * grid.pitch_y_um * eyy

        lo = np.full(rows.shape, -np.inf)
        hi = np.full(rows.shape, np.inf)
        empty = np.zeros(rows.shape, dtype=bool)
        for sign_w in (-1.0, 1.0):
            for sign_h in (-1.0, 1.0):
                corner_x = base_x + sign_w * half_w * exx + sign_h * half_h * eyx
                corner_y = base_y + sign_w * half_w * exy + sign_h * half_h * eyy
                corner_lo, corner_hi, corner_empty = self.convex_interval(corner_x, corner_y, vx, vy)
                lo, hi = np.maximum(lo, corner_lo), np.minimum(hi, corner_hi)
                empty |= corner_empty
        empty |= ~(lo <= hi)
        first = np.ceil(np.where(empty, 0.0, lo)).astype(np.int64)
        last = np.floor(np.where(empty, -1.0, hi)).astype(np.int64)
        empty |= first > last
        first[empty], last[empty] = 0, -1

        segments = np.empty((*rows.shape, 4), dtype=np.int64)
        segments[..., 0], segments[..., 1] = first, last
        segments[..., 2], segments[..., 3] = 0, -1
        if self.notch is not None:
            hole_first, hole_last = self._notch_hole(
                self.notch, grid, base_x=base_x, base_y=base_y, v=(vx, vy), first=first, last=last
            )
            has_hole = (hole_first <= hole_last) & ~empty
            # [first, last] minus [hole_first, hole_last] (hole clipped to the row): left and right remainders.
            segments[..., 1] = np.where(has_hole, hole_first - 1, last)
            segments[..., 2] = np.where(has_hole, hole_last + 1, 0)
            segments[..., 3] = np.where(has_hole, last, -1)
            for start, stop in ((0, 1), (2, 3)):
                void = segments[..., start] > segments[..., stop]
                segments[..., start][void], segments[..., stop][void] = 0, -1
            # Keep the first interval the non-empty one when the hole eats the left part of the row.
            shift = (segments[..., 0] > segments[..., 1]) & (segments[..., 2] <= segments[..., 3])
            segments[shift] = segments[shift][:, [2, 3, 0, 1]]
        return segments

    @staticmethod
    def _notch_hole(
        notch: _WedgeCut,
        grid: ChipGrid,
        *,
        base_x: FloatArray,
        base_y: FloatArray,
        v: tuple[float, float],
        first: IntArray,
        last: IntArray,
    ) -> tuple[IntArray, IntArray]:
        """Integer i range of the chips that overlap the open notch wedge by more than the tolerance."""
        ex, ey = grid.axes
        half_w, half_h = grid.chip_width_um / 2.0, grid.chip_height_um / 2.0
        ux, uy = notch.direction
        apex_x, apex_y = notch.apex_um * ux, notch.apex_um * uy
        (d1x, d1y), (d2x, d2y) = notch.walls
        lower = np.full(base_x.shape, -np.inf)
        upper = np.full(base_x.shape, np.inf)
        for kx, ky in (ex, ey, *notch.inward_normals):
            # Projections on axis k: rectangle [centre ± reach], wedge [apex·k + λ1·(d1·k) + λ2·(d2·k), λ ≥ 0].
            reach = half_w * abs(ex[0] * kx + ex[1] * ky) + half_h * abs(ey[0] * kx + ey[1] * ky)
            apex_k = apex_x * kx + apex_y * ky
            wall1_k, wall2_k = d1x * kx + d1y * ky, d2x * kx + d2y * ky
            wedge_lo = apex_k if min(wall1_k, wall2_k) >= 0.0 else -np.inf
            wedge_hi = apex_k if max(wall1_k, wall2_k) <= 0.0 else np.inf
            centre_k = base_x * kx + base_y * ky
            slope = v[0] * kx + v[1] * ky
            # Overlap deeper than the tolerance on this axis: centre + reach > wedge_lo + tol and
            # centre − reach < wedge_hi − tol, with centre = centre_k + i·slope.
            need_lo = wedge_lo + TOLERANCE_UM - centre_k - reach
            need_hi = wedge_hi - TOLERANCE_UM - centre_k + reach
            if slope > 0.0:
                lower, upper = np.maximum(lower, need_lo / slope), np.minimum(upper, need_hi / slope)
            elif slope < 0.0:
                lower, upper = np.maximum(lower, need_hi / slope), np.minimum(upper, need_lo / slope)
            else:
                separated = ~((need_lo < 0.0) & (need_hi > 0.0))
                lower = np.where(separated, np.inf, lower)
        # Open interval (lower, upper) of overlapping i, clipped to the row so infinities never reach the int cast.
        lower = np.clip(lower, first - 1.0, last + 1.0)
        upper = np.clip(upper, first - 1.0, last + 1.0)
        return np.floor(lower).astype(np.int64) + 1, np.ceil(upper).astype(np.int64) - 1

    def outline(self, points_per_arc: int) -> tuple[FloatArray, FloatArray]:
        """Closed counter-clockwise polygon of the region boundary; empty arrays if the region is empty."""
        rho = self.radius_um
        nothing = (np.empty(0), np.empty(0))

        def on_circle(angle_rad: float) -> tuple[float, float]:
            return rho * math.cos(angle_rad), rho * math.sin(angle_rad)

        flat_cuts: list[_ArcCut] = []
        for flat in self.flats:
            if flat.distance_um >= rho:
                continue  # the chord misses the circle: nothing cut
            if flat.distance_um <= -rho:
                return nothing
            centre = math.radians(flat.angle_deg) % (2.0 * math.pi)
            half_span = math.acos(flat.distance_um / rho)
            flat_cuts.append(_ArcCut(centre - half_span, centre + half_span, flat))
        cuts: list[tuple[float, float, list[tuple[float, float]]]] = []
        if len(flat_cuts) == 2:
            merged = _merge_flat_cuts(flat_cuts[0], flat_cuts[1], rho)
            if merged is None:
                return nothing
            cuts.extend(merged)
        else:
            cuts.extend((cut.start, cut.end, [on_circle(cut.start), on_circle(cut.end)]) for cut in flat_cuts)

        if self.notch is not None and self.notch.apex_um < rho:
            notch = self.notch
            ratio = notch.apex_um * math.sin(math.radians(notch.half_angle_deg)) / rho
            if ratio <= -1.0:
                return nothing  # the disc lies inside the wedge
            # Where a wall meets the circle at angle φ from u: ρ·sin(α − |φ|) = apex·sin α.
            half_span = math.radians(notch.half_angle_deg) - math.asin(ratio)
            centre = math.radians(notch.angle_deg) % (2.0 * math.pi)
            ux, uy = notch.direction
            apex = (notch.apex_um * ux, notch.apex_um * uy)
            start, end = centre - half_span, centre + half_span
            cuts.append((start, end, [on_circle(start), apex, on_circle(end)]))

        if not cuts:
            angles = np.linspace(0.0, 2.0 * math.pi, points_per_arc, endpoint=False)
            x, y = rho * np.cos(angles), rho * np.sin(angles)
            return np.append(x, x[0]), np.append(y, y[0])
        cuts.sort(key=lambda cut: cut[0])
        xs: list[FloatArray] = []
        ys: list[FloatArray] = []
        for index, (_, end, vertices) in enumerate(cuts):
            xs.append(np.array([vx for vx, _ in vertices]))
            ys.append(np.array([vy for _, vy in vertices]))
            wrap = 2.0 * math.pi if index == len(cuts) - 1 else 0.0
            next_start = cuts[(index + 1) % len(cuts)][0] + wrap
            # Arc points strictly between this cut's end and the next cut's start (the endpoints are vertices).
            angles = np.linspace(end, next_start, points_per_arc)[1:-1]
            xs.append(rho * np.cos(angles))
            ys.append(rho * np.sin(angles))
        x, y = np.concatenate(xs), np.concatenate(ys)
        return np.append(x, x[0]), np.append(y, y[0])


def _angle_gap(angle_a_rad: float, angle_b_rad: float) -> float:
    """Smallest absolute difference between two angles, in [0, π]."""
    gap = (angle_a_rad - angle_b_rad) % (2.0 * math.pi)
    return min(gap, 2.0 * math.pi - gap)


@dataclass(frozen=True)
class _ArcCut:
    """Angular span [start, end] (rad, counter-clockwise) of the circle removed by one flat."""

    start: float
    end: float
    flat: _HalfPlaneCut


def _merge_flat_cuts(
    cut_a: _ArcCut, cut_b: _ArcCut, radius_um: float
) -> list[tuple[float, float, list[tuple[float, float]]]] | None:
    """Outline pieces of two flat cuts, joined where their spans overlap (only for a very wide edge exclusion).

    Returns ``(start, end, vertices)`` per piece, or None if together the flats remove the whole disc.
    """
    two_pi = 2.0 * math.pi

    def on_circle(angle_rad: float) -> tuple[float, float]:
        return radius_um * math.cos(angle_rad), radius_um * math.sin(angle_rad)

    def piece(cut: _ArcCut) -> tuple[float, float, list[tuple[float, float]]]:
        return cut.start, cut.end, [on_circle(cut.start), on_circle(cut.end)]

    if cut_b.start < cut_a.start:
        cut_a, cut_b = cut_b, cut_a
    if cut_b.start < cut_a.end:
        first, second = cut_a, cut_b
    elif cut_b.end > cut_a.start + two_pi:
        first, second = cut_b, _ArcCut(cut_a.start + two_pi, cut_a.end + two_pi, cut_a.flat)
    else:
        return [piece(cut_a), piece(cut_b)]
    if second.end <= first.end:
        return [piece(first)]  # the second chord lies in the cap the first one removes
    if second.end - first.start >= two_pi:
        return None
    # The chords cross inside the disc: the boundary runs along chord 1 to the crossing, then along chord 2.
    (u1x, u1y), (u2x, u2y) = first.flat.direction, second.flat.direction
    d1, d2 = first.flat.distance_um, second.flat.distance_um
    det = u1x * u2y - u1y * u2x
    crossing = ((d1 * u2y - d2 * u1y) / det, (u1x * d2 - u2x * d1) / det)
    return [(first.start, second.end, [on_circle(first.start), crossing, on_circle(second.end)])]


# ---------------------------------------------------------------------------------------------------------------------
# Substrate
# ---------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Substrate:
    """A round substrate with SEMI M1 flats (2"-6") or a notch (200 mm), and its edge exclusion.

    Parameters
    ----------
    diameter_mm : float
        One of ``SUBSTRATE_DIAMETERS_MM``.
    edge_exclusion_mm : float
        Width of the unusable band along every edge (circle, flats, notch), in [0, radius).
    primary_flat_angle_deg : float
        Direction from the wafer centre to the primary flat's midpoint, counter-clockwise from +x; 270 puts the
        flat at the bottom. Ignored for a notched (200 mm) substrate.
    secondary_flat_angle_deg : float or None
        Same for the secondary flat; None for no secondary flat. Ignored for a notched substrate.
    notch_angle_deg : float
        Direction from the centre to the notch, for 200 mm only.

    Notes
    -----
    A flat of length L is the chord at distance ``sqrt(R² − (L/2)²)`` from the centre. The notch is a sharp V of
    depth ``NOTCH_DEPTH_MM`` and included angle ``NOTCH_ANGLE_DEG`` cut radially into the edge. The usable area
    offsets every boundary inward by the exclusion: the circle shrinks to R − e, each flat moves e towards the
    centre and the notch's two walls move e into the wafer (so its apex moves ``e / sin(α)`` inward, α = half the
    included angle).

    Examples
    --------
    >>> wafer = Substrate.from_inches(4, edge_exclusion_mm=2.0)
    >>> wafer.radius_um, wafer.primary_flat_length_mm, wafer.has_notch
    (50000.0, 32.5, False)
    >>> wafer.on_substrate([0.0, 0.0], [-49000.0, 49000.0])  # the primary flat cuts the bottom
    array([False,  True])
    >>> wafer.usable(0.0, 47500.0)  # 2.5 mm from the edge, exclusion 2 mm
    np.True_
    """

    diameter_mm: float
    edge_exclusion_mm: float = 3.0
    primary_flat_angle_deg: float = 270.0
    secondary_flat_angle_deg: float | None = 180.0
    notch_angle_deg: float = 270.0

    def __post_init__(self) -> None:
        if self.diameter_mm not in SUBSTRATE_DIAMETERS_MM:
            raise ValueError(f"diameter_mm must be one of {SUBSTRATE_DIAMETERS_MM} mm, got {self.diameter_mm!r}")
        radius_mm = self.diameter_mm / 2.0
        if not 0.0 <= self.edge_exclusion_mm < radius_mm:
            raise ValueError(
                f"edge_exclusion_mm must be in [0, {radius_mm}) mm (at least 0, below the radius), "
                f"got {self.edge_exclusion_mm!r}"
            )
        for name in ("primary_flat_angle_deg", "secondary_flat_angle_deg", "notch_angle_deg"):
            value = getattr(self, name)
            if value is None and name == "secondary_flat_angle_deg":
                continue
            if not math.isfinite(value):
                raise ValueError(f"{name} must be a finite angle in degrees, got {value!r}")
        if not self.has_notch and self.secondary_flat_angle_deg is not None:
            # Two flats whose chords overlap have no SEMI meaning and would make the outline ambiguous.
            half_spans_rad = sum(
                math.asin(length_mm / self.diameter_mm)
                for length_mm in (self.primary_flat_length_mm, self.secondary_flat_length_mm)
            )
            gap_rad = _angle_gap(math.radians(self.primary_flat_angle_deg), math.radians(self.secondary_flat_angle_deg))
            if gap_rad <= half_spans_rad:
                raise ValueError(
                    f"secondary_flat_angle_deg must be more than {math.degrees(half_spans_rad):.2f}° away from "
                    f"primary_flat_angle_deg={self.primary_flat_angle_deg} so the flats do not overlap, "
                    f"got {self.secondary_flat_angle_deg!r}"
                )

    @classmethod
    def from_inches(cls, inches: int, **kw: float | None) -> Substrate:
        """Substrate of a nominal size in inches (2, 3, 4, 6 or 8); keyword arguments go to the constructor.

        Examples
        --------
        >>> Substrate.from_inches(8).diameter_mm
        200.0
        """
        if inches not in _DIAMETER_BY_INCHES:
            raise ValueError(f"inches must be one of {tuple(_DIAMETER_BY_INCHES)}, got {inches!r}")
        return cls(_DIAMETER_BY_INCHES[inches], **kw)  # type: ignore[arg-type]

    @property
    def radius_um(self) -> float:
        return self.diameter_mm * _MM_TO_UM / 2.0

    @property
    def edge_exclusion_um(self) -> float:
        return self.edge_exclusion_mm * _MM_TO_UM

    @property
    def has_notch(self) -> bool:
        """True for 200 mm: a notch instead of flats."""
        return self.diameter_mm in _NOTCHED_DIAMETERS_MM

    @property
    def primary_flat_length_mm(self) -> float:
        """SEMI M1 primary flat length; 0.0 (no flat) for a notched substrate."""
        return 0.0 if self.has_notch else _FLAT_LENGTHS_MM[self.diameter_mm][0]

    @property
    def secondary_flat_length_mm(self) -> float:
        """SEMI M1 secondary flat length; 0.0 when there is no secondary flat."""
        if self.has_notch or self.secondary_flat_angle_deg is None:
            return 0.0
        return _FLAT_LENGTHS_MM[self.diameter_mm][1]

    @property
    def primary_flat_distance_um(self) -> float:
        """Distance from the centre to the primary flat, ``sqrt(R² − (L/2)²)``; R when there is no flat."""
        return self._chord_distance_um(self.primary_flat_length_mm)

    @property
    def secondary_flat_distance_um(self) -> float:
        """Distance from the centre to the secondary flat; R when there is no secondary flat."""
        return self._chord_distance_um(self.secondary_flat_length_mm)

    def _chord_distance_um(self, length_mm: float) -> float:
        half_length_um = length_mm * _MM_TO_UM / 2.0
        return math.sqrt(self.radius_um**2 - half_length_um**2)

    def _region(self, inset_um: float) -> _Region:
        """The substrate with every boundary moved ``inset_um`` inward."""
        flats = []
        if not self.has_notch:
            flats.append(_HalfPlaneCut(self.primary_flat_angle_deg, self.primary_flat_distance_um - inset_um))
            if self.secondary_flat_angle_deg is not None:
                flats.append(_HalfPlaneCut(self.secondary_flat_angle_deg, self.secondary_flat_distance_um - inset_um))
        notch = None
        if self.has_notch:
            half_angle_deg = NOTCH_ANGLE_DEG / 2.0
            # Moving both walls inward by e moves their intersection (the apex) by e / sin(α) along the axis.
            apex_um = self.radius_um - NOTCH_DEPTH_MM * _MM_TO_UM - inset_um / math.sin(math.radians(half_angle_deg))
            notch = _WedgeCut(self.notch_angle_deg, apex_um, half_angle_deg)
        return _Region(self.radius_um - inset_um, tuple(flats), notch)

    @cached_property
    def _physical_region(self) -> _Region:
        return self._region(0.0)

    @cached_property
    def _usable_region(self) -> _Region:
        return self._region(self.edge_exclusion_um)

    def on_substrate(self, x_um: ArrayLike, y_um: ArrayLike) -> BoolArray:
        """True where (x, y) lies on the physical wafer: in the circle, not cut off by a flat, not in the notch.

        Points on the edge (within ``TOLERANCE_UM``) count as on the wafer. Returns the broadcast shape of the inputs.
        """
        return self._physical_region.contains(x_um, y_um)

    def usable(self, x_um: ArrayLike, y_um: ArrayLike) -> BoolArray:
        """True where (x, y) is at least ``edge_exclusion_mm`` inside every edge (circle, flats, notch walls)."""
        return self._usable_region.contains(x_um, y_um)

    def line_extent(
        self, x_um: ArrayLike, y_um: ArrayLike, direction: tuple[float, float], *, inset_um: float | None = None
    ) -> tuple[FloatArray, FloatArray]:
        """First and last parameter ``t`` at which the lines ``a + t·direction`` (``a = (x_um, y_um)``) lie in the
        substrate inset by ``inset_um`` (default: the edge exclusion, i.e. the usable area).

        A line that crosses the notch is not split: the notch trims an end it covers, or removes the line if it
        covers all of it. Returns ``lo > hi`` (never NaN) where a line misses the region; the boundaries are
        exactly those of :meth:`usable` and :meth:`on_substrate`.

        Examples
        --------
        A horizontal line through the centre of a 2" wafer enters at the secondary flat (left) and leaves at the
        edge (right), 25.4 mm from the centre:

        >>> lo, hi = Substrate.from_inches(2, edge_exclusion_mm=0.0).line_extent([-30_000.0], [0.0], (1.0, 0.0))
        >>> round(float(lo[0]), 3), round(float(hi[0]), 3)
        (4916.938, 55400.0)
        """
        region = self._region(self.edge_exclusion_um if inset_um is None else inset_um)
        ax, ay = _as_coordinate(x_um), _as_coordinate(y_um)
        dx, dy = direction
        lo, hi, empty = region.convex_interval(ax, ay, dx, dy)
        if region.notch is not None:
            # The open wedge is where the line is past both walls: an open interval of t (maybe empty or unbounded).
            notch = region.notch
            ux, uy = notch.direction
            apex_x, apex_y = notch.apex_um * ux, notch.apex_um * uy
            wedge_lo = np.full(ax.shape, -np.inf)
            wedge_hi = np.full(ax.shape, np.inf)
            wedge_empty = np.zeros(ax.shape, dtype=bool)
            for nx, ny in notch.inward_normals:
                slope = dx * nx + dy * ny
                # inside the wall where depth + t·slope > 0
                depth = (ax - apex_x) * nx + (ay - apex_y) * ny - TOLERANCE_UM
                if slope > 0.0:
                    wedge_lo = np.maximum(wedge_lo, -depth / slope)
                elif slope < 0.0:
                    wedge_hi = np.minimum(wedge_hi, -depth / slope)
                else:
                    wedge_empty |= depth <= 0.0
            wedge_empty |= wedge_lo >= wedge_hi
            # only the outer extent matters (a line crosses the notch rather than being split): the wedge trims an
            # end it covers, or removes the whole chord if it covers all of it
            covers_lo = ~wedge_empty & (wedge_lo < lo) & (wedge_hi > lo)
            covers_hi = ~wedge_empty & (wedge_lo < hi) & (wedge_hi > hi)
            empty |= covers_lo & covers_hi
            lo = np.where(covers_lo, wedge_hi, lo)
            hi = np.where(covers_hi, wedge_lo, hi)
        empty |= ~(lo <= hi)
        return np.where(empty, np.inf, lo), np.where(empty, -np.inf, hi)

    def outline_um(self, points_per_arc: int = 720) -> tuple[FloatArray, FloatArray]:
        """Physical edge as a closed counter-clockwise polygon (x, y) for display; flats and notch exact.

        Each circular arc between flats/notch is drawn with ``points_per_arc`` points (endpoints included). The
        last point repeats the first.

        Examples
        --------
        >>> x, y = Substrate.from_inches(2).outline_um(points_per_arc=90)
        >>> bool(x[0] == x[-1] and y[0] == y[-1]), round(float(y.min()), 1)  # closed; primary flat at the bottom
        (True, -24127.1)
        """
        _check_points_per_arc(points_per_arc)
        return self._physical_region.outline(points_per_arc)

    def usable_outline_um(self, points_per_arc: int = 720) -> tuple[FloatArray, FloatArray]:
        """Edge-exclusion boundary as a closed counter-clockwise polygon, like ``outline_um``."""
        _check_points_per_arc(points_per_arc)
        return self._usable_region.outline(points_per_arc)


def _check_points_per_arc(points_per_arc: int) -> None:
    if not isinstance(points_per_arc, int | np.integer) or points_per_arc < 3:
        raise ValueError(f"points_per_arc must be an integer ≥ 3, got {points_per_arc!r}")


# ---------------------------------------------------------------------------------------------------------------------
# Chip grid
# ---------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChipGrid:
    """A rectangular chip grid in the wafer frame.

    Parameters
    ----------
    pitch_x_um, pitch_y_um : float
        Centre-to-centre distance of neighbouring chips along the grid axes, > 0.
    chip_width_um, chip_height_um : float
        Chip size along the grid axes, in (0, pitch]; the rest of the pitch is the street.
    origin_x_um, origin_y_um : float
        Wafer coordinates of the centre of one chip, the grid's anchor.
    rotation_deg : float
        Counter-clockwise rotation of the grid axes from the wafer axes, in [−5, 5].

    Examples
    --------
    >>> grid = ChipGrid(20.0, 20.0, 16.0, 16.0, rotation_deg=0.2)
    >>> grid.street_x_um
    4.0
    >>> ChipGrid(20.0, 20.0, 25.0, 16.0)
    Traceback (most recent call last):
    ...
    ValueError: chip_width_um must be in (0, pitch_x_um] = (0, 20.0] µm, got 25.0
    """

    pitch_x_um: float
    pitch_y_um: float
    chip_width_um: float
    chip_height_um: float
    origin_x_um: float = 0.0
    origin_y_um: float = 0.0
    rotation_deg: float = 0.0

    def __post_init__(self) -> None:
        for name in ("pitch_x_um", "pitch_y_um"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0.0):
                raise ValueError(f"{name} must be > 0 (and finite), got {value!r}")
        for name, pitch_name in (("chip_width_um", "pitch_x_um"), ("chip_height_um", "pitch_y_um")):
            value, pitch = getattr(self, name), getattr(self, pitch_name)
            if not 0.0 < value <= pitch:
                raise ValueError(f"{name} must be in (0, {pitch_name}] = (0, {pitch}] µm, got {value!r}")
        for name in ("origin_x_um", "origin_y_um"):
            value = getattr(self, name)
            if not math.isfinite(value):
                raise ValueError(f"{name} must be finite, got {value!r}")
        if not -ROTATION_LIMIT_DEG <= self.rotation_deg <= ROTATION_LIMIT_DEG:
            raise ValueError(
                f"rotation_deg must be in [{-ROTATION_LIMIT_DEG}, {ROTATION_LIMIT_DEG}] degrees, "
                f"got {self.rotation_deg!r}"
            )

    @property
    def street_x_um(self) -> float:
        return self.pitch_x_um - self.chip_width_um

    @property
    def street_y_um(self) -> float:
        return self.pitch_y_um - self.chip_height_um

    @cached_property
    def axes(self) -> tuple[tuple[float, float], tuple[float, float]]:
        """Unit vectors of the grid x and y axes in the wafer frame."""
        cos_t, sin_t = _unit_vector(self.rotation_deg)
        return (cos_t, sin_t), (-sin_t, cos_t)


# ---------------------------------------------------------------------------------------------------------------------
# Chip rows as column intervals. A (rows, 4) int64 array (start1, stop1, start2, stop2) of inclusive column
# intervals per row; an empty interval is (0, −1); the second is used only where the notch splits a row and is
# non-empty only if the first is.
# ---------------------------------------------------------------------------------------------------------------------


def _segments_to_box(segments: IntArray, col_offset: int, column_count: int) -> IntArray:
    """Shift grid-relative intervals to box columns, clipped to the box, keeping empty intervals (0, −1)."""
    shifted = segments - col_offset
    for start, stop in ((0, 1), (2, 3)):
        shifted[:, start] = np.maximum(shifted[:, start], 0)
        shifted[:, stop] = np.minimum(shifted[:, stop], column_count - 1)
        void = (segments[:, start] > segments[:, stop]) | (shifted[:, start] > shifted[:, stop])
        shifted[void, start], shifted[void, stop] = 0, -1
    shifted.flags.writeable = False  # cached and shared by every query of the layout
    return shifted


def _segment_lengths(segments: IntArray) -> IntArray:
    """(rows, 2) number of chips in each interval."""
    return np.maximum(segments[:, 1::2] - segments[:, 0::2] + 1, 0)


def _segments_contain(segments: IntArray, col: IntArray, row: IntArray, in_box: BoolArray) -> BoolArray:
    row_segments = segments[np.where(in_box, row, 0)]  # the box always has a row; row 0 stands in for outsiders
    inside = (row_segments[..., 0] <= col) & (col <= row_segments[..., 1])
    inside |= (row_segments[..., 2] <= col) & (col <= row_segments[..., 3])
    return inside & in_box


def _segments_fill_mask(segments: IntArray, column_count: int) -> BoolArray:
    # One slice assignment per interval: peak memory is the mask itself and the Python loop is over rows
    # (~10 k for 8" at 20 µm), never over chips.
    mask = np.zeros((len(segments), column_count), dtype=bool)
    for row, (start1, stop1, start2, stop2) in enumerate(segments.tolist()):
        mask[row, start1 : stop1 + 1] = True
        mask[row, start2 : stop2 + 1] = True
    return mask


def _segments_enumerate(segments: IntArray) -> tuple[NDArray[np.int32], NDArray[np.int32]]:
    """(col, row) int32 of every chip in the intervals, row-major; memory is the two result arrays."""
    starts, stops = segments[:, 0::2].ravel(), segments[:, 1::2].ravel()
    lengths = _segment_lengths(segments).ravel()
    rows_of = np.repeat(np.arange(len(segments), dtype=np.int32), 2)
    keep = lengths > 0
    starts, stops, lengths, rows_of = starts[keep], stops[keep], lengths[keep], rows_of[keep]
    rows = np.repeat(rows_of, lengths)
    # Column = running sum of steps: +1 inside an interval, a jump to the next start at each interval boundary.
    cols = np.ones(int(lengths.sum()), dtype=np.int32)
    if cols.size:
        positions = np.cumsum(lengths) - lengths
        cols[positions[0]] = starts[0]
        cols[positions[1:]] = starts[1:] - stops[:-1]
        np.cumsum(cols, dtype=np.int32, out=cols)
    return cols, rows


def _segments_extent(segments: IntArray, row: IntArray) -> tuple[IntArray, IntArray]:
    in_box = (row >= 0) & (row < len(segments))
    row_segments = segments[np.where(in_box, row, 0)]  # the box always has a row; row 0 stands in for outsiders
    has_first = (row_segments[..., 0] <= row_segments[..., 1]) & in_box
    has_second = (row_segments[..., 2] <= row_segments[..., 3]) & in_box
    first = np.where(has_first, row_segments[..., 0], -1)
    last = np.where(has_second, row_segments[..., 3], np.where(has_first, row_segments[..., 1], -1))
    return first, last


@dataclass(frozen=True)
class _IndexBox:
    col_offset: int  # grid-relative column of box column 0
    row_offset: int  # grid-relative row of box row 0
    column_count: int
    row_count: int
    physical_segments: IntArray


# Neighbour offsets, counter-clockwise from +x like the wafer angles: E, NE, N, NW, W, SW, S, SE (4: E, N, W, S).
_NEIGHBOUR_OFFSETS = {
    4: (np.array([1, 0, -1, 0]), np.array([0, 1, 0, -1])),
    8: (np.array([1, 1, 0, -1, -1, -1, 0, 1]), np.array([0, 1, 1, 1, 0, -1, -1, -1])),
}


# ---------------------------------------------------------------------------------------------------------------------
# Layout: substrate + grid + chip index
# ---------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WaferLayout:
    """Chips of a grid on a substrate, with the chip index convention of this module (see the module docstring).

    Index ``(col, row)``: origin at the lower-left of the index box, col to +x, row to +y. The box bounds the
    chips fully on the physical substrate; the edge exclusion decides which of them are *usable* but never moves
    the box. All members are vectorised over chip indices or coordinates; expensive results are cached.

    Raises
    ------
    ValueError
        If no chip of the grid fits fully on the substrate.

    Examples
    --------
    >>> layout = WaferLayout(Substrate(100.0), ChipGrid(500.0, 500.0, 400.0, 400.0, origin_x_um=250.0))
    >>> layout.column_count, layout.row_count, layout.anchor_index
    (198, 194, (98, 94))
    >>> layout.chip_count, layout.physical_chip_count
    (27220, 30854)
    >>> layout.nearest_chip([250.0, -1e3], [0.0, 2e3])
    (array([98, 96]), array([94, 98]))
    >>> mask = layout.usable_mask()  # mask[row, col], row 0 at the bottom
    >>> mask.shape, int(mask.sum())
    ((194, 198), 27220)
    """

    substrate: Substrate
    grid: ChipGrid

    def __post_init__(self) -> None:
        if not isinstance(self.substrate, Substrate):
            raise TypeError(f"substrate must be a Substrate, got {type(self.substrate).__name__}")
        if not isinstance(self.grid, ChipGrid):
            raise TypeError(f"grid must be a ChipGrid, got {type(self.grid).__name__}")
        _ = self._box  # raises if no chip fits; the box is cheap (O(rows)) and every member needs it

    @cached_property
    def _box(self) -> _IndexBox:
        grid, radius_um = self.grid, self.substrate.radius_um
        axis_y = grid.axes[1]
        origin_along_y = grid.origin_x_um * axis_y[0] + grid.origin_y_um * axis_y[1]
        # Every chip on the wafer has its centre within R of the wafer centre along the grid y axis.
        row_lo = math.floor((-radius_um - origin_along_y) / grid.pitch_y_um) - 1
        row_hi = math.ceil((radius_um - origin_along_y) / grid.pitch_y_um) + 1
        rows = np.arange(row_lo, row_hi + 1, dtype=np.int64)
        segments = self.substrate._physical_region.row_segments(grid, rows)
        occupied = segments[:, 0] <= segments[:, 1]
        if not occupied.any():
            raise ValueError(
                f"grid: no chip of {grid.chip_width_um} × {grid.chip_height_um} µm lies fully on the "
                f"{self.substrate.diameter_mm} mm substrate"
            )
        occupied_rows = np.flatnonzero(occupied)
        segments = segments[occupied_rows[0] : occupied_rows[-1] + 1]
        non_empty = segments[:, 0] <= segments[:, 1]
        col_lo = int(segments[non_empty, 0].min())
        col_hi = int(np.where(segments[:, 2] <= segments[:, 3], segments[:, 3], segments[:, 1])[non_empty].max())
        column_count = col_hi - col_lo + 1
        return _IndexBox(
            col_offset=col_lo,
            row_offset=int(rows[occupied_rows[0]]),
            column_count=column_count,
            row_count=len(segments),
            physical_segments=_segments_to_box(segments, col_lo, column_count),
        )

    @cached_property
    def _usable_segments(self) -> IntArray:
        box = self._box
        rows = np.arange(box.row_offset, box.row_offset + box.row_count, dtype=np.int64)
        segments = self.substrate._usable_region.row_segments(self.grid, rows)
        return _segments_to_box(segments, box.col_offset, box.column_count)

    # --- index box ---------------------------------------------------------------------------------------------

    @property
    def column_count(self) -> int:
        """Number of columns of the index box."""
        return self._box.column_count

    @property
    def row_count(self) -> int:
        """Number of rows of the index box."""
        return self._box.row_count

    @property
    def anchor_index(self) -> tuple[int, int]:
        """(col, row) of the anchor chip, the one centred on the grid origin; may lie outside the box."""
        return -self._box.col_offset, -self._box.row_offset

    def in_box(self, col: ArrayLike, row: ArrayLike) -> BoolArray:
        """True where ``0 ≤ col < column_count`` and ``0 ≤ row < row_count``."""
        col, row = np.broadcast_arrays(_as_index(col, "col"), _as_index(row, "row"))
        return (col >= 0) & (col < self.column_count) & (row >= 0) & (row < self.row_count)

    # --- index <-> wafer coordinates -------------------------------------------------------------------------------

    def chip_center_um(self, col: ArrayLike, row: ArrayLike) -> tuple[FloatArray, FloatArray]:
        """Wafer coordinates (x, y) of chip centres; any integer index, inside the box or not.

        Examples
        --------
        >>> layout = WaferLayout(Substrate(100.0), ChipGrid(500.0, 500.0, 400.0, 400.0))
        >>> col, row = layout.anchor_index
        >>> layout.chip_center_um([col, col + 1, col], [row, row, row + 2])
        (array([  0., 500.,   0.]), array([   0.,    0., 1000.]))
        """
        col, row = np.broadcast_arrays(_as_index(col, "col"), _as_index(row, "row"))
        grid = self.grid
        (exx, exy), (eyx, eyy) = grid.axes
        along_x = (col + self._box.col_offset) * grid.pitch_x_um
        along_y = (row + self._box.row_offset) * grid.pitch_y_um
        return grid.origin_x_um + along_x * exx + along_y * eyx, grid.origin_y_um + along_x * exy + along_y * eyy

    def _grid_coordinates(self, x_um: ArrayLike, y_um: ArrayLike) -> tuple[FloatArray, FloatArray]:
        """Position along the grid axes relative to the anchor chip centre, in pitches."""
        x, y = np.broadcast_arrays(_as_coordinate(x_um), _as_coordinate(y_um))
        if not (np.isfinite(x).all() and np.isfinite(y).all()):
            raise ValueError("x_um and y_um must be finite")
        grid = self.grid
        (exx, exy), (eyx, eyy) = grid.axes
        dx, dy = x - grid.origin_x_um, y - grid.origin_y_um
        return (dx * exx + dy * exy) / grid.pitch_x_um, (dx * eyx + dy * eyy) / grid.pitch_y_um

    def grid_position(self, x_um: ArrayLike, y_um: ArrayLike) -> tuple[FloatArray, FloatArray]:
        """Fractional (col, row) box indices of wafer positions: chip ``(c, r)``'s centre is at ``(c, r)``.

        Examples
        --------
        >>> layout = WaferLayout(Substrate(100.0), ChipGrid(500.0, 500.0, 400.0, 400.0))
        >>> col, row = layout.grid_position(250.0, 0.0)
        >>> float(col - layout.anchor_index[0]), float(row - layout.anchor_index[1])
        (0.5, 0.0)
        """
        u, v = self._grid_coordinates(x_um, y_um)
        return u - self._box.col_offset, v - self._box.row_offset

    def nearest_chip(self, x_um: ArrayLike, y_um: ArrayLike) -> tuple[IntArray, IntArray]:
        """(col, row) int64 of the grid cell containing (x, y): the chip with the nearest centre.

        A point exactly half-way between two centres goes to the chip on the +x / +y side. The index may lie
        outside the box; check with ``in_box``.
        """
        u, v = self._grid_coordinates(x_um, y_um)
        col = np.floor(u + 0.5).astype(np.int64) - self._box.col_offset
        row = np.floor(v + 0.5).astype(np.int64) - self._box.row_offset
        return col, row

    def chip_at(self, x_um: ArrayLike, y_um: ArrayLike) -> tuple[IntArray, IntArray, BoolArray]:
        """(col, row, hit): the nearest chip and whether (x, y) lies on its area and the chip is in the box.

        ``hit`` is False in the street between chips and outside the box. It does not say whether the chip is on
        the substrate or usable: ask ``chip_on_substrate`` / ``chip_usable``.

        Examples
        --------
        >>> layout = WaferLayout(Substrate(100.0), ChipGrid(500.0, 500.0, 400.0, 400.0))
        >>> col, row, hit = layout.chip_at([0.0, 220.0], [199.0, 0.0])  # chip edge at ±200 µm, street beyond
        >>> hit
        array([ True, False])
        """
        u, v = self._grid_coordinates(x_um, y_um)
        i, j = np.floor(u + 0.5), np.floor(v + 0.5)
        grid = self.grid
        on_chip = np.abs(u - i) * grid.pitch_x_um <= grid.chip_width_um / 2.0 + TOLERANCE_UM
        on_chip &= np.abs(v - j) * grid.pitch_y_um <= grid.chip_height_um / 2.0 + TOLERANCE_UM
        col = i.astype(np.int64) - self._box.col_offset
        row = j.astype(np.int64) - self._box.row_offset
        return col, row, on_chip & self.in_box(col, row)

    # --- per-chip predicates ---------------------------------------------------------------------------------------

    def chip_on_substrate(self, col: ArrayLike, row: ArrayLike) -> BoolArray:
        """True for chips lying fully on the physical substrate (False outside the box).

        Fully means all four corners on the substrate and, where the notch's tip could poke between the corners,
        no overlap with the notch (a 90° V narrower than the chip can miss all four corners).
        """
        col, row = np.broadcast_arrays(_as_index(col, "col"), _as_index(row, "row"))
        return _segments_contain(self._box.physical_segments, col, row, self.in_box(col, row))

    def chip_usable(self, col: ArrayLike, row: ArrayLike) -> BoolArray:
        """True for chips lying fully inside the usable area (edge exclusion applied); False outside the box."""
        col, row = np.broadcast_arrays(_as_index(col, "col"), _as_index(row, "row"))
        return _segments_contain(self._usable_segments, col, row, self.in_box(col, row))

    def neighbours(self, col: ArrayLike, row: ArrayLike, connectivity: int = 8) -> tuple[IntArray, IntArray]:
        """Indices of the 4 or 8 neighbours of each chip, −1 (in both) where a neighbour is outside the box.

        Order, counter-clockwise from +x like the wafer angles: connectivity 8 → E, NE, N, NW, W, SW, S, SE;
        connectivity 4 → E, N, W, S. Returns arrays of shape ``(*shape, 4 or 8)``, e.g. (n, 8) for n chips.

        Examples
        --------
        >>> layout = WaferLayout(Substrate(100.0), ChipGrid(500.0, 500.0, 400.0, 400.0))
        >>> layout.neighbours([0], [0], connectivity=4)  # lower-left corner of the box: no W or S neighbour
        (array([[ 1,  0, -1, -1]]), array([[ 0,  1, -1, -1]]))
        """
        if connectivity not in _NEIGHBOUR_OFFSETS:
            raise ValueError(f"connectivity must be 4 or 8, got {connectivity!r}")
        col, row = np.broadcast_arrays(_as_index(col, "col"), _as_index(row, "row"))
        d_col, d_row = _NEIGHBOUR_OFFSETS[connectivity]
        cols, rows = col[..., np.newaxis] + d_col, row[..., np.newaxis] + d_row
        outside = ~self.in_box(cols, rows)
        cols[outside], rows[outside] = -1, -1
        return cols, rows

    # --- whole-wafer results ---------------------------------------------------------------------------------------

    def usable_mask(self) -> BoolArray:
        """Usable chips as a bool array ``mask[row, col]`` of shape (row_count, column_count), row 0 at the bottom."""
        return _segments_fill_mask(self._usable_segments, self.column_count)

    def physical_mask(self) -> BoolArray:
        """Chips fully on the physical substrate, like ``usable_mask``."""
        return _segments_fill_mask(self._box.physical_segments, self.column_count)

    @cached_property
    def chip_count(self) -> int:
        """Number of usable chips."""
        return int(_segment_lengths(self._usable_segments).sum())

    @cached_property
    def physical_chip_count(self) -> int:
        """Number of chips fully on the physical substrate."""
        return int(_segment_lengths(self._box.physical_segments).sum())

    def usable_chips(self) -> tuple[NDArray[np.int32], NDArray[np.int32]]:
        """(col, row) int32 of every usable chip in row-major order (row by row from the bottom, col ascending).

        Same order as ``np.nonzero(usable_mask())`` (which returns (row, col)), without building the mask.
        """
        return _segments_enumerate(self._usable_segments)

    def row_extent(self, row: ArrayLike) -> tuple[IntArray, IntArray]:
        """(first_col, last_col) of the usable chips of each row; −1, −1 for empty rows and rows outside the box.

        On a notched wafer the rows crossing the notch hold unusable chips between first_col and last_col.

        Examples
        --------
        >>> layout = WaferLayout(Substrate(100.0), ChipGrid(500.0, 500.0, 400.0, 400.0))
        >>> layout.row_extent([0, 94, 500])  # bottom row: in the box but inside the exclusion; 500: outside the box
        (array([-1,  6, -1]), array([ -1, 190,  -1]))
        """
        return _segments_extent(self._usable_segments, _as_index(row, "row"))


@dataclass(frozen=True)
class Placement:
    """How a wafer lies on the chuck: ``stage = R(rotation)·wafer + offset`` (µm, degrees).

    Stage coordinates are where the laser spot is in the chuck frame; alignment measures the placement of a
    loaded wafer, and everything that maps stage positions to chips goes through it.

    Examples
    --------
    >>> placement = Placement(offset_x_um=100.0, offset_y_um=-50.0, rotation_deg=0.0)
    >>> placement.wafer_to_stage(0.0, 0.0)
    (np.float64(100.0), np.float64(-50.0))
    """

    offset_x_um: float = 0.0
    offset_y_um: float = 0.0
    rotation_deg: float = 0.0

    def stage_to_wafer(self, x_um: ArrayLike, y_um: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
        """Wafer coordinates of stage positions."""
        c, s = math.cos(math.radians(self.rotation_deg)), math.sin(math.radians(self.rotation_deg))
        dx, dy = np.asarray(x_um) - self.offset_x_um, np.asarray(y_um) - self.offset_y_um
        return c * dx + s * dy, -s * dx + c * dy

    def wafer_to_stage(self, x_um: ArrayLike, y_um: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
        """Stage positions of wafer coordinates."""
        c, s = math.cos(math.radians(self.rotation_deg)), math.sin(math.radians(self.rotation_deg))
        x, y = np.asarray(x_um), np.asarray(y_um)
        return c * x - s * y + self.offset_x_um, s * x + c * y + self.offset_y_um
