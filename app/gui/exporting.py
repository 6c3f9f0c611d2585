"""Exports and lot reports from the window, in a child process (no Qt in this module).

Why a child process: :func:`inspection.export.export_scan` opens the scan file with HDF5's default file locking,
while the window's own readers (the Review and Compare maps) hold the same file open with locking switched off (the
scan-file convention, docs/scan-file.md), and HDF5 refuses to open one file twice in a process with different
locking settings. A child process has its own HDF5 library, so an export runs while the map stays open.

The child is ``python -m app.gui.exporting``: it reads one job (JSON) on stdin and writes one JSON object per line on
stdout: ``{"file": name}`` when a file is complete, then ``{"done": [paths]}``, ``{"cancelled": [names]}`` or
``{"error": type, "message": text, "export_error": bool}``. :func:`run_job` starts it and relays the lines as
progress. Cancel sends it SIGINT: the file being written is abandoned (every export file is written under a hidden
temporary name and renamed when complete, so nothing half-written stays), the files already complete stay.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from app.gui.mapdata import TaskCancelled

REPO = Path(__file__).resolve().parents[2]
KILL_AFTER_S = 30.0
"""A child that has not stopped this long after the cancel is killed."""

FORMAT_TITLES = {
    "klarf": ("KLARF 1.2", "{stem}.klarf", "one defect record per failing chip (yield systems)"),
    "klarf18": ("KLARF 1.8", "{stem}.v18.klarf", "the same in KLARF 1.8"),
    "e142": ("SEMI E142", "{stem}.e142.xml", "substrate map: every chip's bin (sort, pick and repair)"),
    "csv": ("CSV", "{stem}.chips.csv", "per-chip results, one row per chip"),
    "parquet": ("Parquet", "{stem}.chips.parquet", "the same table in Parquet (data lake)"),
    "png": ("PNG maps", "{stem}.bins.png, …", "bin map and measurement maps"),
    "pdf": ("PDF report", "{stem}.report.pdf", "the wafer report (4–5 pages)"),
}
"""How the export dialog names each of ``inspection.export.ALL_FORMATS`` (in its order): title, file, what it is for.
Kept here rather than imported: ``inspection.export`` imports Matplotlib and PyArrow (seconds), which the window only
needs in the child process."""
DEFAULT_FORMATS = ("klarf", "e142", "csv", "parquet", "png", "pdf")
"""``inspection.export.DEFAULT_FORMATS`` (a test checks that the two agree)."""


class ExportInputError(ValueError):
    """An export's input cannot be exported (``inspection.export.ExportError`` in the child): one line naming the
    file and what it lacks."""


class ExportCancelled(TaskCancelled):
    """The export was cancelled; ``written`` are the files that were complete before (they stay)."""

    def __init__(self, written: Sequence[Path]) -> None:
        super().__init__(f"cancelled after {len(written)} file(s)")
        self.written = list(written)


def export_job(scan: Path, out_dir: Path, formats: Sequence[str]) -> dict[str, Any]:
    """The job of exporting ``scan`` in ``formats`` into ``out_dir``."""
    return {"kind": "export", "scan": str(scan), "out_dir": str(out_dir), "formats": list(formats)}


def lot_report_job(scans: Sequence[Path], out: Path) -> dict[str, Any]:
    """The job of a lot report of ``scans`` into ``out`` (PDF, and the CSV next to it)."""
    return {"kind": "lot", "scans": [str(path) for path in scans], "out": str(out)}


def expected_files(formats: Sequence[str], png_maps: int = 4) -> int:
    """Roughly how many files an export writes (the PNG maps depend on the file: ``png_maps``)."""
    return sum(png_maps if name == "png" else 1 for name in dict.fromkeys(formats))


def run_job(
    job: dict[str, Any],
    progress: Callable[[float, str], None],
    cancel: threading.Event,
    *,
    expected: int = 1,
    python: str | None = None,
) -> list[Path]:
    """Run ``job`` in a child process; returns the files written.

    ``progress(fraction, message)`` after each file; ``cancel`` stops the child (raises :class:`ExportCancelled`
    with the files complete before). Raises :class:`ExportInputError` for an input that cannot be exported,
    ``OSError`` (and subclasses) for a folder that cannot be written, ``RuntimeError`` when the child dies.
    """
    if cancel.is_set():
        raise ExportCancelled([])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    process = subprocess.Popen(
        [python or sys.executable, "-m", "app.gui.exporting"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        encoding="utf-8",
        env=env,
        start_new_session=True,  # a Ctrl-C in the terminal that started the window does not reach it
    )
    lines: queue.Queue[str | None] = queue.Queue()
    errors: list[str] = []

    def read_stdout() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.put(line)
        lines.put(None)

    def read_stderr() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            errors.append(line)

    readers = [threading.Thread(target=target, daemon=True) for target in (read_stdout, read_stderr)]
    for reader in readers:
        reader.start()
    assert process.stdin is not None
    with contextlib.suppress(BrokenPipeError):
        process.stdin.write(json.dumps(job))
        process.stdin.close()
    written: list[Path] = []
    outcome: dict[str, Any] = {}
    stop_sent: float | None = None
    base = Path(job.get("out_dir", "."))
    while True:
        try:
            line = lines.get(timeout=0.1)
        except queue.Empty:
            if cancel.is_set() and stop_sent is None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGINT)
                stop_sent = time.monotonic()
            elif stop_sent is not None and time.monotonic() - stop_sent > KILL_AFTER_S:
                process.kill()
            continue
        if line is None:
            break
        try:
            message = json.loads(line)
        except json.JSONDecodeError:
            errors.append(line)  # a library printing on stdout: not ours
            continue
        if "file" in message:
            written.append(base / message["file"])
            count = len(written)
            progress(min(0.97, count / max(expected, count + 1)), f"written {message['file']} ({count})")
        else:
            outcome = message
    code = process.wait()
    for reader in readers:
        reader.join(timeout=5)
    if "done" in outcome:
        return [Path(path) for path in outcome["done"]]
    if cancel.is_set():
        raise ExportCancelled(written)
    if "error" in outcome:
        text = str(outcome.get("message", "")) or outcome["error"]
        if outcome.get("export_error"):
            raise ExportInputError(text)
        kind = {
            "PermissionError": PermissionError,
            "FileNotFoundError": FileNotFoundError,
            "FileExistsError": FileExistsError,
            "IsADirectoryError": IsADirectoryError,
            "NotADirectoryError": NotADirectoryError,
            "OSError": OSError,
            "ValueError": ValueError,
        }.get(outcome["error"])
        if kind is not None:
            raise kind(text)
        raise RuntimeError(f"{outcome['error']}: {text}\n{''.join(errors[-20:])}".rstrip())
    raise RuntimeError(f"the export process stopped unexpectedly (exit code {code})\n{''.join(errors[-20:])}".rstrip())


# ---------------------------------------------------------------------------------------------------------------------
# The child
# ---------------------------------------------------------------------------------------------------------------------


def _emit(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def child_main() -> int:
    """Run one job from stdin (see the module docstring); the exit code is 0, 1 (error) or 130 (cancelled)."""
    written: list[str] = []
    try:
        job = json.loads(sys.stdin.read())
        from inspection.export import export_scan, lot_report  # noqa: PLC0415 (Matplotlib, PyArrow)

        def report(name: str) -> None:
            written.append(name)
            _emit({"file": name})

        if job["kind"] == "export":
            paths = export_scan(job["scan"], job["out_dir"], job["formats"], progress=report)
            _emit({"done": [str(path) for path in paths]})
        elif job["kind"] == "lot":
            out = lot_report(job["scans"], job["out"])
            _emit({"done": [str(out), str(out.with_suffix(".csv"))]})
        else:
            raise ValueError(f"unknown job {job['kind']!r}")
    except KeyboardInterrupt:  # the window's Cancel (SIGINT)
        _emit({"cancelled": written})
        return 130
    except BaseException as error:  # noqa: BLE001 - every failure goes back to the window as a message
        import traceback  # noqa: PLC0415

        traceback.print_exc()
        export_error = "ExportError" in {kind.__name__ for kind in type(error).__mro__}
        _emit({"error": type(error).__name__, "message": str(error), "export_error": export_error})
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(child_main())
