"""A guard against a reference-count bug of PySide6 6.12.0: ``SignalInstance.emit`` returns ``True`` without the
reference it owes, so every signal emitted from Python (ours and pyqtgraph's, a mouse move emits several) takes one
reference from the ``True`` singleton. After a few hundred emissions CPython "deallocates" ``True`` and aborts
("Fatal Python error: bool_dealloc"), at the latest when the interpreter exits.

:func:`guard_bool_singletons` measures the loss on one emission and, if there is one, gives ``True`` and ``False``
a reserve of references no session can use up: in effect the immortality that Python 3.12+ gives them anyway.
Importing :mod:`app.gui` calls it once. Remove it when the PySide6 in use no longer leaks (``emit_leaks_true()``
is then False).
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


def guard_bool_singletons() -> bool:
    """Apply the guard if this PySide6 needs it (once per process); True if it was applied."""
    global _guarded
    if _guarded:
        return True
    if not emit_leaks_true():
        return False
    for singleton in (True, False):
        ctypes.c_ssize_t.from_address(id(singleton)).value += RESERVE
    _guarded = True
    return True
