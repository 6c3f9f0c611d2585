"""How well PL predictions agree with the EL reference test: the figures we sell.

:func:`evaluate_predictions` compares, chip by chip, whether we predicted an EL failure with what the EL prober
found. Positive = fails EL. Besides the usual figures it separates the EL failures that have **no PL signature**
(open contacts, high series resistance: :data:`inspection.el_reference.NO_PL_SIGNATURE`): no PL tool can see them,
so the report states both the overall agreement and the agreement a perfect PL tool would reach (the ceiling),
and the recall over the failures PL can see.

Examples
--------
>>> predicted = np.array([True, False, False, True, False])
>>> modes = np.array([ElFailMode.DEAD, ElFailMode.PASS, ElFailMode.OPEN, ElFailMode.PASS, ElFailMode.PASS])
>>> report = evaluate_predictions(predicted, modes)
>>> report.true_positives, report.false_negatives, report.false_positives, report.true_negatives
(1, 1, 1, 2)
>>> report.recall_detectable, report.agreement_ceiling
(1.0, 0.8)
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from inspection.el_reference import NO_PL_SIGNATURE, ElFailMode

__all__ = ["Evaluation", "ModeFigures", "evaluate_predictions", "format_report", "merge_evaluations"]


@dataclass(frozen=True)
class ModeFigures:
    """How many chips of one EL fail mode there were and how many we predicted to fail."""

    chips: int
    predicted_fail: int
    pl_signature: bool

    @property
    def recall(self) -> float:
        return self.predicted_fail / self.chips if self.chips else math.nan


@dataclass(frozen=True)
class Evaluation:
    """Confusion matrix against EL and the figures derived from it (positive = fails EL)."""

    true_positives: int
    false_negatives: int
    false_positives: int
    true_negatives: int
    per_mode: dict[str, ModeFigures]

    @property
    def chips(self) -> int:
        return self.true_positives + self.false_negatives + self.false_positives + self.true_negatives

    @property
    def el_failures(self) -> int:
        return self.true_positives + self.false_negatives

    @property
    def accuracy(self) -> float:
        """Agreement with EL: chips where prediction and EL agree, over all chips."""
        return (self.true_positives + self.true_negatives) / self.chips if self.chips else math.nan

    @property
    def recall(self) -> float:
        """EL failures predicted to fail, over all EL failures."""
        return self.true_positives / self.el_failures if self.el_failures else math.nan

    @property
    def precision(self) -> float:
        predicted = self.true_positives + self.false_positives
        return self.true_positives / predicted if predicted else math.nan

    @property
    def false_alarm_rate(self) -> float:
        """Chips that pass EL but were predicted to fail, over all chips that pass EL."""
        good = self.false_positives + self.true_negatives
        return self.false_positives / good if good else math.nan

    @property
    def mcc(self) -> float:
        """Matthews correlation coefficient (0 = no better than chance, 1 = perfect)."""
        tp, fn, fp, tn = self.true_positives, self.false_negatives, self.false_positives, self.true_negatives
        denominator = math.sqrt(float(tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
        return (tp * tn - fp * fn) / denominator if denominator else math.nan

    @property
    def no_signature_failures(self) -> int:
        """EL failures of modes with no PL signature."""
        return sum(figures.chips for figures in self.per_mode.values() if not figures.pl_signature)

    @property
    def recall_detectable(self) -> float:
        """Recall over the EL failures that have a PL signature."""
        detectable = [figures for figures in self.per_mode.values() if figures.pl_signature]
        chips = sum(figures.chips for figures in detectable)
        return sum(figures.predicted_fail for figures in detectable) / chips if chips else math.nan

    @property
    def accuracy_detectable(self) -> float:
        """Agreement over the chips whose EL result PL can see (chips failing without a PL signature left out)."""
        missed_invisible = sum(
            figures.chips - figures.predicted_fail for figures in self.per_mode.values() if not figures.pl_signature
        )
        caught_invisible = self.no_signature_failures - missed_invisible
        chips = self.chips - self.no_signature_failures
        agree = self.true_positives - caught_invisible + self.true_negatives
        return agree / chips if chips else math.nan

    @property
    def agreement_ceiling(self) -> float:
        """The agreement a perfect PL tool would reach: every chip right except the failures PL cannot see."""
        return 1.0 - self.no_signature_failures / self.chips if self.chips else math.nan

    def summary(self) -> dict[str, Any]:
        """Every figure as plain numbers (for ``--json`` output and the model card)."""
        return {
            "chips": self.chips,
            "el_failures": self.el_failures,
            "confusion": {
                "true_positives": self.true_positives,
                "false_negatives": self.false_negatives,
                "false_positives": self.false_positives,
                "true_negatives": self.true_negatives,
            },
            "accuracy": self.accuracy,
            "recall": self.recall,
            "precision": self.precision,
            "false_alarm_rate": self.false_alarm_rate,
            "mcc": self.mcc,
            "recall_detectable": self.recall_detectable,
            "accuracy_detectable": self.accuracy_detectable,
            "agreement_ceiling": self.agreement_ceiling,
            "no_signature_failures": self.no_signature_failures,
            "per_mode": {name: asdict(figures) | {"recall": figures.recall} for name, figures in self.per_mode.items()},
        }


def evaluate_predictions(predicted_fail: np.ndarray, el_mode: np.ndarray) -> Evaluation:
    """Compare predicted EL failures with the EL reference, chip by chip.

    Parameters
    ----------
    predicted_fail
        Bool per chip: we predict the chip fails EL.
    el_mode
        :class:`~inspection.el_reference.ElFailMode` per chip from the EL reference (PASS = passed).
    """
    predicted_fail = np.asarray(predicted_fail, dtype=bool).ravel()
    el_mode = np.asarray(el_mode).ravel()
    if predicted_fail.shape != el_mode.shape:
        raise ValueError(f"{predicted_fail.size} predictions for {el_mode.size} EL results")
    unknown = set(np.unique(el_mode).tolist()) - {int(mode) for mode in ElFailMode}
    if unknown:
        raise ValueError(f"unknown EL fail mode code(s) {sorted(unknown)}")
    failed = el_mode != ElFailMode.PASS
    per_mode = {}
    for mode in ElFailMode:
        if mode is ElFailMode.PASS:
            continue
        chosen = el_mode == mode
        per_mode[mode.name] = ModeFigures(
            chips=int(chosen.sum()),
            predicted_fail=int(predicted_fail[chosen].sum()),
            pl_signature=mode not in NO_PL_SIGNATURE,
        )
    return Evaluation(
        true_positives=int((predicted_fail & failed).sum()),
        false_negatives=int((~predicted_fail & failed).sum()),
        false_positives=int((predicted_fail & ~failed).sum()),
        true_negatives=int((~predicted_fail & ~failed).sum()),
        per_mode=per_mode,
    )


def merge_evaluations(evaluations: list[Evaluation]) -> Evaluation:
    """The evaluation of several wafers together (counts add up)."""
    if not evaluations:
        return evaluate_predictions(np.zeros(0, dtype=bool), np.zeros(0, dtype=np.uint8))
    per_mode = {}
    for name in evaluations[0].per_mode:
        parts = [evaluation.per_mode[name] for evaluation in evaluations]
        per_mode[name] = ModeFigures(
            chips=sum(part.chips for part in parts),
            predicted_fail=sum(part.predicted_fail for part in parts),
            pl_signature=parts[0].pl_signature,
        )
    return Evaluation(
        true_positives=sum(e.true_positives for e in evaluations),
        false_negatives=sum(e.false_negatives for e in evaluations),
        false_positives=sum(e.false_positives for e in evaluations),
        true_negatives=sum(e.true_negatives for e in evaluations),
        per_mode=per_mode,
    )


def _percent(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{100 * value:.2f} %"


def format_report(wafers: list[tuple[str, Evaluation]], classifier: str) -> str:
    """A Markdown evaluation report: per-wafer figures, the total confusion matrix, per fail mode, and the
    failures with no PL signature (the ceiling), as ``plmapper evaluate --report`` writes it."""
    total = merge_evaluations([evaluation for _, evaluation in wafers])
    lines = [
        "# Evaluation against EL reference",
        "",
        f"Classifier: {classifier}. Chips compared: {total.chips:,} (inspected and probed) on {len(wafers)} wafer(s).",
        "Positive = fails the EL test.",
        "",
        "| wafer | chips | EL failures | agreement | recall (PL-visible) | false alarms | MCC |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, evaluation in [*wafers, ("**all**", total)]:
        lines.append(
            f"| {name} | {evaluation.chips:,} | {evaluation.el_failures:,} | {_percent(evaluation.accuracy)} | "
            f"{_percent(evaluation.recall_detectable)} | {_percent(evaluation.false_alarm_rate)} | "
            f"{evaluation.mcc:.4f} |"
        )
    lines += [
        "",
        "## Confusion matrix (all wafers)",
        "",
        "| | predicted fail | predicted pass |",
        "|---|---|---|",
        f"| EL fail | {total.true_positives:,} | {total.false_negatives:,} |",
        f"| EL pass | {total.false_positives:,} | {total.true_negatives:,} |",
        "",
        f"Accuracy {_percent(total.accuracy)}, recall {_percent(total.recall)}, precision "
        f"{_percent(total.precision)}, false-alarm rate {_percent(total.false_alarm_rate)}, MCC {total.mcc:.4f}.",
        "",
        "## Per EL fail mode",
        "",
        "| mode | chips | predicted fail | recall | PL signature |",
        "|---|---|---|---|---|",
    ]
    for name, figures in total.per_mode.items():
        lines.append(
            f"| {name} | {figures.chips:,} | {figures.predicted_fail:,} | {_percent(figures.recall)} | "
            f"{'yes' if figures.pl_signature else 'no'} |"
        )
    lines += [
        "",
        "## The ceiling",
        "",
        f"{total.no_signature_failures:,} EL failures have no PL signature (open contacts, series resistance): no PL",
        f"tool can see them. A perfect PL classifier would agree with EL on {_percent(total.agreement_ceiling)} of",
        f"these chips. Leaving those failures out, agreement is {_percent(total.accuracy_detectable)} and recall of",
        f"the PL-visible failures {_percent(total.recall_detectable)}.",
        "",
    ]
    return "\n".join(lines)
