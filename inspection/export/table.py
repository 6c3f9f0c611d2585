"""Per-chip results as a table: CSV or Parquet, one row per chip on the substrate.

Rows come in chip-index order (row by row from the bottom, columns left to right) and are produced band by band
(:data:`~inspection.export._source.BAND_ROWS` chip rows at a time), so an 8" wafer's 78 M chips stream through a
few hundred MB. Parquet gets one row group per band and the wafer's metadata (``plmapper`` key: lot, wafer, recipe,
powers, bin table, classifier) in its schema; CSV is plain (header line, comma separated, empty = no value).

Columns (:func:`chip_table_schema`; ``{i}`` is the pass index, pass ``i`` at laser power ``powers_w[i]``):

=========================== ======= ==================================================================================
column                      type    meaning
=========================== ======= ==================================================================================
col, row                    int32   chip index (lower-left origin, col to +x, row to +y)
x_um, y_um                  float64 chip centre in wafer coordinates (µm from the wafer centre, flat down)
bin_code                    uint8   the product bin (KLARF CLASSNUMBER, E142 BinCode)
bin_name                    string  the bin's name
defect_class                string  the classifier's class (``good``, ``dim``, ``leakage``, ... ``not_inspected``)
fail                        bool    the bin is a reject
el_fail_predicted           bool    the bin predicts an EL test failure
el_fail_probability         float32 the model's P(fails EL); empty when rules decided or the chip was not inspected
structure_id                int32   the wafer-scale structure (particle, scratch ...) the chip belongs to, 0 = none
intensity_v_pass{i}         float32 PL intensity (V) in pass i
peak_v_pass{i}              float32 brightest sample (V) in pass i
neighbour_ratio_pass{i}     float32 intensity over the median of the 8 neighbours in pass i
flags_pass{i}               uint8   :class:`~inspection.pipeline.ChipFlag` bits in pass i
efficiency_ratio            float32 lowest-power over highest-power efficiency (2+ passes)
spectrum_peak_nm            float32 fitted peak wavelength, where a spectrum was measured on the chip
spectrum_fwhm_nm            float32 fitted FWHM (instrument resolution removed), same chips
spectrum_quality            uint16  :class:`~inspection.spectra_analysis.SpectrumQuality` bits of that fit
=========================== ======= ==================================================================================

Missing values (chip not measured, no spectrum) are nulls: empty fields in CSV.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from inspection.bins import NO_CHIP, BinTable, DefectClass
from inspection.export._source import BAND_ROWS, WaferSource, atomic_output, open_wafer

__all__ = ["chip_table_batches", "chip_table_schema", "write_chip_csv", "write_chip_parquet"]

_PASS_FIELDS = (
    ("intensity_v", pa.float32()),
    ("peak_v", pa.float32()),
    ("neighbour_ratio", pa.float32()),
    ("flags", pa.uint8()),
)


def chip_table_schema(source: WaferSource, *, dictionary_strings: bool = True) -> pa.Schema:
    """The table's columns for ``source`` (its number of passes decides the per-pass columns)."""
    text = pa.dictionary(pa.uint8(), pa.string()) if dictionary_strings else pa.string()
    fields = [
        pa.field("col", pa.int32()),
        pa.field("row", pa.int32()),
        pa.field("x_um", pa.float64()),
        pa.field("y_um", pa.float64()),
        pa.field("bin_code", pa.uint8()),
        pa.field("bin_name", text),
        pa.field("defect_class", text),
        pa.field("fail", pa.bool_()),
        pa.field("el_fail_predicted", pa.bool_()),
        pa.field("el_fail_probability", pa.float32()),
        pa.field("structure_id", pa.int32()),
    ]
    for index in range(len(source.powers_w)):
        fields += [pa.field(f"{name}_pass{index}", kind) for name, kind in _PASS_FIELDS]
    fields += [
        pa.field("efficiency_ratio", pa.float32()),
        pa.field("spectrum_peak_nm", pa.float32()),
        pa.field("spectrum_fwhm_nm", pa.float32()),
        pa.field("spectrum_quality", pa.uint16()),
    ]
    metadata = {
        "plmapper": json.dumps(
            {
                "lot_id": source.lot_id,
                "wafer_id": source.wafer_id,
                "recipe": source.recipe.name,
                "scan_file": source.path.name,
                "scan_created_utc": source.scan_created_utc,
                "powers_w": list(source.powers_w),
                "pitch_um": [source.layout.grid.pitch_x_um, source.layout.grid.pitch_y_um],
                "box": {"columns": source.layout.column_count, "rows": source.layout.row_count},
                "classifier": source.classification.classifier,
                "bin_table": json.loads(source.bin_table.to_json()),
            },
            ensure_ascii=False,
        )
    }
    return pa.schema(fields, metadata=metadata)


def _float(values: np.ndarray) -> pa.Array:
    values = np.ascontiguousarray(values, dtype=np.float32)
    return pa.array(values, mask=np.isnan(values))


class _Spectra:
    """The last measured spectrum of each chip, looked up by chip."""

    def __init__(self, spectra: np.ndarray, columns: int) -> None:
        keys = spectra["row"].astype(np.int64) * columns + spectra["col"].astype(np.int64)
        order = np.argsort(keys, kind="stable")
        keys, spectra = keys[order], spectra[order]
        last = np.append(keys[1:] != keys[:-1], True) if keys.size else np.zeros(0, dtype=bool)
        self.keys, self.records = keys[last], spectra[last]

    def lookup(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(found, index into records) for chip keys ``row · columns + col``."""
        if self.keys.size == 0:
            return np.zeros(keys.shape, dtype=bool), np.zeros(keys.shape, dtype=np.intp)
        index = np.minimum(np.searchsorted(self.keys, keys), self.keys.size - 1)
        return self.keys[index] == keys, index


def chip_table_batches(
    source: WaferSource, *, band_rows: int = BAND_ROWS, dictionary_strings: bool = True
) -> Iterator[pa.RecordBatch]:
    """The per-chip table of ``source`` as record batches, one per band of chip rows (chips on the substrate only).

    Examples
    --------
    ``pa.Table.from_batches(chip_table_batches(open_wafer(path)))`` is the whole table in memory (fine for 2"–4").
    """
    schema = chip_table_schema(source, dictionary_strings=dictionary_strings)
    table = source.bin_table
    names = [entry.name for entry in table.bins]
    class_names = [member.key for member in DefectClass]
    index_of = source.class_lookup("index")
    code_of = source.class_lookup("code")
    fail_of = source.class_lookup("fail").astype(bool)
    el_fail_of = source.class_lookup("el_fail").astype(bool)
    columns = source.layout.column_count
    with source.reader() as reader:
        spectra = _Spectra(reader.results.spectra(), columns)
        for rows in source.bands(band_rows=band_rows):
            classes = reader.classes(rows)
            band_rows_index, cols = np.nonzero(classes != NO_CHIP)
            chip_rows = band_rows_index + rows.start
            chosen = classes[band_rows_index, cols]
            x_um, y_um = source.layout.chip_center_um(cols, chip_rows)
            bin_index = index_of[chosen]
            if dictionary_strings:
                bin_name = pa.DictionaryArray.from_arrays(pa.array(bin_index), pa.array(names))
                defect_class = pa.DictionaryArray.from_arrays(pa.array(chosen), pa.array(class_names))
            else:
                bin_name = pa.array(np.asarray(names, dtype=object)[bin_index], type=pa.string())
                defect_class = pa.array(np.asarray(class_names, dtype=object)[chosen], type=pa.string())
            arrays = [
                pa.array(cols.astype(np.int32)),
                pa.array(chip_rows.astype(np.int32)),
                pa.array(np.asarray(x_um, dtype=np.float64)),
                pa.array(np.asarray(y_um, dtype=np.float64)),
                pa.array(code_of[chosen]),
                bin_name,
                defect_class,
                pa.array(fail_of[chosen]),
                pa.array(el_fail_of[chosen]),
                _float(reader.el_fail_probability(rows)[band_rows_index, cols]),
                pa.array(reader.structure_label(rows)[band_rows_index, cols].astype(np.int32)),
            ]
            for index in range(len(source.powers_w)):
                chips = reader.results.chips(index, rows)[band_rows_index, cols]
                arrays += [
                    _float(chips["intensity_v"]),
                    _float(chips["peak_v"]),
                    _float(chips["neighbour_ratio"]),
                    pa.array(chips["flags"].astype(np.uint8)),
                ]
            ratio = reader.results.efficiency_ratio(rows)
            arrays.append(
                _float(ratio[band_rows_index, cols]) if ratio is not None else pa.nulls(cols.size, pa.float32())
            )
            found, where = spectra.lookup(chip_rows.astype(np.int64) * columns + cols)
            records = spectra.records[where] if spectra.keys.size else None
            for name in ("peak_nm", "fwhm_nm"):
                values = np.full(cols.size, np.nan, dtype=np.float32)
                if records is not None:
                    values[found] = records[name][found]
                arrays.append(_float(values))
            quality = np.zeros(cols.size, dtype=np.uint16)
            if records is not None:
                quality[found] = records["quality"][found]
            arrays.append(pa.array(quality, mask=~found))
            yield pa.RecordBatch.from_arrays(arrays, schema=schema)


def write_chip_parquet(scan_path: str | Path, out_path: str | Path, *, bin_table: BinTable | None = None) -> Path:
    """Write the per-chip table as Parquet (zstd, one row group per band of chip rows, wafer metadata in the schema).

    Raises
    ------
    ExportError
        The scan file cannot be exported (see :func:`~inspection.export.open_wafer`).
    """
    source = open_wafer(scan_path, bin_table=bin_table)
    schema = chip_table_schema(source)
    return _write_batches(
        source,
        Path(out_path),
        lambda path: pq.ParquetWriter(path, schema, compression="zstd"),
        dictionary_strings=True,
    )


def write_chip_csv(scan_path: str | Path, out_path: str | Path, *, bin_table: BinTable | None = None) -> Path:
    """Write the per-chip table as CSV (UTF-8, header line, comma separated; missing values empty).

    Raises
    ------
    ExportError
        The scan file cannot be exported (see :func:`~inspection.export.open_wafer`).
    """
    source = open_wafer(scan_path, bin_table=bin_table)
    schema = chip_table_schema(source, dictionary_strings=False).remove_metadata()
    return _write_batches(
        source, Path(out_path), lambda path: pa_csv.CSVWriter(str(path), schema), dictionary_strings=False
    )


def _write_batches(
    source: WaferSource,
    out_path: Path,
    open_writer: Callable[[Path], pq.ParquetWriter | pa_csv.CSVWriter],
    *,
    dictionary_strings: bool,
) -> Path:
    with atomic_output(out_path) as partial:
        writer = open_writer(partial)
        try:
            for batch in chip_table_batches(source, dictionary_strings=dictionary_strings):
                writer.write_batch(batch if dictionary_strings else batch.replace_schema_metadata(None))
        finally:
            writer.close()
    return out_path
