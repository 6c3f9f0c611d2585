"""A guard against reference-count bugs of PySide6 6.12.0:

* ``SignalInstance.emit`` returns ``True`` without the reference it owes, so every signal emitted from Python (ours
  and pyqtgraph's, a mouse move emits several) takes one reference from the ``True`` singleton;
* every call of a wrapped C++ method that returns ``void`` (``setToolTip``, ``setEnabled``, ``setText`` …), and
  every return from a Python override called by Qt (an event filter), takes one reference from ``None``.

After enough of them CPython "deallocates" the singleton and aborts ("Fatal Python error: bool_dealloc" or
"none_dealloc"), at the latest when the interpreter exits.

:func:`guard_bool_singletons` measures the losses and, where there is one, gives ``True``, ``False`` and ``None`` a
reserve of references no session can use up: in effect the immortality that Python 3.12+ gives them anyway.
Importing :mod:`app.gui` calls it once. Remove it when the PySide6 in use no longer leaks (``emit_leaks_true()``
and ``void_call_leaks_none()`` are then False).
"""

from __future__ import annotations

import ctypes
import sys

from PySide6.QtCore import QObject, Signal

RESERVE = 1 << 40
"""References added to each bool singleton when the leak is present."""

_guarded = False


class _Probe(QObject):
    signal = Signal(int)


def emit_leaks_true() -> bool:
    """True if emitting a signal from Python takes a reference from ``True`` (PySide6 6.12.0)."""
    probe = _Probe()
    before = sys.getrefcount(True)
    for _ in range(8):
        probe.signal.emit(0)
    return sys.getrefcount(True) < before


def void_call_leaks_none() -> bool:
    """True if calling a wrapped C++ method that returns void takes a reference from ``None`` (PySide6 6.12.0)."""
    probe = _Probe()
    before = sys.getrefcount(None)
    for _ in range(64):
        probe.setObjectName("probe")
    return sys.getrefcount(None) <= before - 32


def guard_bool_singletons() -> bool:
    """Apply the guard if this PySide6 needs it (once per process); True if it was applied."""
    global _guarded
    if _guarded:
        return True
    singletons: list[object] = []
    if emit_leaks_true():
        singletons += [True, False]
    if void_call_leaks_none():
        singletons.append(None)
    if not singletons:
        return False
    for singleton in singletons:
        ctypes.c_ssize_t.from_address(id(singleton)).value += RESERVE
    _guarded = True
    return True
