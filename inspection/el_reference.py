"""EL reference data: which chips of a wafer pass the electrical (EL) probe test, and why the others fail.

Wafers that are both PL-scanned and EL-probed train and evaluate the defect classifier. Their EL results come
from a prober's CSV export (:func:`load_el_csv` with an :class:`ElCsvMapping` saying which column holds what, in
which unit) or from probing chips on the station itself (:mod:`inspection.el_probe`). Either way they become an
:class:`ElReference` (one :data:`EL_DTYPE` record per probed chip), are checked against the scan's chip layout
(:func:`join_to_layout`) and stored in the scan file's ``/el_reference`` group (:func:`write_el_reference`,
:func:`read_el_reference`). The CSV format, the mapping file and the error messages are described in
docs/el-reference.md.

Fail modes
----------
:class:`ElFailMode` codes are the virtual wafer's ground-truth codes too (``drivers.virtual.world.ElResult`` is
this class). A chip fails with the first criterion it meets, in code order (:func:`decide_fail_modes`): missing,
open, leakage, dead, dim, forward voltage. Open contacts and a forward voltage out of range (series resistance)
have no PL signature at all (:data:`NO_PL_SIGNATURE`): they bound the accuracy any PL classifier can reach.

Layout in the scan file (format ``plmapper-el-reference``, version 1)
---------------------------------------------------------------------
::

    /el_reference                   attrs: format_name, format_version (int), written_utc, el_intensity_unit,
    │                                      fail_modes ("PASS=0;MISSING=1;..."), not_probed (255),
    │                                      fail_mode_unspecified (254), criteria_toml (station probes only)
    ├── chips                       [n] EL_DTYPE, one record per probed chip, in source order
    ├── forward_sweep_current_a     (n, points) f4, station probes only: the forward sweep's source readback
    ├── forward_sweep_voltage_v     (n, points) f4, station probes only: the voltage at each sweep point
    ├── presence_signal_v           [n] f4, station probes with the presence check: laser scatter above dark (V)
    ├── provenance/                 attrs (str): source ("csv file" or "station probe"), and for a CSV its file
    │                                      name, sha256, mapping_toml and import time; for a probe the station,
    │                                      instrument identities, settings and probe time
    └── metadata/                   attrs (str): what the source declared about itself (CSV ``# key = value``
                                           lines before the header: pitch, grid size, test conditions ...)

It is written under ``/el_reference_partial`` and moved into place at the end, so an interrupted write leaves the
previous reference (or none).

Examples
--------
>>> modes = decide_fail_modes(
...     present=np.array([True, True, False]),
...     forward_v=np.array([2.9, 10.0, 10.0]),
...     reverse_current_a=np.array([1e-12, 0.0, 0.0]),
...     el_intensity=np.array([0.2, 0.0, 0.0]),
...     criteria=ElTestCriteria(),
... )
>>> [ElFailMode(mode).name for mode in modes]
['PASS', 'OPEN', 'MISSING']
"""

from __future__ import annotations

import csv
import datetime as _dt
import hashlib
import itertools
import math
import re
import tomllib
import types
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from enum import IntEnum
from functools import cached_property
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import tomli_w

from inspection.recipe import _declared_problems, stored_recipe
from inspection.scanfile import ScanFile, ScanFileError
from inspection.settings import from_mapping, load_toml, setting, to_mapping
from inspection.wafer import WaferLayout

__all__ = [
    "CURRENT_UNITS_A",
    "DEFAULT_FAIL_CODES",
    "EL_DTYPE",
    "FAIL_MODE_UNSPECIFIED",
    "NOT_PROBED",
    "NO_PL_SIGNATURE",
    "VOLTAGE_UNITS_V",
    "ElCsvError",
    "ElCsvMapping",
    "ElFailMode",
    "ElGridMismatchError",
    "ElReference",
    "ElTestCriteria",
    "JoinReport",
    "decide_fail_modes",
    "import_el_csv",
    "join_to_layout",
    "load_el_csv",
    "load_el_mapping",
    "mapping_to_toml",
    "read_el_reference",
    "write_el_reference",
]

FORMAT_NAME = "plmapper-el-reference"
FORMAT_VERSION = 1
GROUP = "el_reference"
_PARTIAL_GROUP = "el_reference_partial"


class ElFailMode(IntEnum):
    """Outcome of a chip's EL test; a failing chip gets the first criterion it meets, in this order."""

    PASS = 0
    MISSING = 1  # no chip there (the probe and an optical check find nothing)
    OPEN = 2  # the forward voltage reaches the compliance limit: no current flows
    LEAKAGE = 3  # reverse current above the limit (a shunt or a short)
    DEAD = 4  # no EL light at the test current
    DIM = 5  # EL light below the limit
    FORWARD_VOLTAGE = 6  # forward voltage outside its window (series resistance, contact)


NO_PL_SIGNATURE: frozenset[ElFailMode] = frozenset({ElFailMode.OPEN, ElFailMode.FORWARD_VOLTAGE})
"""Fail modes that photoluminescence cannot see (the contact and series path are not in the PL circuit): they
bound the accuracy any PL classifier can reach, and an honest evaluation reports that bound."""

NOT_PROBED = 255
"""The fail-mode map's value for a chip without an EL result."""

FAIL_MODE_UNSPECIFIED = 254
"""The fail mode of a failing chip from a CSV that has a pass/fail column but no fail-code column."""

EL_DTYPE = np.dtype(
    [
        ("col", "<i4"),  # chip index (SEMI E142: col to +x from the lower-left of the recipe's chip box)
        ("row", "<i4"),
        ("forward_v", "<f4"),  # forward voltage at the test current (V); NaN where not measured
        ("el_intensity", "<f4"),  # EL light at the test current, in ElReference.el_intensity_unit; NaN: not measured
        ("reverse_current_a", "<f4"),  # current at the reverse test voltage (A, sign as measured); NaN: not measured
        ("passed", "u1"),  # 1 = passed the EL test
        ("fail_mode", "u1"),  # ElFailMode, or FAIL_MODE_UNSPECIFIED
        ("fail_code", "S16"),  # the prober's own code, as written in its file (station probes: the mode's name)
        ("source_line", "<i4"),  # line of the CSV file (1-based), or the chip's place in the probe order (1-based)
    ]
)
"""One probed chip."""

VOLTAGE_UNITS_V: Mapping[str, float] = types.MappingProxyType({"V": 1.0, "mV": 1e-3})
"""Forward-voltage units a CSV may use, with their size in volts."""

CURRENT_UNITS_A: Mapping[str, float] = types.MappingProxyType(
    {"A": 1.0, "mA": 1e-3, "uA": 1e-6, "µA": 1e-6, "nA": 1e-9, "pA": 1e-12}
)
"""Reverse-current units a CSV may use, with their size in amperes."""

DEFAULT_FAIL_CODES: Mapping[str, str] = types.MappingProxyType(
    {"1": "PASS", "99": "MISSING", "11": "OPEN", "21": "LEAKAGE", "31": "DEAD", "32": "DIM", "12": "FORWARD_VOLTAGE"}
)
"""Bin codes of the virtual prober (``drivers.virtual.world.export_el_csv``): 1 pass, 1x electrical contact and
forward voltage, 2x leakage, 3x light output, 99 no die."""

_MAX_LISTED_PROBLEMS = 30
_UNKNOWN_CODE = 255  # while parsing: a fail code the mapping does not know (always reported, never stored)


# ---------------------------------------------------------------------------------------------------------------------
# Test criteria
# ---------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ElTestCriteria:
    """How chips are EL-tested and what counts as a fail (TOML section ``[el_test]``).

    The field names are those of the virtual wafer profile's ``ElTestSpec``, which converts to this class. The
    light limits are fractions of a reference intensity: ``el_reference_intensity`` when given, otherwise the
    median EL intensity of the present chips tested together (the whole wafer for a prober export, the sample
    for a station probe, which should then be mostly ordinary chips).

    Examples
    --------
    >>> ElTestCriteria(vf_range_v=(3.8, 2.3))
    Traceback (most recent call last):
    ...
    ValueError: vf_range_v: [3.8, 2.3] must be [low, high] with low <= high
    """

    test_current_a: float = setting(5e-4, minimum=1e-9, maximum=1.0, unit="A", doc="forward test current")
    compliance_v: float = setting(10.0, minimum=0.1, maximum=200.0, unit="V", doc="voltage limit while forcing it")
    vf_range_v: tuple[float, ...] = setting((2.3, 3.8), doc="[low, high] acceptable forward voltage (V)")
    reverse_voltage_v: float = setting(-5.0, minimum=-200.0, maximum=0.0, unit="V", doc="reverse test voltage")
    max_reverse_current_a: float = setting(1e-8, minimum=1e-15, maximum=1.0, unit="A", doc="leakage limit (|Ir|)")
    min_el_fraction: float = setting(0.5, minimum=0.0, maximum=1.0, doc="dim below this × the reference EL")
    dead_el_fraction: float = setting(0.05, minimum=0.0, maximum=1.0, doc="dead below this × the reference EL")
    el_reference_intensity: float = setting(
        0.0, minimum=0.0, maximum=1e30, doc="EL the fractions refer to; 0: the median of the present chips tested"
    )

    def __post_init__(self) -> None:
        problems = _declared_problems(self)
        low_high = self.vf_range_v
        if len(low_high) != 2 or low_high[0] > low_high[1]:
            problems.append(f"vf_range_v: {list(low_high)!r} must be [low, high] with low <= high")
        if problems:
            raise ValueError("\n".join(problems))


_COMPLIANCE_FRACTION = 0.999
"""A forward voltage at or above this fraction of the compliance limit means no current could be forced: open."""


def decide_fail_modes(
    *,
    present: np.ndarray,
    forward_v: np.ndarray,
    reverse_current_a: np.ndarray,
    el_intensity: np.ndarray,
    criteria: ElTestCriteria,
) -> np.ndarray:
    """The :class:`ElFailMode` (uint8) of each chip from its EL measurements: the first failing criterion wins.

    Parameters
    ----------
    present
        False where no chip is there (missing: checked first).
    forward_v
        Voltage at ``criteria.test_current_a`` (V); the compliance voltage where no current could be forced.
    reverse_current_a
        Current at ``criteria.reverse_voltage_v`` (A, either sign).
    el_intensity
        EL light at the test current, in any unit proportional to the light (the limits are fractions of a
        reference in the same unit, see :class:`ElTestCriteria`).
    criteria
        The limits.

    Returns
    -------
    ndarray of uint8
        One code per chip; all arrays must have the same shape. Never modifies the inputs.
    """
    present = np.asarray(present, dtype=bool)
    forward = np.asarray(forward_v, dtype=np.float64)
    reverse = np.asarray(reverse_current_a, dtype=np.float64)
    light = np.asarray(el_intensity, dtype=np.float64)
    shapes = {array.shape for array in (present, forward, reverse, light)}
    if len(shapes) != 1:
        raise ValueError(f"present, forward_v, reverse_current_a and el_intensity differ in shape: {sorted(shapes)}")
    reference = criteria.el_reference_intensity
    if reference <= 0.0:
        reference = float(np.median(light[present])) if present.any() else 0.0
    low_v, high_v = criteria.vf_range_v
    result = np.full(light.shape, ElFailMode.PASS, dtype=np.uint8)
    checks = [
        (forward >= criteria.compliance_v * _COMPLIANCE_FRACTION, ElFailMode.OPEN),
        (np.abs(reverse) > criteria.max_reverse_current_a, ElFailMode.LEAKAGE),
        (light < criteria.dead_el_fraction * reference, ElFailMode.DEAD),
        (light < criteria.min_el_fraction * reference, ElFailMode.DIM),
        ((forward < low_v) | (forward > high_v), ElFailMode.FORWARD_VOLTAGE),
    ]
    decided = ~present
    result[decided] = ElFailMode.MISSING
    for failing, outcome in checks:
        new = failing & ~decided
        result[new] = outcome
        decided |= new
    return result


def criteria_to_toml(criteria: ElTestCriteria) -> str:
    """``criteria`` as an ``[el_test]`` TOML section that :func:`criteria_from_toml` reads back equal."""
    return tomli_w.dumps({"el_test": to_mapping(criteria)})


def criteria_from_toml(text: str, *, source: str = "") -> ElTestCriteria:
    """Read the ``[el_test]`` section of TOML text (every problem reported at once)."""
    data = tomllib.loads(text)
    return from_mapping(ElTestCriteria, data.get("el_test", {}), source=source, path="el_test.")


# ---------------------------------------------------------------------------------------------------------------------
# CSV mapping
# ---------------------------------------------------------------------------------------------------------------------


def _default_fail_codes() -> dict[str, str]:
    return dict(DEFAULT_FAIL_CODES)


@dataclass(frozen=True)
class ElCsvMapping:
    """Which column of a prober's CSV export holds what, in which unit (load with :func:`load_el_mapping`).

    Column names are matched case-insensitively, ignoring surrounding spaces. A numeric column set to ``""`` is
    not in the file (its values are NaN). At least one of ``pass_fail_column`` and ``fail_code_column`` must be
    given: without fail codes a failing chip's mode is :data:`FAIL_MODE_UNSPECIFIED`, without a pass/fail column
    a chip passes when its fail code maps to ``PASS``. The defaults read the CSV of
    ``drivers.virtual.world.export_el_csv``.
    """

    delimiter: str = setting(",", doc='one character between fields (use "\\t" for tabs)')
    metadata_prefix: str = setting(
        "#", doc="lines before the header starting with this are comments; '# key = value' ones are metadata"
    )
    col_column: str = setting("COL", doc="chip column index (SEMI E142: to +x from the lower-left)")
    row_column: str = setting("ROW", doc="chip row index (to +y)")
    col_offset: int = setting(0, minimum=-(2**30), maximum=2**30, doc="added to the file's column index")
    row_offset: int = setting(0, minimum=-(2**30), maximum=2**30, doc="added to the file's row index")
    forward_voltage_column: str = setting("VF", doc="forward voltage at the test current")
    forward_voltage_unit: str = setting("V", choices=tuple(VOLTAGE_UNITS_V))
    el_intensity_column: str = setting("EL", doc="EL light output at the test current")
    el_intensity_unit: str = setting("V (photodetector)", doc="free text, stored with the data (not converted)")
    reverse_current_column: str = setting("IR", doc="current at the reverse test voltage")
    reverse_current_unit: str = setting("A", choices=tuple(CURRENT_UNITS_A))
    missing_values: tuple[str, ...] = setting(("", "NA", "N/A", "NaN"), doc="cell texts meaning 'not measured'")
    pass_fail_column: str = setting("RESULT", doc="pass/fail verdict")
    pass_values: tuple[str, ...] = setting(("PASS",), doc="texts meaning pass (case-insensitive)")
    fail_values: tuple[str, ...] = setting(("FAIL",), doc="texts meaning fail (case-insensitive)")
    fail_code_column: str = setting("BIN", doc="the prober's fail code / bin")
    fail_codes: dict[str, str] = field(
        default_factory=_default_fail_codes,
        metadata={"doc": "prober code -> ElFailMode name (PASS, MISSING, OPEN, LEAKAGE, DEAD, DIM, FORWARD_VOLTAGE)"},
    )

    def __post_init__(self) -> None:
        problems = _declared_problems(self)
        if len(self.delimiter) != 1 or self.delimiter in '"\r\n':
            problems.append(f"delimiter: {self.delimiter!r} must be one character other than a quote or line end")
        for name in ("col_column", "row_column"):
            if not getattr(self, name).strip():
                problems.append(f"{name}: must name a column (the chip index is required)")
        if not self.pass_fail_column.strip() and not self.fail_code_column.strip():
            problems.append("pass_fail_column, fail_code_column: at least one must name a column")
        if self.pass_fail_column.strip():
            passes = {value.strip().casefold() for value in self.pass_values}
            fails = {value.strip().casefold() for value in self.fail_values}
            if not passes or not fails:
                problems.append("pass_values, fail_values: each needs at least one text")
            elif passes & fails:
                problems.append(f"pass_values, fail_values: {sorted(passes & fails)!r} cannot mean both")
        names = ", ".join(mode.name for mode in ElFailMode)
        codes: dict[str, ElFailMode] = {}
        for code, mode_name in dict(self.fail_codes).items():
            mode = ElFailMode.__members__.get(str(mode_name).strip().upper()) if isinstance(mode_name, str) else None
            if mode is None:
                problems.append(f"fail_codes.{code}: {mode_name!r} is not one of {names}")
            elif code.strip() in codes:
                problems.append(f"fail_codes.{code}: the code {code.strip()!r} is given twice")
            else:
                codes[code.strip()] = mode
        if self.fail_code_column.strip() and not codes:
            problems.append("fail_codes: empty, but fail_code_column is set (every code would be unknown)")
        if problems:
            raise ValueError("\n".join(problems))
        # frozen means frozen: the table cannot be changed behind the stored provenance's back
        object.__setattr__(self, "fail_codes", types.MappingProxyType(dict(self.fail_codes)))

    @cached_property
    def fail_mode_of_code(self) -> Mapping[str, ElFailMode]:
        """The fail-code table with the codes stripped and the modes as :class:`ElFailMode`."""
        return types.MappingProxyType(
            {code.strip(): ElFailMode[mode.strip().upper()] for code, mode in self.fail_codes.items()}
        )


def load_el_mapping(path: str | Path) -> ElCsvMapping:
    """Read a mapping TOML file (top-level keys as in :class:`ElCsvMapping`, a ``[fail_codes]`` table).

    Raises
    ------
    inspection.settings.SettingsError
        Every bad or unknown field at once, each naming the field, the value and what is allowed.
    """
    return from_mapping(ElCsvMapping, load_toml(path), source=str(path))


def mapping_to_toml(mapping: ElCsvMapping) -> str:
    """The mapping as TOML that :func:`load_el_mapping` reads back to an equal mapping."""
    data = to_mapping(mapping)
    data["fail_codes"] = dict(mapping.fail_codes)
    return tomli_w.dumps(data)


# ---------------------------------------------------------------------------------------------------------------------
# The reference itself
# ---------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ElReference:
    """EL results of a set of chips of one wafer.

    Attributes
    ----------
    records : ndarray of EL_DTYPE
        One per probed chip, in source order (duplicates are possible; :func:`join_to_layout` reports them).
    el_intensity_unit : str
        Unit of ``records["el_intensity"]`` (as the source states it).
    provenance : mapping of str to str
        Where the data came from (see the module docstring).
    metadata : mapping of str to str
        What the source declared about itself (CSV metadata lines).
    criteria : ElTestCriteria or None
        The criteria the fail modes were decided with, when plmapper decided them (station probes).
    forward_sweep_current_a, forward_sweep_voltage_v : ndarray or None
        (n, points) forward sweeps of a station probe.
    presence_signal_v : ndarray or None
        (n,) a station probe's presence-check signal above dark (V): how much laser light each chip scattered.
    """

    records: np.ndarray
    el_intensity_unit: str
    provenance: Mapping[str, str] = field(default_factory=dict)
    metadata: Mapping[str, str] = field(default_factory=dict)
    criteria: ElTestCriteria | None = None
    forward_sweep_current_a: np.ndarray | None = None
    forward_sweep_voltage_v: np.ndarray | None = None
    presence_signal_v: np.ndarray | None = None

    def __post_init__(self) -> None:
        records = np.asarray(self.records)
        if records.dtype.names is None or set(EL_DTYPE.names) - set(records.dtype.names):
            raise ValueError(f"records must have the fields of EL_DTYPE: {', '.join(EL_DTYPE.names)}")
        if records.dtype != EL_DTYPE:  # copied field by field: a structured cast would go by position
            by_name = np.zeros(records.shape, dtype=EL_DTYPE)
            for name in EL_DTYPE.names:
                by_name[name] = records[name]
            records = by_name
        object.__setattr__(self, "records", records.ravel())
        object.__setattr__(self, "provenance", types.MappingProxyType(dict(self.provenance)))
        object.__setattr__(self, "metadata", types.MappingProxyType(dict(self.metadata)))
        for name in ("forward_sweep_current_a", "forward_sweep_voltage_v"):
            sweep = getattr(self, name)
            if sweep is not None and (np.ndim(sweep) != 2 or len(sweep) != len(self.records)):
                raise ValueError(f"{name} must be (chips, points) with one row per record")
        if self.presence_signal_v is not None and np.shape(self.presence_signal_v) != (len(self.records),):
            raise ValueError("presence_signal_v must have one value per record")

    def __len__(self) -> int:
        return len(self.records)

    def counts(self) -> dict[str, int]:
        """Number of records per fail mode name (``UNSPECIFIED`` for :data:`FAIL_MODE_UNSPECIFIED`)."""
        codes, numbers = np.unique(self.records["fail_mode"], return_counts=True)
        names = {int(mode): mode.name for mode in ElFailMode} | {FAIL_MODE_UNSPECIFIED: "UNSPECIFIED"}
        return {names.get(int(code), str(int(code))): int(number) for code, number in zip(codes, numbers, strict=True)}

    def fail_mode_map(self, layout: WaferLayout) -> np.ndarray:
        """Fail mode per chip of ``layout``'s box as a uint8 array ``[row, col]`` (row 0 at the bottom).

        :data:`NOT_PROBED` (255) where a chip has no record; records outside the box are left out (see
        :func:`join_to_layout` for a report of them); where a chip has several records the last one counts.
        """
        result = np.full((layout.row_count, layout.column_count), NOT_PROBED, dtype=np.uint8)
        cols, rows = self.records["col"], self.records["row"]
        inside = np.flatnonzero(layout.in_box(cols, rows))
        if inside.size:
            flat = rows[inside].astype(np.int64) * layout.column_count + cols[inside]
            # the last record of each chip: unique over the reversed order finds the last occurrence first
            _, last = np.unique(flat[::-1], return_index=True)
            chosen = inside[::-1][last]
            result[rows[chosen], cols[chosen]] = self.records["fail_mode"][chosen]
        return result


# ---------------------------------------------------------------------------------------------------------------------
# CSV import
# ---------------------------------------------------------------------------------------------------------------------


class ElCsvError(ValueError):
    """A CSV that cannot be imported; ``problems`` has one line per problem (file, line, column and value)."""

    def __init__(self, path: Path | str, problems: list[str]) -> None:
        self.path = Path(path)
        self.problems = problems
        if len(problems) == 1:
            super().__init__(f"{self.path}: {problems[0]}")
            return
        shown = problems[:_MAX_LISTED_PROBLEMS]
        more = len(problems) - len(shown)
        lines = "\n".join(f"  - {problem}" for problem in shown)
        tail = f"\n  ... and {more} more" if more else ""
        super().__init__(f"{self.path}: {len(problems)} problems in the EL results file:\n{lines}{tail}")


def load_el_csv(path: str | Path, mapping: ElCsvMapping | None = None, *, chunk_lines: int = 1 << 16) -> ElReference:
    """Read a prober's EL results CSV into an :class:`ElReference` (values converted to V and A).

    The file is read once, ``chunk_lines`` lines at a time, so memory holds the records (36 bytes a chip) and one
    chunk of text, whatever the file's size (the demo 2" wafer's 200 k chips: 1 s).

    Parameters
    ----------
    path
        The CSV: optional comment/metadata lines (``# key = value``), one header line, one line per chip.
    mapping
        Which column holds what (default: :class:`ElCsvMapping`'s defaults, the virtual prober's format).
    chunk_lines
        Lines converted at a time.

    Raises
    ------
    ElCsvError
        Every problem at once, in file order (the first 30 listed): no file, an empty file, text that is not
        UTF-8, a missing column, a short line, an unparsable number or index, an unknown pass/fail text or fail
        code, a pass/fail verdict that contradicts the fail code, a chip index given twice. Each names the file,
        the line, the column and the value.
    """
    mapping = mapping or ElCsvMapping()
    path = Path(path)
    digest = hashlib.sha256()
    try:
        stream = path.open("rb")
    except FileNotFoundError:
        raise ElCsvError(path, ["no such file"]) from None
    except OSError as error:
        raise ElCsvError(path, [f"cannot read the file: {error.strerror or error}"]) from None
    with stream:
        lines = _decoded_lines(stream, digest)
        try:
            return _read_el_csv(path, lines, mapping, digest, chunk_lines)
        except _NotText as error:
            raise ElCsvError(path, [f"line {error.line}: not UTF-8 text (byte {error.byte:#04x})"]) from None
        except OSError as error:
            raise ElCsvError(path, [f"cannot read the file: {error.strerror or error}"]) from None


class _NotText(Exception):  # noqa: N818 - internal signal, turned into an ElCsvError
    def __init__(self, line: int, byte: int) -> None:
        self.line, self.byte = line, byte


def _decoded_lines(stream: Any, digest: Any) -> Iterator[str]:
    """The file's lines as text, hashing the bytes on the way; line by line, so a bad byte's line is exact."""
    for number, raw in enumerate(stream, 1):
        digest.update(raw)
        # a byte-order mark, as spreadsheet programs write, is not part of the first column's name
        text = raw[3:] if number == 1 and raw.startswith(b"\xef\xbb\xbf") else raw
        try:
            yield text.decode("utf-8")
        except UnicodeDecodeError as error:
            raise _NotText(number, text[error.start]) from None


def _read_el_csv(path: Path, lines: Iterator[str], mapping: ElCsvMapping, digest: Any, chunk_lines: int) -> ElReference:
    metadata, header_text, preamble = _read_preamble(lines, mapping.metadata_prefix)
    if header_text is None:
        raise ElCsvError(
            path, ["the file is empty" if not preamble.comments else "no header line: the file holds only comments"]
        )
    reader = csv.reader(itertools.chain([header_text], lines), delimiter=mapping.delimiter)
    header = [name.strip() for name in next(reader)]
    header_line = preamble.lines + 1
    columns = _locate_columns(path, header, header_line, mapping)
    needed = max(columns.values()) + 1
    prefix = mapping.metadata_prefix
    problems: list[str] = []
    unknown_codes: dict[str, list[int]] = {}  # code -> [first line, count], over the whole file
    parts: list[np.ndarray] = []
    index_bad: list[np.ndarray] = []
    raw: dict[str, list[str]] = {name: [] for name in columns}
    line_numbers: list[int] = []

    def convert() -> None:
        records, bad = _convert_chunk(
            raw,
            np.asarray(line_numbers, dtype=np.int64),
            header=header,
            columns=columns,
            mapping=mapping,
            problems=problems,
            unknown_codes=unknown_codes,
        )
        parts.append(records)
        index_bad.append(bad)
        for values in raw.values():
            values.clear()
        line_numbers.clear()

    short_lines = 0
    try:
        for fields in reader:
            line = preamble.lines + reader.line_num
            if not fields or (len(fields) == 1 and not fields[0].strip()):
                continue  # blank line
            if prefix and fields[0].lstrip().startswith(prefix):
                continue  # a comment between the records
            if len(fields) < needed:
                short_lines += 1
                if short_lines <= _MAX_LISTED_PROBLEMS:  # a wrong delimiter makes every line short: list a few
                    problems.append(
                        f"line {line}: {len(fields)} field(s), but the header (line {header_line}) has {len(header)}"
                    )
                continue
            line_numbers.append(line)
            for name, index in columns.items():
                raw[name].append(fields[index])
            if len(line_numbers) >= chunk_lines:
                convert()
    except csv.Error as error:  # e.g. a field beyond the csv module's size limit: not a text table
        problems.append(f"line {preamble.lines + reader.line_num}: {error}")
    if short_lines > _MAX_LISTED_PROBLEMS:
        problems.append(f"... {short_lines - _MAX_LISTED_PROBLEMS} more lines with too few fields")
    if line_numbers or not parts:
        convert()
    records = np.concatenate(parts)
    if not records.size and not problems:
        raise ElCsvError(path, [f"no chip lines after the header (line {header_line})"])
    known = ", ".join(repr(code) for code in mapping.fail_mode_of_code)
    code_column = header[columns["fail_code"]] if "fail_code" in columns else ""
    for code, (first, count) in list(unknown_codes.items())[:_MAX_LISTED_PROBLEMS]:
        more = f" (and {count - 1} more lines)" if count > 1 else ""
        problems.append(
            f"line {first}: column {code_column!r}: unknown fail code {code!r}{more}; the mapping's fail_codes know "
            f"{known}"
        )
    bad = np.concatenate(index_bad)
    problems += _duplicate_problems(records[~bad], header[columns["col"]], header[columns["row"]])
    if problems:
        raise ElCsvError(path, sorted(problems, key=_line_of_problem))
    provenance = {
        "source": "csv file",
        "source_file": path.name,
        "source_path": str(path.resolve()),
        "source_sha256": digest.hexdigest(),
        "mapping_toml": mapping_to_toml(mapping),
        "imported_utc": _utc_now(),
    }
    return ElReference(records, mapping.el_intensity_unit, provenance, metadata)


def _convert_chunk(
    raw: dict[str, list[str]],
    lines: np.ndarray,
    *,
    header: list[str],
    columns: dict[str, int],
    mapping: ElCsvMapping,
    problems: list[str],
    unknown_codes: dict[str, list[int]],
) -> tuple[np.ndarray, np.ndarray]:
    """Records of one chunk of lines, and which of them have a bad chip index (kept out of the duplicate check)."""
    header_of = {name: header[index] for name, index in columns.items()}
    records = np.zeros(lines.size, dtype=EL_DTYPE)
    records["source_line"] = lines
    index_bad = np.zeros(lines.size, dtype=bool)
    for name, offset in (("col", mapping.col_offset), ("row", mapping.row_offset)):
        values, bad = _parse_indices(raw[name], lines, header_of[name], problems)
        shifted = values + offset
        too_big = np.flatnonzero(((shifted < -(2**31)) | (shifted >= 2**31)) & ~bad)
        for index in too_big[:_MAX_LISTED_PROBLEMS]:
            problems.append(
                f"line {lines[index]}: column {header_of[name]!r}: {raw[name][index]!r} (+ offset {offset}) "
                "is outside the chip index range"
            )
        index_bad |= bad
        index_bad[too_big] = True
        records[name] = np.where(index_bad, 0, shifted)
    scales = {
        "forward_v": VOLTAGE_UNITS_V[mapping.forward_voltage_unit],
        "el_intensity": 1.0,
        "reverse_current_a": CURRENT_UNITS_A[mapping.reverse_current_unit],
    }
    missing = {value.strip().casefold() for value in mapping.missing_values}
    for name, scale in scales.items():
        if name in raw:
            records[name] = _parse_numbers(raw[name], lines, header_of[name], missing, problems) * scale
        else:
            records[name] = np.nan
    passed = _parse_verdicts(raw.get("passed"), lines, header_of.get("passed", ""), mapping, problems)
    modes = _parse_fail_codes(raw.get("fail_code"), lines, mapping, unknown_codes)
    if "fail_code" in raw:
        records["fail_code"] = [code.strip().encode("utf-8")[:16] for code in raw["fail_code"]]
    if passed is not None and modes is not None:
        # a line whose code is unknown is already reported as such
        contradicting = np.flatnonzero((passed != (modes == ElFailMode.PASS)) & (modes != _UNKNOWN_CODE))
        for index in contradicting[:_MAX_LISTED_PROBLEMS]:
            said = "pass" if passed[index] else "fail"
            problems.append(
                f"line {lines[index]}: column {header_of['passed']!r} says {said} "
                f"({raw['passed'][index].strip()!r}) but column {header_of['fail_code']!r} has code "
                f"{raw['fail_code'][index].strip()!r}, which means {ElFailMode(modes[index]).name}"
            )
        if contradicting.size > _MAX_LISTED_PROBLEMS:
            problems.append(
                f"... {contradicting.size - _MAX_LISTED_PROBLEMS} more lines where pass/fail and code disagree"
            )
    if modes is None:
        modes = np.where(passed, ElFailMode.PASS, FAIL_MODE_UNSPECIFIED).astype(np.uint8)
    if passed is None:
        passed = modes == ElFailMode.PASS
    records["passed"] = passed
    records["fail_mode"] = modes
    return records, index_bad


def _line_of_problem(problem: str) -> int:
    """Sort key: the line a problem names (problems are reported in file order; summaries last)."""
    match = re.match(r"line (\d+):", problem)
    return int(match.group(1)) if match else 2**62


@dataclass
class _Preamble:
    lines: int = 0  # lines before the header
    comments: int = 0  # of them, comment lines


def _read_preamble(lines: Iterator[str], prefix: str) -> tuple[dict[str, str], str | None, _Preamble]:
    """Metadata of the comment lines before the header, the header line (None: there is none) and what came
    before it."""
    metadata: dict[str, str] = {}
    preamble = _Preamble()
    for line in lines:
        stripped = line.strip()
        if stripped and (not prefix or not stripped.startswith(prefix)):
            return metadata, line, preamble
        preamble.lines += 1
        if not stripped:
            continue
        preamble.comments += 1
        body = stripped[len(prefix) :].strip()
        separators = [position for position in (body.find("="), body.find(":")) if position > 0]
        if separators:
            split = min(separators)
            key, value = body[:split].strip(), body[split + 1 :].strip()
            if key and " " not in key:
                metadata[key] = value
    return metadata, None, preamble


_FIELDS = {
    # record field -> mapping attribute naming its column
    "col": "col_column",
    "row": "row_column",
    "forward_v": "forward_voltage_column",
    "el_intensity": "el_intensity_column",
    "reverse_current_a": "reverse_current_column",
    "passed": "pass_fail_column",
    "fail_code": "fail_code_column",
}


def _locate_columns(path: Path, header: list[str], header_line: int, mapping: ElCsvMapping) -> dict[str, int]:
    """Index of each mapped column in the header; every missing or ambiguous one is reported at once."""
    positions: dict[str, list[int]] = {}
    for index, name in enumerate(header):
        positions.setdefault(name.casefold(), []).append(index)
    columns: dict[str, int] = {}
    problems: list[str] = []
    available = ", ".join(repr(name) for name in header)
    for field_name, attribute in _FIELDS.items():
        wanted = getattr(mapping, attribute).strip()
        if not wanted:
            continue
        found = positions.get(wanted.casefold(), [])
        if not found:
            problems.append(
                f"line {header_line}: column {wanted!r} ({attribute} of the mapping) is not in the header; "
                f"the header has {available}"
            )
        elif len(found) > 1:
            problems.append(f"line {header_line}: column {wanted!r} ({attribute}) appears {len(found)} times")
        else:
            columns[field_name] = found[0]
    if problems:
        raise ElCsvError(path, problems)
    return columns


def _parse_numbers(
    values: list[str], lines: np.ndarray, column: str, missing: set[str], problems: list[str]
) -> np.ndarray:
    """Floats of a column (NaN for the mapping's missing-value texts); each bad cell is one problem."""
    is_missing = np.array([value.strip().casefold() in missing for value in values], dtype=bool)
    cleaned = ["nan" if gap else value.strip() for value, gap in zip(values, is_missing, strict=True)]
    try:
        numbers = np.asarray(cleaned, dtype=np.str_).astype(np.float64)
    except ValueError:  # some cell is not a number: parse one by one to find every one of them
        numbers = np.full(len(values), np.nan)
        for index, text in enumerate(cleaned):
            try:
                numbers[index] = float(text)
            except ValueError:
                numbers[index] = np.inf  # marked bad below
    bad = np.flatnonzero(~np.isfinite(numbers) & ~is_missing)
    numbers[bad] = np.nan
    for index in bad[:_MAX_LISTED_PROBLEMS]:
        problems.append(f"line {lines[index]}: column {column!r}: {values[index]!r} is not a (finite) number")
    if bad.size > _MAX_LISTED_PROBLEMS:
        problems.append(f"... column {column!r}: {bad.size - _MAX_LISTED_PROBLEMS} more cells that are not numbers")
    return numbers


def _parse_indices(
    values: list[str], lines: np.ndarray, column: str, problems: list[str]
) -> tuple[np.ndarray, np.ndarray]:
    """Integer chip indices of a column (an integral float such as ``12.0`` is accepted), and where they are bad."""
    result = np.zeros(len(values), dtype=np.int64)
    bad = np.zeros(len(values), dtype=bool)
    for index, text in enumerate(values):
        stripped = text.strip()
        try:
            number = int(stripped)
        except ValueError:
            try:
                as_float = float(stripped)
            except ValueError:
                as_float = math.nan
            number = int(as_float) if math.isfinite(as_float) and as_float == int(as_float) else None
        if number is None or abs(number) >= 2**62:
            bad[index] = True
        else:
            result[index] = number
    indices = np.flatnonzero(bad)
    for index in indices[:_MAX_LISTED_PROBLEMS]:
        problems.append(f"line {lines[index]}: column {column!r}: {values[index]!r} is not a chip index (an integer)")
    if indices.size > _MAX_LISTED_PROBLEMS:
        problems.append(f"... column {column!r}: {indices.size - _MAX_LISTED_PROBLEMS} more cells that are not indices")
    return result, bad


def _parse_verdicts(
    values: list[str] | None, lines: np.ndarray, column: str, mapping: ElCsvMapping, problems: list[str]
) -> np.ndarray | None:
    if values is None:
        return None
    passes = {value.strip().casefold() for value in mapping.pass_values}
    fails = {value.strip().casefold() for value in mapping.fail_values}
    result = np.zeros(len(values), dtype=bool)
    bad = []
    for index, text in enumerate(values):
        word = text.strip().casefold()
        if word in passes:
            result[index] = True
        elif word not in fails:
            bad.append(index)
    allowed_pass = ", ".join(map(repr, mapping.pass_values))
    allowed_fail = ", ".join(map(repr, mapping.fail_values))
    for index in bad[:_MAX_LISTED_PROBLEMS]:
        problems.append(
            f"line {lines[index]}: column {column!r}: {values[index]!r} is neither a pass value ({allowed_pass}) "
            f"nor a fail value ({allowed_fail})"
        )
    if len(bad) > _MAX_LISTED_PROBLEMS:
        problems.append(f"... column {column!r}: {len(bad) - _MAX_LISTED_PROBLEMS} more unknown pass/fail texts")
    return result


def _parse_fail_codes(
    values: list[str] | None, lines: np.ndarray, mapping: ElCsvMapping, unknown: dict[str, list[int]]
) -> np.ndarray | None:
    """Fail modes of a column; unknown codes are gathered in ``unknown`` (code -> [first line, count])."""
    if values is None:
        return None
    table = mapping.fail_mode_of_code
    result = np.full(len(values), _UNKNOWN_CODE, dtype=np.uint8)
    for index, text in enumerate(values):
        mode = table.get(text.strip())
        if mode is None:
            seen = unknown.setdefault(text.strip(), [int(lines[index]), 0])
            seen[1] += 1
        else:
            result[index] = mode
    return result


def _duplicate_problems(records: np.ndarray, col_column: str, row_column: str) -> list[str]:
    """One problem per record whose chip index an earlier record already has, in file order."""
    if records.size < 2:
        return []
    keys = records["row"].astype(np.int64) * (2**32) + (records["col"].astype(np.int64) + 2**31)
    order = np.argsort(keys, kind="stable")  # stable: within a chip, file order
    sorted_keys = keys[order]
    starts = np.concatenate([[True], sorted_keys[1:] != sorted_keys[:-1]])
    first_of_group = order[np.maximum.accumulate(np.where(starts, np.arange(order.size), 0))]
    repeats = np.flatnonzero(~starts)
    repeats = repeats[np.argsort(order[repeats], kind="stable")]
    problems = []
    for position in repeats[:_MAX_LISTED_PROBLEMS]:
        again, first = records[order[position]], records[first_of_group[position]]
        problems.append(
            f"line {again['source_line']}: columns {col_column!r}, {row_column!r}: chip ({again['col']}, "
            f"{again['row']}) is given again (first on line {first['source_line']})"
        )
    if repeats.size > _MAX_LISTED_PROBLEMS:
        problems.append(f"... {repeats.size - _MAX_LISTED_PROBLEMS} more repeated chip indices")
    return problems


# ---------------------------------------------------------------------------------------------------------------------
# Joining to a layout
# ---------------------------------------------------------------------------------------------------------------------


class ElGridMismatchError(ValueError):
    """The EL reference was taken on another chip grid than the scan's recipe (the message says why)."""


@dataclass(frozen=True)
class JoinReport:
    """How an :class:`ElReference` fits a chip layout. Examples are ``(col, row, source_line)``.

    Nothing is dropped silently: records outside the recipe's chip box or off the substrate and repeated chips
    are counted here (and the first few listed); the fail-mode map leaves out only those outside the box.
    """

    record_count: int
    matched_count: int  # distinct chips in the box and on the substrate
    outside_usable_count: int  # of those, chips in the edge exclusion (kept: they are real chips)
    outside_box_count: int
    outside_box_examples: tuple[tuple[int, int, int], ...]
    off_substrate_count: int
    off_substrate_examples: tuple[tuple[int, int, int], ...]
    duplicate_count: int  # records of a chip that has an earlier record
    duplicate_examples: tuple[tuple[int, int, int], ...]
    fail_mode_counts: Mapping[str, int]

    def summary(self) -> str:
        """A few lines for people."""
        counts = ", ".join(f"{name} {number:,}" for name, number in self.fail_mode_counts.items())
        out = [
            f"{self.record_count:,} EL records, {self.matched_count:,} chips on the wafer matched "
            f"({self.outside_usable_count:,} of them in the edge exclusion)",
            f"  fail modes: {counts or 'none'}",
        ]
        for label, count, examples in (
            ("outside the recipe's chip box (left out of the map)", self.outside_box_count, self.outside_box_examples),
            ("in the box but not on the substrate", self.off_substrate_count, self.off_substrate_examples),
            ("repeated chips (the last record counts)", self.duplicate_count, self.duplicate_examples),
        ):
            if count:
                shown = ", ".join(f"({col}, {row}) line {line}" for col, row, line in examples)
                out.append(f"  {count:,} {label}: {shown}{' ...' if count > len(examples) else ''}")
        return "\n".join(out)


_EXAMPLES = 5
_DECLARED_PITCH_KEYS = {"pitch_x_um": "pitch_x_um", "pitch_y_um": "pitch_y_um"}
_DECLARED_SIZE_KEYS = {"column_count": "column_count", "row_count": "row_count"}


def join_to_layout(reference: ElReference, layout: WaferLayout, *, max_unmatched_fraction: float = 0.5) -> JoinReport:
    """Check ``reference`` against the scan's chip layout and report how its records fit.

    Parameters
    ----------
    reference
        The EL results.
    layout
        The recipe's substrate and chip grid.
    max_unmatched_fraction
        Largest share of records that may lie outside the chip box or off the substrate before the grids are
        taken to differ (a few stray records are reported; most of them off is another grid or index origin).

    Raises
    ------
    ElGridMismatchError
        The source declares a pitch or grid size (metadata ``pitch_x_um``, ``pitch_y_um``, ``column_count``,
        ``row_count``) other than the layout's, or more than ``max_unmatched_fraction`` of the records miss it.
    """
    problems = _declared_grid_problems(reference.metadata, layout)
    records = reference.records
    cols, rows = records["col"], records["row"]
    in_box = layout.in_box(cols, rows)
    on_substrate = layout.chip_on_substrate(cols, rows)
    usable = layout.chip_usable(cols, rows)
    outside_box = np.flatnonzero(~in_box)
    off_substrate = np.flatnonzero(in_box & ~on_substrate)
    keys = rows.astype(np.int64) * (2**32) + (cols.astype(np.int64) + 2**31)
    _, first = np.unique(keys, return_index=True)
    repeated_mask = np.ones(keys.size, dtype=bool)
    repeated_mask[first] = False
    repeated = np.flatnonzero(repeated_mask)
    distinct = ~repeated_mask
    unmatched = outside_box.size + off_substrate.size
    if records.size and unmatched > max_unmatched_fraction * records.size:
        examples = ", ".join(f"({cols[i]}, {rows[i]})" for i in np.concatenate([outside_box, off_substrate])[:5])
        problems.append(
            f"{unmatched:,} of {records.size:,} EL records ({unmatched / records.size:.0%}) are outside the recipe's "
            f"{layout.column_count} × {layout.row_count} chip box or off the substrate (e.g. {examples}): the EL "
            "data uses another chip grid or index origin (check the pitch and the mapping's col_offset/row_offset)"
        )
    if problems:
        raise ElGridMismatchError(
            "EL reference does not fit the scan's chip grid:\n" + "\n".join(f"  - {p}" for p in problems)
        )

    def examples(indices: np.ndarray) -> tuple[tuple[int, int, int], ...]:
        return tuple((int(cols[i]), int(rows[i]), int(records["source_line"][i])) for i in indices[:_EXAMPLES])

    return JoinReport(
        record_count=int(records.size),
        matched_count=int(np.count_nonzero(on_substrate & distinct)),
        outside_usable_count=int(np.count_nonzero(on_substrate & ~usable & distinct)),
        outside_box_count=int(outside_box.size),
        outside_box_examples=examples(outside_box),
        off_substrate_count=int(off_substrate.size),
        off_substrate_examples=examples(off_substrate),
        duplicate_count=int(repeated.size),
        duplicate_examples=examples(repeated),
        fail_mode_counts=types.MappingProxyType(reference.counts()),
    )


def _declared_grid_problems(metadata: Mapping[str, str], layout: WaferLayout) -> list[str]:
    problems = []
    grid = layout.grid
    for key, attribute in _DECLARED_PITCH_KEYS.items():
        if key not in metadata:
            continue
        expected = float(getattr(grid, attribute))
        try:
            declared = float(metadata[key])
        except ValueError:
            problems.append(f"the EL data declares {key} = {metadata[key]!r}, which is not a number")
            continue
        if not math.isclose(declared, expected, rel_tol=1e-6, abs_tol=1e-6):
            problems.append(f"the EL data declares {key} = {declared:g} µm but the recipe's grid has {expected:g} µm")
    for key, attribute in _DECLARED_SIZE_KEYS.items():
        if key not in metadata:
            continue
        expected_count = int(getattr(layout, attribute))
        try:
            declared_count = int(metadata[key])
        except ValueError:
            problems.append(f"the EL data declares {key} = {metadata[key]!r}, which is not an integer")
            continue
        if declared_count != expected_count:
            problems.append(
                f"the EL data declares {key} = {declared_count} but the recipe's chip box has {expected_count}"
            )
    return problems


# ---------------------------------------------------------------------------------------------------------------------
# Scan file storage
# ---------------------------------------------------------------------------------------------------------------------


_OPTIONAL_ARRAYS = ("forward_sweep_current_a", "forward_sweep_voltage_v", "presence_signal_v")


def write_el_reference(scan_path: str | Path, reference: ElReference) -> None:
    """Store ``reference`` as the scan file's ``/el_reference`` group, replacing an earlier one.

    Written under ``/el_reference_partial`` and moved into place at the end: an interruption leaves the previous
    reference (or none). The scan must not be being written (the file is opened with
    ``ScanFile(path, for_update=True)``).

    Raises
    ------
    FileNotFoundError, inspection.scanfile.ScanFileError
        No such file, not a scan file, or a scan still writes it.
    """
    with ScanFile(scan_path, for_update=True) as scan:
        file = scan.h5file
        if _PARTIAL_GROUP in file:
            del file[_PARTIAL_GROUP]  # left by an interrupted write: never half of it in the result
        group = file.create_group(_PARTIAL_GROUP)
        group.create_dataset("chips", data=reference.records)
        for name in _OPTIONAL_ARRAYS:
            values = getattr(reference, name)
            if values is not None:
                group.create_dataset(name, data=np.asarray(values, dtype=np.float32))
        attrs = {
            "format_name": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "written_utc": _utc_now(),
            "el_intensity_unit": reference.el_intensity_unit,
            "fail_modes": ";".join(f"{mode.name}={mode.value}" for mode in ElFailMode),
            "not_probed": NOT_PROBED,
            "fail_mode_unspecified": FAIL_MODE_UNSPECIFIED,
        }
        if reference.criteria is not None:
            attrs["criteria_toml"] = criteria_to_toml(reference.criteria)
        group.attrs.update(attrs)
        group.create_group("provenance").attrs.update(dict(reference.provenance))
        group.create_group("metadata").attrs.update(dict(reference.metadata))
        file.flush()
        if GROUP in file:
            del file[GROUP]
        file.move(_PARTIAL_GROUP, GROUP)
        file.flush()


def read_el_reference(scan_path: str | Path) -> ElReference | None:
    """The scan file's ``/el_reference``, or None when it has none.

    Raises
    ------
    FileNotFoundError, inspection.scanfile.ScanFileError
        No such file, not a scan file, or an ``/el_reference`` of an unknown format or version.
    """
    with ScanFile(scan_path) as scan:
        group = scan.h5file.get(GROUP)
        if group is None:
            return None
        where = f"{scan.path}:/{GROUP}"
        name = _text(group.attrs.get("format_name", ""))
        if name != FORMAT_NAME:
            raise ScanFileError(f"{where}: format_name {name!r} is not {FORMAT_NAME!r}")
        version = int(group.attrs.get("format_version", 0))
        if not 1 <= version <= FORMAT_VERSION:
            raise ScanFileError(f"{where}: format version {version}; this plmapper reads up to {FORMAT_VERSION}")
        if "chips" not in group:
            raise ScanFileError(f"{where}: the chips dataset is missing")
        stored = group["chips"][()]
        missing = [name for name in EL_DTYPE.names if name not in (stored.dtype.names or ())]
        if missing:
            raise ScanFileError(f"{where}/chips: fields missing: {', '.join(missing)}")
        criteria_text = _text(group.attrs.get("criteria_toml", ""))
        arrays = {name: group[name][()] if name in group else None for name in _OPTIONAL_ARRAYS}
        return ElReference(
            records=stored,
            el_intensity_unit=_text(group.attrs.get("el_intensity_unit", "")),
            provenance=_attrs_text(group.get("provenance")),
            metadata=_attrs_text(group.get("metadata")),
            criteria=criteria_from_toml(criteria_text, source=f"{where} criteria_toml") if criteria_text else None,
            **arrays,
        )


def import_el_csv(
    scan_path: str | Path,
    csv_path: str | Path,
    mapping: ElCsvMapping | str | Path | None = None,
    *,
    max_unmatched_fraction: float = 0.5,
) -> JoinReport:
    """Read a prober CSV, check it against the scan's recipe grid and store it in the scan file (one call for
    ``plmapper import el SCAN.h5 FILE.csv [--mapping M.toml]``).

    Returns
    -------
    JoinReport
        How the records fit the wafer (print :meth:`JoinReport.summary`).

    Raises
    ------
    ElCsvError, inspection.settings.SettingsError
        A bad CSV or mapping file (every problem listed).
    ElGridMismatchError
        The data does not fit the scan's chip grid; nothing is written.
    FileNotFoundError, inspection.scanfile.ScanFileError, ValueError
        The scan file is missing, not a scan file, has no recipe, or is still being written.
    """
    if mapping is not None and not isinstance(mapping, ElCsvMapping):
        mapping = load_el_mapping(mapping)
    layout = stored_recipe(scan_path).layout()
    reference = load_el_csv(csv_path, mapping)
    report = join_to_layout(reference, layout, max_unmatched_fraction=max_unmatched_fraction)
    write_el_reference(scan_path, reference)
    return report


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, np.ndarray) and value.shape == ():
        return _text(value[()])
    return str(value)


def _attrs_text(group: h5py.Group | None) -> dict[str, str]:
    return {} if group is None else {key: _text(value) for key, value in group.attrs.items()}


def _utc_now() -> str:
    return _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def records_from_arrays(**columns: Any) -> np.ndarray:
    """An :data:`EL_DTYPE` array from equally long columns; fields not given are zero (NaN for the measurements).

    Examples
    --------
    >>> records = records_from_arrays(col=[1, 2], row=[0, 0], fail_mode=[0, 3])
    >>> records["passed"].tolist(), bool(np.isnan(records["forward_v"]).all())
    ([1, 0], True)
    """
    lengths = {len(np.atleast_1d(values)) for values in columns.values()}
    if len(lengths) > 1:
        raise ValueError(f"columns differ in length: {sorted(lengths)}")
    unknown = set(columns) - set(EL_DTYPE.names)
    if unknown:
        raise ValueError(f"not EL_DTYPE fields: {', '.join(sorted(unknown))}")
    records = np.zeros(lengths.pop() if lengths else 0, dtype=EL_DTYPE)
    for name in ("forward_v", "el_intensity", "reverse_current_a"):
        records[name] = np.nan
    for name, values in columns.items():
        records[name] = values
    if "passed" not in columns and "fail_mode" in columns:
        records["passed"] = records["fail_mode"] == ElFailMode.PASS
    if "source_line" not in columns:
        records["source_line"] = np.arange(1, records.size + 1)
    return records
