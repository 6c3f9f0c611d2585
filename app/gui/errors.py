"""Errors as the operator sees them: what happened and what to do, never a traceback.

The traceback goes to the log (``logging``, logger ``plmapper.gui``) for whoever maintains the station.

Examples
--------
>>> from drivers.errors import InterlockOpenError
>>> title, text = describe_error(InterlockOpenError("laser (OBIS)", "the interlock is open"))
>>> title
'Laser interlock open'
>>> "close the enclosure" in text
True
"""

from __future__ import annotations

import logging

from app.gui.exporting import ExportInputError
from drivers.errors import (
    InstrumentConnectionError,
    InstrumentError,
    InstrumentTimeoutError,
    InterlockOpenError,
    StageFaultError,
    StageLimitError,
)
from inspection.access import AccessDenied, AccessError, AuditLogError, NoEngineerPassword
from inspection.alignment import AlignmentError
from inspection.scanfile import ScanFileError
from inspection.settings import SettingsError

log = logging.getLogger("plmapper.gui")


def describe_error(error: BaseException) -> tuple[str, str]:
    """A short title and a message with what to do, for a dialog."""
    if isinstance(error, InterlockOpenError):
        return "Laser interlock open", f"{error}\n\nWhat to do: close the enclosure (interlock), then try again."
    if isinstance(error, StageLimitError):
        return "Stage limit", f"{error}\n\nWhat to do: move the other way or use a smaller step; check the wafer."
    if isinstance(error, StageFaultError):
        return "Stage fault", f"{error}\n\nWhat to do: check the stage and the wafer for obstructions, then retry."
    if isinstance(error, InstrumentTimeoutError):
        return "Instrument not answering", (
            f"{error}\n\nWhat to do: check that the instrument is on and connected, then reconnect the station."
        )
    if isinstance(error, InstrumentConnectionError):
        return "Instrument unreachable", (
            f"{error}\n\nWhat to do: check the cable or network and the station file, then reconnect the station."
        )
    if isinstance(error, InstrumentError):
        return "Instrument error", f"{error}\n\nWhat to do: fix the cause named above, then try again."
    if isinstance(error, AlignmentError):
        return "Alignment failed", (
            f"{error}\n\nWhat to do: check that the wafer matches the recipe and lies flat near the chuck's centre, "
            "then start again."
        )
    if isinstance(error, ExportInputError):
        return "Cannot export", (
            f"{error}\n\nWhat to do: the message names the file and what it lacks. In this window File ▸ Analyse "
            "(Ctrl+Shift+A) analyses a scan file and File ▸ Classify (Ctrl+Shift+C) classifies it. Nothing was written."
        )
    if isinstance(error, ScanFileError):
        return "Scan file problem", f"{error}\n\nWhat to do: choose another scan file, or another output file name."
    if isinstance(error, SettingsError):
        return "Settings problem", f"{error}\n\nWhat to do: correct the fields listed above."
    if isinstance(error, AccessDenied):
        return "Not allowed", f"{error}"
    if isinstance(error, NoEngineerPassword):
        return "No engineer password", (
            f"{error}\n\nWhat to do: the station's administrator sets it once on this computer with "
            "'plmapper access set-password'."
        )
    if isinstance(error, AuditLogError):
        return "Audit log not written", (
            f"{error}\n\nWhat to do: free disk space or fix the permissions of the station's data directory; "
            "nothing was changed."
        )
    if isinstance(error, AccessError):
        return "Access problem", f"{error}"
    if isinstance(error, FileNotFoundError):
        return "File not found", f"{error}\n\nWhat to do: choose an existing file."
    if isinstance(error, FileExistsError):
        return "File exists", f"{error}\n\nWhat to do: choose another file name, or resume the scan in that file."
    if isinstance(error, PermissionError):
        return "Not allowed", f"{error}\n\nWhat to do: choose a folder you may write to."
    if isinstance(error, (ValueError, OSError)):
        return "Cannot do that", f"{error}"
    log.error("unexpected error", exc_info=error)
    return "Unexpected error", (
        f"{type(error).__name__}: {error}\n\nThis is a fault in plmapper; the details are in the log. "
        "What to do: save your work and report it to the station engineer."
    )
