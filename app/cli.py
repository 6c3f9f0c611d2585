"""The ``plmapper`` command line.

Every command has ``--help`` with an example; docs/cli.md describes them all with their ``--json`` output.

Examples
--------
Inspect one wafer, then a whole lot (scan, analysis and classification of each wafer, a summary at the end)::

    plmapper scan --recipe resources/recipes/demo-2in.toml --out scans/W01.h5 --lot L1 --wafer W01
    plmapper batch lots/L1.toml

Analyse and classify scan files; what the station did, by lot and by recipe::

    plmapper analyze scans/W01.h5 --json
    plmapper export scans/W01.h5 --out-dir exports --formats klarf,e142,pdf
    plmapper history list --lot L1
    plmapper history lot L1
    plmapper history trend --recipe "demo 2in" --by week

Check every instrument of the default (virtual) station, serve the virtual station for another program, export a
virtual wafer's ground truth::

    plmapper station check
    plmapper station serve --profile resources/profiles/demo-2in.toml --time-scale 1
    plmapper station truth --profile resources/profiles/demo-2in.toml --out truth.h5

Exit codes
----------
====  ===============================================================================================================
0     success
1     a check failed: station check; analyze found a chip grid that does not match its recipe (the other files
      are still analysed)
2     bad arguments or input files (one line on stderr; nothing is written)
3     an instrument error (the station cannot be reached, a fault stopped the work, alignment failed)
4     a scan (or a probe) stopped before the end; its file is resumable
5     batch: some wafers failed (the summary lists them; the others are done)
130   stopped by Ctrl-C (a scan file is resumable)
====  ===============================================================================================================

Progress bars (on stderr) appear on a terminal; in a log (not a terminal) long work prints a line now and then
instead, and with ``--json`` nothing but the JSON document goes to stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn

RESOURCES = Path(__file__).resolve().parent.parent / "resources"
DEFAULT_STATION = RESOURCES / "stations" / "virtual.toml"
DEFAULT_RECIPE = RESOURCES / "recipes" / "demo-2in.toml"

EXIT_OK, EXIT_CHECK_FAILED, EXIT_BAD_INPUT, EXIT_INSTRUMENT, EXIT_SCAN_INCOMPLETE = 0, 1, 2, 3, 4
EXIT_PARTIAL = 5  # batch: some wafers failed
EXIT_INTERRUPTED = 130  # the shell's convention for "stopped by Ctrl-C"


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as stop:  # --help (0) or a usage error (2, already reported in one line)
        return int(stop.code or 0)
    if not hasattr(args, "run"):
        parser.print_help()
        return EXIT_BAD_INPUT
    from inspection.memory import retain_freed_memory

    retain_freed_memory()  # line-sized arrays come and go all the time: keep their memory mapped
    try:
        return int(args.run(args))
    except KeyboardInterrupt:
        print("plmapper: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `plmapper history list | head`
        with contextlib.suppress(OSError):
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (so that the interpreter's final flush stays quiet)
        return EXIT_OK
    except Exception as error:
        code = _exit_code_of(error)
        if code is None:
            raise  # a bug: show the traceback
        print(f"plmapper: {error}", file=sys.stderr)
        return code


_REPORTED_ERRORS = (
    (EXIT_BAD_INPUT, "builtins", "FileExistsError"),
    (EXIT_BAD_INPUT, "builtins", "FileNotFoundError"),
    (EXIT_BAD_INPUT, "inspection.settings", "SettingsError"),  # recipes, station files, plans: every problem
    (EXIT_BAD_INPUT, "inspection.scanfile", "ScanFileError"),
    (EXIT_BAD_INPUT, "inspection.model", "ModelFileError"),
    (EXIT_BAD_INPUT, "inspection.history", "HistoryError"),
    (EXIT_BAD_INPUT, "inspection.access", "AccessError"),  # an audit log that cannot be written stops the work
    (EXIT_BAD_INPUT, "inspection.distributed", "ClusterEnvironmentError"),  # workers with other software
    (EXIT_BAD_INPUT, "inspection.distributed", "ClusterConnectionError"),  # --dask: no scheduler at the address
    (EXIT_INSTRUMENT, "drivers.errors", "InstrumentError"),
    (EXIT_INSTRUMENT, "inspection.alignment", "AlignmentError"),
)
"""Errors every command reports as one line, and their exit codes. The classes are looked up only in modules
already imported (an error cannot come from a module that was never loaded), so a light command such as
``plmapper history`` does not pay for importing scikit-learn just to name ``ModelFileError``."""


def _exit_code_of(error: Exception) -> int | None:
    for code, module, name in _REPORTED_ERRORS:
        kind = getattr(sys.modules.get(module), name, None)
        if kind is not None and isinstance(error, kind):
            return code
    return None


# ---------------------------------------------------------------------------------------------------------------------
# The parser
# ---------------------------------------------------------------------------------------------------------------------


class _Formatter(argparse.HelpFormatter):
    """Descriptions wrapped to the terminal, the examples of the epilog line by line as written."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if text.startswith("examples:"):
            return "\n".join(indent + line for line in text.splitlines())
        return super()._fill_text(text, width, indent)


class _Parser(argparse.ArgumentParser):
    """Reports a usage error in one line, naming the command and where its help is."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _command(
    group: argparse._SubParsersAction, name: str, *, help: str, description: str, examples: Sequence[str]
) -> argparse.ArgumentParser:
    """A subcommand whose help ends with its examples."""
    lines = "\n".join(f"  {example}" for example in examples)
    return group.add_parser(name, help=help, description=description, epilog=f"examples:\n{lines}")


def _group(parser: argparse.ArgumentParser, title: str) -> argparse._SubParsersAction:
    """Subcommands of ``parser``; the parser alone prints its help (exit 2)."""
    parser.set_defaults(run=lambda args: _group_help(parser))
    return parser.add_subparsers(title=title, parser_class=_Parser, metavar="COMMAND")


def _group_help(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return EXIT_BAD_INPUT


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="plmapper",
        description="Micro-LED wafer PL inspection station.",
        epilog="examples:\n  plmapper scan --out scans/W01.h5 --lot L1 --wafer W01\n  plmapper batch lots/L1.toml\n"
        "  plmapper history list --lot L1\nRun 'plmapper COMMAND --help' for each command's options and examples; "
        "exit codes are listed in docs/cli.md.",
    )
    parser.add_argument("--version", action="version", version=f"plmapper {_version()}")
    commands = parser.add_subparsers(title="commands", parser_class=_Parser, metavar="COMMAND")

    scan = _command(
        commands,
        "scan",
        help="inspect one wafer",
        description="Map one wafer: plan from the recipe, scan every pass, write one HDF5 scan file. Recorded in "
        "the scan history.",
        examples=[
            "plmapper scan --recipe resources/recipes/demo-2in.toml --out scans/W01.h5 --lot L1 --wafer W01",
            "plmapper scan --resume --out scans/W01.h5   (continue an interrupted scan)",
        ],
    )
    scan.add_argument("--recipe", type=Path, default=DEFAULT_RECIPE, help="recipe TOML (default: %(default)s)")
    scan.add_argument("--station", type=Path, default=DEFAULT_STATION, help="station file (default: %(default)s)")
    scan.add_argument("--out", type=Path, required=True, help="scan file to write (HDF5)")
    scan.add_argument("--lot", default="LOT", help="lot ID")
    scan.add_argument("--wafer", default="WAFER", help="wafer ID")
    scan.add_argument("--operator", default=os.environ.get("USER", "operator"), help="operator name")
    scan.add_argument("--resume", action="store_true", help="continue the interrupted scan in --out")
    _json_argument(scan)
    scan.set_defaults(run=_scan)

    batch = _command(
        commands,
        "batch",
        help="inspect a lot: scan, analyse and classify wafer after wafer",
        description="Run a lot from a plan file (TOML, or CSV with the columns slot,wafer[,lot,recipe,out]): one "
        "scan file per wafer, analysis and classification after each scan, a summary at the end. A wafer that "
        "fails is reported and the lot goes on. The plan is checked first (recipes, duplicate slots and IDs, "
        "existing files); --resume runs a stopped lot again (done wafers skipped, interrupted ones resumed). "
        "Plan format: docs/cli.md.",
        examples=[
            "plmapper batch lots/L1.toml",
            "plmapper batch lots/L1.csv --lot L1 --recipe resources/recipes/demo-2in.toml --out-dir scans/L1",
            "plmapper batch lots/L1.toml --resume --json > L1-summary.json",
            "plmapper batch lots/L1.toml --dask tcp://10.0.0.5:8786   (analyses on a cluster while the next wafer "
            "is scanned)",
        ],
    )
    batch.add_argument("plan", type=Path, help="the lot: TOML or CSV plan file")
    batch.add_argument("--lot", help="lot ID (overrides the plan's)")
    batch.add_argument("--recipe", type=Path, help="recipe for wafers that name none (overrides the plan's)")
    batch.add_argument(
        "--out-dir", type=Path, help="where scan files go (default: the plan's out_dir, else its folder)"
    )
    batch.add_argument("--operator", help="operator name (default: the plan's, else $USER)")
    batch.add_argument("--station", type=Path, help="station file (default: the plan's, else the virtual station)")
    batch.add_argument(
        "--resume", action="store_true", help="continue a stopped lot instead of refusing existing files"
    )
    batch.add_argument("--confirm-load", action="store_true", help="wait for Enter before each wafer (manual loading)")
    batch.add_argument("--memory-mb", type=float, default=512.0, help="analysis memory bound (default: %(default)s)")
    batch.add_argument("--no-classify", action="store_true", help="scan and analyse only")
    _cluster_arguments(batch, "analyse each wafer")
    _classifier_arguments(batch)
    batch.add_argument("--summary", type=Path, help="also write the summary as JSON to this file")
    _json_argument(batch)
    batch.set_defaults(run=_batch)

    analyze = _command(
        commands,
        "analyze",
        help="per-chip measurements (and classes) of scan files",
        description="Run the PL pipeline on scan files: per-chip intensity, efficiency ratio, neighbour ratio and "
        "spectrum fits, stored in each file's /results group (earlier results are replaced), then classify them "
        "(unless --no-classify).",
        examples=[
            "plmapper analyze scans/W01.h5 scans/W02.h5",
            "plmapper analyze scans/*.h5 --no-classify --json",
            "plmapper analyze scans/L1/*.h5 --workers 2   (a local Dask cluster of 2 worker processes)",
            "plmapper analyze scans/W8IN.h5 --dask tcp://10.0.0.5:8786 --tiles 0   (one wafer spread over a cluster)",
        ],
    )
    analyze.add_argument("files", type=Path, nargs="+", help="scan files (HDF5)")
    analyze.add_argument("--memory-mb", type=float, default=512.0, help="working memory bound (default: %(default)s)")
    analyze.add_argument("--no-classify", action="store_true", help="per-chip measurements only, no defect classes")
    _cluster_arguments(analyze, "analyse")
    _classifier_arguments(analyze)
    _json_argument(analyze)
    analyze.set_defaults(run=_analyze)

    classify = _command(
        commands,
        "classify",
        help="defect classes of analysed scan files",
        description="Classify every chip of analysed scan files (bins, EL failure probability, wafer-scale "
        "structures and signature) into each file's /classification group. Uses the station's deployed model, "
        "or the rule layer when none is deployed.",
        examples=["plmapper classify scans/W01.h5 --model models/blue.skops --bins resources/bins/default.toml"],
    )
    classify.add_argument("files", type=Path, nargs="+", help="analysed scan files (HDF5)")
    _classifier_arguments(classify)
    _json_argument(classify)
    classify.set_defaults(run=_classify)

    train = _command(
        commands,
        "train",
        help="train a defect model on EL reference wafers",
        description="Train a model that predicts EL pass/fail and fail mode from PL features, on analysed scan "
        "files that hold EL reference data (plmapper import el). About a quarter of the wafers are held back to "
        "calibrate the probabilities and choose the threshold for the target false-alarm rate.",
        examples=["plmapper train ref/W01.h5 ref/W02.h5 ref/W03.h5 ref/W04.h5 --out models/blue.skops"],
    )
    train.add_argument("files", type=Path, nargs="+", help="EL reference wafers: analysed scan files with EL data")
    train.add_argument("--out", type=Path, required=True, help="model file to write (.skops)")
    train.add_argument("--name", default="defect model", help="the model's name on its card")
    train.add_argument(
        "--target-false-alarm", type=float, default=0.001, help="largest share of EL-good chips predicted to fail"
    )
    train.set_defaults(run=_train)

    evaluate = _command(
        commands,
        "evaluate",
        help="agreement of PL predictions with EL reference wafers",
        description="Classify held-out EL reference wafers (without storing it) and compare with their EL results: "
        "confusion matrix, accuracy, recall, precision, false-alarm rate, MCC, per fail mode, and the failures "
        "that have no PL signature (the ceiling of any PL tool).",
        examples=["plmapper evaluate ref/W05.h5 ref/W06.h5 --model models/blue.skops --report eval.md"],
    )
    evaluate.add_argument("files", type=Path, nargs="+", help="EL reference wafers (analysed, with EL data)")
    _classifier_arguments(evaluate)
    evaluate.add_argument("--report", type=Path, help="write the Markdown report here")
    _json_argument(evaluate)
    evaluate.set_defaults(run=_evaluate)

    deploy = _command(
        commands,
        "deploy",
        help="make a model the station's current one",
        description="Check a model file and make it the station's current model ($PLMAPPER_HOME/models).",
        examples=["plmapper deploy models/blue.skops"],
    )
    deploy.add_argument("model", type=Path, help="model file (.skops) made by plmapper train")
    deploy.add_argument("--user", default=os.environ.get("USER", "engineer"), help="the engineer deploying it")
    deploy.set_defaults(run=_deploy)

    access = _group(
        _command(
            commands,
            "access",
            help="the engineer password and the audit log",
            description="Engineers (not operators) edit recipes, station files and bin tables and deploy models; "
            "the engineer role needs the station's password. Every engineer change and every scan start and stop "
            "is in an append-only, hash-chained audit log. Details: docs/access.md. Passwords are read from the "
            "terminal, or one per line from standard input when it is not a terminal (scripts).",
            examples=["plmapper access set-password --user ana", "plmapper access log --verify"],
        ),
        "access commands",
    )
    set_password = _command(
        access,
        "set-password",
        help="set or change the engineer password",
        description="Set the engineer password (at least 8 characters); changing it needs the current one.",
        examples=["plmapper access set-password --user ana"],
    )
    set_password.add_argument("--user", default=os.environ.get("USER", "engineer"), help="who sets it")
    set_password.set_defaults(run=_access_set_password)
    audit_log = _command(
        access,
        "log",
        help="show (and check) the audit log",
        description="Print the audit log's entries, newest last; --verify checks the hash chain (an edited, "
        "removed or torn line is reported, exit 1).",
        examples=["plmapper access log --verify", "plmapper access log --json"],
    )
    audit_log.add_argument("--verify", action="store_true", help="check that no line was changed or removed")
    _json_argument(audit_log)
    audit_log.set_defaults(run=_access_log)

    export = _command(
        commands,
        "export",
        help="defect maps for yield systems and people: KLARF, E142, CSV/Parquet, PNG, PDF",
        description="Write classified scan files as KLARF 1.2 (1.8 on request), a SEMI E142 substrate map, "
        "per-chip CSV/Parquet tables, PNG maps and a PDF report, into --out-dir (names start with each scan "
        "file's name); optionally a lot report over all of them. Formats: docs/exports.md.",
        examples=[
            "plmapper export scans/L1/*.h5 --out-dir exports/L1 --lot-report exports/L1/L1.pdf",
            "plmapper export scans/W01.h5 --out-dir exports --formats klarf,e142 --json",
        ],
    )
    export.add_argument("files", type=Path, nargs="+", help="classified scan files (HDF5)")
    export.add_argument("--out-dir", type=Path, required=True, help="where the files go (created if needed)")
    export.add_argument(
        "--formats",
        default="klarf,e142,csv,parquet,png,pdf",
        help="comma-separated: klarf, klarf18, e142, csv, parquet, png, pdf (default: %(default)s)",
    )
    export.add_argument("--bins", type=Path, help="re-bin with this bin table (default: the one stored)")
    export.add_argument("--lot-report", type=Path, help="also write a lot report (PDF, and a CSV next to it)")
    _json_argument(export)
    export.set_defaults(run=_export)

    importing = _group(
        _command(
            commands,
            "import",
            help="EL prober results or PL maps from other tools",
            description="Bring data made elsewhere into scan files: EL prober results (el), PL images (pl).",
            examples=[
                "plmapper import el scans/W01.h5 prober/W01.csv",
                "plmapper import pl imager/W07.toml --out W07.h5",
            ],
        ),
        "import commands",
    )
    import_el = _command(
        importing,
        "el",
        help="EL prober results (CSV) into a scan file",
        description="Read an EL prober's CSV, check it against the scan's chip grid and store it as the scan "
        "file's /el_reference (the EL reference for training and evaluation). Format: docs/el-reference.md.",
        examples=["plmapper import el scans/W01.h5 prober/W01.csv --mapping prober.toml"],
    )
    import_el.add_argument("scan", type=Path, help="scan file (HDF5)")
    import_el.add_argument("csv", type=Path, help="prober results (CSV)")
    import_el.add_argument("--mapping", type=Path, help="column mapping TOML (default: the virtual prober's columns)")
    import_el.set_defaults(run=_import_el)
    import_pl = _command(
        importing,
        "pl",
        help="PL maps from another tool (TIFF + sidecar) as a new scan file",
        description="Measure every chip of externally acquired PL images (one TIFF per excitation power, a TOML "
        "sidecar with pixel size, origin, grid and powers) into a new scan file with /results, ready to classify "
        "or train on. Format: docs/pl-import.md.",
        examples=["plmapper import pl imager/W07.toml --out scans/W07.h5"],
    )
    import_pl.add_argument("sidecar", type=Path, help="sidecar TOML naming the images")
    import_pl.add_argument("--out", type=Path, required=True, help="scan file to create (HDF5)")
    import_pl.add_argument("--memory-mb", type=float, default=512.0, help="working memory bound (default: %(default)s)")
    import_pl.set_defaults(run=_import_pl)

    probe = _command(
        commands,
        "probe",
        help="measure EL reference chips on the station",
        description="Probe a sample of chips of the scanned wafer (still on the chuck) with the SMU: touch down, "
        "forward sweep, reverse leakage, EL light; stored as the scan file's /el_reference.",
        examples=["plmapper probe scans/W01.h5 --config resources/probe/virtual.toml --chips 40"],
    )
    probe.add_argument("scan", type=Path, help="scan file of the wafer on the chuck")
    probe.add_argument("--config", type=Path, default=RESOURCES / "probe" / "virtual.toml", help="probe TOML")
    probe.add_argument("--station", type=Path, default=DEFAULT_STATION, help="station file (default: %(default)s)")
    probe.add_argument("--chips", type=int, default=20, help="random usable chips to probe (default: %(default)s)")
    probe.add_argument("--seed", type=int, default=0, help="seed of the chip sample")
    probe.set_defaults(run=_probe)

    history = _group(
        _command(
            commands,
            "history",
            help="what the station scanned: list, search, lots, yield trends",
            description="Query the scan history ($PLMAPPER_HOME/history.sqlite, or --db): every scan, analysis, "
            "classification and import recorded by plmapper. Files moved or deleted since are listed as missing. "
            "Schema: docs/history.md.",
            examples=["plmapper history list --lot L1", "plmapper history lot L1 --json"],
        ),
        "history commands",
    )
    listing = _command(
        history,
        "list",
        help="scans, newest first, by lot, wafer, recipe, status or date",
        description="List recorded scans, newest first. --lot, --wafer and --recipe match exactly or as shell "
        "patterns (L7*, W0?); --since and --until take 2026-11-22, 2026-11-22T03:15 (UTC) or 7d, 12h, 2w.",
        examples=["plmapper history list --lot 'L7*' --since 7d", "plmapper history list --status failed --json"],
    )
    listing.add_argument("--lot", help="lot ID or pattern")
    listing.add_argument("--wafer", help="wafer ID or pattern")
    listing.add_argument("--recipe", help="recipe name or pattern")
    listing.add_argument(
        "--status", choices=("running", "complete", "aborted", "failed", "interrupted"), help="scan status"
    )
    listing.add_argument("--since", help="started at or after (date, time or 7d)")
    listing.add_argument("--until", help="started at or before (a bare date includes that day)")
    _limit_argument(listing)
    _history_arguments(listing)
    listing.set_defaults(run=_history_list)
    search = _command(
        history,
        "search",
        help="scans whose path, lot, wafer, recipe, operator or message contains a text",
        description="Find recorded scans by a piece of text anywhere in their path, lot, wafer, recipe, operator "
        "or status message (case-insensitive).",
        examples=["plmapper history search W07", "plmapper history search interlock --json"],
    )
    search.add_argument("text", help="text to look for")
    _limit_argument(search)
    _history_arguments(search)
    search.set_defaults(run=_history_search)
    show = _command(
        history,
        "show",
        help="one scan: what was done to it, its bins",
        description="One recorded scan (by its history ID or its file) with every operation on it (scan, "
        "resume, analysis, classification, imports) and its current bin counts.",
        examples=["plmapper history show 42", "plmapper history show scans/W01.h5 --json"],
    )
    show.add_argument("scan", help="history ID or scan file path")
    _history_arguments(show)
    show.set_defaults(run=_history_show)
    lot = _command(
        history,
        "lot",
        help="a lot's summary (wafers, yields, bins), or the list of lots",
        description="With a lot ID: the latest scan of each of its wafers, mean/min/max yield and the bins added "
        "up over the lot. Without: the lots, most recent first.",
        examples=["plmapper history lot L1", "plmapper history lot --json"],
    )
    lot.add_argument("lot", nargs="?", help="lot ID (none: list the lots)")
    _limit_argument(lot)
    _history_arguments(lot)
    lot.set_defaults(run=_history_lot)
    trend = _command(
        history,
        "trend",
        help="yield per recipe over time",
        description="Mean, lowest and highest wafer yield per recipe, by day, week, month, lot, or wafer by wafer.",
        examples=["plmapper history trend --recipe 'demo 2in' --by week", "plmapper history trend --by lot --json"],
    )
    trend.add_argument("--recipe", help="recipe name or pattern (default: every recipe)")
    trend.add_argument("--by", choices=("day", "week", "month", "lot", "wafer"), default="day", help="grouping")
    trend.add_argument("--lot", help="only this lot (or pattern)")
    trend.add_argument("--since", help="started at or after (date, time or 7d)")
    trend.add_argument("--until", help="started at or before")
    _history_arguments(trend)
    trend.set_defaults(run=_history_trend)

    gui = _command(
        commands,
        "gui",
        help="the operator window",
        description="Open the station application: station control, scans with a live map, and review of scan "
        "files (maps by bin or measurement, chip details, defect table).",
        examples=["plmapper gui scans/W01.h5 --station resources/stations/virtual.toml"],
    )
    gui.add_argument("file", nargs="?", type=Path, help="scan file to open for review")
    gui.add_argument("--station", type=Path, help="station file (default: the last one used, else the virtual one)")
    gui.set_defaults(run=_gui)

    station = _group(
        _command(
            commands,
            "station",
            help="check, serve or inspect the station",
            description="The station itself: self-check of every instrument, the virtual station, virtual truth.",
            examples=["plmapper station check", "plmapper station serve --profile resources/profiles/demo-2in.toml"],
        ),
        "station commands",
    )
    check = _command(
        station,
        "check",
        help="exercise every instrument and report",
        description="Exercise every instrument of the station through its interface and report what it measured.",
        examples=["plmapper station check --station resources/stations/virtual.toml", "plmapper station check --json"],
    )
    check.add_argument("--station", type=Path, default=DEFAULT_STATION, help="station file (default: %(default)s)")
    _json_argument(check)
    check.set_defaults(run=_station_check)
    serve = _command(
        station,
        "serve",
        help="run the virtual station",
        description="Serve the virtual station on loopback ports until standard input closes or Ctrl-C.",
        examples=["plmapper station serve --profile resources/profiles/demo-2in.toml --time-scale 1"],
    )
    serve.add_argument("--profile", type=Path, required=True, help="wafer profile TOML")
    serve.add_argument("--time-scale", type=float, default=1.0, help="1 = real time, 0 = as fast as possible")
    serve.set_defaults(run=_station_serve)
    truth = _command(
        station,
        "truth",
        help="export a virtual wafer's ground truth",
        description="Write per-chip ground truth and EL reference results of a virtual wafer to HDF5.",
        examples=["plmapper station truth --profile resources/profiles/demo-2in.toml --out truth.h5 --csv el.csv"],
    )
    truth.add_argument("--profile", type=Path, required=True, help="wafer profile TOML")
    truth.add_argument("--out", type=Path, required=True, help="HDF5 file to write")
    truth.add_argument("--csv", type=Path, help="also write the EL reference as a prober's CSV")
    truth.set_defaults(run=_station_truth)
    return parser


def commands(parser: argparse.ArgumentParser | None = None, prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """Every command path (``("history", "list")``, ...), for tests and documentation."""
    parser = parser or _parser()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield (*prefix, name)
                yield from commands(child, (*prefix, name))


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("plmapper")
    except PackageNotFoundError:
        return "unknown"


def _json_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the result as JSON on stdout (no progress)")


def _limit_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--limit", type=int, default=50, help="at most this many rows, 0 for all (default: 50)")


def _history_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--db", type=Path, help="history database (default: $PLMAPPER_HOME/history.sqlite)")
    _json_argument(parser)


def _cluster_arguments(parser: argparse.ArgumentParser, what: str) -> None:
    spread = parser.add_mutually_exclusive_group()
    spread.add_argument("--workers", type=int, metavar="N", help=f"{what} on a local Dask cluster of N processes")
    spread.add_argument("--dask", metavar="ADDRESS", help=f"{what} on an existing Dask cluster (tcp://host:8786)")
    parser.add_argument(
        "--tiles",
        default=None,
        metavar="auto|off|N",
        help="on a cluster, spread big wafers tile by tile over the workers: auto (default: wafers of 50 M chips "
        "and more, when fewer wafers than workers are being analysed), off (never; on NFS), or N (every wafer of "
        "at least N usable chips, e.g. 20M; 0: every wafer)",
    )


def _cluster_settings(args: argparse.Namespace) -> Any:
    """``--workers`` / ``--dask`` / ``--tiles`` as :class:`inspection.distributed.ClusterSettings`, None without a
    cluster. Raises ValueError with a message for the user."""
    if args.workers is None and args.dask is None:
        if args.tiles is not None:
            raise ValueError("--tiles: only with --workers N or --dask ADDRESS (tiles are spread over a cluster)")
        return None
    from inspection.distributed import ClusterSettings, parse_tiles

    if args.workers is not None and args.workers < 1:
        raise ValueError(f"--workers: {args.workers} must be at least 1")
    tiles, tile_min_chips = parse_tiles(args.tiles or "auto")
    return ClusterSettings(scheduler=args.dask, workers=args.workers, tiles=tiles, tile_min_chips=tile_min_chips)


def _describe_cluster(cluster: Any) -> str:
    """Where the analyses run and what is tiled, for the user (a ClusterSettings)."""
    where = f"the Dask cluster at {cluster.scheduler}" if cluster.scheduler else "a local Dask cluster"
    if cluster.workers:
        where += f" of {cluster.workers} worker processes"
    if cluster.tiles is None:
        tiles = "big wafers tiled when workers are free"
    elif cluster.tiles is False:
        tiles = "no tiles"
    elif cluster.tile_min_chips == 0:
        tiles = "every wafer tiled"
    else:
        tiles = f"wafers of {cluster.tile_min_chips:,} chips and more tiled"
    return f"{where} ({tiles})"


def _classifier_arguments(parser: argparse.ArgumentParser) -> None:
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--model", type=Path, help="model file (default: the station's deployed model)")
    which.add_argument("--rules", action="store_true", help="the rule layer only, even if a model is deployed")
    parser.add_argument("--bins", type=Path, help="bin table TOML (default: resources/bins/default.toml)")


# ---------------------------------------------------------------------------------------------------------------------
# Output helpers
# ---------------------------------------------------------------------------------------------------------------------


def _print_json(document: Any) -> None:
    print(json.dumps(document, indent=2, default=str))


def _warn(message: str) -> None:
    print(f"plmapper: warning: {message}", file=sys.stderr)


def _recorder():
    from inspection.history import Recorder

    return Recorder(True, warn=_warn)


class _Progress:
    """Progress of long work: a bar on stderr on a terminal, a line now and then in a log, nothing with --json.

    ``update(fraction, label, message)``: ``label`` says what is being done (``mapping pass 1/2``), ``message``
    the detail of the moment.
    """

    def __init__(self, *, quiet: bool, interval_s: float = 1.0) -> None:
        self.mode = "off" if quiet else "bar" if sys.stderr.isatty() else "lines"
        self.interval_s = interval_s
        self._bar: Any = None
        self._last = 0.0

    def update(self, fraction: float, label: str, message: str = "", *, force: bool = False) -> None:
        if self.mode == "bar":
            if self._bar is None:
                from tqdm import tqdm

                self._bar = tqdm(
                    total=1000,
                    file=sys.stderr,
                    mininterval=min(self.interval_s, 0.2),
                    leave=False,
                    dynamic_ncols=True,
                    bar_format="{desc} {percentage:3.0f}%|{bar}| {elapsed}<{remaining} {postfix}",
                )
            self._bar.set_description_str(label, refresh=False)
            self._bar.set_postfix_str(message[:60], refresh=False)
            self._bar.update(max(0, min(1000, round(fraction * 1000))) - self._bar.n)
        elif self.mode == "lines":
            now = time.monotonic()
            if force or now - self._last >= self.interval_s:
                self._last = now
                print(f"  {label}  {fraction:4.0%}  {message}".rstrip(), flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> _Progress:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _scan_progress(progress: _Progress) -> Callable[[Any], None]:
    """An engine progress callback for ``progress``."""

    def show(state) -> None:
        label = f"{state.phase.value:<9} pass {state.pass_index + 1}/{state.pass_count}"
        rate = f"{state.samples_per_s / 1e6:.2f} M samples/s"
        if progress.mode == "lines":
            eta = f"{state.eta_s:,.0f} s" if state.eta_s < 1e9 else "?"
            detail = f"lines {state.lines_done}/{state.lines_total}  {rate}  ETA {eta}  {state.message}"
        else:
            detail = state.message or rate
        progress.update(state.fraction, label, detail, force=state.message != "")

    return show


@contextlib.contextmanager
def _ctrl_c(on_first: Callable[[], str | None]) -> Iterator[None]:
    """The first Ctrl-C calls ``on_first``, which starts a clean stop and returns what it will do (None: nothing
    to stop cleanly, interrupt now); a second Ctrl-C interrupts at once."""
    pressed = []

    def handler(signum: int, frame: object) -> None:
        if not pressed:
            pressed.append(True)
            explain = on_first()
            if explain is not None:
                print(f"\n{explain} (Ctrl-C again to interrupt at once)", file=sys.stderr)
                return
        raise KeyboardInterrupt

    if threading.current_thread() is not threading.main_thread():  # signals only reach the main thread
        yield
        return
    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _check_files(paths: Sequence[Path]) -> None:
    """Every input file exists (before any work starts)."""
    for path in paths:
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such scan file")
        if path.is_dir():
            raise FileNotFoundError(f"{path} is a directory, not a scan file")


@contextlib.contextmanager
def _atomic_output(path: Path) -> Iterator[Path]:
    """A temporary name next to ``path``, renamed to it when the block succeeds (removed when it fails)."""
    temporary = path.with_name(f".{path.name}.partial")
    try:
        yield temporary
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    temporary.replace(path)


# ---------------------------------------------------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------------------------------------------------


def _scan(args: argparse.Namespace) -> int:
    from inspection import api
    from inspection.access import AuditAction, audit, operator_session
    from inspection.scanfile import ScanStatus

    quiet = args.json
    engines: list[Any] = []
    stopped: list[bool] = []

    def show_plan(plan, label: str) -> None:
        if not quiet:
            print(f"[{label}]\n{plan.summary()}", flush=True)

    def stop() -> str | None:
        if not engines:  # still connecting or aligning: nothing to finish cleanly
            return None
        stopped.append(True)
        engines[0].abort()
        audit(AuditAction.SCAN_STOP_REQUESTED, operator_session(args.operator), {"file": str(args.out)})
        return "stopping after the current line"

    recorder = _recorder()
    with _Progress(quiet=quiet) as progress, _ctrl_c(stop):
        outcome = api.scan(
            args.out,
            recipe=args.recipe,
            station=args.station,
            lot=args.lot,
            wafer=args.wafer,
            operator=args.operator,
            resume=args.resume,
            on_plan=show_plan,
            on_progress=_scan_progress(progress),
            on_engine=engines.append,
            record=recorder,
        )
    recorder.close()
    complete = outcome.status is ScanStatus.COMPLETE
    if args.json:
        _print_json({"path": str(outcome.path), "status": outcome.status.value, "message": outcome.message})
    else:
        print(f"{outcome.status.value}: {outcome.message} ({outcome.path})")
    if complete:
        return EXIT_OK
    print(f"resume with: plmapper scan --resume --out {outcome.path}", file=sys.stderr)
    return EXIT_INTERRUPTED if stopped else EXIT_SCAN_INCOMPLETE


def _batch(args: argparse.Namespace) -> int:
    from inspection.batch import BatchHooks, check_plan, load_batch_plan, run_batch
    from inspection.pipeline import AnalysisSettings

    plan = load_batch_plan(args.plan, lot=args.lot, recipe=args.recipe, out_dir=args.out_dir, operator=args.operator)
    check_plan(plan, resume=args.resume)  # before anything else: every problem of the plan at once
    try:
        settings = AnalysisSettings(memory_mb=args.memory_mb)
        cluster = _cluster_settings(args)
    except ValueError as error:
        print(f"plmapper: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    options = None if args.no_classify else _classify_options(args)
    quiet = args.json
    if not quiet:
        described = "no classification" if options is None else _describe_classifier(options)
        print(f"lot {plan.lot_id}: {len(plan.wafers)} wafers; classifier: {described}", flush=True)
        if cluster is not None:
            print(f"analyses on {_describe_cluster(cluster)}, each wafer while the next is scanned", flush=True)
    stop = threading.Event()
    engines: list[Any] = []
    stage = {"now": ""}
    progress = _Progress(quiet=quiet)

    def started(index: int, count: int, wafer) -> None:
        engines.clear()
        stage["now"] = "scan"
        if not quiet:
            slot = f"slot {wafer.slot}, " if wafer.slot is not None else ""
            print(f"[{index + 1}/{count}] wafer {wafer.wafer_id} ({slot}{wafer.out})", flush=True)

    def load(wafer) -> None:
        if args.confirm_load:
            slot = f" from slot {wafer.slot}" if wafer.slot is not None else ""
            input(f"load wafer {wafer.wafer_id}{slot}, then press Enter (Ctrl-C stops the lot) ")

    def analysis(step: str, fraction: float, message: str) -> None:
        stage["now"] = step
        progress.update(fraction, f"{step:<14}", message)

    def done(result) -> None:
        progress.close()
        if quiet:
            return
        shown = f", yield {result.yield_fraction:.2%}" if result.yield_fraction is not None else ""
        reason = f" ({result.stage}: {result.message})" if result.status not in ("ok", "skipped") else ""
        print(f"  -> {result.wafer_id}: {result.status}{shown}{reason}", flush=True)

    def stop_lot() -> str | None:
        stop.set()
        if stage["now"] != "scan":
            return f"stopping the lot after this wafer's {stage['now'] or 'start'}"
        if not engines:  # connecting or aligning: nothing to finish cleanly
            return None
        engines[0].abort()
        return "stopping the lot after the current line (the wafer's scan stays resumable)"

    hooks = BatchHooks(
        wafer_started=started,
        load_wafer=load,
        on_progress=_scan_progress(progress),
        on_engine=engines.append,
        analysis_progress=analysis,
        wafer_done=done,
    )
    recorder = _recorder()
    with progress, _ctrl_c(stop_lot):
        result = run_batch(
            plan,
            station=args.station,
            resume=args.resume,
            analysis=settings,
            classifier=options,
            classify=options is not None,
            hooks=hooks,
            stop=stop,
            record=recorder,
            cluster=cluster,
        )
    recorder.close()
    document = result.to_json()
    if args.summary:
        with _atomic_output(args.summary) as temporary:
            temporary.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    if args.json:
        _print_json(document)
    else:
        print(result.summary())
    if result.all_ok:
        return EXIT_OK
    if result.stopped:
        print(f"resume the lot with: plmapper batch {args.plan} --resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    if result.fatal:
        print(f"plmapper: {result.fatal}", file=sys.stderr)
        return EXIT_INSTRUMENT
    return EXIT_PARTIAL


def _analyze(args: argparse.Namespace) -> int:
    from inspection import api
    from inspection.pipeline import AnalysisSettings, RegistrationError

    try:
        settings = AnalysisSettings(memory_mb=args.memory_mb)
        cluster = _cluster_settings(args)
    except ValueError as error:
        print(f"plmapper: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    _check_files(args.files)
    options = None if args.no_classify else _classify_options(args)
    quiet = args.json
    if options is not None and not quiet:
        print(f"classifier: {_describe_classifier(options)}")
    if cluster is not None:
        return _analyze_on_dask(args, settings, options, cluster)
    recorder = _recorder()
    failed, unusable = 0, 0
    report: list[dict[str, Any]] = []
    for path in args.files:
        entry: dict[str, Any] = {"path": str(path), "status": "ok", "error": None, "classification": None}
        report.append(entry)
        if not quiet:
            print(f"{path}:", flush=True)
        with _Progress(quiet=quiet) as progress:
            try:
                summary = api.analyze(
                    path, settings=settings, progress=lambda f, m: progress.update(f, "analysis", m), record=recorder
                )
            except RegistrationError as error:
                print(f"plmapper: {path}: {error}", file=sys.stderr)
                entry.update(status="failed", error=str(error))
                failed += 1
                continue
            except ValueError as error:  # not a usable scan file (ScanFileError), no recipe, no complete line
                print(f"plmapper: {error}", file=sys.stderr)
                entry.update(status="failed", error=str(error))
                unusable += 1
                continue
            entry.update(api.analysis_details(summary))
            if not quiet:
                for index, result in enumerate(summary.passes):
                    print(
                        f"  pass {index}: {result.power_w * 1e3:g} mW, {result.lines} lines, "
                        f"{result.chips_measured:,} chips measured, dark {result.dark_v * 1e3:.2f} mV, bidirectional "
                        f"offset {result.bidirectional_offset_um:+.2f} µm, laser power spread {result.power_spread:.1%}"
                    )
                print(f"  {summary.spectra} spectra fitted; {summary.seconds:.1f} s")
            if options is not None:
                try:
                    classification = api.classify(
                        path, options=options, progress=lambda f, m: progress.update(f, "classification", m),
                        record=recorder,
                    )  # fmt: skip
                except ValueError as error:  # e.g. a single excitation power: no efficiency ratio
                    print(f"plmapper: {error}", file=sys.stderr)
                    entry.update(status="failed", error=str(error))
                    unusable += 1
                    continue
                entry["classification"] = _classification_json(classification)
                if not quiet:
                    _print_classification(classification)
    recorder.close()
    if quiet:
        _print_json({"classifier": None if options is None else _describe_classifier(options), "files": report})
    return EXIT_BAD_INPUT if unusable else EXIT_CHECK_FAILED if failed else EXIT_OK


def _analyze_on_dask(args: argparse.Namespace, settings: Any, options: Any, cluster: Any) -> int:
    """``analyze --workers N`` / ``--dask ADDRESS`` [``--tiles``]: every wafer on a Dask cluster (docs/scale-out.md);
    the results are bit-identical to the in-process loop's, and recorded in the scan history as it records them
    (from this process, as each wafer's outcome comes back)."""
    from inspection.distributed import FailureKind, WaferProgress, analyze_many

    if not args.json:
        print(f"analysing on {_describe_cluster(cluster)}", flush=True)

    def show(progress: WaferProgress) -> None:
        if progress.outcome is not None and not args.json:
            outcome = progress.outcome
            state = "ok" if outcome.ok else f"{outcome.failure.value}: {outcome.error}"
            how = f", {outcome.tiles} tiles" if outcome.tiles else ""
            print(f"{outcome.path}: {state} ({outcome.seconds:.1f} s on {outcome.worker or 'a worker'}{how})")
            if outcome.classification is not None:
                summary = outcome.classification
                shown = ", ".join(f"{name} {chips:,}" for _, name, _, chips in summary.bins if chips)
                print(f"  yield {summary.yield_fraction:.2%}; {shown}; wafer signature: {summary.signature}")
            sys.stdout.flush()

    recorder = _recorder()
    try:
        outcomes = analyze_many(
            args.files,
            scheduler=cluster.scheduler,
            workers=cluster.workers,
            classify=options is not None,
            settings=settings,
            classify_options=options,
            tiles=cluster.tiles,
            tile_min_chips=cluster.tile_min_chips,
            progress=show,
            record=recorder,
        )
    finally:
        recorder.close()
    if args.json:
        files = []
        for outcome in outcomes:
            summary = outcome.classification
            value = None if summary is None or math.isnan(summary.yield_fraction) else summary.yield_fraction
            files.append(
                {
                    "path": str(outcome.path),
                    "status": "ok" if outcome.ok else "failed",
                    "error": outcome.error or None,
                    "failure": None if outcome.ok else outcome.failure.value,
                    "yield": value,
                    "signature": None if summary is None else summary.signature,
                    "tiles": outcome.tiles,
                    "worker": outcome.worker or None,
                    "seconds": round(outcome.seconds, 3),
                }
            )
        _print_json({"classifier": None if options is None else _describe_classifier(options), "files": files})
    kinds = {outcome.failure for outcome in outcomes if not outcome.ok}
    if FailureKind.STOPPED in kinds:
        return EXIT_INTERRUPTED
    if FailureKind.INPUT in kinds:
        return EXIT_BAD_INPUT
    return EXIT_CHECK_FAILED if kinds else EXIT_OK


def _classify_options(args: argparse.Namespace):
    from inspection import api

    if args.rules:
        return api.classifier_options(None, args.bins)
    return api.classifier_options(args.model if args.model else "deployed", args.bins)


def _describe_classifier(options) -> str:
    from inspection.api import describe_classifier

    return describe_classifier(options)


def _classification_json(classification) -> dict[str, Any]:
    counts = classification.bin_counts()
    value = classification.yield_fraction()
    return {
        "yield": None if math.isnan(value) else value,  # NaN: nothing inspected
        "bins": [
            {"code": entry.code, "name": entry.name, "fail": entry.fail, "chips": counts[entry.code]}
            for entry in classification.bin_table.bins
        ],
        "signature": classification.signature,
        "structures": len(classification.structures),
        "classifier": classification.classifier.get("name", classification.classifier.get("kind")),
        "warnings": list(classification.drift.get("warnings", [])),
    }


def _print_classification(classification) -> None:
    counts = classification.bin_counts()
    shown = ", ".join(
        f"{entry.name} {counts[entry.code]:,}" for entry in classification.bin_table.bins if counts[entry.code]
    )
    print(f"  yield {classification.yield_fraction():.2%}; {shown}")
    print(f"  wafer signature: {classification.signature}; {len(classification.structures)} structure(s)")
    for warning in classification.drift.get("warnings", []):
        print(f"  warning: {warning}", file=sys.stderr)


def _classify(args: argparse.Namespace) -> int:
    from inspection import api

    _check_files(args.files)
    options = _classify_options(args)
    quiet = args.json
    if not quiet:
        print(f"classifier: {_describe_classifier(options)}")
    recorder = _recorder()
    failed = 0
    report: list[dict[str, Any]] = []
    for path in args.files:
        if not quiet:
            print(f"{path}:", flush=True)
        with _Progress(quiet=quiet) as progress:
            try:
                classification = api.classify(
                    path, options=options, progress=lambda f, m: progress.update(f, "classification", m),
                    record=recorder,
                )  # fmt: skip
            except ValueError as error:
                print(f"plmapper: {error}", file=sys.stderr)
                report.append({"path": str(path), "status": "failed", "error": str(error)})
                failed += 1
                continue
        report.append({"path": str(path), "status": "ok", "error": None, **_classification_json(classification)})
        if not quiet:
            _print_classification(classification)
    recorder.close()
    if quiet:
        _print_json({"classifier": _describe_classifier(options), "files": report})
    return EXIT_BAD_INPUT if failed else EXIT_OK


def _train(args: argparse.Namespace) -> int:
    from inspection.classify import reference_chips
    from inspection.model import TrainSettings, save_model, train_model

    settings = TrainSettings(target_false_alarm=args.target_false_alarm)
    _check_files(args.files)
    wafers = []
    for path in args.files:
        try:
            wafer = reference_chips(path)
        except ValueError as error:
            print(f"plmapper: {error}", file=sys.stderr)
            return EXIT_BAD_INPUT
        failures = int((wafer.el_mode != 0).sum())
        print(f"{path}: {wafer.el_mode.size:,} inspected and probed chips, {failures:,} EL failures", flush=True)
        wafers.append(wafer)
    try:
        model = train_model(wafers, settings, name=args.name)
    except ValueError as error:
        print(f"plmapper: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    save_model(model, args.out)
    metrics = model.card["metrics_calibration_set"]
    print(
        f"model {model.name!r} ({model.model_id}) -> {args.out}\n"
        f"  threshold {model.threshold:.3f}; on the held-back wafers: agreement {metrics['accuracy']:.4%}, "
        f"recall {metrics['recall']:.2%}, false alarms {metrics['false_alarm_rate']:.3%}"
    )
    return EXIT_OK


def _evaluate(args: argparse.Namespace) -> int:
    from inspection.classify import classify, evaluate_scan
    from inspection.evaluation import format_report, merge_evaluations

    _check_files(args.files)
    options = _classify_options(args)
    described = _describe_classifier(options)
    results = []
    for path in args.files:
        try:
            result = evaluate_scan(path, classify(path, options))
        except ValueError as error:
            print(f"plmapper: {error}", file=sys.stderr)
            return EXIT_BAD_INPUT
        results.append((path.name, result.evaluation))
        if not args.json:
            figures = result.evaluation
            print(
                f"{path}: agreement {figures.accuracy:.4%}, recall (PL-visible) {figures.recall_detectable:.2%}, "
                f"false alarms {figures.false_alarm_rate:.3%} ({figures.chips:,} chips)",
                flush=True,
            )
    report = format_report(results, described)
    if args.report:
        with _atomic_output(args.report) as temporary:
            temporary.write_text(report, encoding="utf-8")
    total = merge_evaluations([evaluation for _, evaluation in results])
    if args.json:
        _print_json(
            {
                "classifier": described,
                "total": total.summary(),
                "wafers": {name: figures.summary() for name, figures in results},
            }
        )
    else:
        print(report)
    return EXIT_OK


def _password(prompt: str) -> str:
    """A password from the terminal (not echoed), or the next line of standard input in a script."""
    import getpass

    if sys.stdin.isatty():
        return getpass.getpass(prompt)
    return sys.stdin.readline().rstrip("\n")


def _deploy(args: argparse.Namespace) -> int:
    from inspection.access import AccessError, AuditAction, Permission, audit, engineer_login
    from inspection.deployment import deploy_model
    from inspection.home import station_home
    from inspection.model import load_model

    model = load_model(args.model)  # a bad file is refused before anyone is asked for a password
    try:
        session = engineer_login(args.user, _password("engineer password: "))
        session.require(Permission.DEPLOY_MODEL)
        details = {"file": str(args.model), "model_id": model.model_id, "name": model.name, "sha256": model.sha256}
        audit(AuditAction.MODEL_DEPLOYED, session, details)
    except AccessError as error:
        print(f"plmapper: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    record = deploy_model(args.model, user=session.user)
    print(f"deployed {record['name']!r} ({record['model_id']}) as the current model in {station_home() / 'models'}")
    return EXIT_OK


def _access_set_password(args: argparse.Namespace) -> int:
    from inspection.access import AccessError, engineer_password_set, set_engineer_password

    current = _password("current engineer password: ") if engineer_password_set() else None
    new = _password("new engineer password: ")
    if _password("again: ") != new:
        print("plmapper: the two new passwords differ; nothing changed", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        set_engineer_password(new, current=current, user=args.user)
    except (AccessError, ValueError) as error:
        print(f"plmapper: {error}; nothing changed", file=sys.stderr)
        return EXIT_BAD_INPUT
    print("engineer password set (recorded in the audit log)")
    return EXIT_OK


def _access_log(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from inspection.access import AuditLog

    log = AuditLog()
    entries = log.entries()
    problems = log.verify() if args.verify else []
    if args.json:
        _print_json({"entries": [asdict(entry) for entry in entries], "problems": problems})
    else:
        for entry in entries:
            details = ", ".join(f"{key}={value}" for key, value in entry.details.items())
            print(f"{entry.seq:>6}  {entry.time_utc}  {entry.user:<12} {entry.role:<9} {entry.action:<20} {details}")
        if args.verify:
            print("\n".join(problems) if problems else f"audit log intact: {len(entries)} entries")
    return EXIT_CHECK_FAILED if problems else EXIT_OK


def _export(args: argparse.Namespace) -> int:
    from inspection import api
    from inspection.bins import load_bin_table
    from inspection.export import ALL_FORMATS

    formats = [name.strip() for name in args.formats.split(",") if name.strip()]
    unknown = [name for name in formats if name not in ALL_FORMATS]
    if unknown or not formats:
        print(
            f"plmapper export: error: unknown format(s) {', '.join(unknown) or '(none given)'}; choose from "
            f"{', '.join(ALL_FORMATS)}",
            file=sys.stderr,
        )
        return EXIT_BAD_INPUT
    _check_files(args.files)
    table = load_bin_table(args.bins) if args.bins else None
    recorder = _recorder()
    failed = 0
    report: list[dict[str, Any]] = []
    for path in args.files:
        try:
            written = api.export(path, args.out_dir, formats, bin_table=table, record=recorder)
        except ValueError as error:  # ExportError: not classified, not a scan file (nothing of it written)
            print(f"plmapper: {error}", file=sys.stderr)
            report.append({"path": str(path), "status": "failed", "error": str(error), "written": []})
            failed += 1
            continue
        report.append({"path": str(path), "status": "ok", "error": None, "written": [str(item) for item in written]})
        if not args.json:
            print(f"{path}: " + ", ".join(item.name for item in written), flush=True)
    recorder.close()
    lot = None
    if args.lot_report and failed:
        print("plmapper: no lot report: not every file could be exported", file=sys.stderr)
    elif args.lot_report:
        try:
            lot = api.lot_report(args.files, args.lot_report, bin_table=table)
        except ValueError as error:  # e.g. wafers of different chip grids
            print(f"plmapper: {error}", file=sys.stderr)
            failed += 1
        else:
            if not args.json:
                print(f"lot report: {lot} (and {lot.with_suffix('.csv').name})")
    if args.json:
        _print_json({"files": report, "lot_report": None if lot is None else str(lot)})
    return EXIT_BAD_INPUT if failed else EXIT_OK


def _import_el(args: argparse.Namespace) -> int:
    from inspection import api

    recorder = _recorder()
    try:
        report = api.import_el(args.scan, args.csv, args.mapping, record=recorder)
    except ValueError as error:  # bad CSV or mapping (every problem listed), a grid that does not fit
        print(f"plmapper: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    finally:
        recorder.close()
    print(report.summary())
    return EXIT_OK


def _import_pl(args: argparse.Namespace) -> int:
    from inspection import api
    from inspection.pipeline import AnalysisSettings

    recorder = _recorder()
    try:
        with _Progress(quiet=False) as progress:
            path = api.import_pl(
                args.sidecar,
                args.out,
                AnalysisSettings(memory_mb=args.memory_mb),
                progress=lambda f, m: progress.update(f, "import", m),
                record=recorder,
            )
    except ValueError as error:
        print(f"plmapper: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    finally:
        recorder.close()
    print(f"imported {args.sidecar} -> {path}; classify it with: plmapper classify {path}")
    return EXIT_OK


def _probe(args: argparse.Namespace) -> int:
    from drivers.station import load_station_config
    from inspection.el_probe import ElProbeAborted, ElProbeProgress, run_el_probe

    abort = threading.Event()

    def show(progress: ElProbeProgress) -> None:
        print(f"  {progress.phase:<10} {progress.done}/{progress.total}  {progress.message}", flush=True)

    recorder = _recorder()
    try:
        with (
            _ctrl_c(lambda: abort.set() or "stopping after the current chip"),
            recorder.operation(args.scan, "probe", {"chips": args.chips, "seed": args.seed}) as recorded,
        ):
            outcome = run_el_probe(
                args.scan,
                args.config,
                station_config=load_station_config(args.station),
                sample_count=args.chips,
                seed=args.seed,
                on_progress=show,
                abort=abort,
            )
            recorded.details = {"chips": len(outcome.reference), "counts": outcome.reference.counts()}
    except ElProbeAborted as error:
        print(f"plmapper: {error}", file=sys.stderr)
        return EXIT_SCAN_INCOMPLETE
    except ValueError as error:
        print(f"plmapper: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    finally:
        recorder.close()
    counts = outcome.reference.counts()
    print(
        f"probed {len(outcome.reference)} chips into {outcome.path}: "
        + ", ".join(f"{k} {v}" for k, v in counts.items())
    )
    return EXIT_OK


def _gui(args: argparse.Namespace) -> int:
    from app.gui import main as gui_main

    file = [str(args.file)] if args.file else []
    station = ["--station", str(args.station)] if args.station else []
    return gui_main([*file, *station])


def _station_check(args: argparse.Namespace) -> int:
    from drivers.station import connect, load_station_config
    from inspection.station_check import CheckResult, run_station_check

    config = load_station_config(args.station)
    quiet = args.json
    if not quiet:
        print(f"Station: {config.station.name} ({args.station})")
        if config.profile_path() is not None:
            print(f"Virtual station, wafer profile {config.profile_path()}")

    def show(result: CheckResult) -> None:
        if not quiet:
            mark = "ok  " if result.passed else "FAIL"
            print(f"  [{mark}] {result.role:<13} {result.check:<16} {result.detail}", flush=True)

    with connect(config) as station:
        results = run_station_check(station, report=show)
    failed = [result for result in results if not result.passed]
    if quiet:
        profile = config.profile_path()
        _print_json(
            {
                "station": config.station.name,
                "station_file": str(args.station),
                "virtual_profile": None if profile is None else str(profile),
                "checks": [
                    {"role": item.role, "check": item.check, "passed": item.passed, "detail": item.detail}
                    for item in results
                ],
                "passed": len(results) - len(failed),
                "failed": len(failed),
            }
        )
    else:
        print(f"{len(results) - len(failed)} passed, {len(failed)} failed")
    return EXIT_CHECK_FAILED if failed else EXIT_OK


def _station_serve(args: argparse.Namespace) -> int:
    from drivers.virtual.station import main as serve

    return serve(["--profile", str(args.profile), "--time-scale", str(args.time_scale)])


def _station_truth(args: argparse.Namespace) -> int:
    from drivers.virtual.profile import load_profile
    from drivers.virtual.world import WaferWorld, export_el_csv, export_truth

    world = WaferWorld(load_profile(args.profile))
    count = export_truth(world, args.out)  # written under a temporary name and renamed
    print(f"wrote ground truth of {count} chips to {args.out}")
    if args.csv:
        export_el_csv(args.out, args.csv)
        print(f"wrote the EL reference of {count} chips to {args.csv}")
    return EXIT_OK


# ---------------------------------------------------------------------------------------------------------------------
# History
# ---------------------------------------------------------------------------------------------------------------------


def _open_history(args: argparse.Namespace):
    from inspection.history import History

    return History(args.db)


def _limit(args: argparse.Namespace) -> int | None:
    return None if args.limit <= 0 else args.limit


def _yield_text(value: float | None) -> str:
    return "-" if value is None else f"{value:.2%}"


def _print_scans(scans: Sequence[Any]) -> None:
    if not scans:
        print("no scans recorded that match")
        return
    print(
        f"{'id':>5}  {'started (UTC)':<20} {'lot':<12} {'wafer':<10} {'recipe':<16} {'status':<11} {'yield':>7}  file"
    )
    for scan in scans:
        file = scan.path if scan.file == "ok" else f"MISSING {scan.path}"
        print(
            f"{scan.id:>5}  {scan.started_utc:<20} {scan.lot_id[:12]:<12} {scan.wafer_id[:10]:<10} "
            f"{scan.recipe[:16]:<16} {scan.status:<11} {_yield_text(scan.yield_fraction):>7}  {file}"
        )


def _history_list(args: argparse.Namespace) -> int:
    try:
        with _open_history(args) as history:
            scans = history.scans(
                lot=args.lot,
                wafer=args.wafer,
                recipe=args.recipe,
                status=args.status,
                since=args.since,
                until=args.until,
                limit=_limit(args),
            )
    except ValueError as error:  # a date that is not one
        print(f"plmapper: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.json:
        _print_json({"scans": [scan.to_json() for scan in scans]})
    else:
        _print_scans(scans)
    return EXIT_OK


def _history_search(args: argparse.Namespace) -> int:
    with _open_history(args) as history:
        scans = history.scans(text=args.text, limit=_limit(args))
    if args.json:
        _print_json({"scans": [scan.to_json() for scan in scans]})
    else:
        _print_scans(scans)
    return EXIT_OK


def _history_show(args: argparse.Namespace) -> int:
    with _open_history(args) as history:
        if args.scan.isdigit():
            scan = history.scan(int(args.scan))
        else:
            found = history.scans(path=str(Path(args.scan).expanduser().absolute()), limit=1)
            scan = found[0] if found else None
        if scan is None:
            print(f"plmapper: no scan {args.scan} in the history {history.path}", file=sys.stderr)
            return EXIT_BAD_INPUT
        operations = history.operations(scan.id)
        bins = history.bins(scan.id)
    if args.json:
        _print_json(
            {
                "scan": scan.to_json(),
                "operations": [operation.to_json() for operation in operations],
                "bins": [vars(entry) for entry in bins],
            }
        )
        return EXIT_OK
    print(f"scan {scan.id}: wafer {scan.wafer_id} of lot {scan.lot_id}, recipe {scan.recipe or '?'}")
    print(f"  file: {scan.path} ({scan.file})")
    print(f"  status: {scan.status}" + (f": {scan.message}" if scan.message else ""))
    print(f"  started {scan.started_utc}, finished {scan.finished_utc or '-'}, operator {scan.operator or '?'}")
    print(f"  yield {_yield_text(scan.yield_fraction)}, classifier {scan.classifier or '-'}, signature "
          f"{scan.signature or '-'}")  # fmt: skip
    for operation in operations:
        note = f": {operation.message}" if operation.message else ""
        print(f"  {operation.started_utc}  {operation.kind:<15} {operation.status:<11} {operation.user}{note}")
    if bins:
        print("  bins: " + ", ".join(f"{entry.name} {entry.chips:,}" for entry in bins if entry.chips))
    return EXIT_OK


def _history_lot(args: argparse.Namespace) -> int:
    with _open_history(args) as history:
        if args.lot is None:
            lots = history.lots(limit=_limit(args))
            if args.json:
                _print_json({"lots": [row.to_json() for row in lots]})
            elif not lots:
                print("no lots recorded")
            else:
                print(f"{'lot':<16} {'wafers':>6} {'classified':>10} {'mean yield':>10} {'lowest':>8}  last scan (UTC)")
                for row in lots:
                    print(
                        f"{row.lot_id[:16]:<16} {row.wafers:>6} {row.classified:>10} {_yield_text(row.mean_yield):>10} "
                        f"{_yield_text(row.min_yield):>8}  {row.last_started_utc}"
                    )
            return EXIT_OK
        summary = history.lot_summary(args.lot)
    if not summary.wafers:
        print(f"plmapper: no scans of lot {args.lot!r} in the history", file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.json:
        _print_json(summary.to_json())
        return EXIT_OK
    print(
        f"lot {summary.lot_id}: {len(summary.wafers)} wafers ({summary.complete} complete, {summary.classified} "
        f"classified; {summary.scans} scans in all), recipes {', '.join(summary.recipes) or '?'}"
    )
    print(
        f"  yield: mean {_yield_text(summary.mean_yield)}, lowest {_yield_text(summary.min_yield)}, highest "
        f"{_yield_text(summary.max_yield)}"
    )
    _print_scans(summary.wafers)
    if summary.bins:
        print(
            "bins over the lot: " + ", ".join(f"{entry.name} {entry.chips:,}" for entry in summary.bins if entry.chips)
        )
    return EXIT_OK


def _history_trend(args: argparse.Namespace) -> int:
    try:
        with _open_history(args) as history:
            points = history.yield_trend(
                recipe=args.recipe, by=args.by, since=args.since, until=args.until, lot=args.lot
            )
    except ValueError as error:
        print(f"plmapper: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.json:
        _print_json({"by": args.by, "points": [point.to_json() for point in points]})
        return EXIT_OK
    if not points:
        print("no classified scans recorded that match")
        return EXIT_OK
    print(f"{'recipe':<20} {args.by:<32} {'wafers':>6} {'mean':>8} {'lowest':>8} {'highest':>8}")
    for point in points:
        print(
            f"{point.recipe[:20]:<20} {point.period[:32]:<32} {point.wafers:>6} {_yield_text(point.mean_yield):>8} "
            f"{_yield_text(point.min_yield):>8} {_yield_text(point.max_yield):>8}"
        )
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
