"""Defect-map exports of a classified scan: KLARF read back by public third-party readers (klarf-reader for 1.2,
klarfio for 1.8), the SEMI E142 map row by row against the classification, the per-chip CSV/Parquet against the
results, PNG maps, the PDF wafer and lot reports, nothing half-written on failure, and clear errors for bad input."""

from __future__ import annotations

import dataclasses
import re
import shutil
import tracemalloc
import xml.etree.ElementTree as ET
from pathlib import Path

import h5py
import klarfio
import numpy as np
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest
from klarf_reader.klarf import Klarf
from matplotlib.backends.backend_pdf import PdfPages

from drivers.virtual.profile import load_profile
from drivers.virtual.synthetic import write_synthetic_scan
from drivers.virtual.world import WaferWorld, export_el_csv
from inspection.bins import NO_CHIP, BinTable, DefectClass, default_bin_table
from inspection.classify import Classification, classify_scan, read_classification, scan_layout, write_classification
from inspection.el_reference import import_el_csv
from inspection.export import (
    ALL_FORMATS,
    ExportError,
    export_scan,
    lot_report,
    open_wafer,
    write_chip_csv,
    write_e142,
    write_klarf,
    write_wafer_report,
)
from inspection.export._source import BandReader
from inspection.export.e142 import E142_NAMESPACE
from inspection.export.maps import block_bins
from inspection.export.report import stack_fail_fraction
from inspection.pipeline import CHIP_DTYPE, AnalysisSettings, ChipResults, analyze_scan, results_attributes
from inspection.recipe import load_recipe, recipe_to_toml
from inspection.scanfile import ScanFileWriter, ScanStatus
from inspection.spectra_analysis import SPECTRUM_RESULT_DTYPE
from inspection.wafer import Placement
from tests.gui.data import add_spectra

REPO = Path(__file__).resolve().parent.parent
DEMO_PROFILE = REPO / "resources" / "profiles" / "demo-2in.toml"
DEMO_RECIPE = REPO / "resources" / "recipes" / "demo-2in.toml"
BAND = slice(880, 1040)  # 160 raster lines through the middle: ~40 chip rows of ~500 chips
NS = {"e": E142_NAMESPACE}


def _keep_rows(csv: Path, rows: np.ndarray) -> None:
    """Keep the prober CSV's chips in ``rows`` (a prober run over the scanned band only)."""
    lines = csv.read_text().splitlines(keepends=True)
    header = next(index for index, line in enumerate(lines) if line.startswith("COL,"))
    keep = set(rows.tolist())
    body = [line for line in lines[header + 1 :] if int(line.split(",", 2)[1]) in keep]
    csv.write_text("".join(lines[: header + 1] + body))


def _set_identity(path: Path, lot_id: str, wafer_id: str) -> None:
    with h5py.File(path, "r+") as file:
        file.attrs["lot_id"] = lot_id
        file.attrs["wafer_id"] = wafer_id


@pytest.fixture(scope="module")
def wafer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A band of the demo wafer: scanned, 40 spectra, analysed, EL-probed (prober CSV imported), classified by the
    rules; lot LOT-7, wafer W07."""
    directory = tmp_path_factory.mktemp("wafer")
    profile, recipe = load_profile(DEMO_PROFILE), load_recipe(DEMO_RECIPE)
    scan = directory / "W07.h5"
    write_synthetic_scan(scan, profile, recipe, lines=BAND)
    analyze_scan(scan)
    add_spectra(scan, profile, 40)
    analyze_scan(scan)
    with ChipResults(scan) as results:
        measured_rows = np.flatnonzero(np.isfinite(results.chips(0)["intensity_v"]).any(axis=1))
    csv = directory / "W07.csv"
    export_el_csv(WaferWorld(profile), csv)
    _keep_rows(csv, measured_rows)
    import_el_csv(scan, csv)
    classify_scan(scan)
    _set_identity(scan, "LOT-7", "W07")
    return scan


@pytest.fixture(scope="module")
def exported(wafer: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every format of ``wafer``, by file name."""
    out = tmp_path_factory.mktemp("exports")
    paths = export_scan(wafer, out, ALL_FORMATS)
    return {path.name: path for path in paths}


def _fail_chips(path: Path, table: BinTable | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(cols, rows, bin codes) of the failing chips, in chip-index order."""
    classification = read_classification(path)
    table = table or classification.bin_table
    rows, cols = np.nonzero(table.fail_of(classification.defect_class))
    return cols, rows, table.codes_of(classification.defect_class[rows, cols])


def test_export_scan_writes_every_format(exported: dict[str, Path], wafer: Path) -> None:
    assert sorted(exported) == sorted(
        [
            "W07.klarf",
            "W07.v18.klarf",
            "W07.e142.xml",
            "W07.chips.csv",
            "W07.chips.parquet",
            "W07.bins.png",
            "W07.intensity_pass0.png",
            "W07.intensity_pass1.png",
            "W07.efficiency_ratio.png",
            "W07.wavelength.png",
            "W07.fwhm.png",
            "W07.report.pdf",
        ]
    )
    assert not list(next(iter(exported.values())).parent.glob(".*partial*"))


def test_klarf_12_reads_back_with_klarf_reader(exported: dict[str, Path], wafer: Path) -> None:
    path = exported["W07.klarf"]
    content = Klarf.load_from_file(path)
    assert content.file_version == 1.2
    assert content.lot_id == "LOT-7"
    assert content.die_pitch.x == content.die_pitch.y == 100.0
    (read,) = content.wafers
    assert read.id == "W07"
    cols, rows, codes = _fail_chips(wafer)
    assert 100 < cols.size == len(read.defects)
    assert [defect.x_index for defect in read.defects] == cols.tolist()
    assert [defect.y_index for defect in read.defects] == rows.tolist()
    assert [defect.class_number for defect in read.defects] == codes.tolist()
    assert [defect.id for defect in read.defects] == list(range(1, cols.size + 1))
    # the reader's own coordinate conversion lands on the chip centres (µm from the wafer centre)
    _, layout = scan_layout(wafer)
    x_um, y_um = layout.chip_center_um(cols, rows)
    points = np.array([defect.point for defect in read.defects])
    np.testing.assert_allclose(points[:, 0], x_um, atol=1e-3)
    np.testing.assert_allclose(points[:, 1], y_um, atol=1e-3)
    defect = read.defects[0]
    assert (defect.x_size, defect.y_size, defect.area) == (60.0, 60.0, 3600.0)
    assert defect.roughbin in (1, 2, 3) and defect.test_id == 1
    # summary: NDEFECT, NDIE (inspected chips)
    classification = read_classification(wafer)
    inspected = (classification.defect_class != NO_CHIP) & (classification.defect_class != DefectClass.NOT_INSPECTED)
    assert read.summary.number_of_defects == cols.size == read.summary.number_of_def_dies
    assert read.summary.number_of_dies == int(inspected.sum())
    # the class lookup names every bin
    text = path.read_text()
    table = classification.bin_table
    for entry in table.bins:
        assert f' {entry.code} "{entry.name}"' in text
    assert text.rstrip().endswith("EndOfFile;")
    # a second reader agrees on the defect list
    rows_read = klarfio.klarf(str(path)).get_defect_data()["Data"]
    assert [row[3:5] for row in rows_read] == np.column_stack([cols, rows]).tolist()


def test_klarf_18_reads_back_with_klarfio(wafer: Path, tmp_path: Path) -> None:
    # klarfio splits 1.8 values on spaces: names without spaces (a product table with its own names)
    table = default_bin_table()
    table = dataclasses.replace(
        table, bins=tuple(dataclasses.replace(entry, name=entry.name.replace(" ", "_")) for entry in table.bins)
    )
    path = write_klarf(wafer, tmp_path / "W07.klarf", version="1.8", bin_table=table)
    data = klarfio.klarf(str(path)).data["FileRecord_1.8"]
    lot = data["LotRecord_LOT-7"]
    assert lot["DiePitch"] == [100.0, 100.0]
    assert [row for row in lot["ClassLookupList"]["Data"]] == [
        [entry.code, entry.name] for entry in sorted(table.bins, key=lambda entry: entry.code)
    ]
    record = lot["WaferRecord_W07"]
    columns = [column["Column"] for column in record["DefectList"]["Columns"]]
    defects = np.array(record["DefectList"]["Data"])
    cols, rows, codes = _fail_chips(wafer, table)
    assert defects.shape[0] == cols.size
    assert defects[:, columns.index("XINDEX")].tolist() == cols.tolist()
    assert defects[:, columns.index("YINDEX")].tolist() == rows.tolist()
    assert defects[:, columns.index("CLASSNUMBER")].tolist() == codes.tolist()
    summary = record["SummaryRecord"]["TestSummaryList"]["Data"][0]
    assert summary[1] == cols.size
    # the same wafer coordinates as 1.2
    centre = record["SampleCenterLocation"]
    _, layout = scan_layout(wafer)
    x_um, _ = layout.chip_center_um(cols, rows)
    np.testing.assert_allclose(cols * 100.0 + defects[:, columns.index("XREL")] - centre[0], x_um, atol=1e-3)


_HEX_VALUE = np.zeros(256, dtype=np.uint8)
_HEX_VALUE[np.frombuffer(b"0123456789ABCDEF", dtype=np.uint8)] = np.arange(16)


def _e142_codes(path: Path) -> tuple[ET.Element, np.ndarray]:
    """The parsed file and its BinCode rows decoded (first row first)."""
    root = ET.parse(path).getroot()
    rows = [element.text or "" for element in root.iterfind(".//e:BinCodeMap/e:BinCode", NS)]
    assert len({len(row) for row in rows}) == 1, "every BinCode row holds the same number of chips"
    digits = _HEX_VALUE[np.frombuffer("".join(rows).encode("ascii"), dtype=np.uint8)].reshape(len(rows), -1, 2)
    return root, digits[..., 0] * 16 + digits[..., 1]


def _e142_device_map(root: ET.Element, codes: np.ndarray) -> np.ndarray:
    """The decoded BinCode rows as an array indexed [Y, X] by the devices' E142 coordinates, read the way the header
    says: the rows are the map as drawn, top row first, left to right; ``OriginLocation`` is the corner of device
    (0, 0) and ``AxisDirection`` the way X and Y grow from it (the reading of public E142 importers that implement
    both, e.g. Galaxy's; docs/exports.md)."""
    substrate_map = root.find(".//e:SubstrateMap", NS)
    origin, axes = substrate_map.get("OriginLocation"), substrate_map.get("AxisDirection")
    vertical, horizontal = re.fullmatch(r"(Up|Down)(Left|Right)", axes).groups()
    assert origin == {"Up": "Lower", "Down": "Upper"}[vertical] + {"Right": "Left", "Left": "Right"}[horizontal], (
        f"the axes ({axes}) do not point away from the origin ({origin})"
    )
    grid = codes[::-1] if vertical == "Up" else codes  # Y up: the first row drawn is the highest Y
    return grid[:, ::-1] if horizontal == "Left" else grid


def test_e142_rows_and_counts_match_the_map(exported: dict[str, Path], wafer: Path) -> None:
    root, codes = _e142_codes(exported["W07.e142.xml"])
    assert root.tag == f"{{{E142_NAMESPACE}}}MapData"
    classification = read_classification(wafer)
    expected = classification.bin_codes  # [row, col], row 0 at the bottom (the flat's side)
    layout = root.find(".//e:Layout[@LayoutId='Devices']", NS)
    dimension = layout.find("e:Dimension", NS)
    assert (int(dimension.get("X")), int(dimension.get("Y"))) == (expected.shape[1], expected.shape[0])
    assert layout.find("e:StepSize", NS).attrib == {"X": "0.1", "Y": "0.1"}
    assert layout.find("e:DeviceSize", NS).attrib == {"X": "0.06", "Y": "0.06"}
    substrate_map = root.find(".//e:SubstrateMap", NS)
    assert substrate_map.get("OriginLocation") == "LowerLeft" and substrate_map.get("AxisDirection") == "UpRight"
    assert substrate_map.get("Orientation") == "0" and substrate_map.get("SubstrateId") == "W07"
    # one BinCode row per chip row; read as the header says, device (X, Y) is chip (col, row) everywhere, so the
    # first BinCode row is the top row (Y = rows - 1), as the comment before the rows says
    assert codes.shape == expected.shape
    np.testing.assert_array_equal(_e142_device_map(root, codes), expected)
    np.testing.assert_array_equal(codes[0], expected[-1])
    text = exported["W07.e142.xml"].read_text(encoding="utf-8")
    stated = re.search(r"<!-- BinCode rows top to bottom: the first is Y=(\d+) \(top\), the last Y=0 ", text)
    assert stated is not None and int(stated.group(1)) == expected.shape[0] - 1
    assert text.index("<!-- BinCode rows") > text.index("</BinDefinitions>")
    # and physically: Orientation 0 puts the flat at the bottom, where the origin row is. The flat is a long straight
    # edge, the top of the wafer a short arc: the lowest row holding chips is far longer than the highest one
    on_wafer = _e142_device_map(root, codes) != NO_CHIP
    rows_with_chips = np.flatnonzero(on_wafer.any(axis=1))
    lowest, highest = on_wafer[rows_with_chips[0]].sum(), on_wafer[rows_with_chips[-1]].sum()
    assert lowest > 3 * highest, (lowest, highest)
    assert root.find(".//e:Substrate/e:LotId", NS).text == "LOT-7"
    bin_code_map = root.find(".//e:BinCodeMap", NS)
    assert bin_code_map.get("BinType") == "HexaDecimal" and bin_code_map.get("NullBin") == "FF"
    assert bin_code_map.get("MapType") == "2DArray"
    definitions = {int(item.get("BinCode"), 16): item for item in root.iterfind(".//e:BinDefinition", NS)}
    for entry in classification.bin_table.bins:
        item = definitions[entry.code]
        assert int(item.get("BinCount")) == int((codes == entry.code).sum())
        assert item.get("BinDescription") == entry.name
        assert item.get("BinQuality") == ("Fail" if entry.fail else "Skip" if entry.code == 0 else "Pass")
    good = int(root.find(".//e:Substrate/e:GoodDevices", NS).text)
    assert good == int((codes == 1).sum())


def _synthetic_classified_scan(path: Path, recipe_path: Path, **grid: float) -> Classification:
    """A scan file holding only what the E142 and KLARF exports read (recipe, results header, classification)
    for a whole wafer, its classes made up: for wafers too large to render in a test."""
    recipe = load_recipe(recipe_path)
    if grid:
        recipe = dataclasses.replace(recipe, grid=dataclasses.replace(recipe.grid, **grid))
    layout = recipe.layout()
    plan = np.zeros(0, dtype=[("line_index", "i4"), ("sample_count", "i4")])
    with ScanFileWriter.create(
        path, recipe_toml=recipe_to_toml(recipe), station_toml="", identities={}, plan_lines=plan,
        powers_w=list(recipe.excitation.powers_w), plan_summary="", operator="test", lot_id="BIG", wafer_id="B01",
        software_version="test", fsync=False,
    ) as writer:  # fmt: skip
        writer.finish(ScanStatus.COMPLETE, "made up")
    shape = (layout.row_count, layout.column_count)
    with h5py.File(path, "r+") as file:
        group = file.create_group("results")
        group.attrs.update(results_attributes(AnalysisSettings(), Placement(), [], recipe.excitation.powers_w))
        for index in range(len(recipe.excitation.powers_w)):
            chunks = (min(64, shape[0]), min(1024, shape[1]))
            group.create_dataset(f"pass_{index:03d}/chips", shape=shape, dtype=CHIP_DTYPE, chunks=chunks)
        group.create_dataset("spectra", data=np.zeros(0, dtype=SPECTRUM_RESULT_DTYPE))
    rng = np.random.default_rng(7)
    classes = np.where(layout.usable_mask(), DefectClass.GOOD, DefectClass.NOT_INSPECTED).astype(np.uint8)
    rows, cols = np.nonzero(classes == DefectClass.GOOD)
    hit = rng.random(rows.size) < 0.01
    classes[rows[hit], cols[hit]] = rng.choice([DefectClass.DIM, DefectClass.DEAD, DefectClass.LEAKAGE], hit.sum())
    classes[~layout.physical_mask()] = NO_CHIP
    classification = Classification(
        defect_class=classes,
        el_fail_probability=np.zeros(shape, dtype=np.float32),
        structure_label=np.zeros(shape, dtype=np.int32),
        bin_table=default_bin_table(),
        classifier={"kind": "rules", "name": "made up"},
    )
    write_classification(path, classification)
    return classification


def test_e142_streams_rows_of_a_large_map(tmp_path: Path) -> None:
    # an 8" wafer at 100 µm pitch: 2000 x 2000 chips, 16 MB of hex rows; the writer holds a band at a time
    scan = tmp_path / "big.h5"
    classification = _synthetic_classified_scan(
        scan, REPO / "resources" / "recipes" / "green-8in.toml", pitch_x_um=100.0, pitch_y_um=100.0
    )
    out = tmp_path / "big.xml"
    tracemalloc.start()
    write_e142(scan, out)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert out.stat().st_size > 8_000_000
    assert peak < out.stat().st_size / 4
    _, codes = _e142_codes(out)
    np.testing.assert_array_equal(codes, classification.bin_codes[::-1])
    # the KLARF defect list streams the same way and reads back
    klarf = write_klarf(scan, tmp_path / "big.klarf")
    (read,) = Klarf.load_from_file(klarf).wafers
    assert len(read.defects) == int(classification.fail_map().sum())


def test_chip_table_csv_and_parquet_match_the_results(exported: dict[str, Path], wafer: Path) -> None:
    table = pq.read_table(exported["W07.chips.parquet"])
    csv_table = pa_csv.read_csv(exported["W07.chips.csv"])
    assert csv_table.column_names == table.column_names
    assert csv_table.num_rows == table.num_rows
    classification = read_classification(wafer)
    on_wafer = classification.defect_class != NO_CHIP
    assert table.num_rows == int(on_wafer.sum())
    cols, rows = table["col"].to_numpy(), table["row"].to_numpy()
    expected_rows, expected_cols = np.nonzero(on_wafer)
    np.testing.assert_array_equal(rows, expected_rows)
    np.testing.assert_array_equal(cols, expected_cols)
    np.testing.assert_array_equal(table["bin_code"].to_numpy(), classification.bin_codes[rows, cols])
    np.testing.assert_array_equal(csv_table["bin_code"].to_numpy(), classification.bin_codes[rows, cols])
    assert table["fail"].to_numpy().sum() == int(classification.fail_map().sum())
    with ChipResults(wafer) as results:
        high = results.chips(1)
        ratio = results.efficiency_ratio()
        spectra = results.spectra()
    np.testing.assert_array_equal(
        table["intensity_v_pass1"].to_numpy(zero_copy_only=False), high["intensity_v"][rows, cols]
    )
    csv_intensity = csv_table["intensity_v_pass1"].to_numpy(zero_copy_only=False)
    np.testing.assert_allclose(csv_intensity, high["intensity_v"][rows, cols], rtol=1e-6, equal_nan=True)
    np.testing.assert_array_equal(table["efficiency_ratio"].to_numpy(zero_copy_only=False), ratio[rows, cols])
    _, layout = scan_layout(wafer)
    x_um, _ = layout.chip_center_um(cols, rows)
    np.testing.assert_allclose(table["x_um"].to_numpy(), x_um)
    # the measured spectra sit on their chips; every other chip has none
    peaks = table["spectrum_peak_nm"].to_numpy(zero_copy_only=False)
    assert np.isfinite(peaks).sum() == np.unique(spectra["row"] * 10_000 + spectra["col"]).size == 40
    index = {(int(c), int(r)): i for i, (c, r) in enumerate(zip(cols, rows, strict=True))}
    for record in spectra[:5]:
        assert peaks[index[int(record["col"]), int(record["row"])]] == pytest.approx(record["peak_nm"])
    metadata = table.schema.metadata[b"plmapper"].decode()
    assert '"wafer_id": "W07"' in metadata and '"powers_w": [0.0005, 0.02]' in metadata


def _pdf_pages(path: Path) -> int:
    return len(re.findall(rb"/Type\s*/Page[^s]", path.read_bytes()))


def test_pngs_and_wafer_report(exported: dict[str, Path]) -> None:
    for name, path in exported.items():
        if name.endswith(".png"):
            assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
            assert path.stat().st_size > 20_000
    report = exported["W07.report.pdf"]
    assert report.read_bytes()[:5] == b"%PDF-"
    # summary, bin map, PL maps, spectra, EL agreement (the file has EL reference data)
    assert _pdf_pages(report) == 5


def test_lot_report(wafer: Path, tmp_path: Path) -> None:
    scans = []
    stored = read_classification(wafer)
    for number in (1, 2, 3):
        scan = tmp_path / f"W0{number}.h5"
        shutil.copy(wafer, scan)
        _set_identity(scan, "LOT-7", f"W0{number}")
        classes = stored.defect_class.copy()
        if number == 2:  # wafer 2: a patch of dead chips at the band's middle
            rows, cols = np.nonzero(classes == DefectClass.GOOD)
            middle = rows.size // 2
            classes[rows[middle : middle + 300], cols[middle : middle + 300]] = DefectClass.DEAD
        write_classification(scan, dataclasses.replace(stored, defect_class=classes))
        scans.append(scan)
    pdf = lot_report(scans, tmp_path / "lot" / "LOT-7.pdf")
    assert pdf.read_bytes()[:5] == b"%PDF-" and _pdf_pages(pdf) == 2
    lines = pdf.with_suffix(".csv").read_text().splitlines()
    header = lines[0].split(",")
    assert header[:6] == ["lot_id", "wafer_id", "scan_file", "recipe", "scanned_utc", "classifier"]
    assert "bin_3_dead" in header
    rows = [dict(zip(header, line.split(","), strict=True)) for line in lines[1:]]
    assert [row["wafer_id"] for row in rows] == ["W01", "W02", "W03"]
    yields = [float(row["yield"]) for row in rows]
    assert yields[0] == yields[2] > yields[1]
    assert int(rows[1]["bin_3_dead"]) == int(rows[0]["bin_3_dead"]) + 300
    # the stacked map: a chip failing on one wafer of three fails on a third of them
    sources = [open_wafer(scan) for scan in scans]
    stacked = stack_fail_fraction(sources, 1)
    fails = [item.class_lookup("fail").astype(bool)[read_classification(item.path).defect_class] for item in sources]
    inspected = (stored.defect_class != NO_CHIP) & (stored.defect_class != DefectClass.NOT_INSPECTED)
    np.testing.assert_allclose(stacked[inspected], np.mean(fails, axis=0)[inspected], atol=1e-6)
    assert np.isnan(stacked[~inspected]).all()


def test_block_reduction_of_the_bin_map() -> None:
    fail = np.array([False, False, True, True])  # 0 good, 1 not inspected, 2 dim, 3 dead; 4 = no chip
    chips = np.array(
        [
            [0, 0, 2, 2, 4, 4],
            [0, 2, 3, 2, 4, 4],
        ]
    )
    # left block: 1 of 4 fails -> good; middle: 3 of 4 fail, dim twice -> dim; right: no chip
    assert block_bins(chips, 2, fail).tolist() == [[0, 2, 4]]
    edge = np.array([[1, 1, 3]])  # padded with no chip: left 2 not-inspected chips, right 1 dead chip
    assert block_bins(edge, 2, fail).tolist() == [[1, 3]]


FAIL_AT_BAND = {"klarf": 12, "klarf18": 12, "e142": 12, "csv": 4, "parquet": 4, "png": 12, "pdf": 12}
"""The band read that fails: two-pass writers (counts, then rows) fail in their second pass, after writing part of
the file; the PNGs after the bin map is complete (it stays, complete), the PDF while building its pages."""


def test_a_failure_midway_leaves_no_partial_file(wafer: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    previous = write_klarf(wafer, tmp_path / "W07.klarf")
    before = previous.read_bytes()
    calls = {"n": 0, "fail_at": 0}
    original = BandReader.classes

    def failing(self: BandReader, rows: slice) -> np.ndarray:
        calls["n"] += 1
        if calls["n"] == calls["fail_at"]:
            raise OSError("disk went away")
        return original(self, rows)

    monkeypatch.setattr(BandReader, "classes", failing)
    for name in ALL_FORMATS:
        calls["n"], calls["fail_at"] = 0, FAIL_AT_BAND[name]
        with pytest.raises(OSError, match="disk went away"):
            export_scan(wafer, tmp_path, [name])
    assert sorted(path.name for path in tmp_path.iterdir()) == ["W07.bins.png", "W07.klarf"]
    assert previous.read_bytes() == before  # the earlier complete export is untouched
    # the PDF failing while its pages are written to disk
    monkeypatch.setattr(BandReader, "classes", original)
    pages = {"n": 0}
    original_savefig = PdfPages.savefig

    def failing_page(self: PdfPages, *args: object, **kwargs: object) -> None:
        pages["n"] += 1
        if pages["n"] == 3:
            raise OSError("disk full")
        original_savefig(self, *args, **kwargs)

    monkeypatch.setattr(PdfPages, "savefig", failing_page)
    with pytest.raises(OSError, match="disk full"):
        write_wafer_report(wafer, tmp_path / "W07.report.pdf")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["W07.bins.png", "W07.klarf"]


def test_bad_input_gives_one_clear_message(wafer: Path, tmp_path: Path) -> None:
    unclassified = tmp_path / "unclassified.h5"
    shutil.copy(wafer, unclassified)
    with h5py.File(unclassified, "r+") as file:
        del file["classification"]
    out = tmp_path / "out"
    with pytest.raises(ExportError, match=r"not classified yet; run plmapper classify unclassified\.h5 first"):
        export_scan(unclassified, out)
    text = tmp_path / "notes.h5"
    text.write_text("not a scan")
    with pytest.raises(ExportError, match="not an HDF5 file"):
        write_wafer_report(text, out / "r.pdf")
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as file:
        file.create_dataset("x", data=[1])
    with pytest.raises(ExportError, match="not a plmapper scan file"):
        write_chip_csv(other, out / "t.csv")
    with pytest.raises(ExportError, match="no such scan file"):
        lot_report([wafer, tmp_path / "missing.h5"], out / "lot.pdf")
    with pytest.raises(ExportError, match=r"unknown export format.*'tiff'"):
        export_scan(wafer, out, ["klarf", "tiff"])
    assert not out.exists()
    with pytest.raises(ExportError, match="no scan files"):
        lot_report([], out / "lot.pdf")


def test_lot_report_refuses_mixed_chip_grids(wafer: Path, tmp_path: Path) -> None:
    other = tmp_path / "other.h5"
    _synthetic_classified_scan(other, DEMO_RECIPE, pitch_x_um=200.0, pitch_y_um=200.0)
    with pytest.raises(ExportError, match=r"chip grid .* differs"):
        lot_report([wafer, other], tmp_path / "lot.pdf")
    assert not list(tmp_path.glob("lot*"))
