"""What the review views show, read from a scan file: layers, map levels, chip details, the defect list.

No Qt here: these functions run on worker threads (:mod:`app.gui.tasks`) and hand back NumPy arrays that stay with
the task; the GUI thread only gets small messages saying that they are ready.

A :class:`ScanDocument` is one open scan file. Its *layers* are the maps it can show: the bin of every chip (from
``/classification``), the EL fail probability, each pass's per-chip measurements, the efficiency ratio and the
wavelength/FWHM display maps (``/results``, docs/results.md). Every map is ``[row, col]`` of the recipe's chip box,
row 0 at the bottom (SEMI E142, docs/wafer-geometry.md).

Large wafers are shown in two levels:

* the **overview**: one chip per ``d × d`` block (the block's centre chip), ``d = ceil(max(rows, cols) / 2048)``:
  an 8" wafer's 9,999 × 9,999 chip box becomes a 2,000 × 2,000 image, read from the file as a strided selection
  in bands of rows (about 0.5 s; only the chips shown are converted);
* the **detail**: the chips in view, at full resolution, read as one rectangular selection when the view is
  zoomed in far enough that a screen pixel covers at most a chip or so.

Wafers up to 2,048 chips across have ``d = 1``: the overview is the whole map at full resolution.

A file with an EL reference (``/el_reference``, docs/el-reference.md) also offers the EL result of every probed chip
(pass or its fail mode) and its forward voltage, EL intensity and reverse current as layers; a classified file the
PL prediction (the bin table's "predicts an EL failure"). Those are what :mod:`app.gui.comparison` compares.

Examples
--------
>>> overview_factor((9999, 9999)), overview_factor((508, 508))
(5, 1)
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from inspection.bins import NO_CHIP, BinTable, DefectClass, bin_table_from_json
from inspection.el_reference import EL_DTYPE, FAIL_MODE_UNSPECIFIED, NO_PL_SIGNATURE, ElFailMode
from inspection.history import OperationStopped
from inspection.pipeline import CHIP_DTYPE, RESULTS_FORMAT_VERSION, ChipFlag
from inspection.recipe import Recipe, recipe_from_text
from inspection.scanfile import ScanFile, ScanStatus
from inspection.wafer import WaferLayout

__all__ = [
    "EL_CATEGORIES",
    "NO_BIN",
    "OVERVIEW_SIZE",
    "PREDICTION_CATEGORIES",
    "ChipDetails",
    "DefectList",
    "Layer",
    "ScanDocument",
    "TaskCancelled",
    "overview_factor",
]

OVERVIEW_SIZE = 2048
"""The overview level holds at most this many chips (pixels) across."""

BAND_ROWS = 64
"""Rows of the chip box read at a time (the results' chunk height): the unit of progress and cancellation."""

NO_BIN = 255
"""Bin index of a place in the chip box with no chip (drawn transparent)."""

NEIGHBOURHOOD = 3
"""The chip details' neighbour view shows the chips within this many places of the chip (a 7 × 7 square)."""

CHIP_FIELDS = {
    "intensity_v": ("Intensity", "V"),
    "efficiency_v_per_w": ("Efficiency", "V/W"),
    "neighbour_ratio": ("Neighbour ratio", ""),
    "peak_v": ("Peak", "V"),
    "integrated_v_um2": ("Integrated intensity", "V·µm²"),
    "street_v": ("Street level", "V"),
}
"""Per-chip measurements offered as map layers, with their display names and units."""

Progress = Callable[[float, str], None]

PREDICTION_CATEGORIES = (("PL predicts EL pass", "#3c8d5a"), ("PL predicts EL fail", "#d93025"))
"""The PL prediction layer: category 0 = the chip's bin does not predict an EL failure, 1 = it does."""

EL_CATEGORIES = (
    ("EL pass", "#3c8d5a"),
    ("EL fail: missing", "#795548"),
    ("EL fail: open", "#f48fb1"),
    ("EL fail: leakage", "#e65100"),
    ("EL fail: dead", "#b71c1c"),
    ("EL fail: dim", "#ff7043"),
    ("EL fail: forward voltage", "#a1887f"),
    ("EL fail (mode not given)", "#d81b60"),
)
"""The EL result layer: category = ElFailMode value, 7 = a failure of unspecified mode; not probed: NO_BIN. Passing
chips green as in the PL prediction, failures in warm colours (as the prediction's red), so the two read side by
side; none is a colour of the comparison's categories."""
EL_UNSPECIFIED_CATEGORY = 7
EL_VALUE_FIELDS = {
    "el_forward_v": ("forward_v", "EL forward voltage", "V"),
    "el_intensity": ("el_intensity", "EL intensity", ""),
    "el_reverse_current_a": ("reverse_current_a", "EL reverse current", "A"),
}
"""EL measurements offered as layers: key -> (EL_DTYPE field, label, unit; the intensity's unit is the file's)."""


class TaskCancelled(OperationStopped):
    """The operator cancelled the work (the scan history records a recorded operation as ``stopped``)."""


def overview_factor(shape: tuple[int, int]) -> int:
    """Chips per overview pixel along each axis for a chip box of ``shape``."""
    return max(1, math.ceil(max(shape) / OVERVIEW_SIZE))


def _power_text(power_w: float) -> str:
    return f"{power_w * 1e3:g} mW"


@dataclass(frozen=True)
class Layer:
    """One map a document can show.

    ``dataset`` is the HDF5 path of the values, ``field`` the ``CHIP_DTYPE`` field of a pass's records (None for
    plain arrays); ``downsample`` > 1 for the stored display maps that hold one value per block of chips.
    """

    key: str
    label: str
    unit: str
    dataset: str
    field: str | None = None
    categorical: bool = False
    downsample: int = 1
    pass_index: int | None = None
    categories: tuple[tuple[str, str], ...] = ()  # categorical layers: (name, colour #rrggbb) per value
    computed: bool = False  # held in memory (built from /el_reference), not read from a dataset

    @property
    def title(self) -> str:
        return f"{self.label} ({self.unit})" if self.unit else self.label


@dataclass
class ChipDetails:
    """Everything the chip dialog shows about one chip (read on a worker thread)."""

    col: int
    row: int
    x_um: float
    y_um: float
    usable: bool
    on_substrate: bool
    passes: list[dict[str, Any]]  # one dict per pass: power_w and the CHIP_DTYPE fields
    efficiency_ratio: float | None
    defect_class: int | None
    bin_index: int | None
    el_fail_probability: float | None
    structure_label: int | None
    spectrum_fit: dict[str, float] | None
    spectrum: tuple[np.ndarray, np.ndarray] | None  # wavelength nm, power W/nm
    spectrum_reason: str
    neighbours: np.ndarray  # (2n+1, 2n+1) float32 intensity at the highest power, row 0 at the bottom; NaN off-box
    neighbour_bins: np.ndarray | None  # (2n+1, 2n+1) bin indices, NO_BIN where no chip
    el_fail_predicted: bool | None = None  # the chip's bin predicts an EL failure (None: no classification)
    has_el_reference: bool = False  # the file has an EL reference (the chip may still not have been probed)
    el: dict[str, Any] | None = None  # the chip's EL record: forward_v, el_intensity, reverse_current_a, passed,
    # fail_mode (name), fail_code, el_intensity_unit, no_pl_signature; None when it was not probed


@dataclass
class DefectList:
    """The failing chips of a classified wafer, one entry per chip (columns as NumPy arrays)."""

    col: np.ndarray
    row: np.ndarray
    bin_index: np.ndarray
    defect_class: np.ndarray
    el_fail_probability: np.ndarray
    intensity_v: np.ndarray  # at the highest power
    efficiency_ratio: np.ndarray
    class_counts: np.ndarray  # chips per DefectClass value (256 entries, NO_CHIP included)

    def __len__(self) -> int:
        return int(self.col.size)


@dataclass
class _Classification:
    bin_table: BinTable
    class_to_bin: np.ndarray  # 256 entries: DefectClass value -> bin index (NO_BIN for no chip)
    counts: dict[int, int]  # bin code -> chips, as stored
    classifier: dict[str, Any]
    signature: str


@dataclass
class _Cache:
    overviews: dict[str, np.ndarray] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)


class ScanDocument:
    """One scan file opened for review. Construct on a worker thread (it reads the file's header).

    Attributes
    ----------
    path, recipe, layout, shape (rows, cols), status, message, powers_w, lines_complete, lines_planned,
    lot_id, wafer_id, operator, created_utc, has_results, has_classification, layers, factor (overview d).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._scan = ScanFile(self.path)
        try:
            self._read_header()
        except BaseException:
            self._scan.close()
            raise
        self._cache = _Cache()
        self.closed = threading.Event()  # set once the file is closed (a writer may then open it)
        self._el_records: np.ndarray | None = None
        self._computed: dict[str, np.ndarray] = {}

    def _read_header(self) -> None:
        scan = self._scan
        self.status: ScanStatus = scan.status
        self.message = scan.message
        self.powers_w = scan.powers_w
        self.lot_id, self.wafer_id, self.operator = scan.lot_id, scan.wafer_id, scan.operator
        self.created_utc = scan.created_utc
        self.lines_planned = len(scan.plan_lines)
        self.lines_complete = [scan.lines_complete(index) for index in range(scan.pass_count)]
        if not scan.recipe_toml:
            raise ValueError(f"{self.path}: the scan file holds no recipe, so its chip grid is unknown")
        self.recipe: Recipe = recipe_from_text(scan.recipe_toml, source=f"{self.path} (stored recipe)")
        self.layout: WaferLayout = self.recipe.layout()
        self.shape = (self.layout.row_count, self.layout.column_count)
        self.factor = overview_factor(self.shape)
        self.alignment = scan.alignment()
        file = scan.h5file
        self._results = file.get("results")
        self.has_results = self._results is not None
        self.analysis_settings: dict[str, Any] = {}  # the AnalysisSettings of the stored results (as JSON values)
        if self._results is not None:
            version = int(self._results.attrs.get("format_version", 0))
            if version > RESULTS_FORMAT_VERSION:
                raise ValueError(
                    f"{self.path}: results format {version} is newer than this software reads "
                    f"({RESULTS_FORMAT_VERSION}); update plmapper"
                )
            try:
                self.analysis_settings = dict(json.loads(_text(self._results.attrs.get("settings_json", "{}"))))
            except (ValueError, TypeError):
                self.analysis_settings = {}
        group = file.get("classification")
        self.classification: _Classification | None = None
        if group is not None:
            table = bin_table_from_json(group.attrs["bin_table_json"])
            class_to_bin = np.full(256, NO_BIN, dtype=np.uint8)
            for member in DefectClass:
                class_to_bin[member] = table.bins.index(table.bin_for(member))
            counts = {int(code): int(count) for code, count in json.loads(group.attrs.get("counts_json", "{}")).items()}
            self.classification = _Classification(
                table, class_to_bin, counts, json.loads(group.attrs.get("classifier_json", "{}")),
                str(group.attrs.get("signature", "")),
            )  # fmt: skip
        self.has_classification = self.classification is not None
        el_group = file.get("el_reference")
        self.has_el_reference = el_group is not None and "chips" in el_group
        self.el_intensity_unit = _text(el_group.attrs.get("el_intensity_unit", "")) if self.has_el_reference else ""
        self.layers = self._layers()

    # -- layers ------------------------------------------------------------------------------------------------------
    def _layers(self) -> list[Layer]:
        layers: list[Layer] = []
        if self.classification is not None:
            table = self.classification.bin_table
            bins = tuple((f"{entry.code} {entry.name}", entry.colour) for entry in table.bins)
            layers.append(Layer("bin", "Bin", "", "classification/defect_class", categorical=True, categories=bins))
            layers.append(Layer("el_fail", "EL fail probability", "", "classification/el_fail_probability"))
            layers.append(
                Layer("pl_prediction", "PL prediction (EL pass/fail)", "", "classification/defect_class",
                      categorical=True, categories=PREDICTION_CATEGORIES)
            )  # fmt: skip
        if self.has_el_reference:
            layers.append(
                Layer("el_result", "EL reference result", "", "", categorical=True, categories=EL_CATEGORIES,
                      computed=True)
            )  # fmt: skip
            for key, (_, label, unit) in EL_VALUE_FIELDS.items():
                shown_unit = self.el_intensity_unit if key == "el_intensity" else unit
                layers.append(Layer(key, label, shown_unit, "", computed=True))
        results = self._results
        if results is None:
            return layers
        passes = [index for index in range(len(self.powers_w)) if f"pass_{index:03d}/chips" in results]
        # the highest power first: it shows every chip that emits
        for name in ("intensity_v",):
            for index in reversed(passes):
                layers.append(self._pass_layer(index, name))
        if "efficiency_ratio" in results:
            layers.append(
                Layer("efficiency_ratio", "Efficiency ratio (low/high power)", "", "results/efficiency_ratio")
            )
        for name in ("neighbour_ratio", "efficiency_v_per_w", "peak_v", "integrated_v_um2", "street_v"):
            for index in reversed(passes):
                layers.append(self._pass_layer(index, name))
        for name, label in (("wavelength_map_nm", "Peak wavelength"), ("fwhm_map_nm", "FWHM")):
            if name in results:
                downsample = int(results[name].attrs.get("downsample", 1))
                layers.append(Layer(name, label, "nm", f"results/{name}", downsample=downsample))
        return layers

    def _pass_layer(self, index: int, name: str) -> Layer:
        label, unit = CHIP_FIELDS[name]
        return Layer(
            f"pass{index}:{name}",
            f"{label} at {_power_text(self.powers_w[index])}",
            unit,
            f"results/pass_{index:03d}/chips",
            field=name,
            pass_index=index,
        )

    def layer(self, key: str) -> Layer:
        for layer in self.layers:
            if layer.key == key:
                return layer
        raise KeyError(key)

    @property
    def bin_table(self) -> BinTable | None:
        return None if self.classification is None else self.classification.bin_table

    @property
    def default_layer(self) -> Layer | None:
        return self.layers[0] if self.layers else None

    # -- reading maps ------------------------------------------------------------------------------------------------
    def _dataset(self, layer: Layer) -> h5py.Dataset:
        return self._scan.h5file[layer.dataset]

    def _convert(self, layer: Layer, values: np.ndarray) -> np.ndarray:
        if layer.key == "bin":
            assert self.classification is not None
            return self.classification.class_to_bin[values]
        if layer.key == "pl_prediction":
            return self.prediction_lut()[values]
        return np.asarray(values, dtype=np.float32)

    def prediction_lut(self) -> np.ndarray:
        """256 entries: DefectClass value -> 1 where its bin predicts an EL failure, 0 where not, NO_BIN where the
        chip was not inspected (or there is none)."""
        assert self.classification is not None
        lut = self.classification.bin_table.el_fail_of(np.arange(256, dtype=np.uint8)).astype(np.uint8)
        lut[NO_CHIP] = lut[DefectClass.NOT_INSPECTED] = NO_BIN
        return lut

    def bin_fail_lut(self) -> np.ndarray:
        """256 entries: bin index -> 1 where the bin predicts an EL failure, 0 where not, NO_BIN otherwise (for
        comparing a bin map with the EL reference)."""
        assert self.classification is not None
        lut = np.full(256, NO_BIN, dtype=np.uint8)
        for index, entry in enumerate(self.classification.bin_table.bins):
            not_inspected = DefectClass.NOT_INSPECTED.key in entry.classes and len(entry.classes) == 1
            lut[index] = NO_BIN if not_inspected else int(entry.el_fail)
        return lut

    # -- the EL reference --------------------------------------------------------------------------------------------
    def el_records(self) -> np.ndarray:
        """The EL reference's records (EL_DTYPE fields), read once."""
        with self._cache.lock:
            if self._el_records is None:
                stored = self._scan.h5file["el_reference/chips"][()]
                records = np.zeros(stored.shape, dtype=EL_DTYPE)
                for name in EL_DTYPE.names:
                    records[name] = stored[name]
                self._el_records = records
            return self._el_records

    def _full(self, layer: Layer) -> np.ndarray:
        """The whole chip box of a computed layer (built once, kept while the document is open)."""
        with self._cache.lock:
            cached = self._computed.get(layer.key)
        if cached is not None:
            return cached
        records = self.el_records()
        cols, rows = records["col"], records["row"]
        inside = np.flatnonzero(self.layout.in_box(cols, rows))  # in record order: where a chip has two, the last
        if layer.key == "el_result":
            image = np.full(self.shape, NO_BIN, dtype=np.uint8)
            modes = records["fail_mode"][inside].astype(np.uint8)
            modes[modes == FAIL_MODE_UNSPECIFIED] = EL_UNSPECIFIED_CATEGORY
            modes[modes > EL_UNSPECIFIED_CATEGORY] = NO_BIN
            image[rows[inside], cols[inside]] = modes
        else:
            image = np.full(self.shape, np.nan, dtype=np.float32)
            image[rows[inside], cols[inside]] = records[EL_VALUE_FIELDS[layer.key][0]][inside]
        with self._cache.lock:
            self._computed[layer.key] = image
        return image

    def layer_factor(self, layer: Layer) -> int:
        """Chips per pixel of ``layer``'s overview image."""
        return layer.downsample if layer.downsample > 1 else self.factor

    def overview(self, layer: Layer, *, progress: Progress | None = None, cancel: threading.Event | None = None):
        """The overview image of ``layer`` (cached): ``[i, j]`` is chip ``(j·d + d//2, i·d + d//2)``, with ``d`` =
        :meth:`layer_factor`; bin indices (uint8) for the bin layer, float32 (NaN = no value) otherwise."""
        with self._cache.lock:
            cached = self._cache.overviews.get(layer.key)
        if cached is not None:
            return cached
        if layer.computed:
            d, offset = self.factor, self.factor // 2
            image = np.ascontiguousarray(self._full(layer)[offset::d, offset::d])
            with self._cache.lock:
                self._cache.overviews[layer.key] = image
            return image
        dataset = self._dataset(layer)
        if layer.downsample > 1:
            image = np.asarray(dataset[()], dtype=np.float32)
        else:
            d, offset = self.factor, self.factor // 2
            rows = dataset.shape[0]
            reader = dataset.fields(layer.field) if layer.field else dataset
            parts = []
            step = BAND_ROWS * d
            for first in range(offset, rows, step):
                if cancel is not None and cancel.is_set():
                    raise TaskCancelled
                parts.append(self._convert(layer, reader[first : min(first + step, rows) : d, offset::d]))
                if progress is not None:
                    progress(min(1.0, (first + step) / rows), f"reading {layer.label}")
            image = np.concatenate(parts) if parts else np.zeros((0, 0), dtype=np.float32)
        with self._cache.lock:
            self._cache.overviews[layer.key] = image
        return image

    def window(self, layer: Layer, rows: slice, cols: slice) -> np.ndarray:
        """Full-resolution values of ``layer`` in a rectangle of the chip box (the detail level)."""
        if layer.computed:
            return self._full(layer)[rows, cols].copy()
        dataset = self._dataset(layer)
        reader = dataset.fields(layer.field) if layer.field else dataset
        return self._convert(layer, reader[rows, cols])

    # -- statistics --------------------------------------------------------------------------------------------------
    def class_counts(self, *, cancel: threading.Event | None = None) -> np.ndarray:
        """Chips per DefectClass value over the whole wafer (256 entries)."""
        counts = np.zeros(256, dtype=np.int64)
        if self.classification is None:
            return counts
        dataset = self._scan.h5file["classification/defect_class"]
        for first in range(0, dataset.shape[0], BAND_ROWS * 16):
            if cancel is not None and cancel.is_set():
                raise TaskCancelled
            counts += np.bincount(dataset[first : first + BAND_ROWS * 16].ravel(), minlength=256)
        return counts

    def bin_summary(self, class_counts: np.ndarray) -> list[dict[str, Any]]:
        """One entry per bin: code, name, colour, fail, count, share of inspected chips."""
        if self.classification is None:
            return []
        table = self.classification.bin_table
        inspected = int(class_counts.sum() - class_counts[NO_CHIP] - class_counts[DefectClass.NOT_INSPECTED])
        out = []
        for index, entry in enumerate(table.bins):
            members = [DefectClass[key.upper()] for key in entry.classes]
            count = int(sum(int(class_counts[member]) for member in members))
            counted = sum(int(class_counts[m]) for m in members if m is not DefectClass.NOT_INSPECTED)
            out.append(
                {
                    "index": index,
                    "code": entry.code,
                    "name": entry.name,
                    "colour": entry.colour,
                    "fail": entry.fail,
                    "el_fail": entry.el_fail,
                    "count": count,
                    "share": counted / inspected if inspected else math.nan,
                    "inspected": DefectClass.NOT_INSPECTED not in members,
                }
            )
        return out

    @staticmethod
    def yield_fraction(bins: list[dict[str, Any]]) -> float:
        """Good chips over inspected chips (chips not inspected are in neither), as Classification does."""
        inspected = sum(entry["count"] for entry in bins if entry["inspected"])
        good = sum(entry["count"] for entry in bins if entry["inspected"] and not entry["fail"])
        return good / inspected if inspected else math.nan

    def defects(self, *, progress: Progress | None = None, cancel: threading.Event | None = None) -> DefectList:
        """Every chip whose bin is a reject, with its values (read band by band)."""
        assert self.classification is not None
        file, table = self._scan.h5file, self.classification.bin_table
        fail_class = table.fail_of(np.arange(256, dtype=np.uint8))
        classes_ds = file["classification/defect_class"]
        probability_ds = file["classification/el_fail_probability"]
        passes = [
            index for index in range(len(self.powers_w)) if self._results and f"pass_{index:03d}/chips" in self._results
        ]
        intensity_ds = file[f"results/pass_{passes[-1]:03d}/chips"].fields("intensity_v") if passes else None
        ratio_ds = (
            file["results/efficiency_ratio"]
            if self._results is not None and "efficiency_ratio" in self._results
            else None
        )
        columns: dict[str, list[np.ndarray]] = {name: [] for name in ("col", "row", "class", "p", "i", "r")}
        counts = np.zeros(256, dtype=np.int64)
        rows_total = classes_ds.shape[0]
        step = BAND_ROWS * 8
        for first in range(0, rows_total, step):
            if cancel is not None and cancel.is_set():
                raise TaskCancelled
            band = slice(first, min(first + step, rows_total))
            classes = classes_ds[band]
            counts += np.bincount(classes.ravel(), minlength=256)
            rows, cols = np.nonzero(fail_class[classes])
            if rows.size:
                columns["col"].append(cols.astype(np.int32))
                columns["row"].append((rows + first).astype(np.int32))
                columns["class"].append(classes[rows, cols])
                columns["p"].append(np.asarray(probability_ds[band][rows, cols], dtype=np.float32))
                nan = np.full(rows.size, np.nan, dtype=np.float32)
                columns["i"].append(np.asarray(intensity_ds[band][rows, cols], np.float32) if intensity_ds else nan)
                columns["r"].append(np.asarray(ratio_ds[band][rows, cols], np.float32) if ratio_ds else nan)
            if progress is not None:
                progress(band.stop / rows_total, "listing failing chips")

        def joined(name: str, dtype: Any) -> np.ndarray:
            return np.concatenate(columns[name]) if columns[name] else np.zeros(0, dtype=dtype)

        classes = joined("class", np.uint8)
        return DefectList(
            col=joined("col", np.int32),
            row=joined("row", np.int32),
            bin_index=self.classification.class_to_bin[classes],
            defect_class=classes,
            el_fail_probability=joined("p", np.float32),
            intensity_v=joined("i", np.float32),
            efficiency_ratio=joined("r", np.float32),
            class_counts=counts,
        )

    # -- one chip ----------------------------------------------------------------------------------------------------
    def chip_details(self, col: int, row: int) -> ChipDetails:
        """All stored values of chip ``(col, row)``, its spectrum if one was taken, and its neighbourhood."""
        layout, file = self.layout, self._scan.h5file
        x_um, y_um = (float(value) for value in layout.chip_center_um(col, row))
        passes: list[dict[str, Any]] = []
        n = NEIGHBOURHOOD
        rows_box, cols_box = self.shape
        r0, r1, c0, c1 = max(row - n, 0), min(row + n + 1, rows_box), max(col - n, 0), min(col + n + 1, cols_box)
        inner = (slice(r0 - (row - n), r1 - (row - n)), slice(c0 - (col - n), c1 - (col - n)))
        neighbours = np.full((2 * n + 1, 2 * n + 1), np.nan, dtype=np.float32)
        results = self._results
        if results is not None:
            for index, power in enumerate(self.powers_w):
                name = f"pass_{index:03d}/chips"
                if name not in results:
                    continue
                record = results[name][row, col]
                values: dict[str, Any] = {"power_w": float(power)}
                for field_name in CHIP_DTYPE.names:
                    values[field_name] = record[field_name].item()
                values["flag_names"] = _flag_names(int(record["flags"]))
                passes.append(values)
                neighbours[inner] = results[name].fields("intensity_v")[r0:r1, c0:c1]
        ratio = None
        if results is not None and "efficiency_ratio" in results:
            ratio = float(results["efficiency_ratio"][row, col])
        defect_class = bin_index = structure = None
        probability = None
        neighbour_bins = None
        if self.classification is not None:
            group = file["classification"]
            defect_class = int(group["defect_class"][row, col])
            bin_index = int(self.classification.class_to_bin[defect_class])
            probability = float(group["el_fail_probability"][row, col])
            structure = int(group["structure_label"][row, col])
            neighbour_bins = np.full((2 * n + 1, 2 * n + 1), NO_BIN, dtype=np.uint8)
            neighbour_bins[inner] = self.classification.class_to_bin[group["defect_class"][r0:r1, c0:c1]]
        fit, spectrum, reason = self._spectrum_of(col, row)
        in_box = bool(layout.in_box(col, row))
        predicted = None
        if defect_class is not None and defect_class not in (NO_CHIP, DefectClass.NOT_INSPECTED):
            predicted = bool(self.classification.bin_table.el_fail_of(np.array([defect_class], np.uint8))[0])
        return ChipDetails(
            col=col,
            row=row,
            x_um=x_um,
            y_um=y_um,
            usable=bool(layout.chip_usable(col, row)) if in_box else False,
            on_substrate=bool(layout.chip_on_substrate(col, row)) if in_box else False,
            passes=passes,
            efficiency_ratio=ratio,
            defect_class=defect_class,
            bin_index=bin_index,
            el_fail_probability=probability,
            structure_label=structure,
            spectrum_fit=fit,
            spectrum=spectrum,
            spectrum_reason=reason,
            neighbours=neighbours,
            neighbour_bins=neighbour_bins,
            el_fail_predicted=predicted,
            has_el_reference=self.has_el_reference,
            el=self._el_of(col, row) if self.has_el_reference else None,
        )

    def _el_of(self, col: int, row: int) -> dict[str, Any] | None:
        records = self.el_records()
        hits = np.flatnonzero((records["col"] == col) & (records["row"] == row))
        if not hits.size:
            return None
        record = records[hits[-1]]  # the last record counts, as in ElReference.fail_mode_map
        mode = int(record["fail_mode"])
        if mode == FAIL_MODE_UNSPECIFIED:
            mode_name, no_signature = "fail (mode not given)", False
        elif mode in ElFailMode._value2member_map_:
            member = ElFailMode(mode)
            mode_name, no_signature = member.name.lower().replace("_", " "), member in NO_PL_SIGNATURE
        else:
            mode_name, no_signature = f"code {mode}", False
        return {
            "forward_v": float(record["forward_v"]),
            "el_intensity": float(record["el_intensity"]),
            "reverse_current_a": float(record["reverse_current_a"]),
            "passed": bool(record["passed"]),
            "fail_mode": mode_name,
            "fail_code": bytes(record["fail_code"]).decode("utf-8", errors="replace"),
            "el_intensity_unit": self.el_intensity_unit,
            "no_pl_signature": no_signature,
            "records": int(hits.size),
        }

    def _spectrum_of(self, col: int, row: int):
        fit = None
        results = self._results
        if results is not None and "spectra" in results:
            table = results["spectra"][()]
            if table.dtype.names and "col" in table.dtype.names:
                hits = np.flatnonzero((table["col"] == col) & (table["row"] == row))
                if hits.size:
                    record = table[hits[-1]]
                    fit = {name: record[name].item() for name in table.dtype.names if name not in ("col", "row")}
        spectrum, reason = None, ""
        if self._scan.spectra_count():
            records = self._scan.h5file["spectra/records"][: self._scan.spectra_count()]
            hits = np.flatnonzero((records["col"] == col) & (records["row"] == row))
            if hits.size:
                taken = self._scan.spectra()[int(hits[-1])]
                spectrum = (taken["wavelength_nm"], taken["power_w_per_nm"])
                reason = taken["reason"]
        return fit, spectrum, reason

    # -- lifetime ----------------------------------------------------------------------------------------------------
    def describe(self) -> str:
        """One line for the window title and the status bar."""
        wafer = self.wafer_id or "?"
        lot = self.lot_id or "?"
        return f"{self.path.name}: wafer {wafer}, lot {lot}, {self.recipe.name}, {self.status.value}"

    @property
    def has_raw_lines(self) -> bool:
        """Whether the file holds complete raw lines to analyse (an imported map has results but none)."""
        return any(self.lines_complete)

    @property
    def resumable(self) -> bool:
        return self.status in (ScanStatus.ABORTED, ScanStatus.FAILED, ScanStatus.INTERRUPTED)

    def close(self) -> None:
        self._scan.close()
        self.closed.set()


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


def _flag_names(flags: int) -> str:
    names = [flag.name.lower().replace("_", " ") for flag in ChipFlag if flags & flag and flag.name]
    return ", ".join(names) if names else "none"
