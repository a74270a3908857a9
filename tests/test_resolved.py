"""What a registry alias last resolved to, kept while the SQLite registry is unchanged (bgremoval.serving.resolved)."""

from __future__ import annotations

import sqlite3

import pytest

from bgremoval.serving import resolved

URI = "models:/shop@champion"


@pytest.fixture
def registry(tmp_path, monkeypatch):
    """A SQLite file in its default rollback-journal mode, and a cache of our own."""
    monkeypatch.setenv(resolved.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    path = tmp_path / "registry.db"
    with sqlite3.connect(path) as db:
        db.execute("create table aliases (alias text, version int)")
        db.execute("insert into aliases values ('champion', 1)")
    db.close()
    return path


def _write(path, sql):
    db = sqlite3.connect(path)
    with db:
        db.execute(sql)
    db.close()


def test_the_state_moves_with_every_committed_write_and_only_then(registry):
    uri = f"sqlite:///{registry}"
    before = resolved.registry_state(URI, uri)
    assert before is not None and before["db"] == str(registry.resolve())
    assert resolved.registry_state(URI, uri) == before  # reading changes nothing
    _write(registry, "update aliases set version = 2 where alias = 'champion'")  # same size: an alias moved
    after = resolved.registry_state(URI, uri)
    assert after["change_counter"] == before["change_counter"] + 1 and after["size"] == before["size"]


def test_what_cannot_be_known_without_mlflow_is_never_cached(registry, tmp_path, monkeypatch):
    uri = f"sqlite:///{registry}"
    assert resolved.registry_state("runs:/abc/model", uri) is None  # a run's model: no alias to keep
    assert resolved.registry_state(URI, "http://127.0.0.1:5000") is None and resolved.registry_state(URI, None) is None
    assert resolved.registry_state(URI, f"sqlite:///{tmp_path / 'missing.db'}") is None
    (tmp_path / "text.db").write_text("not a database " * 10)
    assert resolved.registry_state(URI, f"sqlite:///{tmp_path / 'text.db'}") is None
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", "postgresql://127.0.0.1/registry")  # the registry is elsewhere
    assert resolved.registry_state(URI, uri) is None
    monkeypatch.delenv("MLFLOW_REGISTRY_URI")
    db = sqlite3.connect(registry)
    assert db.execute("pragma journal_mode=wal").fetchone() == ("wal",)  # writes go to registry.db-wal first
    assert resolved.registry_state(URI, uri) is None
    db.close()


def test_an_entry_is_used_only_in_the_state_it_was_kept_in_and_with_the_same_file(registry, tmp_path):
    uri = f"sqlite:///{registry}"
    served = tmp_path / "artifacts" / "model.onnx"
    served.parent.mkdir()
    served.write_bytes(b"weights")
    config = {"runtime": "onnxruntime", "size": 288}
    state = resolved.registry_state(URI, uri)
    assert resolved.lookup(URI, state) is None  # nothing kept yet
    resolved.remember(URI, state, served, config)
    assert resolved.lookup(URI, state) == (served, config)
    assert resolved.lookup("models:/shop@challenger", state) is None  # another alias: its own entry
    _write(registry, "update aliases set version = 2 where alias = 'champion'")
    assert resolved.lookup(URI, resolved.registry_state(URI, uri)) is None  # the registry changed
    state = resolved.registry_state(URI, uri)
    resolved.remember(URI, state, served, config)
    served.write_bytes(b"other weights")  # the file itself changed
    assert resolved.lookup(URI, state) is None
    served.unlink()
    assert resolved.lookup(URI, state) is None
    assert resolved.lookup(URI, None) is None and resolved.remember(URI, None, served, config) is None


def test_a_cache_that_cannot_be_written_is_skipped(registry, tmp_path, monkeypatch):
    (tmp_path / "blocked").write_text("a file where the cache folder would be")
    monkeypatch.setenv(resolved.CACHE_ENV, str(tmp_path / "blocked"))
    served = tmp_path / "model.onnx"
    served.write_bytes(b"weights")
    state = resolved.registry_state(URI, f"sqlite:///{registry}")
    resolved.remember(URI, state, served, {})  # no error: the next lookup asks MLflow again
    assert resolved.lookup(URI, state) is None
