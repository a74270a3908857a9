"""The champion gate: the pure decision, and register_run against a real MLflow registry (sqlite)."""

from __future__ import annotations

import time
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

from bgremoval import registry, serving
from bgremoval.registry import CHALLENGER, CHAMPION, PREVIOUS, decide
from bgremoval.manifest import build_manifest, pair_files
from tests.conftest import disc_image

NAME = "gate-test"


def test_first_model_becomes_champion():
    d = decide("max_f", 0.5, None, 0.002)
    assert d.promoted and "first model" in d.reason


@pytest.mark.parametrize("new,alias", [(0.803, CHAMPION), (0.802, CHALLENGER), (0.801, CHALLENGER), (0.79, CHALLENGER)])
def test_champion_moves_only_past_the_min_delta(new, alias):
    assert decide("max_f", new, 0.80, 0.002).alias == alias


def test_lower_is_better_for_mae():
    assert decide("mae", 0.030, 0.040, 0.002).promoted
    d = decide("mae", 0.045, 0.040, 0.002)
    assert not d.promoted and "lower is better" in d.reason


def test_baseline_requirement_blocks_a_model_worse_than_stock():
    d = decide("max_f", 0.85, None, 0.002, baseline=0.86, require_beats_baseline=True)
    assert d.alias == CHALLENGER and "stock U²-NetP" in d.reason
    assert decide("max_f", 0.87, None, 0.002, baseline=0.86, require_beats_baseline=True).promoted
    assert decide("max_f", 0.85, None, 0.002, baseline=0.86, require_beats_baseline=False).promoted


def test_unknown_metric_is_named():
    with pytest.raises(ValueError, match="register.metric 'accuracy'"):
        decide("accuracy", 1.0, None, 0.0)


@pytest.fixture
def setup(tmp_path, toy_model):
    """A sqlite registry, toy test images, and a helper that 'trains' (logs a run) and registers it."""
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    mlflow.create_experiment("gate", artifact_location=(tmp_path / "artifacts").as_uri())
    mlflow.set_experiment("gate")
    folder = tmp_path / "data"
    for i in range(4):
        img, mask = disc_image(40, 56, seed=i)
        (folder / "images").mkdir(parents=True, exist_ok=True)
        (folder / "masks").mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(folder / "images" / f"disc_{i:03d}.png")
        Image.fromarray(mask).save(folder / "masks" / f"disc_{i:03d}.png")
    test = build_manifest(pair_files(folder), max_pixels=10**6)
    example = serving.png_bytes(Image.fromarray(disc_image(16, 16)[0]))

    def register(score: float, test_rows=test, metric="max_f"):
        with mlflow.start_run() as run:
            mlflow.set_tag("git.commit", "abc123")
        metrics = {"max_f": score, "mae": 1 - score, "iou": score, "dice": score, "boundary_f": score,
                   "baseline": {"max_f": 0.5, "mae": 0.5, "iou": 0.5, "dice": 0.5, "boundary_f": 0.5}, "n_images": len(test_rows)}
        return registry.register_run(MlflowClient(), NAME, run.info.run_id, toy_model, metrics, test_rows, size=32,
                                     max_pixels=10**6, serve_max_pixels=10**6, serve_max_request_mb=50, example=example, metric=metric,
                                     min_delta=0.002, require_beats_baseline=False), run.info.run_id

    return register, test


def aliases(client):
    return {alias: str(v) for alias, v in client.get_registered_model(NAME).aliases.items()}


def test_gate_both_ways_in_a_real_registry(setup):
    register, _ = setup
    client = MlflowClient()
    first, _ = register(0.80)
    assert (first.alias, first.version) == (CHAMPION, "1") and aliases(client) == {CHAMPION: "1"}

    worse, _ = register(0.70)
    assert worse.alias == CHALLENGER and worse.champion_version == "1" and worse.champion_score == 0.8
    assert aliases(client) == {CHAMPION: "1", CHALLENGER: "2"}

    barely, _ = register(0.801)  # better, but not by more than min_delta
    assert barely.alias == CHALLENGER and aliases(client)[CHAMPION] == "1"

    better, run_id = register(0.85)
    assert better.alias == CHAMPION and better.decision == "promoted"
    assert aliases(client) == {CHAMPION: "4", PREVIOUS: "1", CHALLENGER: "3"}

    mv = client.get_model_version(NAME, "4")
    assert mv.tags["metric.max_f"] == "0.850000" and mv.tags["baseline.max_f"] == "0.500000"
    assert mv.tags["git.commit"] == "abc123" and mv.tags["decision"] == CHAMPION and len(mv.tags["test_set"]) == 64
    assert client.get_run(run_id).data.tags["registry.version"] == "4"
    # The champion serves: the alias resolves to a loadable bgremoval model.
    segmenter, _ = serving.load(f"models:/{NAME}@champion")
    assert segmenter.size == 32


def test_registering_the_same_run_again_adds_no_version(setup, toy_model):
    register, test = setup
    client = MlflowClient()
    first, run_id = register(0.80)
    metrics = {"max_f": 0.80, "baseline": {}, "n_images": len(test)}
    again = registry.register_run(client, NAME, run_id, toy_model, metrics, test, size=32, max_pixels=10**6,
                                  serve_max_pixels=10**6, serve_max_request_mb=50, example=b"", metric="max_f", min_delta=0.002,
                                  require_beats_baseline=False)
    assert again.version == first.version and again.alias == CHAMPION
    assert len(client.search_model_versions(f"name='{NAME}'")) == 1


def test_a_champion_from_another_test_set_is_rescored_on_this_one(setup):
    register, test = setup
    register(0.99, test_rows=test.iloc[:2])  # champion's recorded 0.99 is on other images
    result, _ = register(0.50, test_rows=test)
    # The recorded 0.99 is not used: the champion (the same toy model) is scored here, now.
    assert result.champion_score is not None and result.champion_score != 0.99
    assert 0 < result.champion_score <= 1
    expected = CHAMPION if 0.50 - result.champion_score > 0.002 else CHALLENGER
    assert result.alias == expected


def test_the_same_model_served_differently_is_a_new_version_and_keeps_the_title(setup, toy_model):
    register, test = setup
    client = MlflowClient()
    first, run_id = register(0.80)
    metrics = {"max_f": 0.80, "baseline": {}, "n_images": len(test)}
    example = serving.png_bytes(Image.fromarray(disc_image(16, 16)[0]))
    again = registry.register_run(client, NAME, run_id, toy_model, metrics, test, size=48, max_pixels=10**6,
                                  serve_max_pixels=10**6, serve_max_request_mb=50, example=example, metric="max_f", min_delta=0.002,
                                  require_beats_baseline=False)
    assert again.version != first.version and again.alias == CHAMPION and "new serving set-up" in again.reason
    assert aliases(client) == {CHAMPION: again.version, PREVIOUS: first.version}


def register_at_barrier(tracking_uri: str, artifacts: str, model_file: str, data: str, score: float, barrier, results) -> None:
    """One registration in its own process: log a run, wait for the others, then register all at once."""
    mlflow.set_tracking_uri(tracking_uri)
    experiment = mlflow.get_experiment_by_name("gate") or mlflow.get_experiment(
        mlflow.create_experiment("gate", artifact_location=artifacts))
    mlflow.set_experiment(experiment_id=experiment.experiment_id)
    test = build_manifest(pair_files(Path(data)), max_pixels=10**6)
    with mlflow.start_run() as run:
        pass
    metrics = {"max_f": score, "baseline": {"max_f": 0.5}, "n_images": len(test)}
    example = serving.png_bytes(Image.fromarray(disc_image(16, 16)[0]))
    barrier.wait(timeout=300)
    record = registry.register_run(MlflowClient(), NAME, run.info.run_id, Path(model_file), metrics, test, size=32,
                                   max_pixels=10**6, serve_max_pixels=10**6, serve_max_request_mb=50, example=example, metric="max_f",
                                   min_delta=0.002, require_beats_baseline=False)
    results.put(record.to_dict())


def register_concurrently(tracking_uri: str, tmp_path: Path, model_file: Path, scores: list[float]) -> list[dict]:
    """Register len(scores) runs from as many processes released together; their records."""
    import multiprocessing as mp

    folder = tmp_path / "data"
    for i in range(3):
        img, mask = disc_image(40, 56, seed=i)
        for sub, arr in (("images", img), ("masks", mask)):
            (folder / sub).mkdir(parents=True, exist_ok=True)
            Image.fromarray(arr).save(folder / sub / f"disc_{i:03d}.png")
    mlflow.set_tracking_uri(tracking_uri)  # the experiment once, before the race
    mlflow.create_experiment("gate", artifact_location=(tmp_path / "artifacts").as_uri())
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(len(scores)), ctx.Queue()
    procs = [ctx.Process(target=register_at_barrier, args=(tracking_uri, (tmp_path / "artifacts").as_uri(),
                                                           str(model_file), str(folder), s, barrier, results))
             for s in scores]
    for p in procs:
        p.start()
    import queue

    records, deadline = [], time.monotonic() + 600
    while len(records) < len(scores) and time.monotonic() < deadline:
        try:
            records.append(results.get(timeout=1))
        except queue.Empty:  # a registration that crashed sends nothing: fail now, not at the deadline
            crashed = [p.exitcode for p in procs if p.exitcode not in (None, 0)]
            assert not crashed, f"a registration process failed (exit codes {crashed}); its traceback is above"
    for p in procs:
        p.join(timeout=60)
    assert [p.exitcode for p in procs] == [0] * len(scores)
    return records


def assert_consistent_aliases(client, records: list[dict], scores: list[float]) -> None:
    """The best model is champion whatever the order; every alias agrees with its version's decision."""
    assert len({r["version"] for r in records}) == len(scores)
    by_version = {r["version"]: r for r in records}
    names = aliases(client)
    champion = by_version[names[CHAMPION]]
    assert champion["score"] == max(scores)
    assert client.get_model_version(NAME, names[CHAMPION]).tags["decision"] == CHAMPION
    if CHALLENGER in names:
        assert client.get_model_version(NAME, names[CHALLENGER]).tags["decision"] == CHALLENGER
    # Decided one at a time: each promotion beat the champion it saw, so promoted scores only rise.
    promoted = sorted((r for r in records if r["alias"] == CHAMPION), key=lambda r: int(r["version"]))
    seen = [r["champion_score"] for r in records if r["champion_score"] is not None]
    assert sum(r["champion_version"] is None for r in records) == 1  # exactly one saw no champion yet
    assert all(r["score"] > (r["champion_score"] or 0) for r in promoted) and seen
    if PREVIOUS in names:
        assert by_version[names[PREVIOUS]]["score"] < max(scores)


def test_concurrent_registrations_keep_the_aliases_consistent(tmp_path, toy_model):
    scores = [0.70, 0.90, 0.80, 0.85]
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    records = register_concurrently(uri, tmp_path, toy_model, scores)
    mlflow.set_tracking_uri(uri)
    assert_consistent_aliases(MlflowClient(), records, scores)


@pytest.mark.parametrize("kind", ["sqlite", "file-uri", "folder", "lock-file"])
def test_the_registry_lock_excludes_a_second_holder(tmp_path, kind):
    """Whatever the registry is, a second process cannot take the lock while the first holds it."""
    import subprocess
    import sys

    from bgremoval.locks import named_lock

    (tmp_path / "mlruns").mkdir()
    where = {"sqlite": f"sqlite:///{tmp_path / 'mlflow.db'}", "file-uri": (tmp_path / "mlruns").as_uri(),
             "folder": str(tmp_path / "mlruns"), "lock-file": str(tmp_path / "registry.lock")}[kind]
    probe = ("import sys, threading, time; from bgremoval.locks import named_lock\n"
             "done = threading.Event()\n"
             "def take():\n"
             f"    with named_lock({where!r}, 'bgremoval-registry:x'): done.set()\n"
             "threading.Thread(target=take, daemon=True).start()\n"
             "sys.exit(0 if done.wait(float(sys.argv[1])) else 3)\n")
    with named_lock(where, "bgremoval-registry:x"):
        held = subprocess.run([sys.executable, "-c", probe, "3"], capture_output=True, text=True)
    assert held.returncode == 3, held.stderr  # blocked while we held it
    free = subprocess.run([sys.executable, "-c", probe, "30"], capture_output=True, text=True)
    assert free.returncode == 0, free.stderr  # and taken at once after
