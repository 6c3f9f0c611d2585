"""Two maps of the same chip grid compared chip by chip (no Qt: runs on worker threads).

What a difference means depends on the two maps (:class:`CompareKind`):

* **PL prediction vs EL reference** (the PL prediction layer, or the bin map, against the EL reference result):
  every chip both inspected and probed falls in one of :data:`AGREEMENT_CATEGORIES`: both pass, both fail, a
  **false alarm** (PL predicts a failure, EL passes), a **miss** (EL fails, PL predicts a pass), and, apart, a miss
  of a failure PL cannot see at all (an open contact or a forward voltage out of its window: no PL signature). The
  counts give the figures :func:`inspection.classify.evaluate_scan` reports (recall, false-alarm rate, agreement).
* **The same categorical map** of two files (or two classifications): same / different.
* **Two measurements**: A − B, per chip.

A :class:`Comparison` reads both sides as the review reads one map: an overview of one chip per ``d × d`` block and
full-resolution windows (:class:`app.gui.mapdata.ScanDocument`), so it scales to 8" wafers. Its
:meth:`~Comparison.counts` go over every chip of the box, in bands of rows.

Examples
--------
>>> predicted = np.array([0, 1, 1, 0, 0, NO_BIN], dtype=np.uint8)
>>> el = np.array([0, 4, 0, 5, 2, 0], dtype=np.uint8)  # pass, dead, pass, dim, open, pass
>>> agreement(predicted, el).tolist()
[0, 1, 2, 3, 4, 255]
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from enum import Enum
from typing import Any

import numpy as np

from app.gui.mapdata import BAND_ROWS, NO_BIN, Layer, Progress, ScanDocument, TaskCancelled
from inspection.el_reference import NO_PL_SIGNATURE

__all__ = [
    "AGREEMENT_CATEGORIES",
    "CompareKind",
    "Comparison",
    "ComparisonError",
    "Side",
    "agreement",
    "agreement_figures",
]

BOTH_PASS, BOTH_FAIL, FALSE_ALARM, MISS, MISS_NO_SIGNATURE = range(5)
AGREEMENT_CATEGORIES = (
    ("both pass", "#42594a"),  # muted: the disagreements are what the eye should find
    ("both fail", "#d93025"),
    ("false alarm: PL fail, EL pass", "#f5a623"),
    ("miss: EL fail, PL pass", "#c34dff"),
    ("miss, no PL signature (open, Vf)", "#4fc3f7"),
)
SAME_CATEGORIES = (("same", "#3c8d5a"), ("different", "#d93025"))

_NO_SIGNATURE = np.zeros(256, dtype=bool)
for _mode in NO_PL_SIGNATURE:
    _NO_SIGNATURE[int(_mode)] = True


class ComparisonError(ValueError):
    """The two maps cannot be compared (different grids, or kinds that have no difference)."""


class CompareKind(Enum):
    AGREEMENT = "PL prediction vs EL reference"
    SAME = "same or different"
    DIFFERENCE = "A − B"


@dataclass(frozen=True)
class Side:
    """One map: a layer of an open scan file."""

    document: ScanDocument
    layer: Layer

    @property
    def name(self) -> str:
        return f"{self.layer.title} of {self.document.path.name}"


def agreement(predicted_fail: np.ndarray, el_category: np.ndarray) -> np.ndarray:
    """:data:`AGREEMENT_CATEGORIES` per chip from the PL prediction (0 pass, 1 fail, NO_BIN not inspected) and the
    EL result category (0 pass, a fail mode, NO_BIN not probed); NO_BIN where either is missing."""
    predicted_fail = np.asarray(predicted_fail, dtype=np.uint8)
    el_category = np.asarray(el_category, dtype=np.uint8)
    el_fail = el_category != 0
    result = np.where(
        el_fail,
        np.where(predicted_fail == 1, BOTH_FAIL, np.where(_NO_SIGNATURE[el_category], MISS_NO_SIGNATURE, MISS)),
        np.where(predicted_fail == 1, FALSE_ALARM, BOTH_PASS),
    ).astype(np.uint8)
    result[(predicted_fail == NO_BIN) | (el_category == NO_BIN)] = NO_BIN
    return result


def agreement_figures(counts: list[int]) -> dict[str, float | int]:
    """Figures from the agreement counts (in :data:`AGREEMENT_CATEGORIES` order), as the evaluation defines them.

    Examples
    --------
    >>> figures = agreement_figures([90, 6, 1, 2, 1])
    >>> figures["recall"], figures["recall_detectable"], round(figures["false_alarm_rate"], 4)
    (0.6666666666666666, 0.75, 0.011)
    """
    both_pass, both_fail, false_alarm, miss, miss_no_signature = (int(value) for value in counts[:5])
    compared = both_pass + both_fail + false_alarm + miss + miss_no_signature
    el_fail = both_fail + miss + miss_no_signature

    def ratio(a: int, b: int) -> float:
        return a / b if b else math.nan

    return {
        "compared": compared,
        "el_fail": el_fail,
        "pl_fail": both_fail + false_alarm,
        "agreement": ratio(both_pass + both_fail, compared),
        "recall": ratio(both_fail, el_fail),
        "recall_detectable": ratio(both_fail, both_fail + miss),
        "false_alarm_rate": ratio(false_alarm, both_pass + false_alarm),
    }


def _is_prediction(layer: Layer) -> bool:
    return layer.key in ("pl_prediction", "bin")


class Comparison:
    """Side ``a`` against side ``b`` (see the module docstring). Construct anywhere; read on a worker thread.

    Raises
    ------
    ComparisonError
        The grids differ, a side is a reduced-resolution display map, or the kinds have no difference.
    """

    def __init__(self, a: Side, b: Side) -> None:
        if a.document.shape != b.document.shape or a.document.recipe.grid != b.document.recipe.grid:
            raise ComparisonError(
                f"{a.document.path.name} and {b.document.path.name} have different chip grids "
                f"({a.document.shape[1]} × {a.document.shape[0]} and {b.document.shape[1]} × {b.document.shape[0]} "
                "chips, or another pitch): only maps of the same grid can be compared chip by chip"
            )
        for side in (a, b):
            if side.layer.downsample > 1:
                raise ComparisonError(
                    f"{side.layer.title} is a display map at reduced resolution; compare per-chip maps"
                )
        self.a, self.b = a, b
        self.swapped = False
        if _is_prediction(a.layer) and b.layer.key == "el_result":
            self.kind = CompareKind.AGREEMENT
        elif _is_prediction(b.layer) and a.layer.key == "el_result":
            self.kind, self.swapped = CompareKind.AGREEMENT, True
        elif a.layer.categorical and b.layer.categorical and a.layer.key == b.layer.key:
            if a.layer.categories != b.layer.categories:
                raise ComparisonError(
                    f"the two {a.layer.label} maps use different categories (bin tables); they cannot be compared "
                    "chip by chip"
                )
            self.kind = CompareKind.SAME
        elif not a.layer.categorical and not b.layer.categorical:
            self.kind = CompareKind.DIFFERENCE
        else:
            raise ComparisonError(
                f"no difference between {a.layer.title} and {b.layer.title}: compare two measurements, the same "
                "map of two files, or a PL prediction (or bin) map with the EL reference result"
            )
        self.factor = a.document.factor

    # -- what it shows -----------------------------------------------------------------------------------------------
    @property
    def categorical(self) -> bool:
        return self.kind is not CompareKind.DIFFERENCE

    @property
    def categories(self) -> tuple[tuple[str, str], ...]:
        if self.kind is CompareKind.AGREEMENT:
            return AGREEMENT_CATEGORIES
        if self.kind is CompareKind.SAME:
            return SAME_CATEGORIES
        return ()

    @property
    def title(self) -> str:
        if self.kind is CompareKind.AGREEMENT:
            return "PL prediction vs EL reference"
        if self.kind is CompareKind.SAME:
            return f"{self.a.layer.label}: same or different"
        unit = f" ({self.a.layer.unit})" if self.a.layer.unit else ""
        return f"{self.a.layer.label} − {self.b.layer.label}{unit}"

    def combine(self, values_a: np.ndarray, values_b: np.ndarray) -> np.ndarray:
        """The comparison of two equally shaped pieces of the maps (as the documents convert them)."""
        if self.kind is CompareKind.AGREEMENT:
            prediction, el = (values_b, values_a) if self.swapped else (values_a, values_b)
            side = self.b if self.swapped else self.a
            if side.layer.key == "bin":
                prediction = side.document.bin_fail_lut()[prediction]
            return agreement(prediction, el)
        if self.kind is CompareKind.SAME:
            result = (values_a != values_b).astype(np.uint8)
            result[(values_a == NO_BIN) | (values_b == NO_BIN)] = NO_BIN
            return result
        return np.asarray(values_a, dtype=np.float32) - np.asarray(values_b, dtype=np.float32)

    # -- reading (worker threads) ------------------------------------------------------------------------------------
    def overview(self, *, progress: Progress | None = None, cancel: threading.Event | None = None) -> np.ndarray:
        image_a = self.a.document.overview(self.a.layer, progress=progress, cancel=cancel)
        image_b = self.b.document.overview(self.b.layer, progress=progress, cancel=cancel)
        return self.combine(image_a, image_b)

    def window(self, rows: slice, cols: slice) -> np.ndarray:
        return self.combine(
            self.a.document.window(self.a.layer, rows, cols), self.b.document.window(self.b.layer, rows, cols)
        )

    def counts(self, *, progress: Progress | None = None, cancel: threading.Event | None = None) -> dict[str, Any]:
        """Over every chip of the box: ``{"categories": [count per category]}`` for categorical comparisons, and
        ``{"chips", "mean", "std", "mean_abs"}`` of A − B for measurements."""
        rows_total, cols_total = self.a.document.shape
        step = BAND_ROWS * 8
        bins = np.zeros(256, dtype=np.int64)
        n, total, total_sq, total_abs = 0, 0.0, 0.0, 0.0
        for first in range(0, rows_total, step):
            if cancel is not None and cancel.is_set():
                raise TaskCancelled
            band = self.window(slice(first, min(first + step, rows_total)), slice(0, cols_total))
            if self.categorical:
                bins += np.bincount(band.ravel(), minlength=256)
            else:
                values = band[np.isfinite(band)].astype(np.float64)
                n += values.size
                total += float(values.sum())
                total_sq += float(np.square(values).sum())
                total_abs += float(np.abs(values).sum())
            if progress is not None:
                progress(min(1.0, (first + step) / rows_total), "comparing the maps")
        if self.categorical:
            return {"categories": [int(count) for count in bins[: len(self.categories)]]}
        mean = total / n if n else math.nan
        variance = max(total_sq / n - mean * mean, 0.0) if n else math.nan
        return {"chips": n, "mean": mean, "std": math.sqrt(variance), "mean_abs": total_abs / n if n else math.nan}
