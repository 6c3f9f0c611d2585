"""Tests of inspection.wafer: known answers from an independent brute-force implementation, edge cases, scale."""

import math

import numpy as np
import pytest

from inspection.wafer import (
    NOTCH_DEPTH_MM,
    SUBSTRATE_DIAMETERS_MM,
    TOLERANCE_UM,
    ChipGrid,
    Substrate,
    WaferLayout,
)

# Independent reference geometry: written from the SEMI M1 table and first principles, not from the module.
FLATS_MM = {50.8: (15.88, 8.0), 76.2: (22.22, 11.18), 100.0: (32.5, 18.0), 150.0: (57.5, 37.5)}


def reference_inside(substrate, x, y):
    """Brute-force "usable" point test: circle, flats and (for 200 mm) the notch, all offset by the exclusion."""
    radius = substrate.diameter_mm * 500.0
    e = substrate.edge_exclusion_mm * 1000.0
    inside = np.hypot(x, y) <= radius - e + TOLERANCE_UM
    if substrate.diameter_mm == 200.0:
        # Wedge offset inward: apex (R − depth − e·√2) along the notch direction, 45° walls.
        a_dir = math.radians(substrate.notch_angle_deg)
        along = x * math.cos(a_dir) + y * math.sin(a_dir)
        across = -x * math.sin(a_dir) + y * math.cos(a_dir)
        apex = radius - NOTCH_DEPTH_MM * 1000.0 - e * math.sqrt(2.0)
        inside &= (along - apex) * math.sqrt(0.5) - np.abs(across) * math.sqrt(0.5) <= TOLERANCE_UM
        return inside
    lengths = FLATS_MM[substrate.diameter_mm]
    angles = (substrate.primary_flat_angle_deg, substrate.secondary_flat_angle_deg)
    for length_mm, angle in zip(lengths, angles, strict=True):
        if angle is None:
            continue
        distance = math.sqrt(radius**2 - (length_mm * 500.0) ** 2) - e
        a = math.radians(angle)
        inside &= x * math.cos(a) + y * math.sin(a) <= distance + TOLERANCE_UM
    return inside


def reference_chip_corners(grid, i, j):
    """Corners (4, ...) of grid-relative chips (i, j) (anchor = (0, 0)), computed by explicit rotation."""
    t = math.radians(grid.rotation_deg)
    rot = np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])
    xs, ys = [], []
    for sx in (-0.5, 0.5):
        for sy in (-0.5, 0.5):
            local_x = i * grid.pitch_x_um + sx * grid.chip_width_um
            local_y = j * grid.pitch_y_um + sy * grid.chip_height_um
            xs.append(grid.origin_x_um + rot[0, 0] * local_x + rot[0, 1] * local_y)
            ys.append(grid.origin_y_um + rot[1, 0] * local_x + rot[1, 1] * local_y)
    return np.array(xs), np.array(ys)


def reference_usable_chips(substrate, grid, half_range):
    """Grid-relative (i, j) of all chips whose four corners pass ``reference_inside``, by brute force."""
    i, j = np.meshgrid(np.arange(-half_range, half_range + 1), np.arange(-half_range, half_range + 1))
    xs, ys = reference_chip_corners(grid, i, j)
    ok = reference_inside(substrate, xs, ys).all(axis=0)
    assert not (ok[0].any() or ok[-1].any() or ok[:, 0].any() or ok[:, -1].any()), "brute-force range too small"
    return i[ok], j[ok]


def as_box(layout, i, j):
    col, row = layout.anchor_index
    return i + col, j + row


def polygon_area(x, y):
    return 0.5 * abs(float(np.dot(x[:-1], y[1:]) - np.dot(x[1:], y[:-1])))


# --- substrate ---------------------------------------------------------------------------------------------------


def test_substrate_catalogue():
    assert SUBSTRATE_DIAMETERS_MM == (50.8, 76.2, 100.0, 150.0, 200.0)
    for inches, diameter in ((2, 50.8), (3, 76.2), (4, 100.0), (6, 150.0), (8, 200.0)):
        substrate = Substrate.from_inches(inches)
        assert substrate.diameter_mm == diameter
        assert substrate.radius_um == diameter * 500.0
        assert substrate.has_notch == (inches == 8)
    assert Substrate(150.0).primary_flat_length_mm == 57.5
    assert Substrate(150.0).secondary_flat_length_mm == 37.5
    assert Substrate(76.2, secondary_flat_angle_deg=None).secondary_flat_length_mm == 0.0
    assert Substrate(200.0).primary_flat_length_mm == 0.0
    assert Substrate.from_inches(4, edge_exclusion_mm=1.5).edge_exclusion_mm == 1.5
    assert Substrate(50.8).primary_flat_distance_um == pytest.approx(math.sqrt(25400.0**2 - 7940.0**2))


def test_on_substrate_flats_point_the_stated_way():
    substrate = Substrate(100.0, edge_exclusion_mm=0.0)  # primary flat at 270° (bottom), secondary at 180° (left)
    x = np.array([0.0, 0.0, -49900.0, 49900.0, 0.0])
    y = np.array([-49900.0, 49900.0, 0.0, 0.0, 0.0])
    np.testing.assert_array_equal(substrate.on_substrate(x, y), [False, True, False, True, True])
    turned = Substrate(100.0, primary_flat_angle_deg=90.0, secondary_flat_angle_deg=None)
    np.testing.assert_array_equal(turned.on_substrate(x, y), [True, False, True, True, True])


def test_usable_offsets_every_edge():
    substrate = Substrate(100.0, edge_exclusion_mm=2.0)
    flat = substrate.primary_flat_distance_um
    # Exactly on each offset boundary counts as usable; 1 µm further out does not.
    x = np.array([0.0, 0.0, 48000.0, 48001.0])
    y = np.array([-(flat - 2000.0), -(flat - 1999.0), 0.0, 0.0])
    np.testing.assert_array_equal(substrate.usable(x, y), [True, False, True, False])


def test_notch_point_tests():
    substrate = Substrate(200.0, edge_exclusion_mm=0.0)
    # Apex 1 mm in from the edge at the bottom; 45° walls.
    np.testing.assert_array_equal(
        substrate.on_substrate([0.0, 0.0, 0.0, 600.0, 400.0], [-98999.0, -99001.0, -99500.0, -99500.0, -99500.0]),
        [True, False, False, True, False],
    )
    assert substrate.on_substrate(0.0, -99000.0)  # the apex itself is on the edge: counts as on the wafer


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"diameter_mm": 125.0}, "diameter_mm"),
        ({"diameter_mm": float("nan")}, "diameter_mm"),
        ({"diameter_mm": 100.0, "edge_exclusion_mm": -0.1}, "edge_exclusion_mm"),
        ({"diameter_mm": 100.0, "edge_exclusion_mm": 50.0}, "edge_exclusion_mm"),
        ({"diameter_mm": 100.0, "edge_exclusion_mm": float("nan")}, "edge_exclusion_mm"),
        ({"diameter_mm": 100.0, "primary_flat_angle_deg": float("inf")}, "primary_flat_angle_deg"),
        ({"diameter_mm": 100.0, "secondary_flat_angle_deg": 280.0}, "secondary_flat_angle_deg"),
        ({"diameter_mm": 200.0, "notch_angle_deg": float("nan")}, "notch_angle_deg"),
    ],
)
def test_bad_substrate_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        Substrate(**kwargs)


def test_bad_substrate_messages_give_the_allowed_values():
    with pytest.raises(ValueError, match=r"125\.0") as info:
        Substrate(125.0)
    assert "50.8" in str(info.value)
    assert "200.0" in str(info.value)
    with pytest.raises(ValueError, match=r"\[0, 25\.4\)"):
        Substrate(50.8, edge_exclusion_mm=30.0)
    with pytest.raises(ValueError, match="inches"):
        Substrate.from_inches(5)


# --- grid ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"pitch_x_um": 0.0}, r"pitch_x_um must be > 0"),
        ({"pitch_x_um": -5.0}, r"pitch_x_um must be > 0"),
        ({"pitch_y_um": float("nan")}, r"pitch_y_um must be > 0"),
        ({"pitch_y_um": float("inf")}, r"pitch_y_um must be > 0"),
        ({"chip_width_um": 21.0}, r"chip_width_um must be in \(0, pitch_x_um\] = \(0, 20\.0\]"),
        ({"chip_width_um": 0.0}, r"chip_width_um"),
        ({"chip_height_um": 20.5}, r"chip_height_um must be in \(0, pitch_y_um\]"),
        ({"chip_height_um": float("nan")}, r"chip_height_um"),
        ({"rotation_deg": 5.01}, r"rotation_deg must be in \[-5\.0, 5\.0\]"),
        ({"rotation_deg": -90.0}, r"rotation_deg"),
        ({"rotation_deg": float("nan")}, r"rotation_deg"),
        ({"origin_x_um": float("inf")}, r"origin_x_um"),
    ],
)
def test_bad_grid_names_the_field(kwargs, pattern):
    arguments = {"pitch_x_um": 20.0, "pitch_y_um": 20.0, "chip_width_um": 16.0, "chip_height_um": 16.0} | kwargs
    with pytest.raises(ValueError, match=pattern):
        ChipGrid(**arguments)


def test_chip_equal_to_pitch_and_five_degrees_are_allowed():
    grid = ChipGrid(20.0, 30.0, 20.0, 30.0, rotation_deg=-5.0)
    assert grid.street_x_um == 0.0
    assert grid.street_y_um == 0.0


def test_layout_without_a_fitting_chip_raises():
    with pytest.raises(ValueError, match="grid"):
        WaferLayout(Substrate(50.8), ChipGrid(60000.0, 60000.0, 60000.0, 60000.0))
    with pytest.raises(TypeError, match="substrate"):
        WaferLayout("2 inch", ChipGrid(20.0, 20.0, 16.0, 16.0))


# --- chip counts and masks against brute force ----------------------------------------------------------------------


def test_2inch_1000um_count_matches_brute_force():
    substrate = Substrate(50.8)
    grid = ChipGrid(1000.0, 1000.0, 1000.0, 1000.0)
    layout = WaferLayout(substrate, grid)
    i, j = reference_usable_chips(substrate, grid, 30)
    assert layout.chip_count == len(i) == 1470
    mask = np.zeros((layout.row_count, layout.column_count), dtype=bool)
    col, row = as_box(layout, i, j)
    mask[row, col] = True
    np.testing.assert_array_equal(layout.usable_mask(), mask)


GEOMETRIES = [
    (Substrate(50.8), ChipGrid(1000.0, 1000.0, 1000.0, 1000.0)),
    (Substrate(50.8, edge_exclusion_mm=0.0), ChipGrid(700.0, 900.0, 650.0, 800.0, 123.0, -456.0, 0.5)),
    (Substrate(76.2, edge_exclusion_mm=5.0), ChipGrid(1500.0, 1200.0, 1400.0, 1000.0, -700.0, 300.0, -2.0)),
    (Substrate(100.0, secondary_flat_angle_deg=None), ChipGrid(1800.0, 1800.0, 1700.0, 1700.0, 0.0, 0.0, 4.9)),
    (Substrate(150.0, 1.0, 0.0, 90.0), ChipGrid(2500.0, 2000.0, 2500.0, 1800.0, 1250.0, 1000.0, 1.0)),
    (Substrate(200.0), ChipGrid(3000.0, 3000.0, 2900.0, 2900.0, 1500.0, 1500.0, 0.0)),
    (Substrate(200.0, 2.0, notch_angle_deg=0.0), ChipGrid(2500.0, 2000.0, 2400.0, 1900.0, 333.0, 77.0, -3.0)),
]


@pytest.mark.parametrize(("substrate", "grid"), GEOMETRIES)
def test_usable_and_physical_masks_match_corner_brute_force(substrate, grid):
    layout = WaferLayout(substrate, grid)
    physical = Substrate(substrate.diameter_mm, 0.0, *_angles(substrate))
    for reference_substrate, mask in ((substrate, layout.usable_mask()), (physical, layout.physical_mask())):
        i, j = reference_usable_chips(reference_substrate, grid, 60)
        expected = np.zeros_like(mask)
        col, row = as_box(layout, i, j)
        expected[row, col] = True
        if substrate.has_notch:
            # The module also rejects chips the notch tip pokes into between their corners: a subset, near the notch.
            assert not (mask & ~expected).any()
            x, y = layout.chip_center_um(*np.nonzero(expected & ~mask)[::-1])
            notch = math.radians(substrate.notch_angle_deg)
            assert np.all(np.hypot(x - 1e5 * math.cos(notch), y - 1e5 * math.sin(notch)) < 10000.0)
        else:
            np.testing.assert_array_equal(mask, expected)
    # The box is tight around the physical chips: each border row and column holds one.
    physical_mask = layout.physical_mask()
    assert physical_mask[0].any()
    assert physical_mask[-1].any()
    assert physical_mask[:, 0].any()
    assert physical_mask[:, -1].any()


def _angles(substrate):
    return substrate.primary_flat_angle_deg, substrate.secondary_flat_angle_deg, substrate.notch_angle_deg


@pytest.mark.parametrize(("substrate", "grid"), GEOMETRIES)
def test_all_views_of_the_chip_set_agree(substrate, grid):
    layout = WaferLayout(substrate, grid)
    mask = layout.usable_mask()
    physical = layout.physical_mask()
    cols, rows = np.meshgrid(np.arange(-2, layout.column_count + 2), np.arange(-2, layout.row_count + 2))
    inside = layout.in_box(cols, rows)
    padded = np.zeros(cols.shape, dtype=bool)
    padded[2:-2, 2:-2] = mask
    np.testing.assert_array_equal(layout.chip_usable(cols, rows), padded)
    padded[2:-2, 2:-2] = physical
    np.testing.assert_array_equal(layout.chip_on_substrate(cols, rows), padded)
    assert inside.sum() == layout.row_count * layout.column_count
    assert not (mask & ~physical).any()
    assert layout.chip_count == mask.sum()
    assert layout.physical_chip_count == physical.sum()
    usable_col, usable_row = layout.usable_chips()
    assert usable_col.dtype == usable_row.dtype == np.int32
    nonzero_row, nonzero_col = np.nonzero(mask)
    np.testing.assert_array_equal(usable_row, nonzero_row)
    np.testing.assert_array_equal(usable_col, nonzero_col)
    first, last = layout.row_extent(np.arange(-1, layout.row_count + 1))
    any_chip = mask.any(axis=1)
    expected_first = np.where(any_chip, mask.argmax(axis=1), -1)
    expected_last = np.where(any_chip, layout.column_count - 1 - mask[:, ::-1].argmax(axis=1), -1)
    np.testing.assert_array_equal(first, np.concatenate([[-1], expected_first, [-1]]))
    np.testing.assert_array_equal(last, np.concatenate([[-1], expected_last, [-1]]))


def test_chip_touching_a_boundary_counts_as_inside():
    # Usable circle of radius exactly 5000 µm: the chips with a corner at (3000, 4000) or (4000, 3000) touch it.
    substrate = Substrate(50.8, edge_exclusion_mm=20.4, secondary_flat_angle_deg=None)
    layout = WaferLayout(substrate, ChipGrid(1000.0, 1000.0, 1000.0, 1000.0, 500.0, 500.0))
    col, row = layout.anchor_index  # chip (i, j) spans [i·1000, (i+1)·1000] × [j·1000, (j+1)·1000]
    assert layout.chip_usable([col + 2, col + 3, col + 3], [row + 3, row + 2, row + 3]).tolist() == [True, True, False]
    # A chip edge exactly on the usable flat line (up to float rounding of the origin) is usable too.
    flat = substrate.primary_flat_distance_um - substrate.edge_exclusion_um
    layout = WaferLayout(substrate, ChipGrid(1000.0, 1000.0, 1000.0, 1000.0, 500.0, -flat + 500.0))
    assert layout.chip_usable(*layout.anchor_index)
    assert not layout.chip_usable(layout.anchor_index[0], layout.anchor_index[1] - 1)


def test_tolerance_absorbs_rounding_of_points_on_the_circle():
    # Points computed on the circle round to either side of it; all count as on the wafer, 1e-6 µm out does not.
    substrate = Substrate(200.0, edge_exclusion_mm=0.0)
    angles = np.linspace(0.0, 2.0 * np.pi, 1000)
    radius = substrate.radius_um
    x, y = radius * np.cos(angles), radius * np.sin(angles)
    assert (x * x + y * y > radius * radius).any()  # some really land outside in float64
    outside_rounding = (x * x + y * y > radius * radius) & (np.abs(np.sin(angles)) < 0.9)  # clear of the notch
    assert substrate.on_substrate(x[outside_rounding], y[outside_rounding]).all()
    scale = 1.0 + 1e-6 / radius
    assert not substrate.on_substrate(x * scale, y * scale).any()


def test_rotated_chip_with_a_corner_on_the_circle_is_usable():
    substrate = Substrate(100.0, edge_exclusion_mm=5.0)
    rotation = math.radians(0.5)
    ex, ey = np.array([math.cos(rotation), math.sin(rotation)]), np.array([-math.sin(rotation), math.cos(rotation)])
    for angle in np.linspace(0.2, 1.3, 23):
        # Anchor chip placed so that its upper-right corner lies on the usable circle (radius 45 mm).
        corner = 45000.0 * np.array([math.cos(angle), math.sin(angle)])
        centre = corner - 500.0 * ex - 400.0 * ey
        grid = ChipGrid(1000.0, 800.0, 1000.0, 800.0, *centre, rotation_deg=0.5)
        assert WaferLayout(substrate, grid).chip_usable(*WaferLayout(substrate, grid).anchor_index), angle
        nudged = ChipGrid(1000.0, 800.0, 1000.0, 800.0, *(centre + 1e-6 * corner / 45000.0), rotation_deg=0.5)
        assert not WaferLayout(substrate, nudged).chip_usable(*WaferLayout(substrate, nudged).anchor_index), angle


def test_flats_cut_chips_at_the_bottom_and_left():
    for inches in (2, 3, 4, 6):
        substrate = Substrate.from_inches(inches, edge_exclusion_mm=2.0)
        layout = WaferLayout(substrate, ChipGrid(250.0, 250.0, 200.0, 200.0, 125.0, 125.0))
        x, y = layout.chip_center_um(*layout.usable_chips())
        bottom = substrate.primary_flat_distance_um - substrate.edge_exclusion_um
        left = substrate.secondary_flat_distance_um - substrate.edge_exclusion_um
        assert y.min() >= -bottom + 100.0
        assert x.min() >= -left + 100.0
        # The flats really cut: without them the usable circle reaches much further down and left.
        assert y.min() < -bottom + 100.0 + 250.0
        assert x.min() < -left + 100.0 + 250.0
        assert y.max() > (substrate.radius_um - substrate.edge_exclusion_um) - 400.0
        assert y.max() > -y.min() + 1000.0


def test_notch_removes_chips_that_a_circle_keeps():
    substrate = Substrate(200.0, edge_exclusion_mm=3.0)
    grid = ChipGrid(500.0, 500.0, 400.0, 400.0, 250.0, 250.0)
    layout = WaferLayout(substrate, grid)
    i, j = np.meshgrid(np.arange(-200, 200), np.arange(-200, 200))
    xs, ys = reference_chip_corners(grid, i, j)
    in_circle = (np.hypot(xs, ys) <= 97000.0).all(axis=0)  # a 200 mm wafer with no notch
    col, row = as_box(layout, i, j)
    usable = layout.chip_usable(col, row)
    assert not (usable & ~in_circle).any()
    lost_x, lost_y = layout.chip_center_um(col[in_circle & ~usable], row[in_circle & ~usable])
    assert len(lost_x) >= 10
    assert np.all(np.hypot(lost_x, lost_y + 100000.0) < 8000.0)  # all near the notch at (0, −R)
    assert layout.chip_usable(*as_box(layout, np.array(-1), np.array(193)))  # top: the mirror chip is kept
    assert not layout.chip_usable(*as_box(layout, np.array(-1), np.array(-194)))


def test_notch_tip_between_the_corners_rejects_the_chip():
    substrate = Substrate(200.0, edge_exclusion_mm=0.0)
    # A 100 µm chip centred on the notch axis whose bottom edge is 5 µm below the apex (0, −99000): the V is
    # only 10 µm wide there, so all four corners are on the wafer but the tip bites into the chip.
    grid = ChipGrid(100.0, 100.0, 100.0, 100.0, 0.0, -99000.0 + 45.0)
    layout = WaferLayout(substrate, grid)
    xs, ys = reference_chip_corners(grid, 0, 0)
    assert substrate.on_substrate(xs, ys).all()
    assert not layout.chip_on_substrate(*layout.anchor_index)
    # One row up the chip's bottom edge is 95 µm above the apex: kept.
    assert layout.chip_on_substrate(layout.anchor_index[0], layout.anchor_index[1] + 1)
    # Bottom edge 5 µm above the apex: the chip reaches past both walls' lines but not into the V: kept.
    layout = WaferLayout(substrate, ChipGrid(100.0, 100.0, 100.0, 100.0, 0.0, -99000.0 + 55.0))
    assert layout.chip_on_substrate(*layout.anchor_index)


def _clip(polygon, normal, offset):
    """Sutherland-Hodgman: the part of a convex polygon with (p − offset)·normal ≥ 0."""
    out = []
    for k in range(len(polygon)):
        p, q = polygon[k], polygon[(k + 1) % len(polygon)]
        sp, sq = np.dot(p - offset, normal), np.dot(q - offset, normal)
        if sp >= 0:
            out.append(p)
        if (sp >= 0) != (sq >= 0):
            out.append(p + (q - p) * sp / (sp - sq))
    return out


@pytest.mark.parametrize("exclusion_mm", [0.0, 3.0])
def test_notch_overlap_is_exact(exclusion_mm):
    # Independent check: clip each chip rectangle by the two (offset) notch walls; overlap ⇔ clipped area > 0.
    substrate = Substrate(200.0, edge_exclusion_mm=exclusion_mm)
    grid = ChipGrid(100.0, 100.0, 80.0, 70.0, 13.0, 29.0, 1.0)
    layout = WaferLayout(substrate, grid)
    apex = np.array([0.0, -(100000.0 - 1000.0 - exclusion_mm * 1000.0 * math.sqrt(2.0))])
    normals = (np.array([math.sqrt(0.5), -math.sqrt(0.5)]), np.array([-math.sqrt(0.5), -math.sqrt(0.5)]))
    col, row = layout.nearest_chip(*np.meshgrid(np.arange(-2500.0, 2500.0, 100.0), apex[1] + np.arange(-600, 3000)))
    col, row = np.unique(np.stack([col.ravel(), row.ravel()]), axis=1)
    xs, ys = reference_chip_corners(grid, col - layout.anchor_index[0], row - layout.anchor_index[1])
    overlaps = []
    for k in range(len(col)):
        polygon = [np.array([xs[c, k], ys[c, k]]) for c in (0, 1, 3, 2)]
        for normal in normals:
            polygon = _clip(polygon, normal, apex)
            if not polygon:
                break
        area = polygon_area(*np.array([*polygon, polygon[0]]).T) if polygon else 0.0
        overlaps.append(area > 1e-6)
    in_circle = (np.hypot(xs, ys) <= 100000.0 - exclusion_mm * 1000.0).all(axis=0)
    expected = in_circle & ~np.array(overlaps)
    predicate = layout.chip_usable if exclusion_mm else layout.chip_on_substrate
    np.testing.assert_array_equal(predicate(col, row), expected)
    assert np.array(overlaps).sum() > 20


def test_box_does_not_depend_on_the_exclusion():
    grid = ChipGrid(600.0, 500.0, 550.0, 450.0, 100.0, -200.0, 0.3)
    layouts = [WaferLayout(Substrate(76.2, edge_exclusion_mm=e), grid) for e in (0.0, 1.0, 5.0)]
    assert len({(lay.column_count, lay.row_count, lay.anchor_index) for lay in layouts}) == 1
    counts = [lay.chip_count for lay in layouts]
    assert counts[0] == layouts[0].physical_chip_count
    assert counts[0] > counts[1] > counts[2]
    col, row = layouts[2].usable_chips()
    np.testing.assert_array_equal(layouts[0].chip_center_um(col, row), layouts[2].chip_center_um(col, row))


# --- index convention and coordinates --------------------------------------------------------------------------------


def test_index_origin_is_lower_left_and_axes_point_up_right():
    layout = WaferLayout(Substrate(100.0), ChipGrid(1000.0, 800.0, 900.0, 700.0))
    x0, y0 = layout.chip_center_um(0, 0)
    x1, y1 = layout.chip_center_um(layout.column_count - 1, layout.row_count - 1)
    assert x0 < 0 < x1
    assert y0 < 0 < y1
    assert layout.chip_center_um(1, 0) == (x0 + 1000.0, y0)
    assert layout.chip_center_um(0, 1) == (x0, y0 + 800.0)
    physical = layout.physical_mask()
    assert physical[0].sum() > 2 * physical[-1].sum()  # row 0 runs along the 32.5 mm primary flat at the bottom


def test_anchor_chip_centre_is_the_grid_origin():
    for rotation in (0.0, 0.5, -4.0):
        grid = ChipGrid(300.0, 250.0, 240.0, 200.0, 1234.5, -987.6, rotation)
        layout = WaferLayout(Substrate(100.0), grid)
        x, y = layout.chip_center_um(*layout.anchor_index)
        assert (x, y) == pytest.approx((1234.5, -987.6), abs=1e-9)


def test_anchor_off_the_wafer_is_allowed():
    layout = WaferLayout(Substrate(50.8), ChipGrid(1000.0, 1000.0, 900.0, 900.0, 60000.0, 0.0))
    col, row = layout.anchor_index
    assert not layout.in_box(col, row)
    assert layout.chip_center_um(col, row) == (60000.0, 0.0)


def test_index_round_trip_with_rotation_and_offset_origin():
    grid = ChipGrid(300.0, 250.0, 240.0, 200.0, 1234.5, -987.6, 0.5)
    layout = WaferLayout(Substrate(100.0), grid)
    col, row = layout.usable_chips()
    x, y = layout.chip_center_um(col, row)
    back_col, back_row = layout.nearest_chip(x, y)
    assert back_col.dtype == back_row.dtype == np.int64
    np.testing.assert_array_equal(back_col, col)
    np.testing.assert_array_equal(back_row, row)
    # Offsets along the rotated grid axes: inside the chip (hit), in the street (no hit), a pitch away (next chip).
    t = math.radians(0.5)
    ex, ey = np.array([math.cos(t), math.sin(t)]), np.array([-math.sin(t), math.cos(t)])
    for along_x, along_y, expect_hit, d_col, d_row in (
        (119.0, 99.0, True, 0, 0),
        (-119.0, -99.0, True, 0, 0),
        (125.0, 0.0, False, 0, 0),
        (0.0, -110.0, False, 0, 0),
        (300.0, 250.0, True, 1, 1),
    ):
        offset = along_x * ex + along_y * ey
        hit_col, hit_row, hit = layout.chip_at(x + offset[0], y + offset[1])
        assert hit.all() == expect_hit
        np.testing.assert_array_equal(hit_col, col + d_col)
        np.testing.assert_array_equal(hit_row, row + d_row)


def test_half_way_point_goes_to_the_upper_right_chip():
    layout = WaferLayout(Substrate(50.8), ChipGrid(1000.0, 1000.0, 1000.0, 1000.0))
    col, row = layout.anchor_index
    assert layout.nearest_chip(500.0, -500.0) == (col + 1, row)
    _, _, hit = layout.chip_at(500.0, 0.0)  # on the shared edge of two chips with no street
    assert hit


def test_points_outside_the_box_are_no_hit():
    layout = WaferLayout(Substrate(50.8), ChipGrid(1000.0, 1000.0, 1000.0, 1000.0))
    col, row, hit = layout.chip_at([0.0, 90000.0], [0.0, 0.0])
    assert hit.tolist() == [True, False]
    assert not layout.in_box(col[1], row[1])
    assert not layout.chip_on_substrate(col[1], row[1])


def test_neighbours_at_the_box_corners():
    layout = WaferLayout(Substrate(50.8), ChipGrid(1000.0, 1000.0, 1000.0, 1000.0))
    top, right = layout.row_count - 1, layout.column_count - 1
    cols, rows = layout.neighbours([0, right], [0, top])
    assert cols.shape == rows.shape == (2, 8)
    # Order E, NE, N, NW, W, SW, S, SE.
    np.testing.assert_array_equal(cols[0], [1, 1, 0, -1, -1, -1, -1, -1])
    np.testing.assert_array_equal(rows[0], [0, 1, 1, -1, -1, -1, -1, -1])
    np.testing.assert_array_equal(cols[1], [-1, -1, -1, -1, right - 1, right - 1, right, -1])
    np.testing.assert_array_equal(rows[1], [-1, -1, -1, -1, top, top - 1, top - 1, -1])
    cols, rows = layout.neighbours(5, 5, connectivity=4)
    np.testing.assert_array_equal(cols, [6, 5, 4, 5])
    np.testing.assert_array_equal(rows, [5, 6, 5, 4])
    with pytest.raises(ValueError, match="connectivity"):
        layout.neighbours(5, 5, connectivity=6)


def test_empty_inputs_give_empty_outputs_of_the_right_dtype():
    layout = WaferLayout(Substrate(50.8), ChipGrid(1000.0, 1000.0, 1000.0, 1000.0))
    empty = np.array([])
    for result, dtype in (
        (layout.chip_center_um(empty, empty), np.float64),
        (layout.nearest_chip(empty, empty), np.int64),
        (layout.chip_at(empty, empty)[:2], np.int64),
        (layout.chip_at(empty, empty)[2:], np.bool_),
        ((layout.in_box(empty, empty), layout.chip_usable([], []), layout.chip_on_substrate([], [])), np.bool_),
        (layout.neighbours(empty, empty), np.int64),
        (layout.row_extent([]), np.int64),
        ((Substrate(50.8).usable([], []), Substrate(200.0).on_substrate(empty, empty)), np.bool_),
    ):
        for array in result:
            assert array.dtype == dtype
            assert array.size == 0
    assert layout.neighbours(empty, empty)[0].shape == (0, 8)


def test_float_indices_are_rejected():
    layout = WaferLayout(Substrate(50.8), ChipGrid(1000.0, 1000.0, 1000.0, 1000.0))
    with pytest.raises(TypeError, match="col"):
        layout.chip_usable(1.5, 2)
    with pytest.raises(ValueError, match="finite"):
        layout.nearest_chip(float("nan"), 0.0)


# --- outlines -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "substrate",
    [
        Substrate(50.8),
        Substrate(100.0, edge_exclusion_mm=0.0, secondary_flat_angle_deg=None),
        Substrate(150.0, 5.0, 45.0, 135.0),
        Substrate(200.0),
        Substrate(200.0, 30.0),
        Substrate(50.8, edge_exclusion_mm=24.5),  # the two usable flats overlap: their chords meet inside
        Substrate(50.8, edge_exclusion_mm=24.0),
    ],
)
def test_outlines_enclose_the_region(substrate):
    for outline, predicate in (
        (substrate.outline_um(), substrate.on_substrate),
        (substrate.usable_outline_um(), substrate.usable),
    ):
        px, py = outline
        # A point grid over the outline's bounding box (+5 %) to compare areas.
        margin = 0.05 * (px.max() - px.min())
        gx = np.linspace(px.min() - margin, px.max() + margin, 801)
        gy = np.linspace(py.min() - margin, py.max() + margin, 801)
        x, y = np.meshgrid(gx, gy)
        cell_area = (gx[1] - gx[0]) * (gy[1] - gy[0])
        assert px[0] == px[-1]
        assert py[0] == py[-1]
        signed = 0.5 * float(np.dot(px[:-1], py[1:]) - np.dot(px[1:], py[:-1]))
        assert signed > 0.0  # counter-clockwise
        # Vertices lie on the boundary: on the closed region, within float rounding.
        assert predicate(px * (1.0 - 1e-12), py * (1.0 - 1e-12)).mean() > 0.99
        assert signed == pytest.approx(predicate(x, y).sum() * cell_area, rel=0.005)


def test_notch_wall_offset_model_for_a_huge_exclusion():
    # Offsetting the notch's wall lines (not a distance offset): with e = 90 mm the offset V swallows the
    # remaining 10 mm disc. Documented behaviour; real exclusions are a few mm.
    substrate = Substrate(200.0, edge_exclusion_mm=90.0)
    assert substrate.usable_outline_um()[0].size == 0
    assert not substrate.usable(0.0, 0.0)


def test_outline_known_areas():
    substrate = Substrate(50.8, edge_exclusion_mm=0.0)
    r = 25400.0

    def segment(length_um):
        half = math.asin(length_um / 2.0 / r)
        return r * r * (half - math.sin(half) * math.cos(half))

    expected = math.pi * r * r - segment(15880.0) - segment(8000.0)
    assert polygon_area(*substrate.outline_um(points_per_arc=20000)) == pytest.approx(expected, rel=1e-7)
    x, y = Substrate(200.0).outline_um()
    assert np.any((x == 0.0) & np.isclose(y, -99000.0))  # the notch apex
    with pytest.raises(ValueError, match="points_per_arc"):
        substrate.outline_um(points_per_arc=2)


# --- full-size wafer -------------------------------------------------------------------------------------------------


def test_8inch_20um_chip_count():
    substrate = Substrate(200.0)  # 3 mm edge exclusion, notch at the bottom
    layout = WaferLayout(substrate, ChipGrid(20.0, 20.0, 16.0, 16.0))
    assert (layout.column_count, layout.row_count) == (9999, 9999)
    assert layout.chip_count == 73_870_169
    assert layout.physical_chip_count == 78_521_325
    usable_area_um2 = math.pi * (substrate.radius_um - substrate.edge_exclusion_um) ** 2
    assert layout.chip_count == pytest.approx(usable_area_um2 / 20.0**2, rel=0.005)
    assert layout.physical_chip_count == pytest.approx(math.pi * substrate.radius_um**2 / 20.0**2, rel=0.005)
    # Rows crossing the notch hold a gap of unusable chips between first and last: about the area of the offset
    # notch inside the usable circle (45° walls: a triangle of depth h and half-width h) over the pitch².
    first, last = layout.row_extent(np.arange(layout.row_count))
    gap = int((last - first + 1)[first >= 0].sum()) - layout.chip_count
    depth_um = (substrate.radius_um - 3000.0) - (substrate.radius_um - 1000.0 - 3000.0 * math.sqrt(2.0))
    assert gap == 12_321
    assert gap == pytest.approx(depth_um**2 / 20.0**2, rel=0.05)
