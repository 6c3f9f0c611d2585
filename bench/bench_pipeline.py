"""Benchmark: the analysis pipeline, from scan file to per-chip results, per wafer size.

For each example wafer (2", 4", 6", 8") the bench renders a whole scan file straight from the virtual wafer
(:func:`drivers.virtual.synthetic.write_synthetic_scan`, no instruments; kept in ``bench/data/`` between runs, since
an 8" file takes minutes to render and 6 GB of disk), then runs ``plmapper analyze`` on it in a child process and
reports its wall time, peak memory, chips and samples per second, against a pure read of the same samples from
the file measured in the same run (the I/O floor).

Run: ``python bench/bench_pipeline.py [2in 4in 6in 8in]`` (default: 2in 4in).
"""

from __future__ import annotations

import resource
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


def analyse(path: Path) -> tuple[float, float]:
    """Wall seconds and peak memory (GB) of ``plmapper analyze`` on ``path`` in a child process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "app.cli", "analyze", str(path)], check=True, cwd=REPO, stdout=subprocess.DEVNULL
    )
    wall = time.perf_counter() - started
    peak_kb = max(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, before)
    return wall, peak_kb / 2**20


def main(sizes: list[str]) -> int:
    unknown = [size for size in sizes if size not in WAFERS]
    if unknown:
        print(f"unknown sizes {unknown}; choose from {list(WAFERS)}", file=sys.stderr)
        return 2
    rows = []
    for size in sizes:
        path = scan_file(size)
        read_s, samples = pure_read_s(path)
        wall_s, peak_gb = analyse(path)
        with h5py.File(path, "r") as file:
            chips = int(file["results/pass_000/chips"].shape[0]) * int(file["results/pass_000/chips"].shape[1])
        rows.append((size, samples, chips, read_s, wall_s, peak_gb))
    print(f"{'wafer':<6} {'samples':>14} {'chip box':>12} {'pure read':>10} {'analysis':>10} {'ratio':>7} "
          f"{'M samples/s':>12} {'peak memory':>12}")  # fmt: skip
    for size, samples, chips, read_s, wall_s, peak_gb in rows:
        print(f"{size:<6} {samples:>14,} {chips:>12,} {read_s:>9.1f}s {wall_s:>9.1f}s {wall_s / read_s:>6.1f}x "
              f"{samples / wall_s / 1e6:>12.1f} {peak_gb:>10.2f} GB")  # fmt: skip
    print('(ratio: analysis time over the pure read of the same samples; the 8" target is <= 60 s and <= 4 GB)')
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:] or ["2in", "4in"]))
