"""Importing PL maps taken on other tools (inspection/pl_import.py) against the virtual wafer's truth.

A "camera" images a 40 × 40 chip region of the demo wafer (with more defects than the demo profile, so the region
holds dead, missing and leaky chips): each pixel is the wafer's clean PL at the pixel centre
(:meth:`WaferWorld.pl_signal_clean_v`) plus a little noise. Two cameras: a 16-bit one (uncompressed TIFF, row 0 at
the top, wafer frame, dark level given) and a float one (zlib-compressed tiles, mirrored and flipped axes,
reference pixel at the last column and row, a rotated and shifted tool frame, dark level estimated). Then every
kind of bad input, each with its message and nothing left behind.
"""

from __future__ import annotations

import copy
import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import tifffile
import tomli_w
from scipy.stats import spearmanr

from app.cli import main
from cext import chip_kernels as k
from drivers.virtual.profile import load_profile
from drivers.virtual.world import DefectFlag, WaferWorld
from inspection import pl_import
from inspection.pipeline import CHIP_DTYPE, AnalysisSettings, ChipFlag, ChipResults
from inspection.pl_import import PlImportError, import_pl_map, load_pl_map_sidecar
from inspection.recipe import recipe_from_text
from inspection.scanfile import ScanFile, ScanStatus
from inspection.settings import SettingsError
from inspection.spectra_analysis import SPECTRUM_RESULT_DTYPE
from inspection.wafer import Placement

REPO = Path(__file__).resolve().parent.parent
DEMO_PROFILE = REPO / "resources" / "profiles" / "demo-2in.toml"

CHIPS = 40  # chips across the imaged region (and rows)
PIXEL_UM = 5.0  # 12 pixels across a 60 µm chip, 6 across its core
POWERS_W = (0.0005, 0.02)
U16_SCALE_V_PER_COUNT = {0.0005: 2e-6, 0.02: 1e-4}  # longer exposure at low power: chips at ~25 000 counts in both
DARK_COUNTS = 100.0
NOISE_COUNTS = 20.0
F32_BACKGROUND_V = 0.002
F32_NOISE_V = 2e-4
F32_PLACEMENT = Placement(offset_x_um=150.0, offset_y_um=-90.0, rotation_deg=0.4)
SMALL_MEMORY_MB = 16.0
MEASURED = ChipFlag.OUTSIDE_USABLE | ChipFlag.NOT_MEASURED | ChipFlag.FEW_SAMPLES


def defect_rich_profile():
    profile = load_profile(DEMO_PROFILE)
    defects = dataclasses.replace(profile.defects, dead_fraction=0.02, missing_fraction=0.01, leaky_fraction=0.03)
    return dataclasses.replace(profile, defects=defects)


@dataclass(frozen=True)
class Camera:
    """One imaged wafer: the sidecar (as a mapping) in ``directory`` with its images, and what made them."""

    name: str
    directory: Path
    sidecar: dict[str, Any]
    world: WaferWorld
    first_col: int
    first_row: int
    placement: Placement
    saturated_chip: tuple[int, int] | None

    @property
    def sidecar_path(self) -> Path:
        return self.directory / "sidecar.toml"

    def region(self, shape: tuple[int, int]) -> np.ndarray:
        mask = np.zeros(shape, dtype=bool)
        mask[self.first_row : self.first_row + CHIPS, self.first_col : self.first_col + CHIPS] = True
        return mask


def write_sidecar(path: Path, sidecar: dict[str, Any]) -> Path:
    path.write_text(tomli_w.dumps(sidecar))
    return path


def changed(sidecar: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """A copy of ``sidecar`` with ``section__field=value`` changes (``images__1__file`` for a list entry)."""
    result = copy.deepcopy(sidecar)
    for dotted, value in changes.items():
        *parents, last = dotted.split("__")
        target: Any = result
        for part in parents:
            target = target[int(part)] if part.isdigit() else target[part]
        target[int(last) if last.isdigit() else last] = value
    return result


def absolute(camera: Camera) -> dict[str, Any]:
    """The camera's sidecar with absolute image paths (for variants written elsewhere)."""
    return changed(
        camera.sidecar,
        **{
            f"images__{i}__file": str(camera.directory / entry["file"])
            for i, entry in enumerate(camera.sidecar["images"])
        },
    )


def band_rows(world: WaferWorld) -> int:
    """Chip rows per band at SMALL_MEMORY_MB, sized as the importer (and the pipeline) size their bands."""
    per_row = world.layout.column_count * (k.FIELD_COUNT * 8 + CHIP_DTYPE.itemsize + 16)
    return int(SMALL_MEMORY_MB * 2**20 * 0.6 // per_row)


def make_camera(directory: Path, name: str) -> Camera:
    """Render the region's images and write them with their sidecar into ``directory``."""
    world = WaferWorld(defect_rich_profile())
    layout = world.layout
    anchor_col, _ = layout.anchor_index
    first_col = anchor_col - CHIPS // 2
    first_row = 2 * band_rows(world) - CHIPS // 2  # a band boundary runs through the region at SMALL_MEMORY_MB
    assert first_row > 0 and first_row + CHIPS < layout.row_count
    assert layout.usable_mask()[first_row : first_row + CHIPS, first_col : first_col + CHIPS].all()
    pitch = layout.grid.pitch_x_um
    left_um = float(layout.chip_center_um(first_col, first_row)[0]) - pitch / 2
    top_um = float(layout.chip_center_um(first_col, first_row + CHIPS - 1)[1]) + pitch / 2
    size = round(CHIPS * pitch / PIXEL_UM)
    column, row = np.meshgrid(np.arange(size), np.arange(size))
    rng = np.random.default_rng(7)
    common = {
        "lot_id": "LOT-IMPORT",
        "wafer_id": f"W-{name}",
        "operator": "tester",
        "substrate": {"diameter_mm": 50.8, "edge_exclusion_mm": 2.0},
        "grid": {"pitch_x_um": 100.0, "pitch_y_um": 100.0, "chip_width_um": 60.0, "chip_height_um": 60.0},
        "excitation": {"laser_wavelength_nm": 405.0},
    }
    saturated_chip = None
    if name == "u16":
        # row 0 at the top, column 0 at the left, in the wafer frame
        placement = Placement()
        origin = (left_um + PIXEL_UM / 2, top_um - PIXEL_UM / 2)
        x_um, y_um = origin[0] + column * PIXEL_UM, origin[1] - row * PIXEL_UM
        image = {"origin_pixel": [0, 0], "column_direction": "+x", "row_direction": "-y"}
        image |= {"dark_level_counts": DARK_COUNTS, "intensity_unit": "a.u."}
    else:
        # mirrored and flipped: the last column is at the left, the last row at the top (the reference pixel);
        # coordinates in a tool frame shifted and rotated from the wafer's
        placement = F32_PLACEMENT
        origin = placement.wafer_to_stage(left_um + PIXEL_UM / 2, top_um - PIXEL_UM / 2)
        tool_x = origin[0] - (column - (size - 1)) * PIXEL_UM
        tool_y = origin[1] + (row - (size - 1)) * PIXEL_UM
        x_um, y_um = placement.stage_to_wafer(tool_x, tool_y)
        image = {"origin_pixel": [size - 1, size - 1], "column_direction": "-x", "row_direction": "+y"}
        image |= {"intensity_unit": "V"}
    sidecar = {
        "tool": f"virtual {name} camera",
        **common,
        "image": {
            "width_px": size,
            "height_px": size,
            "pixel_size_x_um": PIXEL_UM,
            "pixel_size_y_um": PIXEL_UM,
            "origin_x_um": float(origin[0]),
            "origin_y_um": float(origin[1]),
            **image,
        },
        "images": [],
    }
    if name == "f32":
        sidecar["placement"] = dataclasses.asdict(placement)
    for power in reversed(POWERS_W):  # listed high power first: the import orders the passes by power
        clean_v = world.pl_signal_clean_v(x_um.ravel(), y_um.ravel(), np.full(x_um.size, power)).reshape(x_um.shape)
        file = f"{name}-{power * 1e3:g}mW.tif"
        if name == "u16":
            scale = U16_SCALE_V_PER_COUNT[power]
            counts = np.round(clean_v / scale + DARK_COUNTS + rng.normal(0.0, NOISE_COUNTS, clean_v.shape))
            counts = np.clip(counts, 0, 65535).astype(np.uint16)
            if power == max(POWERS_W):
                # overexpose half the core of one chip: flagged, and its intensity a lower bound from the rest
                col, chip_row = first_col + 7, first_row + 9
                centre_x, centre_y = layout.chip_center_um(col, chip_row)
                core = (np.abs(x_um - centre_x) <= 15.0) & (np.abs(y_um - centre_y) <= 15.0) & (x_um < centre_x)
                counts[core] = 65535
                saturated_chip = (col, chip_row)
            tifffile.imwrite(directory / file, counts)
            sidecar["images"].append({"file": file, "power_w": power, "scale_v_per_count": scale})
        else:
            values = (clean_v + F32_BACKGROUND_V + rng.normal(0.0, F32_NOISE_V, clean_v.shape)).astype(np.float32)
            tifffile.imwrite(directory / file, values, compression="zlib", tile=(128, 128))
            sidecar["images"].append({"file": file, "power_w": power})
    write_sidecar(directory / "sidecar.toml", sidecar)
    return Camera(name, directory, sidecar, world, first_col, first_row, placement, saturated_chip)


@pytest.fixture(scope="module")
def cameras(tmp_path_factory) -> dict[str, tuple[Camera, Path]]:
    """Both cameras, imported with the default settings."""
    result = {}
    for name in ("u16", "f32"):
        camera = make_camera(tmp_path_factory.mktemp(name), name)
        result[name] = (camera, import_pl_map(camera.sidecar_path, camera.directory / "imported.h5"))
    return result


def truth_v(world: WaferWorld, cols: np.ndarray, rows: np.ndarray, power_w: float):
    truth = world.chip_truth(cols, rows)
    return truth, world.chip_pl_v(truth, power_w * truth.excitation)


def leftovers(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.iterdir() if path.name.startswith("."))


# ---------------------------------------------------------------------------------------------------------------------
# Against the truth
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["u16", "f32"])
def test_chips_land_at_their_index_and_rank_like_the_truth(cameras, name: str) -> None:
    camera, path = cameras[name]
    with ChipResults(path) as results:
        powers = results.powers_w
        passes = [results.chips(index) for index in range(len(powers))]
    assert powers == POWERS_W
    for power, chips in zip(powers, passes, strict=True):
        region = camera.region(chips.shape)
        measured = (chips["flags"] & MEASURED) == 0
        if name == "u16":
            assert np.array_equal(measured, region)  # every chip of the region, none beyond it
        else:  # the rotated frame cuts the region's edge chips a little: nearly all, none beyond
            assert not (measured & ~region).any() and measured.sum() >= 0.97 * region.sum()
        outside = ~region
        assert np.all(chips["flags"][outside] & ChipFlag.NOT_MEASURED) and np.all(
            np.isnan(chips["intensity_v"][outside])
        )
        rows, cols = np.nonzero(measured)
        truth, expected = truth_v(camera.world, cols, rows, power)
        intensity = chips["intensity_v"][rows, cols]
        plain = truth.present & (truth.flags == 0) & ((chips["flags"][rows, cols] & ChipFlag.SATURATED) == 0)
        rho = spearmanr(intensity[plain], expected[plain]).statistic
        assert rho >= 0.99, f"{name} at {power * 1e3:g} mW: rank correlation {rho:.5f}"
        # dead and missing chips read dark at their own index, and no plain chip does: a map shifted by one chip
        # would put the dark values on their neighbours
        dark = (truth.flags & (DefectFlag.DEAD | DefectFlag.MISSING)) != 0
        median = float(np.median(intensity[plain]))
        assert dark.sum() >= 20
        assert np.all(np.abs(intensity[dark]) < 0.05 * median)
        assert np.all(intensity[plain] > 0.3 * median)


@pytest.mark.parametrize("name", ["u16", "f32"])
def test_leaky_chips_show_in_the_efficiency_ratio(cameras, name: str) -> None:
    camera, path = cameras[name]
    with ChipResults(path) as results:
        ratio = results.efficiency_ratio()
        chips = results.chips(0)
    rows, cols = np.nonzero((chips["flags"] & MEASURED) == 0)
    truth = camera.world.chip_truth(cols, rows)
    plain = truth.present & (truth.flags == 0)
    leaky = (truth.flags & DefectFlag.LEAKY) != 0
    assert leaky.sum() >= 20
    values = ratio[rows, cols]
    assert np.median(values[leaky]) < 0.6 * np.median(values[plain])
    # the truth's own signature: the leaky chips' 95th percentile below half the good chips' 5th
    assert np.percentile(values[leaky], 95) < 0.5 * np.percentile(values[plain], 5)


# ---------------------------------------------------------------------------------------------------------------------
# The file
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["u16", "f32"])
def test_the_import_is_a_complete_scan_file_with_results(cameras, name: str) -> None:
    camera, path = cameras[name]
    with ScanFile(path) as scan:
        assert scan.status is ScanStatus.COMPLETE
        assert f"imported from virtual {name} camera" in scan.message
        assert scan.powers_w == POWERS_W
        assert (scan.lot_id, scan.wafer_id, scan.operator) == ("LOT-IMPORT", f"W-{name}", "tester")
        assert scan.identities == {"imager": f"virtual {name} camera"}
        assert scan.extra["source"] == "imported"
        assert scan.extra["intensity_unit"] == ("a.u." if name == "u16" else "V")
        assert [scan.lines_complete(index) for index in range(2)] == [0, 0] and len(scan.plan_lines) == 0
        recipe = recipe_from_text(scan.recipe_toml)
        alignment = scan.alignment()
        assert "complete" in scan.summary()
    assert recipe.excitation.powers_w == POWERS_W
    assert recipe.sampling.sample_pitch_um == PIXEL_UM and recipe.sampling.line_pitch_um == PIXEL_UM
    assert recipe.layout().grid == camera.world.layout.grid
    stored = Placement(alignment["offset_x_um"], alignment["offset_y_um"], alignment["rotation_deg"])
    assert stored == camera.placement
    layout = recipe.layout()
    with ChipResults(path) as results:
        assert results.placement == camera.placement
        chips = results.chips(1)
        assert chips.dtype == CHIP_DTYPE and chips.shape == (layout.row_count, layout.column_count)
        assert results.efficiency_ratio().shape == chips.shape
        assert results.spectra().dtype == SPECTRUM_RESULT_DTYPE and results.spectra().size == 0
        assert results.map("wavelength_map_nm") is None
        assert results.chips(0, rows=slice(0, 3)).shape == (3, layout.column_count)
        for summary in results.passes:
            assert abs(summary["registration_col"]) < 0.02 and abs(summary["registration_row"]) < 0.02
            assert summary["lines"] == camera.sidecar["image"]["height_px"]
    flagged_outside = (chips["flags"] & ChipFlag.OUTSIDE_USABLE) != 0
    assert np.array_equal(flagged_outside, ~layout.usable_mask())
    # the neighbour ratio is the pipeline's: intensity over the median of the measured neighbours
    intensity = chips["intensity_v"].astype(np.float64)
    rows, cols = np.nonzero(camera.region(chips.shape))
    for row, col in list(zip(rows, cols, strict=True))[::97]:
        around = intensity[row - 1 : row + 2, col - 1 : col + 2].copy()
        around[1, 1] = np.nan
        assert chips["neighbour_ratio"][row, col] == pytest.approx(intensity[row, col] / np.nanmedian(around), rel=1e-5)


def test_dark_level_from_the_sidecar_or_from_the_dimmest_pixels(cameras) -> None:
    for name, expected in (("u16", None), ("f32", F32_BACKGROUND_V)):
        _, path = cameras[name]
        with ChipResults(path) as results:
            darks = [summary["dark_v"] for summary in results.passes]
        if expected is None:  # given: exactly the counts times the scale (float32, as the pixels are)
            assert darks == [float(np.float32(DARK_COUNTS) * np.float32(U16_SCALE_V_PER_COUNT[p])) for p in POWERS_W]
        else:  # estimated: the background, less the noise's low tail
            for dark in darks:
                assert expected - 4 * F32_NOISE_V < dark < expected


def test_saturated_pixels_flag_their_chip(cameras) -> None:
    camera, path = cameras["u16"]
    col, row = camera.saturated_chip
    with ChipResults(path) as results:
        low, high = results.chips(0), results.chips(1)
    saturated = (high["flags"] & ChipFlag.SATURATED) != 0
    assert np.argwhere(saturated).tolist() == [[row, col]]
    assert not ((low["flags"] & ChipFlag.SATURATED) != 0).any()
    assert np.isfinite(high["intensity_v"][row, col])  # from the core pixels that are not over range


def test_other_storage_and_small_bands_give_the_same_chips(cameras, tmp_path: Path, monkeypatch) -> None:
    """zlib strips with a predictor, a big-endian file, bands of chip rows that split the region, and reads of a
    few image rows at a time: the same chips, bit for bit."""
    camera, reference = cameras["u16"]
    sidecar = absolute(camera)
    for index, entry in enumerate(camera.sidecar["images"]):
        pixels = tifffile.imread(camera.directory / entry["file"])
        file = tmp_path / f"stored-{index}.tif"
        if index == 0:
            tifffile.imwrite(file, pixels, compression="zlib", predictor=True, rowsperstrip=13)
        else:
            tifffile.imwrite(file, pixels, byteorder=">")
        sidecar["images"][index]["file"] = str(file)
    original = pl_import._Importer.__init__

    def small_reads(self, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        self.rows_per_read = 37  # several reads per band of chip rows

    monkeypatch.setattr(pl_import._Importer, "__init__", small_reads)
    path = import_pl_map(
        write_sidecar(tmp_path / "stored.toml", sidecar), tmp_path / "stored.h5", AnalysisSettings(memory_mb=16.0)
    )
    with ChipResults(path) as results, ChipResults(reference) as expected:
        for index in range(2):
            got, want = results.chips(index), expected.chips(index)
            for field in CHIP_DTYPE.names:
                np.testing.assert_array_equal(got[field], want[field], err_msg=field)
        np.testing.assert_array_equal(results.efficiency_ratio(), expected.efficiency_ratio())
        assert results.settings["memory_mb"] == 16.0


# ---------------------------------------------------------------------------------------------------------------------
# Bad input: one clear message each, nothing written
# ---------------------------------------------------------------------------------------------------------------------


def expect_refused(sidecar_path: Path, error: type[Exception], *patterns: str) -> str:
    out = sidecar_path.parent / "out.h5"
    with pytest.raises(error) as raised:
        import_pl_map(sidecar_path, out)
    message = str(raised.value)
    for pattern in patterns:
        assert re.search(pattern, message), f"{pattern!r} not in:\n{message}"
    assert not out.exists()
    assert leftovers(sidecar_path.parent) == []
    return message


def test_missing_image(cameras, tmp_path: Path) -> None:
    camera, _ = cameras["u16"]
    sidecar = changed(absolute(camera), images__1__file=str(tmp_path / "nowhere.tif"))
    expect_refused(
        write_sidecar(tmp_path / "s.toml", sidecar), PlImportError, r"images\[1\]\.file: .*nowhere\.tif does not exist"
    )


def test_image_size_disagreeing_with_the_sidecar(cameras, tmp_path: Path) -> None:
    camera, _ = cameras["u16"]
    sidecar = changed(absolute(camera), image__width_px=801)
    expect_refused(
        write_sidecar(tmp_path / "s.toml", sidecar),
        PlImportError,
        r"images\[0\]\.file: .* is 800 × 800 pixels \(columns × rows\), but the sidecar says image\.width_px × "
        r"image\.height_px = 801 × 800",
        r"images\[1\]\.file",  # every image is checked before reporting
    )


@pytest.mark.parametrize("dtype", ["uint8", "float64", "int16"])
def test_wrong_pixel_type(cameras, tmp_path: Path, dtype: str) -> None:
    camera, _ = cameras["u16"]
    pixels = tifffile.imread(camera.directory / camera.sidecar["images"][0]["file"])
    tifffile.imwrite(tmp_path / "wrong.tif", (pixels // 256).astype(dtype))
    sidecar = changed(absolute(camera), images__0__file=str(tmp_path / "wrong.tif"))
    expect_refused(
        write_sidecar(tmp_path / "s.toml", sidecar), PlImportError, rf"has {dtype} pixels; .*uint16.*float32"
    )


def test_nan_pixels(cameras, tmp_path: Path) -> None:
    camera, _ = cameras["f32"]
    pixels = tifffile.imread(camera.directory / camera.sidecar["images"][1]["file"])
    pixels[266, 400] = np.nan
    pixels[700, 20] = np.inf
    tifffile.imwrite(tmp_path / "nan.tif", pixels)
    sidecar = changed(absolute(camera), images__1__file=str(tmp_path / "nan.tif"))
    expect_refused(
        write_sidecar(tmp_path / "s.toml", sidecar),
        PlImportError,
        r"non-finite pixel",
        r"row (266, column 400|700, column 20)",
    )


def test_corrupt_tiffs(cameras, tmp_path: Path) -> None:
    camera, _ = cameras["u16"]
    (tmp_path / "garbage.tif").write_bytes(b"this is not a TIFF file at all" * 10)
    whole = (camera.directory / camera.sidecar["images"][1]["file"]).read_bytes()
    (tmp_path / "cut.tif").write_bytes(whole[: len(whole) // 2])
    sidecar = changed(
        absolute(camera), images__0__file=str(tmp_path / "garbage.tif"), images__1__file=str(tmp_path / "cut.tif")
    )
    expect_refused(
        write_sidecar(tmp_path / "s.toml", sidecar),
        PlImportError,
        r"garbage\.tif is not a readable TIFF file",
        r"cut\.tif is truncated or damaged: its pixel data reach byte [\d,]+, the file has [\d,]+ bytes",
    )


def test_damaged_compressed_data(cameras, tmp_path: Path) -> None:
    camera, _ = cameras["f32"]
    data = bytearray((camera.directory / camera.sidecar["images"][0]["file"]).read_bytes())
    with tifffile.TiffFile(camera.directory / camera.sidecar["images"][0]["file"]) as tiff:
        offset = int(tiff.pages[0].dataoffsets[3])
    data[offset : offset + 64] = bytes(64)  # a tile's deflate stream overwritten
    (tmp_path / "damaged.tif").write_bytes(bytes(data))
    sidecar = changed(absolute(camera), images__0__file=str(tmp_path / "damaged.tif"))
    expect_refused(write_sidecar(tmp_path / "s.toml", sidecar), PlImportError, r"damaged\.tif is damaged: segment 3")


def test_grid_shifted_from_the_image(cameras, tmp_path: Path) -> None:
    camera, _ = cameras["u16"]
    sidecar = changed(absolute(camera), image__origin_x_um=camera.sidecar["image"]["origin_x_um"] + 40.0)
    expect_refused(
        write_sidecar(tmp_path / "s.toml", sidecar),
        PlImportError,
        r"images\[0\].*the chips sit \+40\.\d µm along the grid's column \(x\) axis off where the sidecar puts them",
        r"images\[1\]",
    )


def test_wrong_pixel_size(cameras, tmp_path: Path) -> None:
    camera, _ = cameras["u16"]
    sidecar = changed(absolute(camera), image__pixel_size_x_um=PIXEL_UM * 1.01)
    expect_refused(write_sidecar(tmp_path / "s.toml", sidecar), PlImportError, r"column \(x\) axis", r"pixel_size")


def test_image_off_the_wafer(cameras, tmp_path: Path) -> None:
    camera, _ = cameras["u16"]
    sidecar = changed(absolute(camera), image__origin_x_um=40_000.0)
    message = expect_refused(
        write_sidecar(tmp_path / "s.toml", sidecar), SettingsError, r"image: the image covers x 39998\.\.43998 µm"
    )
    assert "no usable chip" in message


def test_output_exists(cameras, tmp_path: Path) -> None:
    camera, _ = cameras["u16"]
    sidecar_path = write_sidecar(tmp_path / "s.toml", absolute(camera))
    (tmp_path / "out.h5").write_bytes(b"precious")
    with pytest.raises(FileExistsError, match="never overwritten"):
        import_pl_map(sidecar_path, tmp_path / "out.h5")
    assert (tmp_path / "out.h5").read_bytes() == b"precious"


def test_bad_sidecar_fields_are_reported_together(cameras, tmp_path: Path) -> None:
    camera, _ = cameras["u16"]
    sidecar = changed(
        absolute(camera),
        image__column_direction="up",
        image__pixel_size_y_um=-5.0,
        grid__chip_width_um=120.0,
        images__0__power_w="high",
    )
    del sidecar["tool"]
    message = expect_refused(
        write_sidecar(tmp_path / "s.toml", sidecar),
        SettingsError,
        r"tool: missing",
        r"image\.column_direction: 'up' is not one of '\+x', '-x'",
        r"image\.pixel_size_y_um: -5\.0 is outside the allowed range",
        r"grid\.chip_width_um: 120\.0 µm is wider than pitch_x_um",
        r"images\[0\]\.power_w: expected a number, got 'high'",
    )
    assert message.startswith("5 problem(s) in ")


def test_sidecar_rules_are_reported_together(cameras, tmp_path: Path) -> None:
    camera, _ = cameras["u16"]
    sidecar = changed(absolute(camera), tool=" ", image__pixel_size_x_um=20.0, image__origin_pixel=[800, 0])
    sidecar["images"] = sidecar["images"][:1]
    with pytest.raises(SettingsError) as raised:
        load_pl_map_sidecar(write_sidecar(tmp_path / "s.toml", sidecar))
    assert len(raised.value.problems) == 1  # origin_pixel: a field of [image], reported before the rules
    assert "image.origin_pixel: [800, 0] is not a pixel of a 800 × 800 image" in str(raised.value)
    sidecar["image"]["origin_pixel"] = [0, 0]
    message = expect_refused(
        write_sidecar(tmp_path / "s.toml", sidecar),
        SettingsError,
        r"tool: ' ' must name the instrument",
        r"images: 1 image given; at least 2 are needed",
        r"image\.pixel_size_x_um: 20\.0 µm is coarser than a quarter of grid\.chip_width_um \(60 µm\)",
    )
    assert message.startswith("3 problem(s)")


def test_relative_image_paths_are_taken_from_the_sidecar_folder(cameras) -> None:
    camera, _ = cameras["u16"]
    plmap = load_pl_map_sidecar(camera.sidecar_path)
    assert [Path(entry.file).parent for entry in plmap.passes] == [camera.directory] * 2
    assert [entry.power_w for entry in plmap.passes] == list(POWERS_W)


def test_an_imported_map_is_classified_not_reanalysed(cameras, tmp_path: Path, capsys, monkeypatch) -> None:
    _, path = cameras["u16"]
    imported = tmp_path / "imported.h5"
    imported.write_bytes(path.read_bytes())
    monkeypatch.setenv("PLMAPPER_HOME", str(tmp_path / "home"))
    assert main(["analyze", str(imported)]) == 2
    assert "imported map whose results are stored already: classify it" in capsys.readouterr().err
    with h5py.File(imported, "r") as file:
        assert "results_partial" not in file and "results" in file
    assert main(["classify", str(imported)]) == 0
    assert "yield" in capsys.readouterr().out
