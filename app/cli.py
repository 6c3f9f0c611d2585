"""The ``plmapper`` command line.

Examples
--------
Check every instrument of the default (virtual) station::

    plmapper station check

Serve the virtual station for another program (prints its VISA resources, stops when stdin closes)::

    plmapper station serve --profile resources/profiles/demo-2in.toml --time-scale 1

Export a virtual wafer's ground truth and EL reference results (tests and model training only)::

    plmapper station truth --profile resources/profiles/demo-2in.toml --out truth.h5

Analyse scan files (per-chip results into each file's /results group)::

    plmapper analyze scans/W01.h5

Exit codes: 0 success, 1 a check failed (station check; a chip grid that does not match in analyze), 2 bad
arguments or input files, 3 an instrument error, 4 a scan stopped before the end (the file is resumable).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path

RESOURCES = Path(__file__).resolve().parent.parent / "resources"
DEFAULT_STATION = RESOURCES / "stations" / "virtual.toml"
DEFAULT_RECIPE = RESOURCES / "recipes" / "demo-2in.toml"

EXIT_OK, EXIT_CHECK_FAILED, EXIT_BAD_INPUT, EXIT_INSTRUMENT, EXIT_SCAN_INCOMPLETE = 0, 1, 2, 3, 4
EXIT_INTERRUPTED = 130  # the shell's convention for "stopped by Ctrl-C"


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "run"):
        parser.print_help()
        return EXIT_BAD_INPUT
    from drivers.errors import InstrumentError
    from inspection.alignment import AlignmentError
    from inspection.memory import retain_freed_memory
    from inspection.scanfile import ScanFileError
    from inspection.settings import SettingsError

    retain_freed_memory()  # line-sized arrays come and go all the time: keep their memory mapped
    try:
        return int(args.run(args))
    except SettingsError as error:
        print(f"plmapper: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (FileExistsError, FileNotFoundError, ScanFileError) as error:
        print(f"plmapper: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (InstrumentError, AlignmentError) as error:
        print(f"plmapper: {error}", file=sys.stderr)
        return EXIT_INSTRUMENT
    except KeyboardInterrupt:
        print("plmapper: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="plmapper",
        description="Micro-LED wafer PL inspection station.",
        epilog="Run 'plmapper COMMAND --help' for examples.",
    )
    commands = parser.add_subparsers(title="commands")

    scan = commands.add_parser(
        "scan",
        help="inspect one wafer",
        description="Map one wafer: plan from the recipe, scan every pass, write one HDF5 scan file.",
        epilog="example: plmapper scan --recipe resources/recipes/demo-2in.toml --out scans/W01.h5 --lot L1 --wafer W01"
        "\n         plmapper scan --resume --out scans/W01.h5   (continue an interrupted scan)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    scan.add_argument("--recipe", type=Path, default=DEFAULT_RECIPE, help="recipe TOML (default: %(default)s)")
    scan.add_argument("--station", type=Path, default=DEFAULT_STATION, help="station file (default: %(default)s)")
    scan.add_argument("--out", type=Path, required=True, help="scan file to write (HDF5)")
    scan.add_argument("--lot", default="LOT", help="lot ID")
    scan.add_argument("--wafer", default="WAFER", help="wafer ID")
    scan.add_argument("--operator", default=os.environ.get("USER", "operator"), help="operator name")
    scan.add_argument("--resume", action="store_true", help="continue the interrupted scan in --out")
    scan.set_defaults(run=_scan)
    analyze = commands.add_parser(
        "analyze",
        help="per-chip measurements from scan files",
        description="Run the PL pipeline on scan files: per-chip intensity, efficiency ratio, neighbour ratio and "
        "spectrum fits, stored in each file's /results group (earlier results are replaced).",
        epilog="example: plmapper analyze scans/W01.h5 scans/W02.h5",
    )
    analyze.add_argument("files", type=Path, nargs="+", help="scan files (HDF5)")
    analyze.add_argument("--memory-mb", type=float, default=512.0, help="working memory bound (default: %(default)s)")
    analyze.set_defaults(run=_analyze)
    station = commands.add_parser("station", help="check, serve or inspect the station").add_subparsers(
        title="station commands"
    )

    check = station.add_parser(
        "check",
        help="exercise every instrument and report",
        description="Exercise every instrument of the station through its interface and report what it measured.",
        epilog="example: plmapper station check --station resources/stations/virtual.toml",
    )
    check.add_argument("--station", type=Path, default=DEFAULT_STATION, help="station file (default: %(default)s)")
    check.set_defaults(run=_station_check)

    serve = station.add_parser(
        "serve",
        help="run the virtual station",
        description="Serve the virtual station on loopback ports until standard input closes or Ctrl-C.",
        epilog="example: plmapper station serve --profile resources/profiles/demo-2in.toml --time-scale 1",
    )
    serve.add_argument("--profile", type=Path, required=True, help="wafer profile TOML")
    serve.add_argument("--time-scale", type=float, default=1.0, help="1 = real time, 0 = as fast as possible")
    serve.set_defaults(run=_station_serve)

    truth = station.add_parser(
        "truth",
        help="export a virtual wafer's ground truth",
        description="Write per-chip ground truth and EL reference results of a virtual wafer to HDF5.",
        epilog="example: plmapper station truth --profile resources/profiles/demo-2in.toml --out truth.h5",
    )
    truth.add_argument("--profile", type=Path, required=True, help="wafer profile TOML")
    truth.add_argument("--out", type=Path, required=True, help="HDF5 file to write")
    truth.set_defaults(run=_station_truth)
    return parser


def _scan(args: argparse.Namespace) -> int:
    from drivers.station import load_station_config
    from inspection.job import ScanIdentity, run_scan
    from inspection.scan import ScanEngine, ScanProgress
    from inspection.scanfile import ScanStatus

    config = load_station_config(args.station)
    last_print = [0.0]

    def show_plan(plan, label: str) -> None:
        print(f"[{label}]\n{plan.summary()}", flush=True)

    def show_progress(progress: ScanProgress) -> None:
        now = time.monotonic()
        if now - last_print[0] < 1.0 and progress.message == "":
            return
        last_print[0] = now
        eta = f"{progress.eta_s:,.0f} s" if progress.eta_s < 1e9 else "?"
        print(
            f"  {progress.phase.value:<9} pass {progress.pass_index + 1}/{progress.pass_count}  "
            f"lines {progress.lines_done}/{progress.lines_total} ({progress.fraction:.0%})  "
            f"{progress.samples_per_s / 1e6:.2f} M samples/s  ETA {eta}  {progress.message}",
            flush=True,
        )

    engines: list[ScanEngine] = []
    interrupted = []

    def on_ctrl_c(signum: int, frame: object) -> None:
        # the first Ctrl-C stops cleanly after the current line (laser off, file resumable); a second one at once
        if engines and not interrupted:
            interrupted.append(True)
            engines[0].abort()
            print("\nstopping after the current line (Ctrl-C again to interrupt at once)", file=sys.stderr)
            return
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, on_ctrl_c)
    try:
        outcome = run_scan(
            args.recipe,
            config,
            args.out,
            ScanIdentity(operator=args.operator, lot_id=args.lot, wafer_id=args.wafer),
            resume=args.resume,
            on_plan=show_plan,
            on_progress=show_progress,
            on_engine=engines.append,
        )
    finally:
        signal.signal(signal.SIGINT, previous)
    print(f"{outcome.status.value}: {outcome.message} ({outcome.path})")
    if outcome.status is ScanStatus.COMPLETE:
        return EXIT_OK
    print(f"resume with: plmapper scan --resume --out {outcome.path}", file=sys.stderr)
    return EXIT_INTERRUPTED if interrupted else EXIT_SCAN_INCOMPLETE


def _analyze(args: argparse.Namespace) -> int:
    from inspection.pipeline import AnalysisSettings, RegistrationError, analyze_scan

    try:
        settings = AnalysisSettings(memory_mb=args.memory_mb)
    except ValueError as error:
        print(f"plmapper: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    failed = 0
    for path in args.files:
        last_print = [0.0]

        def show(fraction: float, message: str, last_print: list[float] = last_print) -> None:
            if time.monotonic() - last_print[0] >= 1.0:
                last_print[0] = time.monotonic()
                print(f"  {fraction:4.0%}  {message}", flush=True)

        print(f"{path}:", flush=True)
        try:
            summary = analyze_scan(path, settings, progress=show)
        except RegistrationError as error:
            print(f"plmapper: {path}: {error}", file=sys.stderr)
            failed += 1
            continue
        for index, result in enumerate(summary.passes):
            print(
                f"  pass {index}: {result.power_w * 1e3:g} mW, {result.lines} lines, {result.chips_measured:,} chips "
                f"measured, dark {result.dark_v * 1e3:.2f} mV, bidirectional offset "
                f"{result.bidirectional_offset_um:+.2f} µm, laser power spread {result.power_spread:.1%}"
            )
        print(f"  {summary.spectra} spectra fitted; {summary.seconds:.1f} s")
    return EXIT_CHECK_FAILED if failed else EXIT_OK


def _station_check(args: argparse.Namespace) -> int:
    from drivers.station import connect, load_station_config
    from inspection.station_check import CheckResult, run_station_check

    config = load_station_config(args.station)
    print(f"Station: {config.station.name} ({args.station})")
    if config.profile_path() is not None:
        print(f"Virtual station, wafer profile {config.profile_path()}")

    def show(result: CheckResult) -> None:
        mark = "ok  " if result.passed else "FAIL"
        print(f"  [{mark}] {result.role:<13} {result.check:<16} {result.detail}", flush=True)

    with connect(config) as station:
        results = run_station_check(station, report=show)
    failed = [result for result in results if not result.passed]
    print(f"{len(results) - len(failed)} passed, {len(failed)} failed")
    return EXIT_CHECK_FAILED if failed else EXIT_OK


def _station_serve(args: argparse.Namespace) -> int:
    from drivers.virtual.station import main as serve

    return serve(["--profile", str(args.profile), "--time-scale", str(args.time_scale)])


def _station_truth(args: argparse.Namespace) -> int:
    from drivers.virtual.profile import load_profile
    from drivers.virtual.world import WaferWorld, export_truth

    world = WaferWorld(load_profile(args.profile))
    count = export_truth(world, args.out)
    print(f"wrote ground truth of {count} chips to {args.out}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
