"""Locks across processes and machines, held where the shared state lives: a PostgreSQL advisory lock
for a PostgreSQL database, a file lock beside a SQLite file or any other path."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)

_LOCAL_LOCK = threading.Lock()


def key_of(name: str) -> int:
    """A stable signed 64-bit advisory-lock key for a name."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


def file_lock(path: str | Path) -> contextlib.AbstractContextManager:
    """An exclusive lock on the file `path` (created if missing), from the filelock library: an OS lock, so it is
    released when the block ends or the process dies."""
    from filelock import FileLock

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return FileLock(str(path))


@contextlib.contextmanager
def engine_lock(engine, key: int) -> Iterator[None]:
    """A lock on a SQLAlchemy engine's database: advisory on PostgreSQL, a `<file>.lock` for SQLite."""
    dialect = engine.dialect.name
    if dialect == "postgresql":
        from sqlalchemy import text

        with engine.connect() as conn:
            conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": key})
            try:
                yield
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                conn.commit()
    elif dialect == "sqlite" and engine.url.database not in (None, "", ":memory:"):
        with file_lock(f"{engine.url.database}.lock"):
            yield
    else:  # one process (in-memory SQLite), or a database we hold no lock recipe for
        with _LOCAL_LOCK:
            yield


@contextlib.contextmanager
def named_lock(where: str, name: str) -> Iterator[None]:
    """A lock called `name` in `where`: a database URL (sqlite:///..., postgresql://...) or a file path.

    A file store (file:///.../mlruns, or its folder) is locked with a file inside it. An MLflow server
    URL (http://...) holds no lock of its own: the lock is then a file in the temp folder, which
    serialises processes on this machine only, and a warning says so (point `where` at a shared
    PostgreSQL or a lock file on a shared disk instead).
    """
    if where.startswith(("http://", "https://", "databricks")):
        digest = hashlib.sha256(f"{where}|{name}".encode()).hexdigest()[:16]
        log.warning("%s holds no locks: %s is held on this machine only; for registrations from several "
                    "machines set register.lock (or BGREMOVAL_REGISTRY_LOCK) to a postgresql:// URL", where, name)
        with file_lock(Path(tempfile.gettempdir()) / f"bgremoval-{digest}.lock"):
            yield
    elif where.startswith("file:") or Path(where).is_dir():
        from urllib.parse import unquote, urlparse

        folder = Path(unquote(urlparse(where).path)) if where.startswith("file:") else Path(where)
        with file_lock(folder / f".{name.replace(':', '-')}.lock"):
            yield
    elif "://" in where:
        import sqlalchemy

        engine = sqlalchemy.create_engine(where, poolclass=sqlalchemy.pool.NullPool)
        try:
            with engine_lock(engine, key_of(name)):
                yield
        finally:
            engine.dispose()
    else:
        with file_lock(where):  # a lock file on a disk the processes share
            yield
