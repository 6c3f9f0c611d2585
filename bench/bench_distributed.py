"""Benchmark: scale-out on Dask (inspection.distributed) against the single-process baseline, measured in the same run.

1. **Wafers per minute**: ``--wafers`` copies of the whole synthetic demo 2" scan (69 M samples, 170 k chips),
   analysed and classified one after the other in this process (the baseline), then by
   :func:`inspection.distributed.analyze_many` on a LocalCluster of ``--workers`` processes (per-wafer tasks), with
   and without the cluster's start-up.
2. **Per-tile speed-up**: one big wafer (``--tile-wafer``, the 8" example by default: 73.9 M chips, 1.48 G samples,
   rendered once into bench/data/ like bench/bench_pipeline.py does), analysed (no classification) by
   ``analyze_scan`` in a child process (the baseline, with its peak memory), then tile by tile on the cluster, and
   as a single per-wafer task on it. The tiled results are compared with the baseline's, array by array (sha256 of
   every /results dataset, read in bands).

This machine has 2 cores and other work often runs on it: the load average is printed before and after. With 2
cores, 2 worker processes can at best double the throughput of a process that uses one core; the pipeline's kernel
already uses both cores in the single process, so the per-tile speed-up is bounded well below 2.

Run: ``PYTHONPATH=. .venv/bin/python bench/bench_distributed.py [--wafers 4] [--workers 2] [--tile-wafer 8in]``
(``--tile-wafer`` 2in, 4in, 6in, 8in or none).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import h5py

from inspection.classify import classify_scan
from inspection.distributed import AnalysisPool, analyze_many
from inspection.memory import retain_freed_memory
from inspection.pipeline import analyze_scan

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "bench" / "data"
sys.path.insert(0, str(REPO / "bench"))
from bench_pipeline import scan_file  # noqa: E402 - the same rendered wafers as the pipeline benchmark


def load() -> str:
    return " ".join(f"{value:.1f}" for value in os.getloadavg())


def results_digests(path: Path, band_rows: int = 256) -> dict[str, str]:
    """sha256 of every /results dataset's bytes, read in bands of rows (an 8" pass is 2.4 GB)."""
    digests = {}
    with h5py.File(path, "r", locking=False) as file:

        def visit(name: str, item: object) -> None:
            if not isinstance(item, h5py.Dataset):
                return
            digest = hashlib.sha256()
            if item.ndim == 0 or item.shape[0] == 0:
                digest.update(item[()].tobytes())
            else:
                for start in range(0, item.shape[0], band_rows):
                    digest.update(item[start : start + band_rows].tobytes())
            digests[name] = digest.hexdigest()

        file["results"].visititems(visit)
    return digests


def wafers_per_minute(count: int, workers: int, directory: Path) -> None:
    source = scan_file("2in")
    copies = [Path(shutil.copy(source, directory / f"W{index:02d}.h5")) for index in range(count)]
    print(f"\n1. wafers per minute: {count} x {source.name} (analysis + classification, rule layer)")
    started, cpu = time.perf_counter(), time.process_time()
    for path in copies:
        analyze_scan(path)
        classify_scan(path)
    single, cpu = time.perf_counter() - started, time.process_time() - cpu
    print(
        f"   single process, one after the other      {single:6.1f} s   {60 * count / single:5.1f} wafers/min   "
        f"(it kept {cpu / single:.2f} cores busy)"
    )

    started = time.perf_counter()
    outcomes = analyze_many(copies, workers=workers, tiles=False)
    with_startup = time.perf_counter() - started
    assert all(outcome.ok for outcome in outcomes), [outcome.error for outcome in outcomes if not outcome.ok]
    print(
        f"   LocalCluster, {workers} workers, with start-up {with_startup:6.1f} s   "
        f"{60 * count / with_startup:5.1f} wafers/min   {single / with_startup:4.2f}x"
    )
    with AnalysisPool(workers=workers, tiles=False) as pool:
        pool.submit(copies[0])  # warm-up: each worker imports the analysis and classifier once
        pool.submit(copies[1])
        pool.outcomes()
        started = time.perf_counter()
        for path in copies:
            pool.submit(path)
        outcomes = pool.outcomes()
        steady = time.perf_counter() - started
    assert all(outcome.ok for outcome in outcomes)
    print(
        f"   LocalCluster, {workers} workers, warm          {steady:6.1f} s   "
        f"{60 * count / steady:5.1f} wafers/min   {single / steady:4.2f}x"
    )
    for path in directory.glob("*.h5"):
        path.unlink()


def child_analysis(path: Path) -> tuple[float, float, float]:
    """Wall seconds, CPU seconds and peak memory (GB) of analyze_scan (no classification) in a child process, with
    the allocator tuned as ``plmapper analyze`` tunes it."""
    code = (
        "from inspection.memory import retain_freed_memory; from inspection.pipeline import analyze_scan; "
        f"retain_freed_memory(); analyze_scan({str(path)!r})"
    )
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return wall, cpu, max(after.ru_maxrss, before.ru_maxrss) / 2**20


def peak_memory_gb() -> float:
    """This process's peak resident memory (run on each worker)."""
    import resource  # noqa: PLC0415 - imported where it runs

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def peak_worker_memory_gb(client) -> float:
    return max(client.run(peak_memory_gb).values())


def fresh_copy(source: Path, directory: Path) -> Path:
    """A copy of ``source`` to analyse: HDF5 does not reuse the space of deleted results, so every analysis in place
    would grow an 8" scan file by ~5 GB."""
    copy = directory / f"copy-{source.name}"
    copy.unlink(missing_ok=True)
    shutil.copyfile(source, copy)
    return copy


def per_tile(size: str, workers: int, directory: Path) -> None:
    source = scan_file(size)
    print(f"\n2. per-tile speed-up: {source.name} (analysis only; each run on a fresh copy)")
    path = fresh_copy(source, directory)
    single, cpu, single_gb = child_analysis(path)
    reference = results_digests(path)
    print(
        f"   single process (analyze_scan)                  {single:6.1f} s   peak {single_gb:.2f} GB   "
        f"(it kept {cpu / single:.2f} cores busy)"
    )
    started = time.perf_counter()
    classify_scan(path)
    classified = time.perf_counter() - started
    for label, tiles in (("tile by tile", True), ("one per-wafer task", False)):
        path = fresh_copy(source, directory)
        with AnalysisPool(workers=workers, classify=False, tiles=tiles) as pool:
            started = time.perf_counter()
            pool.submit(path)
            (outcome,) = pool.outcomes()
            wall = time.perf_counter() - started
            peak = peak_worker_memory_gb(pool.client)
        assert outcome.ok, outcome.error
        equal = results_digests(path) == reference
        how = f"{outcome.tiles} tiles" if outcome.tiles else "1 task"
        print(
            f"   LocalCluster, {workers} workers, {label:<18} {wall:6.1f} s   peak/worker {peak:.2f} GB   "
            f"{single / wall:4.2f}x   ({how}, results bit-identical: {'yes' if equal else 'NO'})"
        )
        if not equal:
            raise SystemExit("the distributed results differ from the single-process results")
    path.unlink()
    print(f"   classification of this wafer, single process: {classified:.1f} s (not tiled)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wafers", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--tile-wafer", default="8in", choices=["2in", "4in", "6in", "8in", "none"])
    args = parser.parse_args()
    retain_freed_memory()  # the single-process baselines run as the command line runs them (the workers do too)
    print(f"{os.cpu_count()} CPUs; load average before: {load()}")
    directory = DATA / "distributed"
    directory.mkdir(parents=True, exist_ok=True)
    wafers_per_minute(args.wafers, args.workers, directory)
    if args.tile_wafer != "none":
        per_tile(args.tile_wafer, args.workers, directory)
    print(f"\nload average after: {load()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
