"""Tests of inspection.spatial: constructed fail maps with known structures, chance adjacency, signatures, settings.

The maps are drawn in the wafer frame (µm) from the chip centres of a 2" wafer at 100 µm pitch (a 494 × 504 index
box, about 170 000 usable chips), so the expected lengths, angles and radii are the drawn ones.
"""

import dataclasses
import math

import numpy as np
import pytest

from inspection.settings import SettingsError, from_mapping, to_mapping
from inspection.spatial import (
    SignatureLabel,
    SpatialSettings,
    StructureKind,
    find_defect_structures,
    structure_table,
    wafer_signature,
)
from inspection.wafer import ChipGrid, Substrate, WaferLayout

EXCLUSION_MM = 2.0
USABLE_RADIUS_UM = 25_400.0 - EXCLUSION_MM * 1000.0


def make_layout(rotation_deg: float = 0.0, pitch_y_um: float = 100.0) -> WaferLayout:
    substrate = Substrate.from_inches(2, edge_exclusion_mm=EXCLUSION_MM)
    return WaferLayout(substrate, ChipGrid(100.0, pitch_y_um, 80.0, 60.0, rotation_deg=rotation_deg))


LAYOUT = make_layout()


def centres(layout: WaferLayout) -> tuple[np.ndarray, np.ndarray]:
    """Wafer-frame centres (x, y) of every chip of the box, shaped like a chip map."""
    rows, cols = np.mgrid[0 : layout.row_count, 0 : layout.column_count]
    return layout.chip_center_um(cols, rows)


def random_fails(layout: WaferLayout, fraction: float, seed: int) -> np.ndarray:
    shape = (layout.row_count, layout.column_count)
    return (np.random.default_rng(seed).random(shape) < fraction) & layout.usable_mask()


def scratch_fails(
    layout: WaferLayout, *, angle_deg: float, length_um: float, centre_um=(3000.0, -2000.0), gaps=0.3, seed=0
) -> np.ndarray:
    """Chips whose centre lies within half a pitch of a segment, a fraction ``gaps`` of them knocked out."""
    x, y = centres(layout)
    ux, uy = math.cos(math.radians(angle_deg)), math.sin(math.radians(angle_deg))
    dx, dy = x - centre_um[0], y - centre_um[1]
    along, across = dx * ux + dy * uy, dy * ux - dx * uy
    on_line = (np.abs(across) <= 50.0) & (np.abs(along) <= length_um / 2.0)
    kept = np.random.default_rng(seed).random(on_line.shape) >= gaps
    return on_line & kept & layout.usable_mask()


def disc_fails(layout: WaferLayout, x_um: float, y_um: float, radius_um: float) -> np.ndarray:
    x, y = centres(layout)
    return (np.hypot(x - x_um, y - y_um) <= radius_um) & layout.usable_mask()


def edge_fails(layout: WaferLayout, *, depth_um: float, start_deg: float = 0.0, span_deg: float = 360.0) -> np.ndarray:
    """Usable chips within ``depth_um`` of the usable circle, in the arc [start, start + span)."""
    x, y = centres(layout)
    angle = np.degrees(np.arctan2(y, x)) % 360.0
    in_arc = (angle - start_deg) % 360.0 < span_deg
    return in_arc & (np.hypot(x, y) >= USABLE_RADIUS_UM - depth_um) & layout.usable_mask()


def angle_gap_deg(a: float, b: float) -> float:
    """Difference of two line directions, modulo 180°."""
    return abs((a - b + 90.0) % 180.0 - 90.0)


def analyse(fail_map: np.ndarray, layout: WaferLayout = LAYOUT, **settings):
    chosen = SpatialSettings(**settings)
    result = find_defect_structures(fail_map, layout, settings=chosen)
    return result, wafer_signature(fail_map, layout, result.structures, settings=chosen)


def kinds(result) -> list[StructureKind]:
    return [structure.kind for structure in result.structures]


# --- scratches -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("background", [0.0, 0.01])
@pytest.mark.parametrize("angle_deg", [0.0, 37.0, 90.0, 151.0])
def test_scratch_with_gaps_is_one_scratch_of_the_drawn_length_and_angle(angle_deg, background) -> None:
    length_um = 12_000.0
    fail_map = scratch_fails(LAYOUT, angle_deg=angle_deg, length_um=length_um, seed=int(angle_deg))
    fail_map |= random_fails(LAYOUT, background, seed=7)
    result, signature = analyse(fail_map)
    scratches = [structure for structure in result.structures if structure.kind == StructureKind.SCRATCH]
    assert len(scratches) == 1
    (scratch,) = scratches
    assert scratch.length_um == pytest.approx(length_um, rel=0.1)
    assert angle_gap_deg(scratch.angle_deg, angle_deg) <= 3.0
    assert scratch.width_um <= 2.0 * 100.0
    assert math.hypot(scratch.centroid_x_um - 3000.0, scratch.centroid_y_um + 2000.0) < 0.1 * length_um
    assert kinds(result) == [StructureKind.SCRATCH]  # no piece of it left over as a cluster
    assert signature.label == SignatureLabel.SCRATCH


def test_short_scratch_at_coarse_pitch() -> None:
    """3 mm at 100 µm pitch is 30 chips, 21 of them failing: the smallest scratch of the virtual wafers."""
    result, _ = analyse(scratch_fails(LAYOUT, angle_deg=62.0, length_um=3000.0, seed=3))
    assert kinds(result) == [StructureKind.SCRATCH]
    assert result.structures[0].length_um == pytest.approx(3000.0, rel=0.1)


def test_scratch_on_a_rotated_grid_with_unequal_pitch_keeps_its_wafer_frame_angle() -> None:
    layout = make_layout(rotation_deg=3.0, pitch_y_um=80.0)
    fail_map = scratch_fails(layout, angle_deg=37.0, length_um=10_000.0, gaps=0.2)
    result, _ = analyse(fail_map, layout)
    assert kinds(result) == [StructureKind.SCRATCH]
    assert angle_gap_deg(result.structures[0].angle_deg, 37.0) <= 3.0
    assert result.structures[0].length_um == pytest.approx(10_000.0, rel=0.1)


def test_scratch_leaving_a_dense_patch_of_fails_is_still_found() -> None:
    """Linked with the wafer's radius, the scratch and a 5 × 5 mm patch of 15 % fails are one blob; searched again
    with smaller link radii, the scratch comes out (where it runs outside the patch)."""
    x, y = centres(LAYOUT)
    patch = (np.abs(x - 3000.0) <= 2500.0) & (np.abs(y + 2000.0) <= 2500.0) & random_fails(LAYOUT, 0.15, seed=40)
    fail_map = scratch_fails(LAYOUT, angle_deg=20.0, length_um=12_000.0, seed=41) | patch
    fail_map |= random_fails(LAYOUT, 0.01, seed=42)
    result, _ = analyse(fail_map)
    scratches = [structure for structure in result.structures if structure.kind == StructureKind.SCRATCH]
    assert len(scratches) >= 1
    assert all(angle_gap_deg(scratch.angle_deg, 20.0) <= 3.0 for scratch in scratches)
    assert scratches[0].length_um >= 3000.0


def test_partial_scan_counts_only_the_inspected_chips() -> None:
    """A band of rows was measured, with 4 % fails: the background and the fractions are over that band."""
    inspected = np.zeros((LAYOUT.row_count, LAYOUT.column_count), dtype=bool)
    inspected[200:260] = True
    fail_map = random_fails(LAYOUT, 0.04, seed=43) | scratch_fails(LAYOUT, angle_deg=30.0, length_um=20_000.0)
    fail_map &= inspected
    result = find_defect_structures(fail_map, LAYOUT, inspected_map=inspected)
    signature = wafer_signature(fail_map, LAYOUT, result.structures, inspected_map=inspected)
    assert result.background_fail_fraction == pytest.approx(0.04, rel=0.25)
    assert kinds(result) == [StructureKind.SCRATCH]
    assert angle_gap_deg(result.structures[0].angle_deg, 30.0) <= 3.0
    assert signature.label == SignatureLabel.SCRATCH
    assert signature.usable_chip_count == np.count_nonzero(inspected & LAYOUT.usable_mask())
    assert signature.fail_fraction == pytest.approx(0.04, rel=0.25)
    # without the map the unmeasured chips count as good: the background looks like 0 and noise makes clusters
    assert find_defect_structures(fail_map, LAYOUT).background_fail_fraction < 0.005


def test_wide_band_is_not_a_scratch() -> None:
    x, y = centres(LAYOUT)
    band = (np.abs(y - 1000.0) <= 600.0) & (np.abs(x) <= 6000.0) & LAYOUT.usable_mask()  # 12 chips wide
    result, _ = analyse(band)
    assert kinds(result) == [StructureKind.CLUSTER]


# --- blobs, edge, centre --------------------------------------------------------------------------------------------


def test_round_blob_is_a_particle_with_its_radius() -> None:
    blob = disc_fails(LAYOUT, -6000.0, 4000.0, 250.0)
    result, signature = analyse(blob | random_fails(LAYOUT, 0.01, seed=11))
    particles = [structure for structure in result.structures if structure.kind == StructureKind.PARTICLE]
    assert len(particles) == 1
    (particle,) = particles
    assert particle.chip_count >= blob.sum()  # a random fail touching it may join
    assert particle.radius_um == pytest.approx(250.0, rel=0.15)
    assert particle.elongation < 1.3
    assert math.hypot(particle.centroid_x_um + 6000.0, particle.centroid_y_um - 4000.0) < 50.0
    assert signature.label == SignatureLabel.LOCAL_CLUSTER


def test_large_blob_is_a_cluster_not_a_particle() -> None:
    result, _ = analyse(disc_fails(LAYOUT, 8000.0, 8000.0, 1500.0))
    assert kinds(result) == [StructureKind.CLUSTER]


def test_edge_arc_is_edge_damage_and_a_local_edge_signature() -> None:
    arc = edge_fails(LAYOUT, depth_um=1500.0, start_deg=30.0, span_deg=15.0)
    result, signature = analyse(arc | random_fails(LAYOUT, 0.01, seed=12))
    assert kinds(result) == [StructureKind.EDGE]
    assert result.structures[0].chip_count >= arc.sum()
    assert result.structures[0].edge_fraction > 0.9
    assert signature.label == SignatureLabel.EDGE_LOCAL
    assert signature.edge_sector_coverage < 0.2


def test_full_edge_ring_is_an_edge_ring() -> None:
    ring = edge_fails(LAYOUT, depth_um=1000.0)
    result, signature = analyse(ring | random_fails(LAYOUT, 0.01, seed=13))
    assert signature.label == SignatureLabel.EDGE_RING
    assert signature.edge_sector_coverage >= 0.75
    assert signature.edge_fail_fraction > 10 * signature.middle_fail_fraction
    assert set(kinds(result)) == {StructureKind.EDGE}


def test_sparse_edge_ring_is_still_an_edge_ring() -> None:
    ring = edge_fails(LAYOUT, depth_um=1500.0) & random_fails(LAYOUT, 0.3, seed=14)
    _, signature = analyse(ring | random_fails(LAYOUT, 0.01, seed=15))
    assert signature.label == SignatureLabel.EDGE_RING


def test_centre_blob_is_a_centre_signature() -> None:
    centre = disc_fails(LAYOUT, 0.0, 0.0, 4000.0)
    result, signature = analyse(centre | random_fails(LAYOUT, 0.01, seed=16))
    assert signature.label == SignatureLabel.CENTRE
    assert signature.centre_fail_fraction > 0.2
    assert signature.middle_fail_fraction == pytest.approx(0.01, rel=0.2)
    assert result.structures[0].kind == StructureKind.CLUSTER


def test_small_particle_at_the_centre_is_not_a_centre_signature() -> None:
    _, signature = analyse(disc_fails(LAYOUT, 0.0, 0.0, 300.0) | random_fails(LAYOUT, 0.01, seed=17))
    assert signature.label == SignatureLabel.LOCAL_CLUSTER


# --- point defects and chance adjacency -----------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(6))
def test_one_percent_point_defects_make_no_structure_and_a_random_signature(seed) -> None:
    result, signature = analyse(random_fails(LAYOUT, 0.01, seed=100 + seed))
    assert result.structures == ()
    assert not result.label_map.any()
    assert signature.label == SignatureLabel.RANDOM
    assert signature.fail_fraction == pytest.approx(0.01, rel=0.1)
    assert result.background_fail_fraction == pytest.approx(0.01, rel=0.25)


def test_normal_point_defect_level_is_none() -> None:
    result, signature = analyse(random_fails(LAYOUT, 0.003, seed=21))
    assert result.structures == ()
    assert signature.label == SignatureLabel.NONE


def test_planted_pairs_and_triples_are_not_clusters() -> None:
    """Adjacent fails as chance makes them (pairs, triples, one good chip apart, in every orientation) on a 1 %
    background: no structure. Chance alone makes about 4·p²·N ≈ 70 pairs and 20·p³·N ≈ 3 triples on this wafer;
    here there are 200 more of them."""
    fail_map = random_fails(LAYOUT, 0.01, seed=22)
    shapes = [
        [(0, 0), (0, 1)],
        [(0, 0), (1, 1)],
        [(0, 0), (1, -1)],
        [(0, 0), (0, 2)],  # bridged by the closing
        [(0, 0), (2, 0)],
        [(0, 0), (0, 1), (1, 1)],
        [(0, 0), (0, 1), (0, 2)],
        [(0, 0), (1, 1), (2, 2)],
    ]
    usable = LAYOUT.usable_mask()
    places = [
        (row, col) for row in range(20, LAYOUT.row_count - 20, 25) for col in range(20, LAYOUT.column_count - 20, 25)
    ]
    planted = 0
    for index, (row, col) in enumerate(places):
        if usable[row, col] and planted < 200:
            for d_row, d_col in shapes[index % len(shapes)]:
                fail_map[row + d_row, col + d_col] = True
            planted += 1
    fail_map &= usable
    assert planted == 200
    result, signature = analyse(fail_map)
    assert result.structures == ()
    assert signature.label == SignatureLabel.RANDOM
    assert result.cluster_min_chips is not None and result.cluster_min_chips > 4


def test_minimum_cluster_size_grows_with_the_fail_rate_and_stops_at_chance_percolation() -> None:
    sizes = [analyse(random_fails(LAYOUT, fraction, seed=24))[0].cluster_min_chips for fraction in (0.0, 0.01, 0.03)]
    assert sizes[0] == SpatialSettings().min_cluster_chips
    assert sizes[0] < sizes[1] < sizes[2]
    result, signature = analyse(random_fails(LAYOUT, 0.08, seed=25))
    assert result.cluster_min_chips is None  # 16 × 8 % ≥ 1: any cluster size happens by chance
    assert result.structures == ()
    assert signature.label == SignatureLabel.RANDOM


def test_a_compact_group_of_five_on_a_clean_wafer_is_a_structure() -> None:
    fail_map = np.zeros((LAYOUT.row_count, LAYOUT.column_count), dtype=bool)
    fail_map[250, 249:252] = fail_map[249:252, 250] = True  # a plus sign
    result, _ = analyse(fail_map)
    assert [structure.chip_count for structure in result.structures] == [5]
    fail_map[250, 249] = False
    assert analyse(fail_map)[0].structures == ()


def test_empty_map_is_none() -> None:
    result, signature = analyse(np.zeros((LAYOUT.row_count, LAYOUT.column_count), dtype=bool))
    assert result.structures == ()
    assert result.label_map.dtype == np.int32 and result.kind_map.dtype == np.uint8
    assert result.label_map.shape == (LAYOUT.row_count, LAYOUT.column_count) == result.kind_map.shape
    assert not result.label_map.any() and not result.kind_map.any()
    assert signature.label == SignatureLabel.NONE
    assert signature.fail_count == 0 and signature.largest_structure_kind == StructureKind.NONE
    assert structure_table(result.structures)["chip_count"].shape == (0,)


# --- consistency ----------------------------------------------------------------------------------------------------


def test_label_and_kind_maps_agree_with_the_structure_list() -> None:
    fail_map = random_fails(LAYOUT, 0.01, seed=31)
    fail_map |= scratch_fails(LAYOUT, angle_deg=37.0, length_um=8000.0, centre_um=(-5000.0, -6000.0))
    fail_map |= disc_fails(LAYOUT, 6000.0, 6000.0, 300.0)
    fail_map |= disc_fails(LAYOUT, -8000.0, 7000.0, 1200.0)
    fail_map |= edge_fails(LAYOUT, depth_um=1000.0, start_deg=300.0, span_deg=10.0)
    original = fail_map.copy()
    result, signature = analyse(fail_map)
    np.testing.assert_array_equal(fail_map, original)  # the input is not modified
    assert sorted(kinds(result)) == sorted(
        [StructureKind.SCRATCH, StructureKind.PARTICLE, StructureKind.CLUSTER, StructureKind.EDGE]
    )
    assert [structure.label for structure in result.structures] == list(range(1, len(result.structures) + 1))
    counts = [structure.chip_count for structure in result.structures]
    assert counts == sorted(counts, reverse=True)
    np.testing.assert_array_equal(result.label_map > 0, result.kind_map > 0)
    assert not (result.label_map > 0)[~fail_map].any()  # only failing chips are labelled
    for structure in result.structures:
        rows, cols = np.nonzero(result.label_map == structure.label)
        assert rows.size == structure.chip_count
        assert set(result.kind_map[rows, cols].tolist()) == {int(structure.kind)}
        assert (structure.row_min, structure.row_max) == (rows.min(), rows.max())
        assert (structure.col_min, structure.col_max) == (cols.min(), cols.max())
        assert structure.centroid_row == pytest.approx(rows.mean())
        assert structure.centroid_col == pytest.approx(cols.mean())
        x_um, y_um = LAYOUT.chip_center_um(cols, rows)
        assert structure.centroid_x_um == pytest.approx(x_um.mean())
        assert structure.centroid_y_um == pytest.approx(y_um.mean())
    assert signature.structure_count == len(result.structures)
    assert signature.largest_structure_chip_count == result.structures[0].chip_count
    table = structure_table(result.structures)
    assert table["kind"].dtype == np.uint8
    np.testing.assert_array_equal(table["chip_count"], counts)


def test_fails_outside_the_usable_area_are_ignored() -> None:
    outside = ~LAYOUT.usable_mask()
    result, signature = analyse(outside.copy())
    assert result.structures == ()
    assert signature.fail_count == 0 and signature.label == SignatureLabel.NONE


def test_zone_fractions_count_every_usable_chip_once() -> None:
    fail_map = LAYOUT.usable_mask()
    _, signature = analyse(fail_map)
    assert signature.fail_count == signature.usable_chip_count == LAYOUT.chip_count
    assert signature.centre_fail_fraction == signature.middle_fail_fraction == signature.edge_fail_fraction == 1.0
    assert all(value == 1.0 for value in signature.edge_sector_fail_fractions)


def test_all_failing_wafer_has_no_structure_and_a_random_signature() -> None:
    """Failing everywhere is no spatial pattern: the background is above chance percolation, so no cluster."""
    result, signature = analyse(LAYOUT.usable_mask())
    assert result.cluster_min_chips is None and result.structures == ()
    assert signature.label == SignatureLabel.RANDOM
    assert signature.fail_fraction == 1.0


# --- inputs and settings --------------------------------------------------------------------------------------------


def test_bad_inputs_are_refused() -> None:
    shape = (LAYOUT.row_count, LAYOUT.column_count)
    with pytest.raises(TypeError, match="bool"):
        find_defect_structures(np.zeros(shape, dtype=np.uint8), LAYOUT)
    with pytest.raises(ValueError, match="shape"):
        find_defect_structures(np.zeros((10, 10), dtype=bool), LAYOUT)
    with pytest.raises(ValueError, match="inspected_map"):
        find_defect_structures(np.zeros(shape, dtype=bool), LAYOUT, inspected_map=np.zeros((10, 10), dtype=bool))
    with pytest.raises(TypeError, match="inspected_map"):
        wafer_signature(np.zeros(shape, dtype=bool), LAYOUT, (), inspected_map=np.zeros(shape, dtype=int))
    with pytest.raises(ValueError, match="edge_band_mm"):
        find_defect_structures(np.zeros(shape, dtype=bool), LAYOUT, settings=SpatialSettings(edge_band_mm=30.0))
    with pytest.raises(ValueError, match="centre_radius_fraction"):
        wafer_signature(np.zeros(shape, dtype=bool), LAYOUT, (), settings=SpatialSettings(centre_radius_fraction=0.9))


def test_settings_list_every_problem_at_once() -> None:
    with pytest.raises(ValueError) as error:
        SpatialSettings(min_cluster_chips=1, edge_band_mm=-1.0, bridge_cluster_gaps=1, scratch_min_chips=2.5)
    lines = str(error.value).splitlines()
    assert len(lines) == 4
    assert lines[0].startswith("min_cluster_chips: 1 is outside the allowed range")
    assert any(line.startswith("bridge_cluster_gaps: expected true or false") for line in lines)
    assert any(line.startswith("scratch_min_chips: expected an integer") for line in lines)
    with pytest.raises(SettingsError) as loaded:
        from_mapping(SpatialSettings, {"edge_band_mm": 0.0, "particle_min_fill": 2.0, "centre_radius_fraction": "x"})
    assert len(loaded.value.problems) == 3


def test_settings_round_trip_through_a_mapping() -> None:
    settings = dataclasses.replace(SpatialSettings(), edge_band_mm=3.0, bridge_cluster_gaps=False)
    assert from_mapping(SpatialSettings, to_mapping(settings)) == settings


def test_without_gap_bridging_a_broken_blob_splits() -> None:
    blob = disc_fails(LAYOUT, 0.0, 9000.0, 600.0)
    rows, _ = np.nonzero(blob)
    blob[int(np.median(rows)), :] = False  # one good row through the middle
    bridged, _ = analyse(blob)
    plain, _ = analyse(blob, bridge_cluster_gaps=False)
    assert len(bridged.structures) == 1
    assert len(plain.structures) == 2


def test_process_hints_exist_for_every_label() -> None:
    assert all(label.process_hint for label in SignatureLabel)
