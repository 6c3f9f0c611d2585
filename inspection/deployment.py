"""The station's current defect model: which one is deployed, and where it is kept.

``plmapper deploy MODEL.skops`` checks the model file (it must load: trusted types only, a plmapper model card),
copies it into the station's model store and makes it the current one; ``plmapper analyze``/``classify`` then use
it unless told otherwise. The store lives in the station's data directory, ``$PLMAPPER_HOME`` (default
``~/.plmapper``)::

    $PLMAPPER_HOME/models/
    ├── <model_id>.skops        every model ever deployed, under its card's id (never overwritten)
    ├── current.json            {model_id, name, file, sha256, deployed_utc, deployed_by}
    └── deployments.jsonl       one line per deployment, appended (the history)

A deployed file whose checksum no longer matches ``current.json`` is refused: a model changed behind the
station's back is not the one that was validated.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import shutil
import time
from pathlib import Path
from typing import Any

from inspection.home import station_home
from inspection.model import DefectModel, ModelFileError, load_model

__all__ = ["current_model_info", "deploy_model", "deployed_model"]


def _store() -> Path:
    return station_home() / "models"


def deploy_model(path: str | Path, *, user: str | None = None) -> dict[str, Any]:
    """Make the model at ``path`` the station's current one; returns the deployment record.

    Raises
    ------
    ModelFileError
        The file is not a usable plmapper model (nothing is changed).
    """
    model = load_model(path)
    store = _store()
    store.mkdir(parents=True, exist_ok=True)
    target = store / f"{model.model_id}.skops"
    if not target.exists():
        partial = target.with_name(target.name + ".partial")
        shutil.copyfile(path, partial)
        partial.replace(target)
    record = {
        "model_id": model.model_id,
        "name": model.name,
        "file": target.name,
        "sha256": hashlib.sha256(target.read_bytes()).hexdigest(),
        "source": str(Path(path).resolve()),
        "deployed_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "deployed_by": user or getpass.getuser(),
    }
    if record["sha256"] != model.sha256:
        raise ModelFileError(f"{target}: a different file with this model's id is already deployed; not changed")
    current = store / "current.json"
    partial = current.with_name("current.json.partial")
    partial.write_text(json.dumps(record, indent=2))
    partial.replace(current)
    with (store / "deployments.jsonl").open("a", encoding="utf-8") as history:
        history.write(json.dumps(record) + "\n")
    return record


def current_model_info() -> dict[str, Any] | None:
    """The current deployment record, or None when no model was deployed on this station."""
    current = _store() / "current.json"
    if not current.is_file():
        return None
    try:
        return json.loads(current.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ModelFileError(f"{current}: unreadable deployment record ({error}); deploy the model again") from None


def deployed_model() -> DefectModel | None:
    """The station's current model, checked against its deployment record, or None when none is deployed."""
    info = current_model_info()
    if info is None:
        return None
    path = _store() / info["file"]
    model = load_model(path)
    if model.sha256 != info["sha256"]:
        raise ModelFileError(
            f"{path}: the deployed model file changed since it was deployed (checksum differs); "
            "deploy a model again with 'plmapper deploy'"
        )
    return model
