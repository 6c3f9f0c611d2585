"""Scan file: one HDF5 file per wafer scan, written as data arrives, readable and resumable after any crash.

The writer (:class:`ScanFileWriter`) is used by the scan engine; the reader (:class:`ScanFile`) by the analysis,
the GUI and anyone importing a map acquired elsewhere (the scan file is also plmapper's import format). After an
abort, an exception, an instrument fault, a killed process (SIGKILL) or a crash of the machine the file opens,
says what is complete, and :meth:`ScanFileWriter.resume` continues it from the last complete line.

Layout (format ``plmapper-scan``, version 1)
-------------------------------------------
``R`` = required in every scan file (also in imported ones), ``o`` = optional for importers (a reader treats a
missing one as empty). ``[n]`` = 1-D dataset; ``[n→∞]`` = extendable along its only axis; ``()`` = scalar.
Every table that grows is paired with a scalar ``int64`` counter (marked ``‡``): the counter, not the dataset's
length, says how many rows are committed. In a finished file both agree::

    /                                    attrs R: format_name = "plmapper-scan", format_version = 1 (int),
    │                                             uuid (str), created_utc (ISO 8601, "...Z"), powers_w (f8[passes])
    │                                    attrs o: software_version, operator, lot_id, wafer_id, plan_summary (str),
    │                                             writer_hdf5_version, writer_h5py_version (str)
    ├── status/                R
    │   ├── code               R  () enum int8 {running 0, complete 1, aborted 2, failed 3}
    │   ├── message_utf8       o  [n→∞] uint8, UTF-8 text of the finish message
    │   ├── message_length  ‡  o  () int64, committed bytes of message_utf8
    │   └── finished_unix_s    o  () f8, NaN until finish()
    ├── settings/              o
    │   ├── recipe_toml        o  () str, the recipe TOML exactly as given
    │   ├── station_toml       o  () str, the station TOML exactly as given
    │   ├── identities/        o  attrs: role -> instrument identity (str)
    │   └── extra/             o  attrs: key -> value (str)
    ├── plan/                  o
    │   └── lines              o  [lines] the plan's structured line table, stored as given
    ├── passes/                R
    │   └── pass_000/ ...      R  one group per power, attrs: pass_index (int), power_w (f8)
    │       ├── samples_v      R  [n→∞] float32 volts, chunks of 131072 samples, no filters
    │       ├── lines          R  [n→∞] LINE_RECORD_DTYPE, one record per complete line
    │       └── lines_complete ‡ R () int64: lines 0..n-1 of this pass are complete
    ├── alignment/             o
    │   ├── records            o  [n→∞] ALIGNMENT_RECORD_DTYPE; the last committed one is the current alignment
    │   ├── sites_npy          o  [n→∞] uint8: each record's sites as an NPY v1 blob (numpy's documented format)
    │   └── count           ‡  o  () int64
    ├── spectra/               o
    │   ├── records            o  [n→∞] SPECTRUM_RECORD_DTYPE: chip, position, reason, slice of the two below
    │   ├── wavelength_nm      o  [n→∞] f8, all spectra end to end
    │   ├── power_w_per_nm     o  [n→∞] f8, same length
    │   └── count           ‡  o  () int64
    ├── power_log/             o
    │   ├── records            o  [n→∞] POWER_LOG_DTYPE (time_s, power_w)
    │   └── count           ‡  o  () int64
    └── events/                o
        ├── records            o  [n→∞] EVENT_RECORD_DTYPE (wall time, level, slice of text_utf8)
        ├── text_utf8          o  [n→∞] uint8, all messages end to end
        └── count           ‡  o  () int64

``LINE_RECORD_DTYPE``: line_index i4, sample_offset i8 (into the pass's ``samples_v``), sample_count i4,
trigger_time_s f8 (instrument/virtual clock), wall_time_unix_s f8, x/y_start/stop_readback_um f8,
power_before_w f8, power_after_w f8 (power meter around the line), laser_setpoint_w f8. Line ``i``'s samples are
``samples_v[sample_offset : sample_offset + sample_count]``; records are contiguous (offset of line ``i + 1`` = end
of line ``i``). Strings are UTF-8.

Status and "complete"
---------------------
``code`` is ``running`` from creation until :meth:`ScanFileWriter.finish`. A reader reports ``running`` only while a
writer holds the file (a lock, see below); a ``running`` file nobody holds is :attr:`ScanStatus.INTERRUPTED`.
A line is complete when its pass's ``lines_complete`` counter covers it: its samples and record were flushed
(and fsync'ed) *before* the counter was written, so a counter on disk never promises more than the disk holds.
``complete`` (finish(COMPLETE)) is only accepted when every pass has every planned line.

Crash safety (measured, see docs/scan-file.md)
----------------------------------------------
* The file is built under a temporary name, switched to HDF5 SWMR write mode, fsync'ed and only then linked to
  its final name: the final path never shows a half-built file.
* In SWMR mode HDF5 orders its metadata writes so that the file on disk is consistent at every instant (what a
  concurrent reader sees, which is also what a killed writer leaves). Every object exists from creation on; SWMR
  writes only append to 1-D chunked datasets (extensible-array index, which never moves an entry) and overwrite
  fixed scalars. No filters on the data, so rewriting a partly filled chunk rewrites committed bytes with
  identical bytes.
* Commit of a line: write samples and record, flush, fsync, write the counter (8 aligned bytes, one write),
  flush, fsync. Anything after the last counter is ignored by readers and overwritten on resume.
* A killed SWMR writer leaves the superblock's "open for write" flags set, so plain HDF5 opens refuse the file;
  readers open it in SWMR read mode instead (no modification). :meth:`ScanFileWriter.resume` clears the flags and
  raises the superblock's end-of-allocation to the file size (what ``h5clear -s --increment`` does, here a
  48-byte rewrite with its Jenkins lookup3 checksum) so that nothing the dead writer wrote past its last superblock
  update is ever handed out again.
* Liveness: the writer holds an open-file-description byte-range lock (Linux ``F_OFD_SETLK``) far past the end of
  the file; the kernel drops it when the process dies. It tells readers ``running`` from ``interrupted`` and stops
  a second writer. Elsewhere no lock is taken: a ``running`` file then reads as interrupted and resume cannot see
  a live writer (documented limitation).

Examples
--------
>>> import tempfile, pathlib
>>> path = pathlib.Path(tempfile.mkdtemp()) / "w01.h5"
>>> plan = np.zeros(2, dtype=[("line_index", "i4"), ("sample_count", "i4")])
>>> with ScanFileWriter.create(path, recipe_toml="", station_toml="", identities={}, plan_lines=plan,
...                            powers_w=[0.01], plan_summary="2 lines", operator="ann", lot_id="L1",
...                            wafer_id="W01", software_version="0.1.0", fsync=False) as writer:
...     writer.write_line(0, 0, np.arange(4.0), {name: 0.0 for name in MEASURED_FIELDS})
>>> scan = ScanFile(path)
>>> scan.status.value, scan.lines_complete(0), scan.line_samples(0, 0).tolist()
('interrupted', 1, [0.0, 1.0, 2.0, 3.0])
>>> scan.close()
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import io
import math
import os
import struct
import sys
import time
import uuid as _uuid
from collections.abc import Iterator, Mapping, Sequence
from enum import StrEnum
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import h5py
import numpy as np

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "ALIGNMENT_RECORD_DTYPE",
    "EVENT_RECORD_DTYPE",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "LINE_RECORD_DTYPE",
    "MEASURED_FIELDS",
    "POWER_LOG_DTYPE",
    "SAMPLES_CHUNK",
    "SPECTRUM_RECORD_DTYPE",
    "ScanFile",
    "ScanFileError",
    "ScanFileWriter",
    "ScanStatus",
]

FORMAT_NAME = "plmapper-scan"
FORMAT_VERSION = 1

SAMPLES_CHUNK = 131072
"""Samples per chunk of ``samples_v`` (512 KiB). Each commit rewrites the partly filled chunk a line ends in: with
1 M-sample (4 MiB) chunks that write amplification held fsync'ed 100 k-sample lines to 17–18 M samples/s, with
128 k-sample chunks the writer reaches ~40 M samples/s on the same machine (docs/scan-file.md)."""


class ScanStatus(StrEnum):
    """What a scan file says about its scan."""

    RUNNING = "running"
    COMPLETE = "complete"
    ABORTED = "aborted"
    FAILED = "failed"
    INTERRUPTED = "interrupted"
    """Reported by readers for a file whose writer died: ``running`` on disk and nobody holds it."""


class ScanFileError(ValueError):
    """A file that is not a readable plmapper scan file, or that cannot be used as asked (e.g. resuming a complete
    scan). The message names the file and the problem."""


LINE_RECORD_DTYPE = np.dtype(
    [
        ("line_index", "<i4"),
        ("sample_offset", "<i8"),
        ("sample_count", "<i4"),
        ("trigger_time_s", "<f8"),
        ("wall_time_unix_s", "<f8"),
        ("x_start_readback_um", "<f8"),
        ("y_start_readback_um", "<f8"),
        ("x_stop_readback_um", "<f8"),
        ("y_stop_readback_um", "<f8"),
        ("power_before_w", "<f8"),
        ("power_after_w", "<f8"),
        ("laser_setpoint_w", "<f8"),
    ]
)
"""One record per completed line and pass."""

_WRITER_FILLED_FIELDS = ("line_index", "sample_offset", "sample_count")
MEASURED_FIELDS: tuple[str, ...] = tuple(name for name in LINE_RECORD_DTYPE.names if name not in _WRITER_FILLED_FIELDS)
"""Fields ``write_line``'s record must give (NaN for a quantity that was not measured); the writer fills the rest."""

SPECTRUM_RECORD_DTYPE = np.dtype(
    [
        ("col", "<i4"),
        ("row", "<i4"),
        ("x_um", "<f8"),
        ("y_um", "<f8"),
        ("wall_time_unix_s", "<f8"),
        ("reason", "S64"),
        ("point_offset", "<i8"),
        ("point_count", "<i8"),
    ]
)
"""One spectrum: chip index, wafer position, why it was taken (UTF-8, ≤ 64 bytes), slice of the point arrays."""

POWER_LOG_DTYPE = np.dtype([("time_s", "<f8"), ("power_w", "<f8")])
"""One laser power reading (time on the caller's clock)."""

EVENT_RECORD_DTYPE = np.dtype(
    [("wall_time_unix_s", "<f8"), ("level", "S16"), ("text_offset", "<i8"), ("text_length", "<i8")]
)
"""One event: when, level (UTF-8, ≤ 16 bytes), slice of ``events/text_utf8``."""

ALIGNMENT_RECORD_DTYPE = np.dtype(
    [
        ("wall_time_unix_s", "<f8"),
        ("offset_x_um", "<f8"),
        ("offset_y_um", "<f8"),
        ("rotation_deg", "<f8"),
        ("residual_um", "<f8"),
        ("sites_offset", "<i8"),
        ("sites_length", "<i8"),
    ]
)
"""One alignment result; its sites are ``sites_npy[sites_offset : sites_offset + sites_length]`` (an NPY blob)."""

_STATUS_CODES = {"running": 0, "complete": 1, "aborted": 2, "failed": 3}
_STATUS_DTYPE = h5py.enum_dtype(_STATUS_CODES, basetype="i1")
_FINAL_STATUSES = (ScanStatus.COMPLETE, ScanStatus.ABORTED, ScanStatus.FAILED)

# Chunk lengths of the appendable tables (rows). Small tables get small chunks: every commit rewrites the chunk
# the table ends in.
_CHUNKS = {
    "lines": 1024,
    "records": 256,
    "points": 16384,
    "bytes": 16384,
}
_SPECTRUM_REASON_BYTES = 64
_EVENT_LEVEL_BYTES = 16
_POWER_LOG_COMMIT_S = 1.0  # power readings are buffered at most this long before they are committed
_POWER_LOG_COMMIT_ROWS = 4096

_LIBVER = (h5py.h5f.LIBVER_V110, h5py.h5f.LIBVER_V110)  # SWMR needs the 1.10 format; capping it keeps the files
# readable by every HDF5 ≥ 1.10 (files written with "latest" by HDF5 2.x would not be)


# ---------------------------------------------------------------------------------------------------------------
# Superblock: read the "open for write" flags, and clear them after a crash (h5clear -s --increment, in Python)
# ---------------------------------------------------------------------------------------------------------------
_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
_SUPERBLOCK_V3_SIZE = 48  # signature 8, version/sizes/flags 4, four 8-byte addresses, checksum 4
_FLAG_WRITE = 0x01
_FLAG_SWMR_WRITE = 0x04


def _rotate(value: int, bits: int) -> int:
    return ((value << bits) | (value >> (32 - bits))) & 0xFFFFFFFF


def _lookup3(data: bytes, initval: int = 0) -> int:
    """Bob Jenkins' lookup3 ``hashlittle``, the checksum HDF5 puts on its version 2/3 superblock."""
    mask = 0xFFFFFFFF
    length = len(data)
    a = b = c = (0xDEADBEEF + length + initval) & mask
    position = 0
    while length - position > 12:
        a = (a + int.from_bytes(data[position : position + 4], "little")) & mask
        b = (b + int.from_bytes(data[position + 4 : position + 8], "little")) & mask
        c = (c + int.from_bytes(data[position + 8 : position + 12], "little")) & mask
        a = ((a - c) & mask) ^ _rotate(c, 4)
        c = (c + b) & mask
        b = ((b - a) & mask) ^ _rotate(a, 6)
        a = (a + c) & mask
        c = ((c - b) & mask) ^ _rotate(b, 8)
        b = (b + a) & mask
        a = ((a - c) & mask) ^ _rotate(c, 16)
        c = (c + b) & mask
        b = ((b - a) & mask) ^ _rotate(a, 19)
        a = (a + c) & mask
        c = ((c - b) & mask) ^ _rotate(b, 4)
        b = (b + a) & mask
        position += 12
    tail = data[position:]
    if not tail:
        return c
    tail = tail + b"\0" * (12 - len(tail))
    a = (a + int.from_bytes(tail[0:4], "little")) & mask
    b = (b + int.from_bytes(tail[4:8], "little")) & mask
    c = (c + int.from_bytes(tail[8:12], "little")) & mask
    c = (c ^ b) - _rotate(b, 14) & mask
    a = (a ^ c) - _rotate(c, 11) & mask
    b = (b ^ a) - _rotate(a, 25) & mask
    c = (c ^ b) - _rotate(b, 16) & mask
    a = (a ^ c) - _rotate(c, 4) & mask
    b = (b ^ a) - _rotate(a, 14) & mask
    c = (c ^ b) - _rotate(b, 24) & mask
    return c


def _read_superblock(path: Path) -> tuple[int, int] | None:
    """(version, status flags) of a version 2/3 superblock at offset 0, or None for anything else."""
    with path.open("rb") as stream:
        raw = stream.read(_SUPERBLOCK_V3_SIZE)
    if len(raw) < 12 or raw[:8] != _HDF5_SIGNATURE or raw[8] not in (2, 3):
        return None
    return raw[8], raw[11]


def _clear_writer_marks(path: Path) -> bool:
    """Clear a dead writer's superblock flags and make the end-of-allocation cover the whole file.

    A writer killed between two flushes leaves the flags set (HDF5 then refuses to open the file for writing) and
    a superblock end-of-allocation (EOA) that may be smaller than what it had already written: reopened as is,
    HDF5 would allocate new objects over those bytes while stale index entries of the discarded tail still point
    at them. So the EOA becomes max(EOA, file size), and the file is extended if the EOA is larger (space the dead
    writer had reserved but not written). Returns whether anything changed. Only the 48 superblock bytes are
    rewritten, in one write, then fsync'ed.
    """
    with path.open("r+b") as stream:
        raw = bytearray(stream.read(_SUPERBLOCK_V3_SIZE))
        if len(raw) < _SUPERBLOCK_V3_SIZE or raw[:8] != _HDF5_SIGNATURE:
            raise ScanFileError(f"{path}: no HDF5 superblock at the start of the file (a user block?)")
        version, offset_size, length_size, flags = raw[8], raw[9], raw[10], raw[11]
        if version != 3 or offset_size != 8 or length_size != 8:
            raise ScanFileError(
                f"{path}: HDF5 superblock version {version}; appending needs a version 3 superblock with 8-byte "
                "addresses (a file written in the HDF5 1.10 format, as plmapper writes them)"
            )
        (stored_checksum,) = struct.unpack_from("<I", raw, 44)
        if _lookup3(bytes(raw[:44])) != stored_checksum:
            raise ScanFileError(f"{path}: the HDF5 superblock checksum is wrong: the file is damaged")
        base, _extension, eoa, _root = struct.unpack_from("<4Q", raw, 12)
        if base != 0:
            raise ScanFileError(f"{path}: HDF5 base address {base} (a user block); not a plmapper scan file")
        size = os.fstat(stream.fileno()).st_size
        new_eoa = max(eoa, size)
        if flags == 0 and new_eoa == eoa and size == eoa:
            return False
        if size < new_eoa:
            stream.truncate(new_eoa)  # zero-filled, sparse: HDF5 refuses files shorter than their EOA
        raw[11] = 0
        struct.pack_into("<Q", raw, 28, new_eoa)
        struct.pack_into("<I", raw, 44, _lookup3(bytes(raw[:44])))
        stream.seek(0)
        stream.write(raw)
        stream.flush()
        os.fsync(stream.fileno())
    return True


# ---------------------------------------------------------------------------------------------------------------
# Writer lock: who is writing the file right now (the kernel drops the lock when the writer dies)
# ---------------------------------------------------------------------------------------------------------------
_LOCK_OFFSET = 1 << 62  # far past any real file end: HDF5 never reads or writes there, and no flock() conflicts
_FLOCK_FORMAT = "hhxxxxqqixxxx"  # struct flock of 64-bit Linux: type, whence, (pad), start, len, pid, (pad)
_HAVE_OFD_LOCKS = (
    sys.platform.startswith("linux")
    and fcntl is not None
    and hasattr(fcntl, "F_OFD_SETLK")
    and struct.calcsize("P") == 8  # the layout above is the 64-bit one
)


def _flock_struct(lock_type: int) -> bytes:
    return struct.pack(_FLOCK_FORMAT, lock_type, os.SEEK_SET, _LOCK_OFFSET, 1, 0)


class _WriterLock:
    """An exclusive open-file-description lock on one byte far past the end of the scan file.

    Open-file-description locks (unlike classic POSIX locks) are not dropped when another descriptor of the same
    file is closed in the same process, so a reader in the writer's process cannot release the writer's lock.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self) -> None:
        if not _HAVE_OFD_LOCKS:
            return
        fd = os.open(self.path, os.O_RDWR)
        try:
            fcntl.fcntl(fd, fcntl.F_OFD_SETLK, _flock_struct(fcntl.F_WRLCK))
        except OSError:
            os.close(fd)
            raise ScanFileError(
                f"{self.path} is being written by another writer (a running scan); it cannot be opened for writing"
            ) from None
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the lock
            self._fd = None


def _writer_alive(path: Path) -> bool | None:
    """Whether a writer holds ``path`` (None: cannot tell on this platform)."""
    if not _HAVE_OFD_LOCKS:
        return None
    fd = os.open(path, os.O_RDONLY)
    try:
        answer = fcntl.fcntl(fd, fcntl.F_OFD_GETLK, _flock_struct(fcntl.F_WRLCK))
    finally:
        os.close(fd)
    return struct.unpack(_FLOCK_FORMAT, answer)[0] != fcntl.F_UNLCK


# ---------------------------------------------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------------------------------------------
def _utc_now_iso() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _file_access(*, chunk_cache_bytes: int = 4 << 20) -> h5py.h5p.PropFAID:
    """File access properties shared by writer and reader.

    File locking is off because the writer's own lock (:class:`_WriterLock`) replaces HDF5's (HDF5 drops its lock
    when SWMR writing starts anyway), and because HDF5 refuses to open a file twice in one process with different
    locking settings: readers and the writer must agree. Allocations are 8-byte aligned so that every counter is
    one aligned 8-byte write that never straddles a page.
    """
    fapl = h5py.h5p.create(h5py.h5p.FILE_ACCESS)
    fapl.set_libver_bounds(*_LIBVER)
    fapl.set_file_locking(False, False)
    fapl.set_alignment(1, 8)
    nslots, _, nbytes, w0 = fapl.get_cache()
    fapl.set_cache(nslots, 521, max(nbytes, chunk_cache_bytes), w0)
    return fapl


def open_hdf5(path: str | os.PathLike[str], mode: str = "r") -> h5py.File:
    """Open a scan file with plain h5py (``mode`` as :class:`h5py.File`'s) for the groups :class:`ScanFile` does not
    cover (``/classification``, ``/results`` maps, ``/el_reference``).

    File locking is off as in :func:`_file_access`: HDF5 refuses to open a file a second time in one process with
    other locking settings, so a plain default-locking open fails while a :class:`ScanFile` of the same file is open.
    """
    return h5py.File(path, mode, locking=False)


def _encode(text: str, what: str, limit: int | None = None) -> bytes:
    if not isinstance(text, str):
        raise TypeError(f"{what} must be a str, not {type(text).__name__}")
    data = text.encode("utf-8")
    if limit is not None and len(data) > limit:
        raise ValueError(f"{what} is {len(data)} bytes of UTF-8, at most {limit} are stored: {text[:40]!r}…")
    return data


def _decode(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, np.ndarray):
        return _decode(value.item()) if value.shape == () else str(value)
    return str(value)


def _finite(value: float, what: str) -> float:
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{what} must be finite, got {value!r}")
    return number


def _check_storable(array: np.ndarray, what: str) -> None:
    """HDF5 stores numbers, byte strings and compounds of them; numpy unicode, objects and datetimes have no HDF5
    type (h5py would fail half-way through creating the file)."""

    def unstorable(dtype: np.dtype) -> np.dtype | None:
        if dtype.names:
            return next((bad for name in dtype.names if (bad := unstorable(dtype.fields[name][0]))), None)
        if dtype.subdtype is not None:
            return unstorable(dtype.subdtype[0])
        return dtype if dtype.kind in "OUMm" else None

    bad = unstorable(array.dtype)
    if bad is not None:
        raise ValueError(f"{what}: dtype {array.dtype} has a {bad} field, which HDF5 cannot store (use numbers or 'S')")


def _sites_blob(sites: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    try:
        np.save(buffer, np.asarray(sites), allow_pickle=False)
    except ValueError as error:
        raise ValueError(f"alignment sites: {error}") from None
    return buffer.getvalue()


def _extend_and_write(dataset: h5py.Dataset, start: int, values: np.ndarray) -> None:
    """Write ``values`` at ``start``, growing the dataset if needed (never shrinking: after a resume the tail past
    the committed rows is a discarded attempt that is simply overwritten)."""
    stop = start + len(values)
    if dataset.shape[0] < stop:
        dataset.resize((stop, *dataset.shape[1:]))
    if len(values):
        dataset[start:stop] = values


def _create_table(group: h5py.Group, name: str, dtype: Any, chunk_rows: int) -> h5py.Dataset:
    return group.create_dataset(name, shape=(0,), maxshape=(None,), dtype=dtype, chunks=(chunk_rows,))


def _create_counter(group: h5py.Group, name: str) -> h5py.Dataset:
    # contiguous and written at creation, so its 8 bytes have their place in the file before SWMR starts
    return group.create_dataset(name, data=np.int64(0))


class _Counter:
    """A committed-row counter: a scalar int64 dataset and the value the writer last committed to it."""

    def __init__(self, dataset: h5py.Dataset) -> None:
        self.dataset = dataset
        self.value = int(dataset[()])


# ---------------------------------------------------------------------------------------------------------------
# Writer
# ---------------------------------------------------------------------------------------------------------------
class ScanFileWriter:
    """Writes one scan file; every ``write_*`` call returns only once its data is durable.

    Make one with :meth:`create` (a new scan) or :meth:`resume` (continue an unfinished one). Not thread-safe: use
    it from the scan worker only. ``close()`` without ``finish()`` leaves the scan ``running`` on disk, which
    readers report as interrupted.

    Parameters
    ----------
    file : h5py.File
        Open in SWMR write mode (internal; use :meth:`create` or :meth:`resume`).
    path : Path
        The file's final path.
    lock : _WriterLock
        The held writer lock.
    fsync : bool
        Whether each commit is fsync'ed (power-loss durability) or only flushed to the operating system (enough
        against a killed process, not against a power cut).
    """

    def __init__(self, file: h5py.File, path: Path, lock: _WriterLock, *, fsync: bool) -> None:
        self._file = file
        self.path = path
        self._lock = lock
        self._fsync = fsync
        self._fd: int | None = file.id.get_vfd_handle() if fsync else None
        self._closed = False
        self._finished = False
        self._load_state()

    # -- opening -------------------------------------------------------------------------------------------------
    @classmethod
    def create(
        cls,
        path: str | os.PathLike[str],
        *,
        recipe_toml: str,
        station_toml: str,
        identities: Mapping[str, str],
        plan_lines: np.ndarray,
        powers_w: Sequence[float],
        plan_summary: str,
        operator: str,
        lot_id: str,
        wafer_id: str,
        software_version: str,
        extra: Mapping[str, str] | None = None,
        fsync: bool = True,
    ) -> ScanFileWriter:
        """Create a new scan file with everything a reader needs, ready for lines.

        Parameters
        ----------
        path : path-like
            The file to create; it must not exist.
        recipe_toml, station_toml : str
            The recipe and station TOML texts, stored verbatim.
        identities : mapping of str to str
            Instrument identity per role.
        plan_lines : ndarray
            The plan's line table (one row per line of a pass), stored as given; its length is the number of
            lines every pass must have for the scan to be complete.
        powers_w : sequence of float
            Laser power of each pass (W, finite, > 0); one pass per power, at least one.
        plan_summary, operator, lot_id, wafer_id, software_version : str
            Stored as root attributes.
        extra : mapping of str to str, optional
            Further key/value pairs (stored under ``/settings/extra``).
        fsync : bool, default True
            fsync every commit (see the class documentation).

        Returns
        -------
        ScanFileWriter

        Raises
        ------
        FileExistsError
            ``path`` exists (a scan file is never overwritten).
        ValueError, TypeError
            An argument is invalid (the message names it).
        """
        path = Path(path)
        if path.exists():
            raise FileExistsError(
                f"{path} already exists: a scan file is never overwritten (choose another name, or resume it)"
            )
        powers = tuple(_finite(power, "powers_w entries") for power in powers_w)
        if not powers or any(power <= 0 for power in powers):
            raise ValueError(f"powers_w must be one or more powers > 0 W, got {list(powers_w)!r}")
        plan_lines = np.asarray(plan_lines)
        if plan_lines.ndim != 1:
            raise ValueError(f"plan_lines must be a 1-D table (one row per line), got shape {plan_lines.shape}")
        _check_storable(plan_lines, "plan_lines")
        texts = {
            "recipe_toml": recipe_toml,
            "station_toml": station_toml,
            "plan_summary": plan_summary,
            "operator": operator,
            "lot_id": lot_id,
            "wafer_id": wafer_id,
            "software_version": software_version,
        }
        for name, value in texts.items():
            _encode(value, name)
        for what, mapping in (("identities", identities), ("extra", extra or {})):
            for key, value in mapping.items():
                if not isinstance(key, str) or not key or "/" in key:
                    raise ValueError(f"{what}: key {key!r} must be a non-empty str without '/'")
                _encode(value, f"{what}[{key!r}]")

        file_uuid = str(_uuid.uuid4())
        temporary = path.with_name(f".{path.name}.{file_uuid[:8]}.creating")
        lock = _WriterLock(temporary)
        file: h5py.File | None = None
        try:
            file_id = h5py.h5f.create(os.fsencode(temporary), h5py.h5f.ACC_EXCL, fapl=_file_access())
            file = h5py.File(file_id)
            _build_layout(
                file,
                uuid=file_uuid,
                texts=texts,
                identities=identities,
                extra=extra or {},
                plan_lines=plan_lines,
                powers_w=powers,
            )
            file.flush()
            # From here on HDF5 orders its writes so that the file on disk is always consistent.
            file.swmr_mode = True
            file.flush()
            os.fsync(file.id.get_vfd_handle())
            lock.acquire()
            _publish(temporary, path)
            lock.path = path
        except BaseException:
            lock.release()
            if file is not None:
                with contextlib.suppress(Exception):
                    file.close()
            with contextlib.suppress(FileNotFoundError):
                temporary.unlink()
            raise
        writer = cls(file, path, lock, fsync=fsync)
        with writer._closed_on_error():
            writer.event("info", f"scan file created (format {FORMAT_NAME} {FORMAT_VERSION}, uuid {file_uuid})")
        return writer

    @classmethod
    def resume(cls, path: str | os.PathLike[str], *, fsync: bool = True) -> ScanFileWriter:
        """Reopen an unfinished scan file (running/interrupted, aborted or failed) to continue it.

        Anything written after the last committed line (a line, spectrum, … whose commit did not complete) is
        discarded: readers never saw it and the next writes overwrite it. The status goes back to ``running``.

        Raises
        ------
        FileNotFoundError
            ``path`` does not exist.
        ScanFileError
            The file is complete, not a plmapper scan file, damaged, written by a newer plmapper, not appendable
            (not written in the HDF5 1.10 format), or being written by another writer right now.
        """
        path = Path(path)
        with ScanFile(path) as stored:  # validates the format before anything is touched
            status = stored.status
            previous = (stored.stored_status, [stored.lines_complete(index) for index in range(stored.pass_count)])
        if status is ScanStatus.COMPLETE:
            raise ScanFileError(f"{path}: the scan is complete; there is nothing to resume")
        if status is ScanStatus.RUNNING:
            raise ScanFileError(f"{path} is being written by another writer (a running scan); it cannot be resumed")
        lock = _WriterLock(path)
        lock.acquire()  # before touching the file: a second resume of the same file stops here
        file: h5py.File | None = None
        try:
            repaired = _clear_writer_marks(path)
            try:
                file_id = h5py.h5f.open(
                    os.fsencode(path), h5py.h5f.ACC_RDWR | h5py.h5f.ACC_SWMR_WRITE, fapl=_file_access()
                )
            except OSError as error:
                raise ScanFileError(f"{path}: HDF5 cannot open the file for appending: {error}") from None
            file = h5py.File(file_id)
            writer = cls(file, path, lock, fsync=fsync)
        except BaseException:
            if file is not None:
                with contextlib.suppress(Exception):
                    file.close()
            lock.release()
            raise
        stored_status, lines = previous
        was = "interrupted" if stored_status is ScanStatus.RUNNING else stored_status.value
        with writer._closed_on_error():
            if stored_status is not ScanStatus.RUNNING:
                writer._reopen()
            writer.event(
                "info",
                f"resumed ({was}{', writer flags cleared' if repaired else ''}); lines complete per pass: {lines}",
            )
        return writer

    def _load_state(self) -> None:
        """Committed counts and table ends, from the counters (the file's only authority)."""
        file = self._file
        missing = [name for name in _WRITER_ITEMS if name not in file]
        if missing:
            raise ScanFileError(
                f"{self.path} was not written by plmapper's writer and cannot be appended to (missing: "
                f"{', '.join(missing)})"
            )
        self._powers_w = tuple(float(power) for power in np.atleast_1d(file.attrs["powers_w"]))
        self._planned_lines = len(file["plan/lines"]) if "plan/lines" in file else 0
        self._passes: list[tuple[h5py.Dataset, h5py.Dataset, _Counter]] = []
        self._sample_ends: list[int] = []
        for index in range(len(self._powers_w)):
            group = file[f"passes/{_pass_name(index)}"]
            counter = _Counter(group["lines_complete"])
            lines = group["lines"]
            records = _checked_records(lines, counter.value, group["samples_v"].shape[0], f"{self.path} pass {index}")
            self._passes.append((group["samples_v"], lines, counter))
            self._sample_ends.append(_end(records, "sample_offset", "sample_count"))
        self._alignment = _Counter(file["alignment/count"])
        self._spectra = _Counter(file["spectra/count"])
        self._power = _Counter(file["power_log/count"])
        self._events = _Counter(file["events/count"])
        self._message_length = _Counter(file["status/message_length"])
        self._sites_end = _end(file["alignment/records"][: self._alignment.value], "sites_offset", "sites_length")
        self._points_end = _end(file["spectra/records"][: self._spectra.value], "point_offset", "point_count")
        self._text_end = _end(file["events/records"][: self._events.value], "text_offset", "text_length")
        self._pending_power: list[tuple[float, float]] = []
        self._pending_since = 0.0

    # -- writing -------------------------------------------------------------------------------------------------
    @property
    def pass_count(self) -> int:
        """Number of passes (one per laser power)."""
        return len(self._powers_w)

    def next_line(self, pass_index: int) -> int:
        """The next line to write in ``pass_index``: lines ``0 .. n-1`` of that pass are complete."""
        return self._pass(pass_index)[2].value

    def spectra_count(self) -> int:
        """Number of committed spectra."""
        return self._spectra.value

    def write_line(self, pass_index: int, line_index: int, samples_v: np.ndarray, record: Mapping[str, float]) -> None:
        """Append one line's samples and record; when this returns the line is durable and complete.

        Parameters
        ----------
        pass_index : int
            Which pass (index into ``powers_w``).
        line_index : int
            Must be :meth:`next_line` of that pass (lines are written in order, none twice).
        samples_v : array_like
            The line's samples (1-D, volts); stored as float32. May be empty.
        record : mapping of str to float
            Every field of :data:`MEASURED_FIELDS` (NaN where not measured). ``line_index``, ``sample_offset`` and
            ``sample_count`` are filled in by the writer; if given they must agree.

        Raises
        ------
        ValueError
            Wrong pass or line, a line beyond the plan, missing or unknown record fields, samples not 1-D.
        """
        self._check_open()
        samples_dataset, lines_dataset, counter = self._pass(pass_index)
        expected = counter.value
        if line_index != expected:
            raise ValueError(f"pass {pass_index}: line {line_index} written, but the next line is {expected}")
        if line_index >= self._planned_lines:
            raise ValueError(f"pass {pass_index}: line {line_index} is beyond the plan's {self._planned_lines} lines")
        samples = np.asarray(samples_v)
        if samples.ndim != 1 or samples.dtype.kind not in "fiu":
            raise ValueError(f"samples_v must be a 1-D array of numbers, got {samples.dtype} of shape {samples.shape}")
        offset = self._sample_ends[pass_index]
        row = np.zeros((), dtype=LINE_RECORD_DTYPE)
        row["line_index"], row["sample_offset"], row["sample_count"] = line_index, offset, samples.size
        unknown = sorted(set(record) - set(LINE_RECORD_DTYPE.names))
        missing = sorted(set(MEASURED_FIELDS) - set(record))
        if unknown or missing:
            raise ValueError(f"line record: missing fields {missing}, unknown fields {unknown}")
        for name in _WRITER_FILLED_FIELDS:
            if name in record and float(record[name]) != float(row[name]):
                raise ValueError(f"line record: {name} = {record[name]!r}, but the writer stores {row[name]}")
        for name in MEASURED_FIELDS:
            row[name] = float(record[name])
        _extend_and_write(samples_dataset, offset, samples.astype(np.float32, copy=False))
        _extend_and_write(lines_dataset, line_index, row[np.newaxis])
        self._commit([(counter, line_index + 1)])
        self._sample_ends[pass_index] = offset + samples.size

    def write_alignment(
        self, *, offset_x_um: float, offset_y_um: float, rotation_deg: float, residual_um: float, sites: np.ndarray
    ) -> None:
        """Store an alignment result (the last one written is the current one).

        ``sites`` is stored exactly as given (any numeric, bytes or unicode dtype, structured or not) as an NPY
        blob; arrays holding Python objects are refused.
        """
        self._check_open()
        values = [
            _finite(value, name)
            for value, name in (
                (offset_x_um, "offset_x_um"),
                (offset_y_um, "offset_y_um"),
                (rotation_deg, "rotation_deg"),
            )
        ]
        residual = float(residual_um)  # NaN allowed: an alignment from fewer sites has no residual
        blob = np.frombuffer(_sites_blob(sites), dtype=np.uint8)
        row = np.zeros((), dtype=ALIGNMENT_RECORD_DTYPE)
        row["wall_time_unix_s"] = time.time()
        row["offset_x_um"], row["offset_y_um"], row["rotation_deg"] = values
        row["residual_um"] = residual
        row["sites_offset"], row["sites_length"] = self._sites_end, blob.size
        _extend_and_write(self._file["alignment/sites_npy"], self._sites_end, blob)
        _extend_and_write(self._file["alignment/records"], self._alignment.value, row[np.newaxis])
        self._commit([(self._alignment, self._alignment.value + 1)])
        self._sites_end += blob.size

    def write_spectrum(
        self,
        *,
        col: int,
        row: int,
        x_um: float,
        y_um: float,
        reason: str,
        wavelength_nm: np.ndarray,
        power_w_per_nm: np.ndarray,
    ) -> None:
        """Append one spectrum of chip (col, row) at wafer position (x_um, y_um); ``reason`` ≤ 64 bytes UTF-8."""
        self._check_open()
        wavelength = np.asarray(wavelength_nm, dtype=np.float64)
        power = np.asarray(power_w_per_nm, dtype=np.float64)
        if wavelength.ndim != 1 or wavelength.shape != power.shape:
            raise ValueError(
                f"spectrum: wavelength_nm {wavelength.shape} and power_w_per_nm {power.shape} must be 1-D and equal"
            )
        record = np.zeros((), dtype=SPECTRUM_RECORD_DTYPE)
        record["col"], record["row"] = int(col), int(row)
        record["x_um"], record["y_um"] = float(x_um), float(y_um)
        record["wall_time_unix_s"] = time.time()
        record["reason"] = _encode(reason, "spectrum reason", _SPECTRUM_REASON_BYTES)
        record["point_offset"], record["point_count"] = self._points_end, wavelength.size
        _extend_and_write(self._file["spectra/wavelength_nm"], self._points_end, wavelength)
        _extend_and_write(self._file["spectra/power_w_per_nm"], self._points_end, power)
        _extend_and_write(self._file["spectra/records"], self._spectra.value, record[np.newaxis])
        self._commit([(self._spectra, self._spectra.value + 1)])
        self._points_end += wavelength.size

    def log_power(self, time_s: float, power_w: float) -> None:
        """Record a laser power reading.

        Readings are buffered and committed with the next line, spectrum, event or finish, and at least every
        second (so a crash loses at most the last second of readings that no line needed).
        """
        self._check_open()
        if not self._pending_power:
            self._pending_since = time.monotonic()
        self._pending_power.append((float(time_s), float(power_w)))
        if (
            time.monotonic() - self._pending_since >= _POWER_LOG_COMMIT_S
            or len(self._pending_power) >= _POWER_LOG_COMMIT_ROWS
        ):
            self._commit([])

    def event(self, level: str, message: str) -> None:
        """Record what happened (fault, retry, pause, resume, …) with the wall time; committed at once."""
        self._check_open()
        self._append_event(level, message)

    def finish(self, status: ScanStatus, message: str = "") -> None:
        """Declare the scan finished: ``complete``, ``aborted`` or ``failed``, with a message for people.

        ``complete`` requires every planned line of every pass. The tables are trimmed to their committed rows,
        then the status is written last: a crash inside ``finish`` leaves a ``running`` (interrupted) file.
        """
        self._check_open()
        status = ScanStatus(status)
        if status not in _FINAL_STATUSES:
            raise ValueError(f"finish() takes complete, aborted or failed, not {status.value}")
        if status is ScanStatus.COMPLETE:
            short = [index for index in range(self.pass_count) if self.next_line(index) < self._planned_lines]
            if short:
                done = [self.next_line(index) for index in short]
                raise ValueError(
                    f"cannot finish as complete: passes {short} have {done} of {self._planned_lines} lines"
                )
        text = np.frombuffer(_encode(message, "message"), dtype=np.uint8)
        _extend_and_write(self._file["status/message_utf8"], 0, text)
        self._file["status/finished_unix_s"][()] = time.time()
        self._commit([(self._message_length, text.size)])
        self._trim()
        self._file["status/code"][()] = np.int8(_STATUS_CODES[status.value])
        self._flush_and_sync()
        self._finished = True

    def close(self) -> None:
        """Commit buffered power readings and close the file (without ``finish`` the scan stays ``running``)."""
        if self._closed:
            return
        try:
            if not self._finished and self._pending_power:
                self._commit([])
        finally:
            self._closed = True
            try:
                self._file.close()
            finally:
                self._lock.release()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()

    # -- internals -----------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _closed_on_error(self) -> Iterator[None]:
        """Close the writer (and release its lock) if the block fails: the caller never gets it."""
        try:
            yield
        except BaseException:
            with contextlib.suppress(Exception):
                self.close()
            raise

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError(f"{self.path}: the scan file writer is closed")
        if self._finished:
            raise ValueError(f"{self.path}: the scan is finished; nothing more can be written")

    def _pass(self, pass_index: int) -> tuple[h5py.Dataset, h5py.Dataset, _Counter]:
        if not 0 <= pass_index < len(self._passes):
            raise ValueError(f"pass {pass_index} does not exist (passes 0..{len(self._passes) - 1})")
        return self._passes[pass_index]

    def _reopen(self) -> None:
        """Back to ``running`` after an abort or failure: no finish time, no finish message."""
        self._file["status/code"][()] = np.int8(_STATUS_CODES["running"])
        self._file["status/finished_unix_s"][()] = math.nan
        self._commit([(self._message_length, 0)])

    def _append_event(self, level: str, message: str) -> None:
        text = np.frombuffer(_encode(message, "event message"), dtype=np.uint8)
        level_bytes = _encode(level, "event level", _EVENT_LEVEL_BYTES)
        if not level_bytes:
            raise ValueError("event level must not be empty")
        record = np.zeros((), dtype=EVENT_RECORD_DTYPE)
        record["wall_time_unix_s"] = time.time()
        record["level"] = level_bytes
        record["text_offset"], record["text_length"] = self._text_end, text.size
        _extend_and_write(self._file["events/text_utf8"], self._text_end, text)
        _extend_and_write(self._file["events/records"], self._events.value, record[np.newaxis])
        self._commit([(self._events, self._events.value + 1)])
        self._text_end += text.size

    def _commit(self, updates: list[tuple[_Counter, int]]) -> None:
        """Make everything written so far durable, then advance the counters, then make those durable.

        The flush (and fsync) between payload and counters is the commit barrier: a counter on disk never covers
        rows whose bytes are not on disk.
        """
        if self._pending_power:
            rows = np.array(self._pending_power, dtype=np.float64).view(POWER_LOG_DTYPE).ravel()
            _extend_and_write(self._file["power_log/records"], self._power.value, rows)
            updates = [*updates, (self._power, self._power.value + rows.size)]
            self._pending_power = []
        self._flush_and_sync()
        if not updates:
            return
        for counter, value in updates:
            counter.dataset[()] = np.int64(value)
        self._flush_and_sync()
        for counter, value in updates:
            counter.value = value

    def _flush_and_sync(self) -> None:
        self._file.flush()
        if self._fd is not None:
            (os.fdatasync if hasattr(os, "fdatasync") else os.fsync)(self._fd)

    def _trim(self) -> None:
        """Cut every table to its committed rows (drops what interrupted attempts left behind)."""
        file = self._file
        sizes: list[tuple[h5py.Dataset, int]] = []
        for (samples, lines, counter), end in zip(self._passes, self._sample_ends, strict=True):
            sizes += [(samples, end), (lines, counter.value)]
        sizes += [
            (file["alignment/records"], self._alignment.value),
            (file["alignment/sites_npy"], self._sites_end),
            (file["spectra/records"], self._spectra.value),
            (file["spectra/wavelength_nm"], self._points_end),
            (file["spectra/power_w_per_nm"], self._points_end),
            (file["power_log/records"], self._power.value),
            (file["events/records"], self._events.value),
            (file["events/text_utf8"], self._text_end),
            (file["status/message_utf8"], self._message_length.value),
        ]
        for dataset, size in sizes:
            if dataset.shape[0] != size:
                dataset.resize((size,))
        self._flush_and_sync()


_WRITER_ITEMS = (
    "plan/lines",
    "status/message_utf8",
    "status/message_length",
    "status/finished_unix_s",
    "alignment/records",
    "alignment/sites_npy",
    "alignment/count",
    "spectra/records",
    "spectra/wavelength_nm",
    "spectra/power_w_per_nm",
    "spectra/count",
    "power_log/records",
    "power_log/count",
    "events/records",
    "events/text_utf8",
    "events/count",
)
"""Optional for readers, but a file must have them all to be appended to."""


def _pass_name(index: int) -> str:
    return f"pass_{index:03d}"


def _end(records: np.ndarray, offset_field: str, length_field: str) -> int:
    """End of the slice the last record points at (0 for none)."""
    if len(records) == 0:
        return 0
    last = records[-1]
    return int(last[offset_field]) + int(last[length_field])


def _checked_records(lines: h5py.Dataset, count: int, sample_extent: int, where: str) -> np.ndarray:
    """The first ``count`` line records, checked to be lines 0..count-1 laid end to end in the samples."""
    if count < 0 or count > lines.shape[0]:
        raise ScanFileError(f"{where}: {count} lines marked complete but {lines.shape[0]} records stored: damaged")
    records = lines[:count]
    if count == 0:
        return records
    if "line_index" not in (records.dtype.names or ()) or "sample_offset" not in records.dtype.names:
        raise ScanFileError(f"{where}: line records lack line_index/sample_offset fields")
    offsets = records["sample_offset"].astype(np.int64)
    counts = records["sample_count"].astype(np.int64)
    if (
        not np.array_equal(records["line_index"], np.arange(count))
        or offsets[0] != 0
        or np.any(offsets[1:] != offsets[:-1] + counts[:-1])
        or np.any(counts < 0)
        or offsets[-1] + counts[-1] > sample_extent
    ):
        raise ScanFileError(f"{where}: line records are not lines 0..{count - 1} laid end to end: damaged")
    return records


def _build_layout(
    file: h5py.File,
    *,
    uuid: str,
    texts: Mapping[str, str],
    identities: Mapping[str, str],
    extra: Mapping[str, str],
    plan_lines: np.ndarray,
    powers_w: tuple[float, ...],
) -> None:
    """Create every group, dataset and attribute the file will ever have (SWMR allows no new objects later)."""
    attrs = file.attrs
    attrs["format_name"] = FORMAT_NAME
    attrs["format_version"] = np.int64(FORMAT_VERSION)
    attrs["uuid"] = uuid
    attrs["created_utc"] = _utc_now_iso()
    for name in ("software_version", "operator", "lot_id", "wafer_id", "plan_summary"):
        attrs[name] = texts[name]
    attrs["powers_w"] = np.asarray(powers_w, dtype=np.float64)
    attrs["writer_hdf5_version"] = h5py.version.hdf5_version
    attrs["writer_h5py_version"] = h5py.version.version

    status = file.create_group("status")
    status.create_dataset("code", data=np.int8(_STATUS_CODES["running"]), dtype=_STATUS_DTYPE)
    _create_table(status, "message_utf8", np.uint8, 1024)
    _create_counter(status, "message_length")
    status.create_dataset("finished_unix_s", data=np.float64(np.nan))

    settings = file.create_group("settings")
    text_type = h5py.string_dtype("utf-8")
    settings.create_dataset("recipe_toml", data=texts["recipe_toml"], dtype=text_type)
    settings.create_dataset("station_toml", data=texts["station_toml"], dtype=text_type)
    for name, mapping in (("identities", identities), ("extra", extra)):
        group = settings.create_group(name)
        for key, value in mapping.items():
            group.attrs[key] = value

    plan = file.create_group("plan")
    plan.create_dataset("lines", data=plan_lines)

    passes = file.create_group("passes")
    for index, power in enumerate(powers_w):
        group = passes.create_group(_pass_name(index))
        group.attrs["pass_index"] = np.int64(index)
        group.attrs["power_w"] = power
        _create_table(group, "samples_v", np.float32, SAMPLES_CHUNK)
        _create_table(group, "lines", LINE_RECORD_DTYPE, _CHUNKS["lines"])
        _create_counter(group, "lines_complete")

    alignment = file.create_group("alignment")
    _create_table(alignment, "records", ALIGNMENT_RECORD_DTYPE, 16)
    _create_table(alignment, "sites_npy", np.uint8, _CHUNKS["bytes"])
    _create_counter(alignment, "count")

    spectra = file.create_group("spectra")
    _create_table(spectra, "records", SPECTRUM_RECORD_DTYPE, _CHUNKS["records"])
    _create_table(spectra, "wavelength_nm", np.float64, _CHUNKS["points"])
    _create_table(spectra, "power_w_per_nm", np.float64, _CHUNKS["points"])
    _create_counter(spectra, "count")

    power_log = file.create_group("power_log")
    _create_table(power_log, "records", POWER_LOG_DTYPE, _CHUNKS["points"])
    _create_counter(power_log, "count")

    events = file.create_group("events")
    _create_table(events, "records", EVENT_RECORD_DTYPE, _CHUNKS["records"])
    _create_table(events, "text_utf8", np.uint8, _CHUNKS["bytes"])
    _create_counter(events, "count")


def _publish(temporary: Path, path: Path) -> None:
    """Give the finished temporary file its final name without ever replacing an existing file."""
    try:
        os.link(temporary, path)  # fails if path exists: no race can overwrite a scan file
    except FileExistsError:
        raise FileExistsError(
            f"{path} already exists: a scan file is never overwritten (choose another name, or resume it)"
        ) from None
    except OSError:
        # file systems without hard links: rename (which replaces on POSIX), after checking once more
        if path.exists():
            raise FileExistsError(f"{path} already exists: a scan file is never overwritten") from None
        os.rename(temporary, path)
    else:
        temporary.unlink()
    with contextlib.suppress(OSError):  # make the new name itself durable (not possible on every OS)
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)


# ---------------------------------------------------------------------------------------------------------------
# Reader
# ---------------------------------------------------------------------------------------------------------------
class ScanFile:
    """Read a scan file: finished, interrupted, or being written right now. Opening never modifies the file.

    A file with the "open for write" superblock flags set (a live or dead SWMR writer) is opened in SWMR read
    mode; every counter is re-read on each call, so a reader of a running scan sees lines as they are committed.

    Parameters
    ----------
    path : path-like
        The scan file.
    for_update : bool
        Open it for writing too (the analysis adds its ``/results`` group through :attr:`h5file`); refused while a
        scan still writes the file.

    Attributes
    ----------
    path : Path
    h5file : h5py.File
        The open HDF5 file (for the analysis results; the scan data is only written by :class:`ScanFileWriter`).
    format_version : int
    uuid, created_utc, operator, lot_id, wafer_id, software_version, plan_summary : str
        As written at creation ("" where an imported file has none).
    recipe_toml, station_toml : str
    identities, extra : dict of str to str
    plan_lines : ndarray
        The plan's line table as given to ``create`` (empty if absent).
    powers_w : tuple of float
        Laser power of each pass.

    Raises
    ------
    FileNotFoundError
        ``path`` does not exist.
    ScanFileError
        Not HDF5, not a plmapper scan file, a newer format version, or damaged (the message says which).
    """

    def __init__(self, path: str | os.PathLike[str], *, for_update: bool = False) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise FileNotFoundError(f"{self.path}: no such scan file")
        if self.path.is_dir():
            raise ScanFileError(f"{self.path} is a directory, not a scan file")
        if not h5py.is_hdf5(self.path):
            raise ScanFileError(f"{self.path} is not an HDF5 file, so not a plmapper scan file")
        superblock = _read_superblock(self.path)
        self._swmr = superblock is not None and bool(superblock[1] & (_FLAG_WRITE | _FLAG_SWMR_WRITE))
        if for_update and _writer_alive(self.path):
            raise ScanFileError(f"{self.path}: a scan is still writing this file; wait until it has stopped")
        self._swmr = self._swmr and not for_update
        self._frozen = for_update
        self._checked_cache: dict[int, np.ndarray] = {}
        access = h5py.h5f.ACC_RDWR if for_update else h5py.h5f.ACC_RDONLY
        try:
            file_id = h5py.h5f.open(
                os.fsencode(self.path),
                access | (h5py.h5f.ACC_SWMR_READ if self._swmr else 0),
                fapl=_reader_access(),
            )
        except OSError as error:
            raise ScanFileError(f"{self.path}: HDF5 cannot open the file: {error}") from None
        self._file = self.h5file = h5py.File(file_id)
        try:
            self._read_header()
        except BaseException:
            self._file.close()
            raise

    def _read_header(self) -> None:
        file, where = self._file, self.path
        attrs = file.attrs
        if "format_name" not in attrs:
            found = ", ".join(sorted(file.keys())[:8]) or "nothing"
            raise ScanFileError(
                f"{where} is an HDF5 file but not a plmapper scan file (no format_name attribute; it holds {found})"
            )
        name = _decode(attrs["format_name"])
        if name != FORMAT_NAME:
            raise ScanFileError(f"{where} is a {name!r} file, not a {FORMAT_NAME!r} scan file")
        try:
            self.format_version = int(attrs["format_version"])
        except (KeyError, TypeError, ValueError):
            raise ScanFileError(f"{where}: format_version attribute missing or not an integer") from None
        if self.format_version > FORMAT_VERSION:
            raise ScanFileError(
                f"{where} has scan file format version {self.format_version}; this plmapper reads versions up to "
                f"{FORMAT_VERSION} (update plmapper)"
            )
        if self.format_version < 1:
            raise ScanFileError(f"{where}: invalid format_version {self.format_version}")
        missing = [key for key in ("uuid", "created_utc", "powers_w") if key not in attrs]
        missing += [path for path in ("status/code", "passes") if path not in file]
        if missing:
            raise ScanFileError(f"{where}: required items missing: {', '.join(missing)}")
        self.uuid = _decode(attrs["uuid"])
        self.created_utc = _decode(attrs["created_utc"])
        self.operator, self.lot_id, self.wafer_id, self.software_version, self.plan_summary = (
            _decode(attrs.get(key, ""))
            for key in ("operator", "lot_id", "wafer_id", "software_version", "plan_summary")
        )
        self.powers_w: tuple[float, ...] = tuple(float(power) for power in np.atleast_1d(attrs["powers_w"]))
        settings = file.get("settings")
        self.recipe_toml = _text_dataset(settings, "recipe_toml")
        self.station_toml = _text_dataset(settings, "station_toml")
        self.identities = _attrs_dict(settings, "identities")
        self.extra = _attrs_dict(settings, "extra")
        self.plan_lines: np.ndarray = file["plan/lines"][()] if "plan/lines" in file else np.zeros(0)
        for index in range(self.pass_count):
            group = file.get(f"passes/{_pass_name(index)}")
            if group is None or any(name not in group for name in ("samples_v", "lines", "lines_complete")):
                raise ScanFileError(f"{where}: passes/{_pass_name(index)} (samples_v, lines, lines_complete) missing")
            self._checked(index)

    # -- what the file says --------------------------------------------------------------------------------------
    @property
    def pass_count(self) -> int:
        """Number of passes (one per laser power)."""
        return len(self.powers_w)

    @property
    def stored_status(self) -> ScanStatus:
        """The status as written in the file (``running`` also for a dead writer)."""
        code = int(self._fresh(self._file["status/code"])[()])
        names = {value: key for key, value in _STATUS_CODES.items()}
        if code not in names:
            raise ScanFileError(f"{self.path}: unknown status code {code}")
        return ScanStatus(names[code])

    @property
    def status(self) -> ScanStatus:
        """The scan's status; ``interrupted`` for a ``running`` file that no live writer holds."""
        stored = self.stored_status
        if stored is ScanStatus.RUNNING and not _writer_alive(self.path):
            return ScanStatus.INTERRUPTED
        return stored

    @property
    def message(self) -> str:
        """The message given to ``finish`` ("" while running)."""
        status = self._file.get("status")
        if status is None or "message_utf8" not in status:
            return ""
        length = int(self._fresh(status["message_length"])[()]) if "message_length" in status else None
        data = self._fresh(status["message_utf8"])[:length]
        return bytes(data).decode("utf-8", errors="replace")

    @property
    def finished_unix_s(self) -> float:
        """When ``finish`` was called (NaN before)."""
        dataset = self._file.get("status/finished_unix_s")
        return float(self._fresh(dataset)[()]) if dataset is not None else math.nan

    def lines_complete(self, pass_index: int) -> int:
        """Number of complete lines of ``pass_index`` (lines 0..n-1)."""
        return int(self._fresh(self._pass_group(pass_index)["lines_complete"])[()])

    def line_records(self, pass_index: int) -> np.ndarray:
        """The records of the complete lines of ``pass_index`` (LINE_RECORD_DTYPE, possibly empty)."""
        return self._checked(pass_index).astype(LINE_RECORD_DTYPE)

    def line_samples(self, pass_index: int, line_index: int) -> np.ndarray:
        """The samples (float32 volts) of complete line ``line_index`` of ``pass_index``.

        Raises
        ------
        IndexError
            The line is not complete (or does not exist).
        """
        group = self._pass_group(pass_index)
        count = self.lines_complete(pass_index)
        if not 0 <= line_index < count:
            raise IndexError(f"pass {pass_index}: line {line_index} is not complete (lines 0..{count - 1} are)")
        record = self._fresh(group["lines"])[line_index]
        offset, size = int(record["sample_offset"]), int(record["sample_count"])
        samples = self._fresh(group["samples_v"])
        if int(record["line_index"]) != line_index or offset < 0 or size < 0 or offset + size > samples.shape[0]:
            raise ScanFileError(f"{self.path}: pass {pass_index} line {line_index}: record does not match the data")
        return np.asarray(samples[offset : offset + size], dtype=np.float32)

    def pass_samples(self, pass_index: int) -> np.ndarray:
        """All samples of the complete lines of ``pass_index``, end to end (float32; slice with the records)."""
        records = self._checked(pass_index)
        end = _end(records, "sample_offset", "sample_count")
        return np.asarray(self._fresh(self._pass_group(pass_index)["samples_v"])[:end], dtype=np.float32)

    def samples_between(self, pass_index: int, start: int, stop: int) -> np.ndarray:
        """Samples ``start..stop-1`` of ``pass_index`` (float32), which must lie within its complete lines: one read
        for a run of consecutive lines (their records give the offsets)."""
        end = _end(self._checked(pass_index), "sample_offset", "sample_count")
        if not 0 <= start <= stop <= end:
            raise IndexError(f"pass {pass_index}: samples {start}..{stop} are outside the complete data (0..{end})")
        return np.asarray(self._fresh(self._pass_group(pass_index)["samples_v"])[start:stop], dtype=np.float32)

    def spectra_count(self) -> int:
        """Number of complete spectra."""
        return self._count("spectra")

    def alignment(self) -> dict[str, Any] | None:
        """The current (last written) alignment, or None.

        Returns
        -------
        dict or None
            ``offset_x_um``, ``offset_y_um``, ``rotation_deg``, ``residual_um``, ``wall_time_unix_s`` (float) and
            ``sites`` (the array exactly as given to ``write_alignment``).
        """
        count = self._count("alignment")
        if count == 0:
            return None
        record = self._fresh(self._file["alignment/records"])[count - 1]
        start, length = int(record["sites_offset"]), int(record["sites_length"])
        blob = bytes(self._fresh(self._file["alignment/sites_npy"])[start : start + length])
        try:
            sites = np.load(io.BytesIO(blob), allow_pickle=False)
        except (ValueError, OSError, EOFError) as error:
            raise ScanFileError(f"{self.path}: alignment sites are not a valid NPY blob: {error}") from None
        result: dict[str, Any] = {name: float(record[name]) for name in ALIGNMENT_RECORD_DTYPE.names[:5]}
        result["sites"] = sites
        return result

    def spectra(self) -> list[dict[str, Any]]:
        """Every complete spectrum, in the order taken.

        Returns
        -------
        list of dict
            ``col``, ``row`` (int), ``x_um``, ``y_um``, ``wall_time_unix_s`` (float), ``reason`` (str),
            ``wavelength_nm`` and ``power_w_per_nm`` (float64 arrays).
        """
        count = self._count("spectra")
        if count == 0:
            return []
        group = self._file["spectra"]
        records = self._fresh(group["records"])[:count]
        end = _end(records, "point_offset", "point_count")
        wavelength = self._fresh(group["wavelength_nm"])[:end]
        power = self._fresh(group["power_w_per_nm"])[:end]
        result = []
        for record in records:
            start, stop = int(record["point_offset"]), int(record["point_offset"]) + int(record["point_count"])
            result.append(
                {
                    "col": int(record["col"]),
                    "row": int(record["row"]),
                    "x_um": float(record["x_um"]),
                    "y_um": float(record["y_um"]),
                    "wall_time_unix_s": float(record["wall_time_unix_s"]),
                    "reason": _decode(record["reason"]),
                    "wavelength_nm": np.asarray(wavelength[start:stop], dtype=np.float64),
                    "power_w_per_nm": np.asarray(power[start:stop], dtype=np.float64),
                }
            )
        return result

    def power_log(self) -> np.ndarray:
        """Committed laser power readings (POWER_LOG_DTYPE: time_s, power_w)."""
        count = self._count("power_log")
        if count == 0:
            return np.zeros(0, dtype=POWER_LOG_DTYPE)
        return self._fresh(self._file["power_log/records"])[:count].astype(POWER_LOG_DTYPE)

    def events(self) -> list[tuple[float, str, str]]:
        """Committed events as (wall_time_unix_s, level, message), oldest first."""
        count = self._count("events")
        if count == 0:
            return []
        records = self._fresh(self._file["events/records"])[:count]
        text = bytes(self._fresh(self._file["events/text_utf8"])[: _end(records, "text_offset", "text_length")])
        return [
            (
                float(record["wall_time_unix_s"]),
                _decode(record["level"]),
                text[int(record["text_offset"]) : int(record["text_offset"]) + int(record["text_length"])].decode(
                    "utf-8", errors="replace"
                ),
            )
            for record in records
        ]

    def summary(self) -> str:
        """What the file holds and what is complete, for people (several lines)."""
        status = self.status
        planned = len(self.plan_lines)
        explain = {
            ScanStatus.RUNNING: "being written now",
            ScanStatus.COMPLETE: "every line of every pass is in the file",
            ScanStatus.ABORTED: "stopped on request; resume to continue",
            ScanStatus.FAILED: "stopped by an error; resume to continue",
            ScanStatus.INTERRUPTED: "the writer stopped without finishing (crash, kill, power cut); resume to continue",
        }[status]
        out = [
            f"{self.path}: {FORMAT_NAME} v{self.format_version}, uuid {self.uuid}",
            f"  wafer {self.wafer_id or '?'} of lot {self.lot_id or '?'}, operator {self.operator or '?'}, "
            f"created {self.created_utc}, software {self.software_version or '?'}",
            f"  status: {status.value} ({explain})" + (f": {self.message}" if self.message else ""),
        ]
        if self.plan_summary:
            out.append(f"  plan: {self.plan_summary}")
        for index, power in enumerate(self.powers_w):
            done = self.lines_complete(index)
            records = self.line_records(index)
            samples = int(records["sample_count"].sum(dtype=np.int64))
            of = f" of {planned}" if planned or not done else ""  # an imported file may have no plan
            share = f" ({done / planned:.0%})" if planned else ""
            out.append(f"  pass {index} at {power * 1e3:g} mW: {done}{of} lines complete{share}, {samples:,} samples")
        alignment = self.alignment()
        if alignment is None:
            out.append("  alignment: none")
        else:
            out.append(
                f"  alignment: offset ({alignment['offset_x_um']:.2f}, {alignment['offset_y_um']:.2f}) µm, "
                f"rotation {alignment['rotation_deg']:.4f}°, residual {alignment['residual_um']:.3g} µm, "
                f"{len(alignment['sites'])} sites"
            )
        events = self.events()
        last = f" (last: {events[-1][1]}: {events[-1][2]})" if events else ""
        out.append(
            f"  spectra: {self.spectra_count()}, power readings: {len(self.power_log())}, events: {len(events)}{last}"
        )
        return "\n".join(out)

    def close(self) -> None:
        """Close the file."""
        self._file.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()

    # -- internals -----------------------------------------------------------------------------------------------
    def _fresh(self, dataset: h5py.Dataset) -> h5py.Dataset:
        """In SWMR read mode, drop cached metadata and chunks so the dataset shows what the writer committed."""
        if self._swmr:
            dataset.refresh()
        return dataset

    def _pass_group(self, pass_index: int) -> h5py.Group:
        if not 0 <= pass_index < self.pass_count:
            raise ValueError(f"pass {pass_index} does not exist (passes 0..{self.pass_count - 1})")
        return self._file[f"passes/{_pass_name(pass_index)}"]

    def _checked(self, pass_index: int) -> np.ndarray:
        if self._frozen and pass_index in self._checked_cache:
            return self._checked_cache[pass_index]
        group = self._pass_group(pass_index)
        count = self.lines_complete(pass_index)
        samples_extent = self._fresh(group["samples_v"]).shape[0]
        records = _checked_records(self._fresh(group["lines"]), count, samples_extent, f"{self.path} pass {pass_index}")
        if self._frozen:  # opened for update: no writer can add lines, so the check holds for good
            self._checked_cache[pass_index] = records
        return records

    def _count(self, group_name: str) -> int:
        group = self._file.get(group_name)
        if group is None or "count" not in group:
            return 0
        return int(self._fresh(group["count"])[()])


def _reader_access() -> h5py.h5p.PropFAID:
    fapl = _file_access()
    fapl.set_libver_bounds(h5py.h5f.LIBVER_EARLIEST, h5py.h5f.LIBVER_LATEST)  # read any format an importer wrote
    return fapl


def _text_dataset(group: h5py.Group | None, name: str) -> str:
    if group is None or name not in group:
        return ""
    return _decode(group[name][()])


def _attrs_dict(group: h5py.Group | None, name: str) -> dict[str, str]:
    if group is None or name not in group:
        return {}
    return {key: _decode(value) for key, value in group[name].attrs.items()}
