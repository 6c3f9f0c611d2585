"""Defect classes and the bin table that turns them into the codes, names and colours a product uses.

The classifier decides one :class:`DefectClass` per chip: a fixed vocabulary that the rules, the learned model and
the spatial analysis share. What a *product* calls those classes is its :class:`BinTable`: each bin has a code (the
number written to KLARF and SEMI E142 maps), a name, a colour for maps, whether it counts as a reject, and whether
it predicts an EL failure. One bin may cover several classes (a product that does not sort bright chips puts
``bright`` into its good bin); every class belongs to exactly one bin. The table is stored with every result, so a
map read years later still says what its codes meant.

Tables are TOML files (``resources/bins/default.toml`` is the default)::

    name = "default micro-LED"

    [[bins]]
    code = 1
    name = "Good"
    classes = ["good"]
    colour = "#2e9e44"
    fail = false
    el_fail = false

Examples
--------
>>> table = load_bin_table("resources/bins/default.toml")
>>> table.bin_for(DefectClass.LEAKAGE).name
'Leakage'
>>> table.codes_of(np.array([DefectClass.GOOD, DefectClass.DEAD, NO_CHIP], dtype=np.uint8)).tolist()
[1, 3, 255]
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path

import numpy as np

from inspection.settings import from_mapping, load_toml, setting, to_mapping

__all__ = [
    "DEFAULT_BIN_TABLE",
    "NO_CHIP",
    "Bin",
    "BinTable",
    "DefectClass",
    "DefectGroup",
    "bin_table_from_json",
    "default_bin_table",
    "load_bin_table",
]

DEFAULT_BIN_TABLE = Path(__file__).resolve().parent.parent / "resources" / "bins" / "default.toml"

NO_CHIP = 255
"""Class (and bin code) of a place in the chip box with no chip: off the substrate. SEMI E142's null bin."""


class DefectClass(IntEnum):
    """What the classifier decides about a chip (stored per chip as uint8)."""

    GOOD = 0
    DEAD = 1  # no emission
    DIM = 2  # emits, too little
    BRIGHT = 3  # far brighter than its neighbourhood
    WAVELENGTH_SHIFT = 4  # peak wavelength off the wafer's smooth trend
    BROADENED = 5  # spectrum wider than the wafer's
    LEAKAGE = 6  # low/high excitation efficiency signature of a shunt
    MISSING = 7  # no chip where the grid has one
    PARTICLE = 8  # inside a compact blob of failing chips
    SCRATCH = 9  # on a line-shaped chain of failing chips
    EDGE_DAMAGE = 10  # failing chips concentrated at the wafer edge
    NOT_INSPECTED = 11  # outside the usable area (edge exclusion) or not measured

    @property
    def key(self) -> str:
        """The lower-case name bin tables use (``wavelength_shift``)."""
        return self.name.lower()

    @property
    def group(self) -> DefectGroup:
        return _GROUPS[self]


class DefectGroup(IntEnum):
    GOOD = 0
    OPTICAL = 1
    ELECTRICAL = 2
    APPEARANCE = 3
    NOT_INSPECTED = 4


_GROUPS = {
    DefectClass.GOOD: DefectGroup.GOOD,
    DefectClass.DEAD: DefectGroup.OPTICAL,
    DefectClass.DIM: DefectGroup.OPTICAL,
    DefectClass.BRIGHT: DefectGroup.OPTICAL,
    DefectClass.WAVELENGTH_SHIFT: DefectGroup.OPTICAL,
    DefectClass.BROADENED: DefectGroup.OPTICAL,
    DefectClass.LEAKAGE: DefectGroup.ELECTRICAL,
    DefectClass.MISSING: DefectGroup.APPEARANCE,
    DefectClass.PARTICLE: DefectGroup.APPEARANCE,
    DefectClass.SCRATCH: DefectGroup.APPEARANCE,
    DefectClass.EDGE_DAMAGE: DefectGroup.APPEARANCE,
    DefectClass.NOT_INSPECTED: DefectGroup.NOT_INSPECTED,
}

_COLOUR = re.compile(r"^#[0-9a-fA-F]{6}$")


@dataclass(frozen=True)
class Bin:
    """One bin of a product's table."""

    code: int = setting(minimum=0, maximum=254, doc="written to KLARF CLASSNUMBER and E142 BinCode (255 = no chip)")
    name: str = setting(doc="shown in legends and reports")
    classes: tuple[str, ...] = setting(doc="the DefectClass keys this bin covers, e.g. ['dim', 'dead']")
    fail: bool = setting(doc="the chip is a reject for this product")
    el_fail: bool = setting(doc="the bin predicts that the chip fails the electrical (EL) test")
    colour: str = setting("#808080", doc="map colour, #rrggbb")
    description: str = setting("", doc="one line for reports")

    def __post_init__(self) -> None:
        problems = []
        if not self.name.strip():
            problems.append(f"name: {self.name!r} must not be empty")
        if not _COLOUR.match(self.colour):
            problems.append(f"colour: {self.colour!r} is not #rrggbb")
        known = {member.key for member in DefectClass}
        for key in self.classes:
            if key not in known:
                problems.append(f"classes: {key!r} is not one of {', '.join(sorted(known))}")
        if not self.classes:
            problems.append("classes: a bin must cover at least one defect class")
        if problems:
            raise ValueError("\n".join(problems))

    @property
    def rgb(self) -> tuple[int, int, int]:
        return int(self.colour[1:3], 16), int(self.colour[3:5], 16), int(self.colour[5:7], 16)


@dataclass(frozen=True)
class BinTable:
    """A product's bins; every :class:`DefectClass` belongs to exactly one bin."""

    name: str = setting(doc="identifies the table in results and reports")
    bins: tuple[Bin, ...] = setting(doc="the bins, [[bins]] tables in TOML")

    def __post_init__(self) -> None:
        problems = []
        codes = [entry.code for entry in self.bins]
        for code in sorted({code for code in codes if codes.count(code) > 1}):
            problems.append(f"bins: code {code} is used by more than one bin")
        owner: dict[str, str] = {}
        for entry in self.bins:
            for key in entry.classes:
                if key in owner:
                    problems.append(f"bins: class {key!r} is in both {owner[key]!r} and {entry.name!r}")
                owner[key] = entry.name
        missing = [member.key for member in DefectClass if member.key not in owner]
        if missing:
            problems.append(f"bins: no bin covers the class(es) {', '.join(missing)}; every class needs a bin")
        if problems:
            raise ValueError("\n".join(problems))

    def bin_for(self, defect_class: DefectClass | int) -> Bin:
        """The bin that covers ``defect_class``."""
        key = DefectClass(defect_class).key
        return next(entry for entry in self.bins if key in entry.classes)

    def _lookup(self, attribute: str, null: int) -> np.ndarray:
        table = np.full(256, null, dtype=np.uint8)
        for member in DefectClass:
            table[member] = getattr(self.bin_for(member), attribute)
        return table

    def codes_of(self, classes: np.ndarray) -> np.ndarray:
        """Bin codes (uint8, :data:`NO_CHIP` where there is no chip) of a map of :class:`DefectClass` values."""
        return self._lookup("code", NO_CHIP)[np.asarray(classes, dtype=np.uint8)]

    def fail_of(self, classes: np.ndarray) -> np.ndarray:
        """True where the class counts as a reject (never where there is no chip)."""
        return self._lookup("fail", 0)[np.asarray(classes, dtype=np.uint8)].astype(bool)

    def el_fail_of(self, classes: np.ndarray) -> np.ndarray:
        """True where the class predicts an EL failure."""
        return self._lookup("el_fail", 0)[np.asarray(classes, dtype=np.uint8)].astype(bool)

    def to_json(self) -> str:
        """The table as JSON (stored with every result); :func:`bin_table_from_json` reads it back."""
        return json.dumps(to_mapping(self), ensure_ascii=False)


def load_bin_table(path: str | Path) -> BinTable:
    """Read and validate a bin table TOML file (every problem reported at once)."""
    return from_mapping(BinTable, load_toml(path), source=str(path))


def default_bin_table() -> BinTable:
    """The table in ``resources/bins/default.toml``."""
    return load_bin_table(DEFAULT_BIN_TABLE)


def bin_table_from_json(text: str) -> BinTable:
    """The table stored by :meth:`BinTable.to_json`."""
    return from_mapping(BinTable, json.loads(text), source="stored bin table")
