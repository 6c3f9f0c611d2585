"""Benchmark: the analysis pipeline, from scan file to per-chip results, per wafer size.

For each example wafer (2", 4", 6", 8") the bench renders a whole scan file straight from the virtual wafer
(:func:`drivers.virtual.synthetic.write_synthetic_scan`, no instruments; kept in ``bench/data/`` between runs, since
an 8" file takes minutes to render and 6 GB of disk), then, on a copy of it, runs ``plmapper analyze --no-classify``
(scan file to per-chip results: the target) and ``plmapper classify`` (defect classes, spatial signature) each in a
child process, and reports their wall times and peak memory (each child's own maximum resident set), chips and
samples per second, against a pure read of the same samples from the file measured in the same run (the I/O
floor). ``plmapper analyze`` without ``--no-classify`` runs both, one after the other.

The analysis writes ``/results`` and ``/classification`` into the file it analyses, and HDF5 does not reuse the
space of a replaced group: analysing the rendered file in place grew it by the size of its results on every run
(6.4 GB for the 8" wafer). The bench therefore analyses a throw-away copy (the scan groups only), deletes it
afterwards, and refuses to start when the disk cannot hold the copy and its results.

Run: ``python bench/bench_pipeline.py [2in 4in 6in 8in]`` (default: 2in 4in).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import h5py

from drivers.virtual.profile import load_profile
from drivers.virtual.synthetic import write_synthetic_scan
from inspection.recipe import load_recipe

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "bench" / "data"
WAFERS = {"2in": "demo-2in", "4in": "red-4in", "6in": "blue-6in", "8in": "green-8in"}


def scan_file(size: str) -> Path:
    """The synthetic scan of one example wafer, rendered on first use."""
    name = WAFERS[size]
    path = DATA / f"synthetic-{name}.h5"
    if not path.exists():
        DATA.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial.h5")
        partial.unlink(missing_ok=True)
        started = time.perf_counter()
        print(f"rendering {path.name} (once) ...", flush=True)
        write_synthetic_scan(
            partial,
            load_profile(REPO / "resources" / "profiles" / f"{name}.toml"),
            load_recipe(REPO / "resources" / "recipes" / f"{name}.toml"),
        )
        partial.rename(path)
        print(f"  rendered in {time.perf_counter() - started:.0f} s", flush=True)
    return path


def pure_read_s(path: Path) -> tuple[float, int]:
    """Seconds to read every pass's samples once, in 64 MB blocks, and the number of samples."""
    started, total = time.perf_counter(), 0
    with h5py.File(path, "r") as file:
        for name in file["passes"]:
            samples = file[f"passes/{name}/samples_v"]
            block = 16 * 2**20
            for start in range(0, samples.shape[0], block):
                total += samples[start : start + block].size
    return time.perf_counter() - started, total


# what plmapper analyze adds to a scan file: left out of the copy that is analysed
ANALYSIS_GROUPS = ("results", "results_partial", "classification", "classification_partial")


def analysis_copy(path: Path) -> Path:
    """A copy of the scan file ``path`` without any analysis results, next to it, to be analysed and deleted.

    Raises OSError when the disk cannot take the copy and its results (estimated at 1.2x the scan's size, the 8"
    wafer's results being 6.4 GB for a 5.9 GB scan)."""
    size = path.stat().st_size
    free = shutil.disk_usage(path.parent).free
    needed = int(2.2 * size) + 2**30
    if free < needed:
        raise OSError(
            f"{path.parent}: {free / 1e9:.1f} GB free, the analysis copy of {path.name} and its results need about "
            f"{needed / 1e9:.1f} GB; free some space (old analysis copies are *.analysis.h5)"
        )
    copy = path.with_suffix(".analysis.h5")
    copy.unlink(missing_ok=True)
    with h5py.File(path, "r") as source:
        analysed = any(name in source for name in ANALYSIS_GROUPS)
    if not analysed:
        shutil.copyfile(path, copy)  # a plain file copy: much faster than HDF5's object by object
        return copy
    # a file analysed in place by an older version of this bench: its scan groups only
    with h5py.File(path, "r") as source, h5py.File(copy, "w") as target:
        target.attrs.update(source.attrs)
        for name in source:
            if name not in ANALYSIS_GROUPS:
                source.copy(source[name], target, name=name)
    return copy


def run_child(command: str, path: Path) -> tuple[float, float]:
    """Wall seconds and peak resident memory (GB) of ``plmapper <command> <path>`` in a child process."""
    extra = ["--no-classify"] if command == "analyze" else []
    started = time.perf_counter()
    child = subprocess.Popen(
        [sys.executable, "-m", "app.cli", command, str(path), *extra], cwd=REPO, stdout=subprocess.DEVNULL
    )
    # wait4: this child's own resource usage (RUSAGE_CHILDREN would give the largest of every child so far)
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - started
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode:
        raise subprocess.CalledProcessError(child.returncode, child.args)
    return wall, usage.ru_maxrss / 2**20


def main(sizes: list[str]) -> int:
    unknown = [size for size in sizes if size not in WAFERS]
    if unknown:
        print(f"unknown sizes {unknown}; choose from {list(WAFERS)}", file=sys.stderr)
        return 2
    rows = []
    for size in sizes:
        path = scan_file(size)
        copy = analysis_copy(path)
        try:
            read_s, samples = pure_read_s(copy)
            analysis = run_child("analyze", copy)
            classification = run_child("classify", copy)
            with h5py.File(copy, "r") as file:
                chips = int(file["results/pass_000/chips"].shape[0]) * int(file["results/pass_000/chips"].shape[1])
        finally:
            copy.unlink(missing_ok=True)
        rows.append((size, samples, chips, read_s, analysis, classification))
    print(f"{'wafer':<6} {'samples':>14} {'chip box':>12} {'pure read':>10} {'analysis':>10} {'ratio':>7} "
          f"{'M samples/s':>12} {'peak memory':>12} {'classify':>10} {'peak memory':>12}")  # fmt: skip
    for size, samples, chips, read_s, (wall_s, peak_gb), (classify_s, classify_gb) in rows:
        print(f"{size:<6} {samples:>14,} {chips:>12,} {read_s:>9.1f}s {wall_s:>9.1f}s {wall_s / read_s:>6.1f}x "
              f"{samples / wall_s / 1e6:>12.1f} {peak_gb:>9.2f} GB {classify_s:>9.1f}s "
              f"{classify_gb:>9.2f} GB")  # fmt: skip
    print(
        "(analysis: scan file to per-chip results, plmapper analyze --no-classify; ratio: its time over the pure "
        'read of the same samples; the 8" target is <= 60 s and <= 4 GB. classify: plmapper classify after it)'
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:] or ["2in", "4in"]))
