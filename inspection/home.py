"""The station's data directory: deployed models, the scan history, access and audit files.

``$PLMAPPER_HOME`` when set, else ``~/.plmapper``. A module of its own (no heavy imports), so every tool that only
needs the location (the history, access checks) starts fast.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["station_home"]


def station_home() -> Path:
    """The station's data directory: ``$PLMAPPER_HOME``, or ``~/.plmapper``."""
    return Path(os.environ.get("PLMAPPER_HOME") or Path.home() / ".plmapper")
