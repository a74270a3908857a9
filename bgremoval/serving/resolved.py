"""Where models:/NAME@ALIAS last resolved to in a SQLite registry, so that a prediction from the registry opens
the served file without importing MLflow and its SQL store while the registry is unchanged.

The key is the registry file's own record of change: SQLite in its default rollback-journal mode adds one to
the change counter in its header (bytes 24 to 27) at every committed write, so a registration or an alias
moved since the lookup is seen, whoever made it. A registry in WAL mode (its writes go to a -wal file first), a
registry that is not a SQLite file, a registry URI of its own (MLFLOW_REGISTRY_URI) and anything but a
models:/ URI are never cached. An entry also checks the served file's size and modification time. The cache is
$BGREMOVAL_CACHE_DIR, else $XDG_CACHE_HOME/bgremoval, else ~/.cache/bgremoval; deleting it loses nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

CACHE_ENV = "BGREMOVAL_CACHE_DIR"
_SQLITE = "sqlite:///"
_HEADER = b"SQLite format 3\x00"


def cache_dir() -> Path:
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "bgremoval"


def registry_state(model_uri: str, tracking_uri: str | None) -> dict[str, Any] | None:
    """What identifies this version of the registry file a models:/ URI resolves in; None where that cannot be
    known without asking MLflow."""
    registry_uri = os.environ.get("MLFLOW_REGISTRY_URI")
    if (not model_uri.startswith("models:/") or not tracking_uri or not tracking_uri.startswith(_SQLITE)
            or "?" in tracking_uri or (registry_uri and registry_uri != tracking_uri)):
        return None
    path = Path(tracking_uri[len(_SQLITE):]).resolve()
    try:
        with open(path, "rb") as db:
            header = db.read(100)
        stat = path.stat()
    except OSError:
        return None
    rollback_journal = header[18:20] == b"\x01\x01"  # the file format's write and read versions: 2 is WAL
    if len(header) < 100 or not header.startswith(_HEADER) or not rollback_journal or Path(f"{path}-wal").exists():
        return None
    return {"db": str(path), "change_counter": int.from_bytes(header[24:28], "big"), "size": stat.st_size,
            "mtime_ns": stat.st_mtime_ns}


def _entry(model_uri: str, state: dict[str, Any]) -> Path:
    key = hashlib.sha256(f"{state['db']}\n{model_uri}".encode()).hexdigest()[:32]
    return cache_dir() / "resolved" / f"{key}.json"


def _file_stat(path: Path) -> list[int]:
    stat = path.stat()
    return [stat.st_size, stat.st_mtime_ns]


def lookup(model_uri: str, state: dict[str, Any] | None) -> tuple[Path, dict[str, Any]] | None:
    """The served file and serving configuration the URI resolved to in this very state of the registry."""
    if state is None:
        return None
    try:
        entry = json.loads(_entry(model_uri, state).read_text())
        served = Path(entry["served_file"])
        if entry["model_uri"] == model_uri and entry["state"] == state and entry["served_stat"] == _file_stat(served):
            return served, entry["config"]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None


def remember(model_uri: str, state: dict[str, Any] | None, served_file: Path, config: dict[str, Any]) -> None:
    """Keep what the URI resolved to (state: read before MLflow resolved it, so a write in between only makes
    the entry stale at once). A cache that cannot be written is skipped."""
    if state is None:
        return
    entry = _entry(model_uri, state)
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        record = {"model_uri": model_uri, "state": state, "served_file": str(Path(served_file).resolve()),
                  "served_stat": _file_stat(Path(served_file)), "config": config}
        with tempfile.NamedTemporaryFile("w", dir=entry.parent, suffix=".part", delete=False) as part:
            json.dump(record, part)
        os.replace(part.name, entry)
    except OSError:
        pass
