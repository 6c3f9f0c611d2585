"""SEMI E142 substrate map (XML, ``urn:semi-org:xsd.E142-1.V1005.SubstrateMap``) of a classified wafer.

What the file says (docs/exports.md shows a complete example):

* ``Layouts``: the top-level ``WaferLayout`` (one device: the wafer's bounding square, ``DeviceSize`` = diameter)
  holding the ``Devices`` layout, the chip grid: ``Dimension`` = columns × rows of the chip box, ``DeviceSize`` =
  chip size, ``StepSize`` = chip pitch, ``LowerLeft`` = the lower-left corner of chip (0, 0)'s pitch cell measured
  from the lower-left corner of the wafer's bounding square. Units: mm (``DefaultUnits="mm"``).
* ``Substrates``: the wafer (``SubstrateId`` = wafer ID) with its ``LotId`` and ``GoodDevices``.
* ``SubstrateMaps``: ``OriginLocation="LowerLeft"``, ``AxisDirection="UpRight"`` (plmapper's chip index: col to
  the right, row up, (0, 0) the lower-left cell of the box), ``Orientation`` = where the primary flat or notch is,
  in degrees clockwise from the bottom (0 = flat/notch down, the default).
* ``BinCodeMap BinType="HexaDecimal" NullBin="FF" MapType="2DArray"``: two hex digits per chip; ``FF`` where the
  box holds no chip (off the substrate). ``BinDefinitions`` first (``BinCode``, ``BinCount``, ``BinQuality``,
  ``BinDescription``), then **one ``<BinCode>`` element per chip row, top row first** (row ``rows − 1`` down to row
  0: the map reads like the wafer seen from the front with the flat down, its first row the one farthest from the
  ``LowerLeft`` origin); within a row, column 0 (left) first. An XML comment before the rows says which device
  row (``Y``) the first and the last ``<BinCode>`` hold, for a reader who would otherwise take the first element
  for the origin row. (docs/exports.md: what public E142 readers do, and what is an assumption.)

``BinQuality`` is ``Fail`` for bins with ``fail = true``, ``Skip`` for a bin that only holds chips that were not
inspected (edge exclusion, not measured), ``Pass`` otherwise.

The rows are streamed band by band from the scan file: the writer's memory does not grow with the wafer (an 8"
map of 10,000 × 10,000 chips is about 200 MB of XML).

Examples
--------
``write_e142("scans/W01.h5", "exports/W01.e142.xml")``
"""

from __future__ import annotations

from pathlib import Path
from xml.sax.saxutils import escape, quoteattr

import numpy as np

from inspection.bins import NO_CHIP, Bin, BinTable, DefectClass
from inspection.export._source import WaferSource, atomic_output, grid_origin_um, mark_angle_deg, open_wafer

__all__ = ["E142_NAMESPACE", "NULL_BIN", "bin_quality", "e142_orientation_deg", "row_order_comment", "write_e142"]

E142_NAMESPACE = "urn:semi-org:xsd.E142-1.V1005.SubstrateMap"
NULL_BIN = f"{NO_CHIP:02X}"
"""The BinCode of a place in the chip box without a chip (plmapper's :data:`~inspection.bins.NO_CHIP`, 255)."""

WAFER_LAYOUT = "WaferLayout"
DEVICE_LAYOUT = "Devices"

_HEX = np.frombuffer("".join(f"{value:02X}" for value in range(256)).encode("ascii"), dtype=np.uint8).reshape(256, 2)


def _mm(value_um: float) -> str:
    """µm as a mm number with up to 6 decimals (nm resolution), trailing zeros dropped."""
    text = f"{value_um / 1000.0:.6f}".rstrip("0").rstrip(".")
    return "0" if text in ("", "-0") else text


def bin_quality(entry: Bin) -> str:
    """``Fail``, ``Skip`` (the bin holds only chips that were not inspected) or ``Pass``."""
    if entry.fail:
        return "Fail"
    if set(entry.classes) <= {DefectClass.NOT_INSPECTED.key}:
        return "Skip"
    return "Pass"


def e142_orientation_deg(source: WaferSource) -> int:
    """Where the primary flat or notch is: degrees clockwise from the bottom of the map (0 = down)."""
    return round((270.0 - mark_angle_deg(source.layout)) % 360.0) % 360


def _header(source: WaferSource, counts: dict[int, int]) -> str:
    layout, grid = source.layout, source.layout.grid
    substrate = layout.substrate
    radius_um = substrate.radius_um
    origin_x_um, origin_y_um = grid_origin_um(layout)
    lower_left_x_um = origin_x_um - grid.pitch_x_um / 2.0 + radius_um
    lower_left_y_um = origin_y_um - grid.pitch_y_um / 2.0 + radius_um
    wafer_id = quoteattr(source.wafer_id or source.path.stem)
    good = sum(counts[entry.code] for entry in source.bin_table.bins if bin_quality(entry) == "Pass")
    diameter = _mm(substrate.diameter_mm * 1000.0)
    lines = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        f'<MapData xmlns="{E142_NAMESPACE}">',
        "  <Layouts>",
        f'    <Layout LayoutId="{WAFER_LAYOUT}" DefaultUnits="mm" TopLevel="true">',
        '      <Dimension X="1" Y="1"/>',
        f'      <DeviceSize X="{diameter}" Y="{diameter}"/>',
        "      <ChildLayouts>",
        f'        <ChildLayout LayoutId="{DEVICE_LAYOUT}"/>',
        "      </ChildLayouts>",
        "    </Layout>",
        f'    <Layout LayoutId="{DEVICE_LAYOUT}" DefaultUnits="mm">',
        f'      <Dimension X="{layout.column_count}" Y="{layout.row_count}"/>',
        f'      <LowerLeft X="{_mm(lower_left_x_um)}" Y="{_mm(lower_left_y_um)}"/>',
        f'      <DeviceSize X="{_mm(grid.chip_width_um)}" Y="{_mm(grid.chip_height_um)}"/>',
        f'      <StepSize X="{_mm(grid.pitch_x_um)}" Y="{_mm(grid.pitch_y_um)}"/>',
        f"      <ProductId>{escape(source.recipe.name)}</ProductId>",
        "    </Layout>",
        "  </Layouts>",
        "  <Substrates>",
        f'    <Substrate SubstrateType="Wafer" SubstrateId={wafer_id}>',
        f"      <LotId>{escape(source.lot_id)}</LotId>",
        f"      <GoodDevices>{good}</GoodDevices>",
        "    </Substrate>",
        "  </Substrates>",
        "  <SubstrateMaps>",
        f'    <SubstrateMap SubstrateType="Wafer" SubstrateId={wafer_id} '
        f'LayoutSpecifier="{WAFER_LAYOUT}/{DEVICE_LAYOUT}" Orientation="{e142_orientation_deg(source)}" '
        'OriginLocation="LowerLeft" AxisDirection="UpRight">',
        '      <Overlay MapName="BinCodeMap" MapVersion="1">',
        f'        <BinCodeMap BinType="HexaDecimal" NullBin="{NULL_BIN}" MapType="2DArray">',
        "          <BinDefinitions>",
    ]
    for entry in sorted(source.bin_table.bins, key=lambda entry: entry.code):
        lines.append(
            f'            <BinDefinition BinCode="{entry.code:02X}" BinCount="{counts[entry.code]}" '
            f'BinQuality="{bin_quality(entry)}" BinDescription={quoteattr(entry.name)}/>'
        )
    lines.append("          </BinDefinitions>")
    lines.append(f"          {row_order_comment(layout.row_count)}")
    return "\n".join(lines) + "\n"


def row_order_comment(row_count: int) -> str:
    """The XML comment written before the ``<BinCode>`` rows: which device row (Y, from the lower-left origin)
    the first and the last element hold.

    >>> comment = row_order_comment(494)
    >>> comment.startswith("<!--") and "the first is Y=493 (top), the last Y=0 (the origin row" in comment
    True
    """
    return (
        f"<!-- BinCode rows top to bottom: the first is Y={row_count - 1} (top), the last Y=0 (the origin row, "
        "LowerLeft); X=0 (left) first in each row -->"
    )


_FOOTER = "        </BinCodeMap>\n      </Overlay>\n    </SubstrateMap>\n  </SubstrateMaps>\n</MapData>\n"


def write_e142(scan_path: str | Path, out_path: str | Path, *, bin_table: BinTable | None = None) -> Path:
    """Write a classified wafer's bin map as a SEMI E142 substrate map.

    Parameters
    ----------
    scan_path
        The classified scan file.
    out_path
        The XML file to write (replaced if it exists; written under a temporary name first).
    bin_table
        Re-bin the stored classes with this product table (default: the stored one).

    Returns
    -------
    Path
        ``out_path``.

    Raises
    ------
    ExportError
        The scan file cannot be exported (see :func:`~inspection.export.open_wafer`).
    """
    source = open_wafer(scan_path, bin_table=bin_table)
    counts = source.bin_counts()
    code_of = source.class_lookup("code")
    out_path = Path(out_path)
    with atomic_output(out_path) as partial, open(partial, "wb") as handle:
        handle.write(_header(source, counts).encode("utf-8"))
        with source.reader() as reader:
            for rows in source.bands(reverse=True):
                hex_rows = _HEX[code_of[reader.classes(rows)]]  # (band rows, cols, 2) ASCII digits
                for row in hex_rows[::-1]:
                    handle.write(b"          <BinCode>" + row.tobytes() + b"</BinCode>\n")
        handle.write(_FOOTER.encode("utf-8"))
    return out_path
