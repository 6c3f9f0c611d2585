"""Wafer-scale defect structures on a per-chip fail map, and one spatial signature per wafer.

Input is a bool map ``fail_map[row, col]`` over the layout's index box (row 0 at the bottom, see
inspection/wafer.py) saying which chips fail, however the classifier decided it, and for a partial scan a map of the
inspected chips. Fails outside the usable (inspected) area are ignored. Two passes group the failing chips into
*structures*:

1. **Scratch pass** (line-shaped chains with gaps). Fails with no other fail within two chips (a 5 × 5 window)
   are set aside; the rest are dilated by a disc of the *link radius* and labelled (8-connectivity), so fails up
   to about ``2·radius + 1`` chips apart join one component. Each component is fitted with a line, trimmed of
   fails far across it, and kept as a *piece* if it is narrow and elongated; collinear pieces separated by up to
   ``scratch_max_gap_chips`` are merged. The scratch is then every fail in a corridor along the fitted axis, grown
   past the ends while the next fail is at most 4 pitches further. A corridor that is long, narrow and filled enough
   along its axis is a SCRATCH, and its chips leave the map for the next pass.
2. **Cluster pass** (compact or irregular groups). The remaining fails are closed with a 3 × 3 square (bridging one
   good chip between two fails along a row or column) and labelled (8-connectivity). A component of at least the
   *chance-free size* (below) is an EDGE structure if most of its chips lie in the edge band, a PARTICLE if it is a
   small, round, solid blob, otherwise a CLUSTER.

Independent point defects are the normal state of a wafer and must not become structures by chance adjacency. At a
fail fraction p each fail has on average 8·p failing neighbours: at 1 % an 8" wafer at 20 µm pitch (74 M usable
chips, 740 k fails) holds about 4·p²·N ≈ 30 000 chance pairs, 1 500 triples, 80 groups of four and 5 of five.
The minimum cluster size is therefore raised, per wafer, until the expected number of chance clusters is below
``chance_structures_per_wafer``, using the bound ``N_fail · (λ·p)^(k−1)`` for the number of chance components of
k or more fails (λ = 16 with gap bridging, 6 without; on random maps the bound overestimates the counts 2–5×);
p is the *background* fail fraction, the median over 64 × 64-chip tiles, so that structures do not inflate it.
When λ·p ≥ 1 (about 6 % background with bridging) components of any size happen by chance and no cluster is
reported. Scratches need no such rule: a chance chain that is also long, straight, narrow and filled does not
occur at the link radius used, which shrinks on noisy wafers so that a fail that passed the 5 × 5 filter links by
chance to fewer than ``scratch_max_link_degree`` others on average. docs/spatial.md gives the figures.

The wafer signature (:func:`wafer_signature`) is one label per wafer from radial-zone fail fractions, edge-sector
fractions and the structures, chosen by documented rules (see :class:`SignatureLabel` and docs/spatial.md).

Memory: an 8" wafer at 20 µm pitch has a 10 000 × 10 000 chip box. Besides the caller's map and the results
(int32 labels 400 MB, uint8 kinds 100 MB, allocated last), :func:`find_defect_structures` holds a 100 MB working
copy of the map, one 100 MB uint8 image and one 400 MB int32 label image at a time, plus 20 bytes per labelled
fail while it collects the components above the minimum sizes. No float copy of a whole map is made; geometry is
computed only for those components, from their own chips (in chunks of a million chips).

Examples
--------
>>> from inspection.wafer import ChipGrid, Substrate, WaferLayout
>>> layout = WaferLayout(Substrate.from_inches(2, edge_exclusion_mm=2.0), ChipGrid(100.0, 100.0, 80.0, 80.0))
>>> fail_map = np.zeros((layout.row_count, layout.column_count), dtype=bool)
>>> fail_map[250:256, 250:256] = True  # a 6 × 6-chip dark patch
>>> result = find_defect_structures(fail_map, layout)
>>> [(s.kind.name, s.chip_count) for s in result.structures]
[('PARTICLE', 36)]
>>> int(result.label_map[252, 252]), int(result.kind_map[252, 252]) == StructureKind.PARTICLE
(1, True)
>>> wafer_signature(fail_map, layout, result.structures).label
<SignatureLabel.LOCAL_CLUSTER: 'local cluster'>
"""

from __future__ import annotations

import dataclasses
import enum
import math
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
from numpy.typing import NDArray
from scipy.sparse import coo_array
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from inspection.settings import range_problem, setting
from inspection.wafer import NOTCH_ANGLE_DEG, NOTCH_DEPTH_MM, WaferLayout

__all__ = [
    "SignatureLabel",
    "SpatialResult",
    "SpatialSettings",
    "Structure",
    "StructureKind",
    "WaferSignature",
    "find_defect_structures",
    "structure_table",
    "wafer_signature",
]

BoolArray = NDArray[np.bool_]
IntArray = NDArray[np.int64]
FloatArray = NDArray[np.float64]

ROW_CHUNK = 512
"""Rows per band when a whole-map step is done band by band (bounds the temporaries)."""

TILE_CHIPS = 64
"""Side of the square tiles whose median fail fraction estimates the background (point-defect) fail fraction."""

_MIN_TILES = 9
"""Fewer fully usable tiles than this and the background is the plain fail fraction of the wafer."""

CHANCE_GROWTH_BRIDGED = 16.0
"""λ in the chance bound ``N_fail · (λ·p)^(k−1)`` for 8-connected components after a 3 × 3 closing."""

CHANCE_GROWTH_PLAIN = 6.0
"""λ for plain 8-connected components (no gap bridging)."""

_SCRATCH_FRAGMENT_MIN_CHIPS = 5
"""Smallest linked component considered as a piece of a scratch (pieces are merged before the scratch rules)."""

_COMPANY_WINDOW_CHIPS = 5
"""A fail joins the scratch pass if another fail lies in the square window of this side centred on it."""

_GROWTH_STEP_CHIPS = 4.0
"""A scratch grows past its ends by fails at most this many pitches apart along its axis (three missing chips)."""

_SCRATCH_FRAGMENT_MIN_ELONGATION = 3.0
"""Smallest elongation of a scratch piece."""

_RELINK_MAX_CHIPS = 4_000_000
"""A component that is not a line piece is searched again with a smaller link radius if its box is at most this
big (a 15 mm scratch at 20 µm pitch has a box of at most 750 × 750 chips; an edge ring's box is the wafer)."""


# ---------------------------------------------------------------------------------------------------------------------
# Kinds, labels, settings
# ---------------------------------------------------------------------------------------------------------------------


class StructureKind(enum.IntEnum):
    """Kind of a structure; the values are those of :attr:`SpatialResult.kind_map` (uint8)."""

    NONE = 0
    """Not part of a structure (a good chip, or an isolated fail)."""
    CLUSTER = 1
    """A connected group of fails that is neither a particle, a scratch nor edge damage."""
    PARTICLE = 2
    """A small, round, solid blob: a particle shadowing a patch of chips."""
    SCRATCH = 3
    """A long, narrow chain of fails along a line, possibly with gaps."""
    EDGE = 4
    """A group of fails lying mostly in the edge band (edge damage)."""


_PROCESS_HINTS = {
    "none": "nothing systematic: point defects at or below the normal level",
    "random": "uniform point defects above the normal level: epitaxy/material quality (growth, substrate, "
    "contamination spread over the wafer) or a fail threshold set too tight",
    "centre": "radial non-uniformity at the centre: growth temperature or gas flow over the susceptor centre, "
    "spin-coating (resist puddle), centre-fast etch or polish",
    "edge ring": "radial non-uniformity all round the edge: edge bead, edge temperature (wafer bow), plasma or etch "
    "edge effects, clamp-ring shadow",
    "edge local": "local damage at the edge: handling (tweezers, cassette, robot end effector), chuck or clamp "
    "contact, edge chipping",
    "local cluster": "localised contamination: particles during lithography, deposition or transfer, resist "
    "defects, splashes",
    "scratch": "mechanical contact across the surface: wafer transfer, handling tools, polishing or lapping",
}


class SignatureLabel(enum.StrEnum):
    """Spatial signature of a wafer: which process step to look at (:attr:`process_hint`)."""

    NONE = "none"
    CENTRE = "centre"
    EDGE_RING = "edge ring"
    EDGE_LOCAL = "edge local"
    LOCAL_CLUSTER = "local cluster"
    SCRATCH = "scratch"
    RANDOM = "random"

    @property
    def process_hint(self) -> str:
        """Which process steps such a signature usually points to.

        Examples
        --------
        >>> SignatureLabel.SCRATCH.process_hint.split(":")[0]
        'mechanical contact across the surface'
        """
        return _PROCESS_HINTS[self.value]


@dataclass(frozen=True)
class SpatialSettings:
    """Rules and thresholds of the spatial analysis (docs/spatial.md explains each).

    Loadable from TOML with :func:`inspection.settings.from_mapping`; objects built in code are checked the same
    way, every bad field listed in one ``ValueError`` (one line each).

    Examples
    --------
    >>> SpatialSettings(edge_band_mm=3.0).edge_band_mm
    3.0
    >>> SpatialSettings(min_cluster_chips=1, particle_min_fill=1.5)
    Traceback (most recent call last):
    ...
    ValueError: min_cluster_chips: 1 is outside the allowed range [2, 1e+06]
    particle_min_fill: 1.5 is outside the allowed range [0, 1]
    """

    # --- clusters and particles ---
    min_cluster_chips: int = setting(
        5, minimum=2, maximum=1_000_000, doc="smallest cluster, particle or edge structure, whatever the fail rate"
    )
    chance_structures_per_wafer: float = setting(
        0.01,
        minimum=0.0,
        maximum=1.0,
        exclusive_minimum=True,
        doc="expected number of clusters made of independent point defects by chance, per wafer (raises the "
        "minimum cluster size on noisy or large wafers)",
    )
    bridge_cluster_gaps: bool = setting(True, doc="join fails separated by one good chip along a row or column")
    particle_max_radius_um: float = setting(
        400.0, minimum=0.0, maximum=100_000.0, exclusive_minimum=True, unit="µm", doc="largest particle blob radius"
    )
    particle_max_elongation: float = setting(
        2.0, minimum=1.0, maximum=100.0, doc="largest length/width of a particle blob"
    )
    particle_min_fill: float = setting(
        0.5, minimum=0.0, maximum=1.0, doc="smallest fraction of failing chips inside a particle's disc"
    )
    # --- scratches ---
    scratch_min_length_um: float = setting(
        2000.0, minimum=0.0, maximum=1_000_000.0, unit="µm", doc="shortest scratch (outermost chip centres)"
    )
    scratch_min_chips: int = setting(15, minimum=2, maximum=1_000_000, doc="fewest failing chips of a scratch")
    scratch_max_width_chips: float = setting(
        4.0, minimum=1.0, maximum=100.0, doc="widest scratch, in chip pitches across its axis"
    )
    scratch_min_elongation: float = setting(
        8.0, minimum=1.0, maximum=100_000.0, doc="smallest length/width of a scratch"
    )
    scratch_min_line_fill: float = setting(
        0.3, minimum=0.0, maximum=100.0, doc="fewest failing chips per chip pitch of scratch length"
    )
    scratch_link_radius_chips: int = setting(
        3, minimum=0, maximum=20, doc="largest dilation radius linking fails along a chain (chips)"
    )
    scratch_max_link_degree: float = setting(
        0.3,
        minimum=0.0,
        maximum=1.0,
        exclusive_minimum=True,
        doc="largest mean number of chance links per non-isolated fail (shrinks the link radius on noisy wafers)",
    )
    scratch_max_gap_chips: float = setting(
        15.0, minimum=0.0, maximum=10_000.0, doc="longest gap between collinear pieces merged into one scratch"
    )
    scratch_merge_angle_deg: float = setting(
        10.0, minimum=0.0, maximum=90.0, unit="°", doc="largest angle between collinear pieces merged"
    )
    # --- edge ---
    edge_band_mm: float = setting(
        2.0, minimum=0.0, maximum=100.0, exclusive_minimum=True, unit="mm", doc="outer band of the usable area"
    )
    edge_structure_min_fraction: float = setting(
        0.5, minimum=0.0, maximum=1.0, doc="fraction of a structure's chips in the edge band that makes it EDGE"
    )
    edge_sector_count: int = setting(36, minimum=4, maximum=360, doc="angular sectors of the edge band")
    edge_sector_min_fail_fraction: float = setting(
        0.1, minimum=0.0, maximum=1.0, exclusive_minimum=True, doc="fail fraction that marks an edge sector as hit"
    )
    edge_sector_min_ratio: float = setting(
        3.0, minimum=1.0, maximum=1000.0, doc="a hit sector's fail fraction over the interior's, at least"
    )
    edge_ring_min_coverage: float = setting(
        0.75, minimum=0.0, maximum=1.0, exclusive_minimum=True, doc="fraction of hit edge sectors for an edge ring"
    )
    # --- centre and random ---
    centre_radius_fraction: float = setting(
        0.33, minimum=0.0, maximum=0.9, exclusive_minimum=True, doc="centre zone radius over the usable radius"
    )
    centre_min_ratio: float = setting(
        3.0, minimum=1.0, maximum=1000.0, doc="centre fail fraction over the middle zone's, at least"
    )
    centre_min_excess_fraction: float = setting(
        0.02, minimum=0.0, maximum=1.0, doc="centre fail fraction minus the middle zone's, at least"
    )
    random_min_fail_fraction: float = setting(
        0.005, minimum=0.0, maximum=1.0, doc="below this fail fraction a wafer without structures is 'none'"
    )

    def __post_init__(self) -> None:
        problems = []
        for field in dataclasses.fields(self):
            value, meta = getattr(self, field.name), field.metadata
            if field.type in ("bool", bool):
                if not isinstance(value, bool):
                    problems.append(f"{field.name}: expected true or false, got {value!r}")
                continue
            wants_int = field.type in ("int", int)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or (wants_int and value != int(value)):
                problems.append(f"{field.name}: expected {'an integer' if wants_int else 'a number'}, got {value!r}")
            elif (problem := range_problem(field.name, value, meta)) is not None:
                problems.append(problem)
        if problems:
            raise ValueError("\n".join(problems))


_DEFAULT_SETTINGS = SpatialSettings()


# ---------------------------------------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Structure:
    """One defect structure: a group of failing chips and its shape.

    Geometry is computed from the chip centres in the wafer frame (µm, angles counter-clockwise from +x), so it
    holds for rotated grids and unequal pitches. ``pitch`` below is ``sqrt(pitch_x · pitch_y)``.

    Attributes
    ----------
    label : int
        Value of the structure's chips in :attr:`SpatialResult.label_map` (1, 2, … by decreasing chip count).
    kind : StructureKind
    chip_count : int
        Failing chips in the structure.
    centroid_col, centroid_row : float
        Mean chip index.
    centroid_x_um, centroid_y_um : float
        Mean chip centre in the wafer frame.
    col_min, row_min, col_max, row_max : int
        Inclusive bounding box in chip indices.
    length_um : float
        Distance between the outermost chip centres along the major axis (the scratch length).
    width_um : float
        ``sqrt(12·σ_minor² + pitch²)``, σ_minor the spread across the major axis: the width of a uniform band of
        chips (one pitch for a single line of chips).
    angle_deg : float
        Direction of the major axis in the wafer frame, in [0, 180); arbitrary for a round blob.
    elongation : float
        ``sqrt(12·σ_major² + pitch²) / width_um``: 1 for a round blob, about length/width for a line.
    radius_um : float
        ``sqrt(2·(σ_major² + σ_minor²))``: the radius of a uniform disc with the same spread (the blob radius).
    edge_fraction : float
        Fraction of the chips in the edge band.
    """

    label: int
    kind: StructureKind
    chip_count: int
    centroid_col: float
    centroid_row: float
    centroid_x_um: float
    centroid_y_um: float
    col_min: int
    row_min: int
    col_max: int
    row_max: int
    length_um: float
    width_um: float
    angle_deg: float
    elongation: float
    radius_um: float
    edge_fraction: float


@dataclass(frozen=True, eq=False)
class SpatialResult:
    """Structures found on a fail map.

    Attributes
    ----------
    label_map : ndarray of int32, shape (rows, cols)
        :attr:`Structure.label` of the structure each failing chip belongs to; 0 for good chips and fails in no
        structure.
    kind_map : ndarray of uint8, shape (rows, cols)
        :class:`StructureKind` value of each chip's structure (0 = NONE).
    structures : tuple of Structure
        By decreasing chip count; ``structures[i].label == i + 1``.
    background_fail_fraction : float
        Median fail fraction of the fully usable 64 × 64-chip tiles: the point-defect level.
    cluster_min_chips : int or None
        Minimum chip count used for clusters, particles and edge structures on this wafer; None when the
        background is so high (λ·p ≥ 1) that no cluster can be told from chance, and none is reported.
    scratch_link_radius_chips : int
        Link radius used by the scratch pass on this wafer.
    """

    label_map: NDArray[np.int32]
    kind_map: NDArray[np.uint8]
    structures: tuple[Structure, ...]
    background_fail_fraction: float
    cluster_min_chips: int | None
    scratch_link_radius_chips: int


@dataclass(frozen=True)
class WaferSignature:
    """One spatial label per wafer and the figures it was chosen from.

    Attributes
    ----------
    label : SignatureLabel
    rule : str
        The rule that chose the label, with its figures.
    usable_chip_count, fail_count : int
        Usable chips and failing usable chips.
    fail_fraction : float
    centre_fail_fraction, middle_fail_fraction, edge_fail_fraction : float
        Fail fraction in the radial zones: the centre disc, the edge band, and the rest (middle); NaN for an empty
        zone.
    edge_sector_fail_fractions : tuple of float
        Fail fraction of the edge band in each angular sector, counter-clockwise from +x (sector i covers
        ``[i, i + 1) · 360° / edge_sector_count``); NaN where a sector holds no band chip.
    edge_sector_coverage : float
        Fraction of the sectors (with band chips) that are hit.
    structure_count : int
    scratch_chip_count, cluster_chip_count, edge_structure_chip_count : int
        Failing chips in scratches, in clusters and particles, and in edge structures.
    largest_structure_kind : StructureKind
        NONE if there is no structure.
    largest_structure_chip_count : int
    """

    label: SignatureLabel
    rule: str
    usable_chip_count: int
    fail_count: int
    fail_fraction: float
    centre_fail_fraction: float
    middle_fail_fraction: float
    edge_fail_fraction: float
    edge_sector_fail_fractions: tuple[float, ...]
    edge_sector_coverage: float
    structure_count: int
    scratch_chip_count: int
    cluster_chip_count: int
    edge_structure_chip_count: int
    largest_structure_kind: StructureKind
    largest_structure_chip_count: int


def structure_table(structures: Sequence[Structure]) -> dict[str, np.ndarray]:
    """The structures as a dict of columns (one array per :class:`Structure` field; ``kind`` as uint8 values).

    Examples
    --------
    >>> structure_table([])["chip_count"]
    array([], dtype=int64)
    """
    columns: dict[str, np.ndarray] = {}
    for field in dataclasses.fields(Structure):
        values = [getattr(structure, field.name) for structure in structures]
        if field.name == "kind":
            columns[field.name] = np.array([int(value) for value in values], dtype=np.uint8)
        elif field.type in ("int", int):
            columns[field.name] = np.array(values, dtype=np.int64)
        else:
            columns[field.name] = np.array(values, dtype=np.float64)
    return columns


# ---------------------------------------------------------------------------------------------------------------------
# Public functions
# ---------------------------------------------------------------------------------------------------------------------


def find_defect_structures(
    fail_map: BoolArray,
    layout: WaferLayout,
    *,
    inspected_map: BoolArray | None = None,
    settings: SpatialSettings = _DEFAULT_SETTINGS,
) -> SpatialResult:
    """Group the failing chips of a wafer into clusters, particles, scratches and edge structures.

    Parameters
    ----------
    fail_map : ndarray of bool, shape (layout.row_count, layout.column_count)
        True for failing chips, ``[row, col]`` with row 0 at the bottom. Fails outside the usable area are
        ignored. Not modified.
    layout : WaferLayout
    inspected_map : ndarray of bool, same shape, optional, keyword-only
        Chips that were measured. Give it for a partial scan: the background fail fraction (which sets the
        minimum sizes) is then taken over inspected chips only, and fails elsewhere are ignored. Default: every
        usable chip was inspected.
    settings : SpatialSettings, keyword-only

    Returns
    -------
    SpatialResult
        Per-chip label and kind maps and the structures (see the module docstring for the rules).

    Raises
    ------
    TypeError
        If ``fail_map`` or ``inspected_map`` is not a bool array.
    ValueError
        If their shape is not the layout's index box, or the edge band reaches the wafer centre.
    """
    fails = _checked_fail_map(fail_map, layout)
    inner = _inner_layout(layout, settings.edge_band_mm)
    frame = _ChipFrame.of(layout)
    usable = _usable_map(layout, inspected_map)
    np.logical_and(fails, usable, out=fails)
    usable_count = int(np.count_nonzero(usable))
    background = _background_fail_fraction(fails, usable, usable_count)
    del usable

    link_radius = _link_radius(background, settings)
    scratches = _find_scratches(fails, frame, inner, link_radius, settings)  # takes their chips off ``fails``
    min_chips = _cluster_min_chips(background, usable_count, settings)
    clusters = _find_clusters(fails, min_chips, settings) if min_chips is not None else []
    del fails

    found: list[tuple[StructureKind, Structure, IntArray, IntArray]] = []
    for rows, cols in scratches:
        found.append((StructureKind.SCRATCH, _shape(rows, cols, frame, inner), rows, cols))
    for rows, cols in clusters:
        shape = _shape(rows, cols, frame, inner)
        found.append((_cluster_kind(shape, frame, settings), shape, rows, cols))
    found.sort(key=lambda item: (-item[1].chip_count, item[1].row_min, item[1].col_min))

    label_map = np.zeros((layout.row_count, layout.column_count), dtype=np.int32)
    kind_map = np.zeros((layout.row_count, layout.column_count), dtype=np.uint8)
    structures = []
    for label, (kind, shape, rows, cols) in enumerate(found, start=1):
        label_map[rows, cols] = label
        kind_map[rows, cols] = int(kind)
        structures.append(dataclasses.replace(shape, label=label, kind=kind))
    return SpatialResult(
        label_map=label_map,
        kind_map=kind_map,
        structures=tuple(structures),
        background_fail_fraction=background,
        cluster_min_chips=min_chips,
        scratch_link_radius_chips=link_radius,
    )


def wafer_signature(
    fail_map: BoolArray,
    layout: WaferLayout,
    structures: Sequence[Structure],
    *,
    inspected_map: BoolArray | None = None,
    settings: SpatialSettings = _DEFAULT_SETTINGS,
) -> WaferSignature:
    """One spatial label for the wafer, with the evidence.

    Rules, first match wins (figures from ``settings``; docs/spatial.md):

    1. **edge ring**: at least ``edge_ring_min_coverage`` of the edge sectors are hit. A sector is hit when its
       band fail fraction is at least ``edge_sector_min_fail_fraction`` and ``edge_sector_min_ratio`` times the
       interior's (non-band) fail fraction.
    2. **centre**: the centre zone's fail fraction is at least ``centre_min_ratio`` times the middle zone's and
       exceeds it by ``centre_min_excess_fraction``.
    3. **edge local**, **scratch** or **local cluster**, whichever has the most failing chips: the chips of EDGE
       structures (or, if more, the band fails of hit sectors), of SCRATCH structures, of PARTICLE and CLUSTER
       structures. Ties go in that order.
    4. **random**: the fail fraction is at least ``random_min_fail_fraction``.
    5. **none**.

    Parameters
    ----------
    fail_map : ndarray of bool, shape (layout.row_count, layout.column_count)
        As for :func:`find_defect_structures`; fails outside the usable area are ignored.
    layout : WaferLayout
    structures : sequence of Structure
        From :func:`find_defect_structures` on the same map and settings.
    inspected_map : ndarray of bool, same shape, optional, keyword-only
        Chips that were measured: the fail fractions are over inspected usable chips. Default: all usable chips.
    settings : SpatialSettings, keyword-only

    Returns
    -------
    WaferSignature

    Raises
    ------
    TypeError, ValueError
        As for :func:`find_defect_structures`; also if the centre zone reaches the edge band.
    """
    fail_map = _checked_fail_map(fail_map, layout, copy=False)
    inner = _inner_layout(layout, settings.edge_band_mm)
    zones = _zone_counts(fail_map, _usable_map(layout, inspected_map), layout, inner, settings)

    chips_by_kind = dict.fromkeys(StructureKind, 0)
    for structure in structures:
        chips_by_kind[structure.kind] += structure.chip_count
    largest = max(structures, key=lambda structure: structure.chip_count, default=None)

    def fraction(fails: float, chips: float) -> float:
        return fails / chips if chips > 0 else math.nan

    centre = fraction(zones.centre_fails, zones.centre_chips)
    edge = fraction(zones.band_fails, zones.band_chips)
    middle_chips = zones.usable_chips - zones.centre_chips - zones.band_chips
    middle = fraction(zones.fails - zones.centre_fails - zones.band_fails, middle_chips)
    interior = fraction(zones.fails - zones.band_fails, zones.usable_chips - zones.band_chips)
    sector_fractions = np.full(settings.edge_sector_count, np.nan)
    has_chips = zones.sector_chips > 0
    sector_fractions[has_chips] = zones.sector_fails[has_chips] / zones.sector_chips[has_chips]
    threshold = max(settings.edge_sector_min_fail_fraction, settings.edge_sector_min_ratio * np.nan_to_num(interior))
    hit = has_chips & (np.nan_to_num(sector_fractions) >= threshold)
    coverage = float(hit.sum() / has_chips.sum()) if has_chips.any() else 0.0
    fail_fraction = fraction(zones.fails, zones.usable_chips)

    label, rule = _choose_label(
        settings,
        coverage=coverage,
        hit_count=int(hit.sum()),
        sector_count=int(has_chips.sum()),
        centre=centre,
        middle=middle,
        hit_band_fails=int(zones.sector_fails[hit].sum()),
        chips_by_kind=chips_by_kind,
        fail_fraction=fail_fraction,
    )
    return WaferSignature(
        label=label,
        rule=rule,
        usable_chip_count=zones.usable_chips,
        fail_count=zones.fails,
        fail_fraction=fail_fraction,
        centre_fail_fraction=centre,
        middle_fail_fraction=middle,
        edge_fail_fraction=edge,
        edge_sector_fail_fractions=tuple(float(value) for value in sector_fractions),
        edge_sector_coverage=coverage,
        structure_count=len(structures),
        scratch_chip_count=chips_by_kind[StructureKind.SCRATCH],
        cluster_chip_count=chips_by_kind[StructureKind.CLUSTER] + chips_by_kind[StructureKind.PARTICLE],
        edge_structure_chip_count=chips_by_kind[StructureKind.EDGE],
        largest_structure_kind=largest.kind if largest is not None else StructureKind.NONE,
        largest_structure_chip_count=largest.chip_count if largest is not None else 0,
    )


# ---------------------------------------------------------------------------------------------------------------------
# Inputs and zones
# ---------------------------------------------------------------------------------------------------------------------


def _checked_fail_map(fail_map: BoolArray, layout: WaferLayout, *, copy: bool = True) -> BoolArray:
    """The fail map as a C-contiguous bool array (a copy we may modify, unless ``copy`` is False)."""
    if not isinstance(layout, WaferLayout):
        raise TypeError(f"layout must be a WaferLayout, got {type(layout).__name__}")
    array = np.asarray(fail_map)
    if array.dtype != np.bool_:
        raise TypeError(f"fail_map must be a bool array, got dtype {array.dtype}")
    expected = (layout.row_count, layout.column_count)
    if array.shape != expected:
        raise ValueError(f"fail_map has shape {array.shape}; the layout's index box is (rows, cols) = {expected}")
    return np.array(array, order="C", copy=True) if copy else np.ascontiguousarray(array)


def _usable_map(layout: WaferLayout, inspected_map: BoolArray | None) -> BoolArray:
    """Usable chips, restricted to the inspected ones if a map of them is given."""
    usable = layout.usable_mask()
    if inspected_map is not None:
        inspected = np.asarray(inspected_map)
        if inspected.dtype != np.bool_:
            raise TypeError(f"inspected_map must be a bool array, got dtype {inspected.dtype}")
        if inspected.shape != usable.shape:
            raise ValueError(
                f"inspected_map has shape {inspected.shape}; the layout's index box is (rows, cols) = {usable.shape}"
            )
        usable &= inspected
    return usable


def _inner_layout(layout: WaferLayout, edge_band_mm: float) -> WaferLayout:
    """The layout with the edge exclusion widened by the edge band: its usable chips are the non-band chips."""
    substrate = layout.substrate
    exclusion_mm = substrate.edge_exclusion_mm + edge_band_mm
    if exclusion_mm >= substrate.diameter_mm / 2.0:
        raise ValueError(
            f"edge_band_mm: {edge_band_mm!r} mm plus the edge exclusion {substrate.edge_exclusion_mm!r} mm reaches "
            f"the centre of the {substrate.diameter_mm} mm wafer"
        )
    return WaferLayout(dataclasses.replace(substrate, edge_exclusion_mm=exclusion_mm), layout.grid)


def _inner_radius_um(layout: WaferLayout, edge_band_mm: float) -> float:
    """Distance from the wafer centre to the nearest boundary of the non-band area (circle, flats, notch tip)."""
    substrate = layout.substrate
    inset_um = (substrate.edge_exclusion_mm + edge_band_mm) * 1000.0
    distances = [substrate.radius_um, substrate.primary_flat_distance_um, substrate.secondary_flat_distance_um]
    radius = min(distances) - inset_um
    if substrate.has_notch:
        apex_um = substrate.radius_um - NOTCH_DEPTH_MM * 1000.0 - inset_um / math.sin(math.radians(NOTCH_ANGLE_DEG / 2))
        radius = min(radius, apex_um)
    return radius


@dataclass(frozen=True)
class _ZoneCounts:
    usable_chips: int
    fails: int
    centre_chips: int
    centre_fails: int
    band_chips: int
    band_fails: int
    sector_chips: IntArray
    sector_fails: IntArray


def _zone_counts(
    fail_map: BoolArray, usable: BoolArray, layout: WaferLayout, inner: WaferLayout, settings: SpatialSettings
) -> _ZoneCounts:
    """Usable (inspected) chips and fails per radial zone and per edge sector, band by band of rows."""
    substrate = layout.substrate
    centre_radius_um = settings.centre_radius_fraction * (substrate.radius_um - substrate.edge_exclusion_um)
    grid = layout.grid
    room_um = _inner_radius_um(layout, settings.edge_band_mm) - math.hypot(grid.pitch_x_um, grid.pitch_y_um)
    if centre_radius_um > room_um:
        raise ValueError(
            f"centre_radius_fraction: the centre zone ({centre_radius_um / 1000:.3g} mm) reaches the edge band "
            f"(which starts {max(room_um, 0.0) / 1000:.3g} mm from the centre); lower it or edge_band_mm"
        )
    sectors = settings.edge_sector_count
    sector_rad = 2.0 * math.pi / sectors
    interior = inner.usable_mask()
    fails = centre_fails = band_fails = 0
    sector_chips = np.zeros(sectors, dtype=np.int64)
    sector_fails = np.zeros(sectors, dtype=np.int64)

    def sector_of(rows: IntArray, cols: IntArray) -> IntArray:
        x_um, y_um = layout.chip_center_um(cols, rows)
        index = np.floor(np.mod(np.arctan2(y_um, x_um), 2.0 * math.pi) / sector_rad).astype(np.int64)
        return np.minimum(index, sectors - 1)

    for first in range(0, layout.row_count, ROW_CHUNK):
        block = slice(first, min(first + ROW_CHUNK, layout.row_count))
        band = usable[block] & ~interior[block]
        rows, cols = np.nonzero(band)
        sector_chips += np.bincount(sector_of(rows + first, cols), minlength=sectors)
        rows, cols = np.nonzero(fail_map[block] & usable[block])
        fails += rows.size
        in_band = band[rows, cols]
        band_fails += int(in_band.sum())
        sector_fails += np.bincount(sector_of(rows[in_band] + first, cols[in_band]), minlength=sectors)
        x_um, y_um = layout.chip_center_um(cols[~in_band], rows[~in_band] + first)
        centre_fails += int(np.count_nonzero(x_um * x_um + y_um * y_um <= centre_radius_um**2))
    centre_chips = sum(
        int(np.count_nonzero(usable[row, lo : hi + 1])) for row, lo, hi in _disc_rows(layout, centre_radius_um)
    )
    return _ZoneCounts(
        usable_chips=int(np.count_nonzero(usable)),
        fails=fails,
        centre_chips=centre_chips,
        centre_fails=centre_fails,
        band_chips=int(sector_chips.sum()),
        band_fails=band_fails,
        sector_chips=sector_chips,
        sector_fails=sector_fails,
    )


def _disc_rows(layout: WaferLayout, radius_um: float) -> list[tuple[int, int, int]]:
    """(row, first col, last col) of the chips of the box whose centre lies within ``radius_um`` of the wafer
    centre, for the rows that have any."""
    rows = np.arange(layout.row_count, dtype=np.int64)
    x0, y0 = layout.chip_center_um(np.zeros_like(rows), rows)
    x1, y1 = layout.chip_center_um(np.ones_like(rows), rows)
    vx, vy = float(x1[0] - x0[0]), float(y1[0] - y0[0])
    # |c0 + i·v|² ≤ ρ²  ⇔  a·i² + 2b·i + c ≤ 0
    a = vx * vx + vy * vy
    b = x0 * vx + y0 * vy
    c = x0 * x0 + y0 * y0 - radius_um**2
    discriminant = b * b - a * c
    root = np.sqrt(np.maximum(discriminant, 0.0))
    lo = np.maximum(np.ceil((-b - root) / a), 0).astype(np.int64)
    hi = np.minimum(np.floor((-b + root) / a), layout.column_count - 1).astype(np.int64)
    hit = (discriminant >= 0.0) & (lo <= hi)
    return list(zip(rows[hit].tolist(), lo[hit].tolist(), hi[hit].tolist(), strict=True))


def _background_fail_fraction(fails: BoolArray, usable: BoolArray, usable_count: int) -> float:
    """Median fail fraction over the fully usable (and inspected) square tiles: the point-defect level, robust to
    structures. Tiles of 64 chips, or 32 or 16 if fewer than ``_MIN_TILES`` of them fit (a partial scan)."""
    rows, cols = fails.shape
    for tile in (TILE_CHIPS, TILE_CHIPS // 2, TILE_CHIPS // 4):
        starts = np.arange(0, cols, tile)
        fail_tiles, usable_tiles = [], []
        for first in range(0, rows - tile + 1, tile):
            fail_tiles.append(np.add.reduceat(fails[first : first + tile].sum(axis=0, dtype=np.int32), starts))
            usable_tiles.append(np.add.reduceat(usable[first : first + tile].sum(axis=0, dtype=np.int32), starts))
        if fail_tiles:
            full = np.asarray(usable_tiles) == tile * tile
            if np.count_nonzero(full) >= _MIN_TILES:
                return float(np.median(np.asarray(fail_tiles)[full])) / (tile * tile)
    return float(np.count_nonzero(fails)) / usable_count if usable_count else 0.0


def _cluster_min_chips(background: float, usable_count: int, settings: SpatialSettings) -> int | None:
    """Smallest cluster size whose expected chance count ``N_fail·(λp)^(k−1)`` is below the allowed number."""
    growth = (CHANCE_GROWTH_BRIDGED if settings.bridge_cluster_gaps else CHANCE_GROWTH_PLAIN) * background
    if growth >= 1.0:
        return None
    expected_fails = background * usable_count
    floor = settings.min_cluster_chips
    if growth <= 0.0 or expected_fails <= settings.chance_structures_per_wafer:
        return floor
    steps = math.log(settings.chance_structures_per_wafer / expected_fails) / math.log(growth)
    return max(floor, 1 + math.ceil(steps - 1e-9))


def _link_radius(background: float, settings: SpatialSettings) -> int:
    """Largest dilation radius at which a non-isolated random fail links by chance to few others."""
    company = _COMPANY_WINDOW_CHIPS**2 - 1
    survivors = background * (1.0 - (1.0 - background) ** company)  # density of fails with company
    radius = settings.scratch_link_radius_chips
    while radius > 0 and survivors * math.pi * (2 * radius + 1) ** 2 > settings.scratch_max_link_degree:
        radius -= 1
    return radius


# ---------------------------------------------------------------------------------------------------------------------
# Shapes
# ---------------------------------------------------------------------------------------------------------------------

_CHIP_CHUNK = 1 << 20
"""Chips per chunk when a structure's geometry is accumulated (bounds the float temporaries of huge structures)."""


@dataclass(frozen=True)
class _ChipFrame:
    """Chip centres as an affine function of the index: ``(x, y) = origin + J · (col, row)`` (µm)."""

    origin_um: tuple[float, float]
    jacobian_um: tuple[tuple[float, float], tuple[float, float]]  # ((∂x/∂col, ∂x/∂row), (∂y/∂col, ∂y/∂row))
    pitch_um: float
    min_pitch_um: float
    chip_area_um2: float

    @classmethod
    def of(cls, layout: WaferLayout) -> _ChipFrame:
        x, y = layout.chip_center_um(np.array([0, 1, 0]), np.array([0, 0, 1]))
        grid = layout.grid
        return cls(
            origin_um=(float(x[0]), float(y[0])),
            jacobian_um=((float(x[1] - x[0]), float(x[2] - x[0])), (float(y[1] - y[0]), float(y[2] - y[0]))),
            pitch_um=math.sqrt(grid.pitch_x_um * grid.pitch_y_um),
            min_pitch_um=min(grid.pitch_x_um, grid.pitch_y_um),
            chip_area_um2=grid.pitch_x_um * grid.pitch_y_um,
        )

    def centres_um(self, rows: IntArray, cols: IntArray) -> tuple[FloatArray, FloatArray]:
        (xc, xr), (yc, yr) = self.jacobian_um
        return self.origin_um[0] + xc * cols + xr * rows, self.origin_um[1] + yc * cols + yr * rows

    def index_of(self, x_um: FloatArray, y_um: FloatArray) -> tuple[FloatArray, FloatArray]:
        """Fractional (col, row) of wafer positions (the inverse map)."""
        (xc, xr), (yc, yr) = self.jacobian_um
        dx, dy = x_um - self.origin_um[0], y_um - self.origin_um[1]
        determinant = xc * yr - xr * yc
        return (yr * dx - xr * dy) / determinant, (xc * dy - yc * dx) / determinant


def _principal(sxx: float, syy: float, sxy: float) -> tuple[float, float, tuple[float, float]]:
    """Eigenvalues of a 2 × 2 covariance (major first) and the major axis direction."""
    half_trace, half_gap = (sxx + syy) / 2.0, math.hypot((sxx - syy) / 2.0, sxy)
    angle = 0.5 * math.atan2(2.0 * sxy, sxx - syy)
    return half_trace + half_gap, max(half_trace - half_gap, 0.0), (math.cos(angle), math.sin(angle))


def _moments(x_um: FloatArray, y_um: FloatArray) -> tuple[float, float, tuple[float, float], tuple[float, float]]:
    """Covariance eigenvalues of points (σ², major first), their mean and the major axis direction."""
    mean_x, mean_y = float(x_um.mean()), float(y_um.mean())
    dx, dy = x_um - mean_x, y_um - mean_y
    major_var, minor_var, direction = _principal(float(dx @ dx), float(dy @ dy), float(dx @ dy))
    return major_var / x_um.size, minor_var / x_um.size, (mean_x, mean_y), direction


def _line_inliers(x_um: FloatArray, y_um: FloatArray, pitch_um: float) -> BoolArray:
    """The points of a line fit, trimmed of those far across it (fails attached to a chain by the linking).

    Refits up to three times, keeping points within ``max(1.5 pitch, 3 σ)`` of the median offset across the axis,
    σ from the median absolute deviation, so side branches do not widen or tilt a scratch.
    """
    keep = np.ones(x_um.shape, dtype=bool)
    for _ in range(3):
        _, _, (mean_x, mean_y), (ux, uy) = _moments(x_um[keep], y_um[keep])
        across = (y_um - mean_y) * ux - (x_um - mean_x) * uy
        middle = float(np.median(across[keep]))
        spread = 1.4826 * float(np.median(np.abs(across[keep] - middle)))
        new_keep = np.abs(across - middle) <= max(1.5 * pitch_um, 3.0 * spread)
        if np.array_equal(new_keep, keep) or np.count_nonzero(new_keep) < _SCRATCH_FRAGMENT_MIN_CHIPS:
            break
        keep = new_keep
    return keep


def _shape(rows: IntArray, cols: IntArray, frame: _ChipFrame, inner: WaferLayout) -> Structure:
    """Geometry of a group of chips, accumulated chunk by chunk in index space and mapped to µm (a structure not
    yet labelled or classified: label 0, kind NONE)."""
    count = rows.size
    mean_col, mean_row = float(cols.mean(dtype=np.float64)), float(rows.mean(dtype=np.float64))
    s_cc = s_rr = s_cr = 0.0
    in_band = 0
    for start in range(0, count, _CHIP_CHUNK):
        chunk = slice(start, start + _CHIP_CHUNK)
        d_col, d_row = cols[chunk] - mean_col, rows[chunk] - mean_row
        s_cc, s_rr, s_cr = s_cc + float(d_col @ d_col), s_rr + float(d_row @ d_row), s_cr + float(d_col @ d_row)
        in_band += int(np.count_nonzero(~inner.chip_usable(cols[chunk], rows[chunk])))
    (xc, xr), (yc, yr) = frame.jacobian_um
    # covariance in µm = J · C_index · Jᵀ
    sxx = (xc * xc * s_cc + 2.0 * xc * xr * s_cr + xr * xr * s_rr) / count
    syy = (yc * yc * s_cc + 2.0 * yc * yr * s_cr + yr * yr * s_rr) / count
    sxy = (xc * yc * s_cc + (xc * yr + xr * yc) * s_cr + xr * yr * s_rr) / count
    major_var, minor_var, (ux, uy) = _principal(sxx, syy, sxy)
    along_col, along_row = ux * xc + uy * yc, ux * xr + uy * yr  # projection on the major axis per index step
    low, high = math.inf, -math.inf
    for start in range(0, count, _CHIP_CHUNK):
        chunk = slice(start, start + _CHIP_CHUNK)
        along = along_col * cols[chunk] + along_row * rows[chunk]
        low, high = min(low, float(along.min())), max(high, float(along.max()))
    mean_x, mean_y = frame.centres_um(np.float64(mean_row), np.float64(mean_col))
    width_um = math.sqrt(12.0 * minor_var + frame.pitch_um**2)
    return Structure(
        label=0,
        kind=StructureKind.NONE,
        chip_count=int(count),
        centroid_col=mean_col,
        centroid_row=mean_row,
        centroid_x_um=float(mean_x),
        centroid_y_um=float(mean_y),
        col_min=int(cols.min()),
        row_min=int(rows.min()),
        col_max=int(cols.max()),
        row_max=int(rows.max()),
        length_um=high - low,
        width_um=width_um,
        angle_deg=math.degrees(math.atan2(uy, ux)) % 180.0,
        elongation=math.sqrt(12.0 * major_var + frame.pitch_um**2) / width_um,
        radius_um=math.sqrt(2.0 * (major_var + minor_var)),
        edge_fraction=in_band / count,
    )


def _cluster_kind(shape: Structure, frame: _ChipFrame, settings: SpatialSettings) -> StructureKind:
    if shape.edge_fraction >= settings.edge_structure_min_fraction:
        return StructureKind.EDGE
    # A solid disc of chip centres has σ² = R²/4 per axis; pad by half a pitch for the chips' own extent.
    disc_chips = math.pi * (shape.radius_um + 0.5 * frame.pitch_um) ** 2 / frame.chip_area_um2
    if (
        shape.radius_um <= settings.particle_max_radius_um
        and shape.elongation <= settings.particle_max_elongation
        and shape.chip_count >= settings.particle_min_fill * disc_chips
    ):
        return StructureKind.PARTICLE
    return StructureKind.CLUSTER


def _labelled_groups(
    fails: BoolArray, labels: NDArray[np.int32], label_count: int, min_chips: int
) -> list[tuple[IntArray, IntArray]]:
    """(rows, cols) of the fails of each label holding at least ``min_chips`` fails, in label order.

    One pass over bands of rows collects the labelled fails (their number bounds the memory, 20 bytes each), then
    the wanted labels are kept and sorted.
    """
    found_labels, found_rows, found_cols = [], [], []
    for first in range(0, fails.shape[0], ROW_CHUNK):
        block = slice(first, first + ROW_CHUNK)
        rows, cols = np.nonzero(fails[block])
        label_of = labels[block][rows, cols]
        labelled = label_of > 0
        found_labels.append(label_of[labelled])
        found_rows.append(rows[labelled] + first)
        found_cols.append(cols[labelled])
    label_of = np.concatenate(found_labels)
    wanted = np.bincount(label_of, minlength=label_count) >= min_chips
    keep = wanted[label_of]
    label_of = label_of[keep]
    order = np.argsort(label_of, kind="stable")
    rows, cols = np.concatenate(found_rows)[keep][order], np.concatenate(found_cols)[keep][order]
    if rows.size == 0:
        return []
    splits = np.flatnonzero(np.diff(label_of[order])) + 1
    return list(zip(np.split(rows, splits), np.split(cols, splits), strict=True))


# ---------------------------------------------------------------------------------------------------------------------
# Scratch pass
# ---------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Piece:
    rows: IntArray
    cols: IntArray
    centre: tuple[float, float]
    direction: tuple[float, float]
    along: tuple[float, float]  # min and max projection of the chip centres on the direction, from the centre
    width_um: float


def _find_scratches(
    fails: BoolArray, frame: _ChipFrame, inner: WaferLayout, link_radius: int, settings: SpatialSettings
) -> list[tuple[IntArray, IntArray]]:
    """(rows, cols) of the chips of each scratch; their chips are cleared from ``fails`` (the working copy)."""
    pitch_um = frame.pitch_um
    pieces = _scratch_pieces(fails, (0, 0), link_radius, frame, settings)
    groups = [[pieces[index] for index in group] for group in _collinear_groups(pieces, pitch_um, settings)]
    # the biggest first, so that where two candidates overlap (crossing scratches) the bigger takes the chips
    groups.sort(key=lambda members: -sum(piece.rows.size for piece in members))
    scratches: list[tuple[IntArray, IntArray]] = []

    def grown(rows: IntArray, cols: IntArray) -> bool:
        found = _grown_scratch(rows, cols, fails, frame=frame, inner=inner, settings=settings)
        if found is not None:
            fails[found] = False
            scratches.append(found)
        return found is not None

    for members in groups:
        rows = np.concatenate([piece.rows for piece in members])
        cols = np.concatenate([piece.cols for piece in members])
        span_um = max(piece.along[1] for piece in members) - min(piece.along[0] for piece in members)
        if len(members) == 1 and (
            rows.size < 0.5 * settings.scratch_min_chips or span_um < 0.5 * settings.scratch_min_length_um
        ):
            continue  # growth past the ends cannot make a scratch of it (the usual chance chain)
        if not grown(rows, cols) and len(members) > 1:
            # The merge made something that is not a line (e.g. a bend): judge the pieces one by one.
            for piece in sorted(members, key=lambda piece: -piece.rows.size):
                grown(piece.rows, piece.cols)
    return scratches


def _scratch_pieces(
    region: BoolArray, origin: tuple[int, int], link_radius: int, frame: _ChipFrame, settings: SpatialSettings
) -> list[_Piece]:
    """Line pieces among the fails of a region (the whole map, or one component's box), origin = its (row, col).

    Fails with company in a 5 × 5 window are dilated by the link radius and labelled; each component with enough
    fails is fitted with a line, trimmed and kept if narrow and elongated. A component that is not a piece (a line
    buried in a locally dense patch of fails, say) is searched again alone with the link radius one smaller, down
    to 0, if its box is not huge.
    """
    image = region.view(np.uint8)
    neighbours = np.ones((_COMPANY_WINDOW_CHIPS, _COMPANY_WINDOW_CHIPS), dtype=np.uint8)
    neighbours[_COMPANY_WINDOW_CHIPS // 2, _COMPANY_WINDOW_CHIPS // 2] = 0
    linked = cv2.dilate(image, neighbours)
    cv2.bitwise_and(linked, image, dst=linked)  # fails with company
    if link_radius > 0:
        disc = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * link_radius + 1, 2 * link_radius + 1))
        cv2.dilate(linked, disc, dst=linked)
    label_count, labels = cv2.connectedComponents(linked, connectivity=8, ltype=cv2.CV_32S)
    del linked
    groups = _labelled_groups(region, labels, label_count, _SCRATCH_FRAGMENT_MIN_CHIPS)
    del labels

    pieces: list[_Piece] = []
    for group_rows, group_cols in groups:
        row_lo, col_lo = int(group_rows.min()), int(group_cols.min())
        height, width = int(group_rows.max()) - row_lo + 1, int(group_cols.max()) - col_lo + 1
        piece = _as_piece(group_rows + origin[0], group_cols + origin[1], frame, settings)
        if piece is not None:
            pieces.append(piece)
        elif link_radius > 0 and group_rows.size >= settings.scratch_min_chips and height * width <= _RELINK_MAX_CHIPS:
            box = np.zeros((height, width), dtype=bool)
            box[group_rows - row_lo, group_cols - col_lo] = True
            pieces.extend(
                _scratch_pieces(box, (origin[0] + row_lo, origin[1] + col_lo), link_radius - 1, frame, settings)
            )
    return pieces


def _as_piece(rows: IntArray, cols: IntArray, frame: _ChipFrame, settings: SpatialSettings) -> _Piece | None:
    """The group as a line piece (trimmed of fails far across its axis), or None if it is not narrow and long."""
    pitch_um = frame.pitch_um
    span = math.hypot(int(rows.max() - rows.min()), int(cols.max() - cols.min())) + 1.0
    # a line piece holds at most about width × length chips: skip blobs and rings before any per-chip work
    if span < _SCRATCH_FRAGMENT_MIN_CHIPS or rows.size > 2.0 * settings.scratch_max_width_chips * span:
        return None
    x_um, y_um = frame.centres_um(rows, cols)
    keep = _line_inliers(x_um, y_um, pitch_um)
    rows, cols, x_um, y_um = rows[keep], cols[keep], x_um[keep], y_um[keep]
    if rows.size < _SCRATCH_FRAGMENT_MIN_CHIPS:
        return None
    major_var, minor_var, centre, direction = _moments(x_um, y_um)
    width_um = math.sqrt(12.0 * minor_var + pitch_um**2)
    if (
        width_um > settings.scratch_max_width_chips * pitch_um
        or math.sqrt(12.0 * major_var + pitch_um**2) < _SCRATCH_FRAGMENT_MIN_ELONGATION * width_um
    ):
        return None
    along = (x_um - centre[0]) * direction[0] + (y_um - centre[1]) * direction[1]
    return _Piece(rows, cols, centre, direction, (float(along.min()), float(along.max())), width_um)


def _grown_scratch(
    rows: IntArray,
    cols: IntArray,
    fails: BoolArray,
    *,
    frame: _ChipFrame,
    inner: WaferLayout,
    settings: SpatialSettings,
) -> tuple[IntArray, IntArray] | None:
    """The fails of the corridor along the line fitted to some chips, grown past its ends; None if no scratch.

    The corridor is ``width/2 + 1 pitch`` to either side of the fitted axis. Beyond the chips' outermost
    projections it grows fail by fail while the next fail along the axis is at most ``_GROWTH_STEP_CHIPS`` pitches
    away, which recovers end pieces too small to be pieces of their own. Inside, it takes every fail, so the chips
    that the isolation filter dropped from a gappy chain return to it.
    """
    pitch_um = frame.pitch_um
    x_um, y_um = frame.centres_um(rows, cols)
    _, minor_var, (centre_x, centre_y), (ux, uy) = _moments(x_um, y_um)
    along = (x_um - centre_x) * ux + (y_um - centre_y) * uy
    low, high = float(along.min()), float(along.max())
    half_width_um = 0.5 * math.sqrt(12.0 * minor_var + pitch_um**2) + pitch_um
    step_um = _GROWTH_STEP_CHIPS * pitch_um
    reach_um = 4.0 * step_um
    ends_x = np.array([centre_x + (low - reach_um) * ux, centre_x + (high + reach_um) * ux])
    ends_y = np.array([centre_y + (low - reach_um) * uy, centre_y + (high + reach_um) * uy])
    end_cols, end_rows = frame.index_of(ends_x, ends_y)
    margin = half_width_um / frame.min_pitch_um + 2.0
    row_lo = max(0, math.floor(end_rows.min() - margin))
    row_hi = min(fails.shape[0], math.ceil(end_rows.max() + margin) + 1)
    col_lo = max(0, math.floor(end_cols.min() - margin))
    col_hi = min(fails.shape[1], math.ceil(end_cols.max() + margin) + 1)
    found_rows, found_cols = np.nonzero(fails[row_lo:row_hi, col_lo:col_hi])
    found_rows += row_lo
    found_cols += col_lo
    x_um, y_um = frame.centres_um(found_rows, found_cols)
    along = (x_um - centre_x) * ux + (y_um - centre_y) * uy
    corridor = np.abs((y_um - centre_y) * ux - (x_um - centre_x) * uy) <= half_width_um
    in_corridor = along[corridor]
    high = _walk(np.sort(in_corridor[in_corridor > high]), high, step_um)
    low = -_walk(np.sort(-in_corridor[in_corridor < low]), -low, step_um)
    keep = corridor & (along >= low) & (along <= high)
    rows, cols = found_rows[keep], found_cols[keep]
    if not _is_scratch(rows, cols, frame, inner, settings):
        return None
    return rows, cols


def _walk(ahead: FloatArray, start: float, step: float) -> float:
    """Last of the ascending values ``ahead`` reached from ``start`` in steps of at most ``step``."""
    steps = np.diff(ahead, prepend=start)
    breaks = np.flatnonzero(steps > step)
    stop = int(breaks[0]) if breaks.size else ahead.size
    return float(ahead[stop - 1]) if stop > 0 else start


def _collinear_groups(pieces: Sequence[_Piece], pitch_um: float, settings: SpatialSettings) -> list[IntArray]:
    """Indices of pieces lying on one line with short gaps between them (connected components of that relation)."""
    count = len(pieces)
    if count == 0:
        return []
    centre = np.array([piece.centre for piece in pieces])
    direction = np.array([piece.direction for piece in pieces])
    low = np.array([piece.along[0] for piece in pieces])
    high = np.array([piece.along[1] for piece in pieces])
    width = np.array([piece.width_um for piece in pieces])
    length = high - low
    max_cos = math.cos(math.radians(settings.scratch_merge_angle_deg))
    max_gap_um = settings.scratch_max_gap_chips * pitch_um
    # Candidate pairs: centres closer than the two half lengths plus the gap can be, at most.
    reach_um = float(length.max()) + max_gap_um + float(width.max()) + 2.0 * pitch_um
    pairs = cKDTree(centre).query_pairs(reach_um, output_type="ndarray")
    a, b = pairs[:, 0], pairs[:, 1]
    # judge each pair on the longer piece's axis, where the direction is best known
    a_longer = length[a] >= length[b]
    longer, shorter = np.where(a_longer, a, b), np.where(a_longer, b, a)
    d = direction[longer]
    offset = centre[shorter] - centre[longer]
    across = np.abs(offset[:, 0] * d[:, 1] - offset[:, 1] * d[:, 0])
    along = offset[:, 0] * d[:, 0] + offset[:, 1] * d[:, 1]
    half = 0.5 * length[shorter]
    gap = np.maximum(along - half - high[longer], low[longer] - (along + half))
    cos_angle = np.abs(np.sum(direction[a] * direction[b], axis=1))
    near = (
        (cos_angle >= max_cos) & (across <= 0.5 * np.maximum(width[a], width[b]) + 1.5 * pitch_um) & (gap <= max_gap_um)
    )
    first, second = a[near], b[near]
    graph = coo_array((np.ones(first.size, dtype=np.int8), (first, second)), shape=(count, count))
    _, group_of = connected_components(graph, directed=False)
    order = np.argsort(group_of, kind="stable")
    return np.split(order, np.flatnonzero(np.diff(group_of[order])) + 1)


def _is_scratch(
    rows: IntArray, cols: IntArray, frame: _ChipFrame, inner: WaferLayout, settings: SpatialSettings
) -> bool:
    if rows.size < settings.scratch_min_chips:
        return False
    shape = _shape(rows, cols, frame, inner)
    pitch_um = frame.pitch_um
    return (
        shape.length_um >= settings.scratch_min_length_um
        and shape.width_um <= settings.scratch_max_width_chips * pitch_um
        and shape.elongation >= settings.scratch_min_elongation
        and shape.chip_count >= settings.scratch_min_line_fill * (shape.length_um / pitch_um + 1.0)
        # a thin arc along the edge is edge damage, left to the cluster pass
        and shape.edge_fraction < settings.edge_structure_min_fraction
    )


# ---------------------------------------------------------------------------------------------------------------------
# Cluster pass
# ---------------------------------------------------------------------------------------------------------------------


def _find_clusters(fails: BoolArray, min_chips: int, settings: SpatialSettings) -> list[tuple[IntArray, IntArray]]:
    """(rows, cols) of the fails of each 8-connected group (after the optional gap-bridging closing)."""
    image = fails.view(np.uint8)
    if settings.bridge_cluster_gaps:
        image = cv2.morphologyEx(image, cv2.MORPH_CLOSE, np.ones((3, 3), dtype=np.uint8))
    label_count, labels = cv2.connectedComponents(image, connectivity=8, ltype=cv2.CV_32S)
    del image
    return _labelled_groups(fails, labels, label_count, min_chips)


# ---------------------------------------------------------------------------------------------------------------------
# Signature rules
# ---------------------------------------------------------------------------------------------------------------------


def _choose_label(
    settings: SpatialSettings,
    *,
    coverage: float,
    hit_count: int,
    sector_count: int,
    centre: float,
    middle: float,
    hit_band_fails: int,
    chips_by_kind: dict[StructureKind, int],
    fail_fraction: float,
) -> tuple[SignatureLabel, str]:
    if coverage >= settings.edge_ring_min_coverage:
        return SignatureLabel.EDGE_RING, (
            f"{hit_count} of {sector_count} edge sectors hit ({coverage:.0%} ≥ {settings.edge_ring_min_coverage:.0%})"
        )
    if (
        not math.isnan(centre)
        and not math.isnan(middle)
        and centre >= settings.centre_min_ratio * middle
        and centre - middle >= settings.centre_min_excess_fraction
    ):
        return SignatureLabel.CENTRE, f"centre fail fraction {centre:.3%} vs {middle:.3%} in the middle zone"
    evidence = [
        (
            max(chips_by_kind[StructureKind.EDGE], hit_band_fails),
            SignatureLabel.EDGE_LOCAL,
            f"{chips_by_kind[StructureKind.EDGE]} chips in edge structures, {hit_count} edge sectors hit",
        ),
        (chips_by_kind[StructureKind.SCRATCH], SignatureLabel.SCRATCH, "chips in scratches"),
        (
            chips_by_kind[StructureKind.PARTICLE] + chips_by_kind[StructureKind.CLUSTER],
            SignatureLabel.LOCAL_CLUSTER,
            "chips in particles and clusters",
        ),
    ]
    chips, label, text = max(evidence, key=lambda item: item[0])  # max keeps the first of equals: the order above
    if chips > 0:
        return label, f"largest structured evidence: {chips} ({text})"
    if fail_fraction >= settings.random_min_fail_fraction:
        return SignatureLabel.RANDOM, (
            f"no structure; fail fraction {fail_fraction:.3%} ≥ {settings.random_min_fail_fraction:.3%}"
        )
    if math.isnan(fail_fraction):
        return SignatureLabel.NONE, "no usable chip"
    return SignatureLabel.NONE, (
        f"no structure; fail fraction {fail_fraction:.3%} < {settings.random_min_fail_fraction:.3%}"
    )
