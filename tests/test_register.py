"""The champion gate: the pure decision, and registering a served model against a real MLflow registry
(sqlite): test scores as model metrics of the logged model on the test dataset, the champion rescored only
on a changed test set, and concurrent registrations decided one at a time."""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

import mlflow
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

from bgremoval import tracking
from bgremoval.data.masks import MaskChoices
from bgremoval.data.manifest import build_manifest, pair_files
from bgremoval.registry import versions
from bgremoval.registry.gate import CHALLENGER, CHAMPION, PREVIOUS, decide, side_by_side
from bgremoval.registry.versions import Gate, RegisterConfig, model_id_of, model_score, register_served, serving_key
from bgremoval.serving.config import CONFIG_FILE, ServingConfig
from bgremoval.serving.refine import Refine
from bgremoval.serving.render import png_bytes
from tests.helpers import disc_image, served_folder, tracking_store

NAME = "gate-test"
GATE = Gate("max_f", 0.002, False, 0.01)
BASELINE = {"max_f": 0.5, "mae": 0.5, "iou": 0.5, "boundary_f": 0.5}


# --- the decision ----------------------------------------------------------------------------------

def test_first_model_becomes_champion():
    d = decide("max_f", 0.5, None, min_delta=0.002, baseline=None, require_beats_baseline=False)
    assert d.promoted and "first model" in d.reason


@pytest.mark.parametrize("new,alias", [(0.803, CHAMPION), (0.802, CHALLENGER), (0.801, CHALLENGER), (0.79, CHALLENGER)])
def test_champion_moves_only_past_the_min_delta(new, alias):
    assert decide("max_f", new, 0.80, min_delta=0.002, baseline=None, require_beats_baseline=False).alias == alias


def test_lower_is_better_for_mae():
    no_baseline = {"min_delta": 0.002, "baseline": None, "require_beats_baseline": False}
    assert decide("mae", 0.030, 0.040, **no_baseline).promoted
    d = decide("mae", 0.045, 0.040, **no_baseline)
    assert not d.promoted and "lower is better" in d.reason
    assert not decide("mae", 0.039, 0.040, **no_baseline).promoted  # better, but not by the min delta


def test_baseline_requirement_blocks_a_model_worse_than_stock():
    d = decide("max_f", 0.85, None, min_delta=0.002, baseline=0.86, require_beats_baseline=True)
    assert d.alias == CHALLENGER and "stock U²-NetP" in d.reason and "require_beats_baseline" in d.reason
    assert decide("max_f", 0.87, None, min_delta=0.002, baseline=0.86, require_beats_baseline=True).promoted
    assert decide("max_f", 0.85, None, min_delta=0.002, baseline=0.86, require_beats_baseline=False).promoted
    # lower is better here too
    assert decide("mae", 0.05, None, min_delta=0.002, baseline=0.04, require_beats_baseline=True).alias == CHALLENGER
    # beats the champion, not stock
    assert not decide("max_f", 0.87, 0.80, min_delta=0.002, baseline=0.90, require_beats_baseline=True).promoted


@pytest.mark.parametrize("metric", ["accuracy", "dice"])
def test_a_metric_outside_the_headline_ones_is_named(metric):
    with pytest.raises(ValueError, match=f"register.metric '{metric}' is not one of mae, max_f, iou, boundary_f"):
        decide(metric, 1.0, None, min_delta=0.0, baseline=None, require_beats_baseline=False)


def test_the_register_config_reads_only_what_the_stage_declares(monkeypatch):
    from stages.common import declared_params

    params = declared_params("register", Path(__file__).resolve().parents[1])
    monkeypatch.delenv(versions.LOCK_ENV, raising=False)
    cfg = RegisterConfig.from_params(params)
    section = params["register"]
    assert cfg.model_name == section["model_name"] and cfg.lock == section["lock"]
    assert cfg.max_pixels == params["prepare"]["max_pixels"]
    assert cfg.gate == Gate(metric=section["metric"], min_delta=section["min_delta"],
                            require_beats_baseline=section["require_beats_baseline"],
                            max_reference_loss=section["max_reference_loss"])
    monkeypatch.setenv(versions.LOCK_ENV, "postgresql://db/locks")  # the environment wins over register.lock
    assert RegisterConfig.from_params(params).lock == "postgresql://db/locks"


# --- what identifies a version, and its recorded score --------------------------------------------------

def _record(alias: str, champion_version: str | None) -> versions.Registered:
    return versions.Registered(name=NAME, version="2", alias=alias, run_id="r", model_uri=f"models:/{NAME}/2",
                               decision="", reason="", metric="max_f", score=0.5, champion_version=champion_version,
                               champion_score=None)


def test_the_gates_report_puts_each_score_beside_stocks_in_its_own_direction():
    metrics = {"max_f": 0.95, "mae": 0.02, "hce": 30.0, "s_measure": 0.9, "size": 256, "ms_per_image": 80.0}
    baseline = {"max_f": 0.96, "mae": 0.03, "hce": 20.0, "s_measure": 0.9}
    table = side_by_side(metrics, baseline)
    assert list(table) == ["mae", "max_f", "s_measure", "hce"]  # headline first, then DIS; only what both hold
    assert [table[k]["ahead"] for k in table] == [True, False, False, False]  # lower MAE and HCE are better
    assert table["hce"] == {"model": 30.0, "stock_u2netp": 20.0, "ahead": False}


def test_the_serve_hint_names_only_an_alias_the_registry_holds():
    assert _record(CHAMPION, None).serve_hint() == (
        f"serve it: mlflow models serve -m models:/{NAME}@champion --env-manager local -p 5001")
    kept = _record(CHALLENGER, "1").serve_hint()
    assert "the champion stays version 1" in kept and f"models:/{NAME}@champion" in kept
    assert f"try version 2: mlflow models serve -m models:/{NAME}@challenger" in kept
    # Refused by the baseline requirement with no champion yet: @champion would not resolve, so it is not named.
    first = _record(CHALLENGER, None).serve_hint()
    assert "@champion" not in first and f"models:/{NAME}@challenger" in first and "no version is champion" in first


def test_the_serving_key_follows_the_served_files_bytes_and_how_it_is_served(tmp_path):
    for name, weights in (("a", b"weights one"), ("b", b"weights two")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "model.keras").write_bytes(weights)
    key_of = lambda folder: serving_key(folder, ServingConfig.read(folder))  # noqa: E731
    key = key_of(served_folder(tmp_path / "one", tmp_path / "a" / "model.keras"))
    assert len(key) == 16 and key == key_of(served_folder(tmp_path / "same", tmp_path / "a" / "model.keras"))
    assert key_of(served_folder(tmp_path / "other", tmp_path / "b" / "model.keras")) != key
    for change in ({"size": 48}, {"int8": True}, {"max_pixels": 10}, {"refine": Refine(False, True, 1.0)}):
        assert key_of(served_folder(tmp_path / str(len(change)) / next(iter(change)), tmp_path / "a" / "model.keras",
                                    **change)) != key, change


def test_a_versions_score_is_the_one_measured_on_this_test_set():
    metric = lambda key, value, digest: SimpleNamespace(key=key, value=value, dataset_digest=digest)  # noqa: E731
    logged = SimpleNamespace(metrics=[metric("test/max_f", 0.7, "other"), metric("test/iou", 0.6, "this"),
                                      metric("test/max_f", 0.8, "this")])
    client = SimpleNamespace(get_logged_model=lambda model_id: logged if model_id == "m-1" else None)
    mv = SimpleNamespace(model_id="m-1", source="file:///artifacts/m-1")
    assert model_score(client, mv, "max_f", "this") == 0.8
    assert model_score(client, mv, "max_f", "other") == 0.7
    assert model_score(client, mv, "max_f", "new") is None  # never scored on these images
    assert model_score(client, mv, "boundary_f", "this") is None
    # A registry that keeps no model_id (MLflow's SQLAlchemy store): the logged model named by the source.
    assert model_score(client, SimpleNamespace(model_id=None, source="models:/m-1"), "max_f", "this") == 0.8
    for source in ("file:///artifacts/model", "models:/other/3", "models:/other@champion", "runs:/abc/model", None):
        assert model_score(client, SimpleNamespace(model_id=None, source=source), "max_f", "this") is None, source


# --- a real registry ----------------------------------------------------------------------------------

def disc_folder(folder: Path, n: int) -> Path:
    for i in range(n):
        img, mask = disc_image(40, 56, seed=i)
        for sub, arr in (("images", img), ("masks", mask)):
            (folder / sub).mkdir(parents=True, exist_ok=True)
            Image.fromarray(arr).save(folder / sub / f"disc_{i:03d}.png")
    return folder


def rows_of(folder: Path):
    """The manifest rows of a folder, all in the test split."""
    rows = build_manifest(pair_files(folder), 10**6, MaskChoices(jpeg="threshold", resize=False))
    rows["split"] = "test"
    return rows



def register(served: Path, run_id: str, score: float, test, source: str, gate: Gate = GATE):
    """register_served as the register stage calls it, with evaluate's scores all equal to `score`."""
    metrics = {"max_f": score, "mae": 1 - score, "iou": score, "boundary_f": score, "size": 32, "ms_per_image": 5.0}
    example = png_bytes(Image.fromarray(disc_image(16, 16)[0]))
    return register_served(MlflowClient(), cfg=RegisterConfig(model_name=NAME, gate=gate, lock=None, max_pixels=10**6),
                           run_id=run_id, served_dir=served, metrics=metrics, baseline=BASELINE, test=test,
                           test_dataset=tracking.split_dataset(test, "test", source), example=example,
                           reference_dataset=None)


@pytest.fixture
def setup(tmp_path, toy_served):
    """A sqlite registry, toy test images, and a helper that 'trains' (logs a run) and registers it."""
    with tracking_store(f"sqlite:///{tmp_path / 'mlflow.db'}"):
        yield _setup(tmp_path, toy_served)


def _setup(tmp_path: Path, toy_served: Path) -> SimpleNamespace:
    mlflow.create_experiment("gate", artifact_location=(tmp_path / "artifacts").as_uri())
    mlflow.set_experiment("gate")
    test = rows_of(disc_folder(tmp_path / "data", 4))
    source = str(tmp_path / "data" / "manifest.parquet")

    def train_and_register(score: float, rows=test, served=toy_served):
        with mlflow.start_run() as run:
            mlflow.set_tag("git.commit", "abc123")
        return register(served, run.info.run_id, score, rows, source), run.info.run_id

    return SimpleNamespace(register=train_and_register, test=test, source=source, served=toy_served)


def aliases(client):
    return {alias: str(v) for alias, v in client.get_registered_model(NAME).aliases.items()}


def model_metrics(client, mv) -> dict[tuple[str, str], float]:
    """A version's model metrics, by (key, dataset digest)."""
    return {(m.key, m.dataset_digest): m.value for m in client.get_logged_model(model_id_of(mv)).metrics}



@pytest.mark.slow
def test_gate_both_ways_in_a_real_registry(setup):
    from bgremoval.serving.load import load

    client = MlflowClient()
    first, _ = setup.register(0.80)
    assert (first.alias, first.version) == (CHAMPION, "1") and aliases(client) == {CHAMPION: "1"}
    assert first.champion_version is None and first.decision == "promoted"

    worse, _ = setup.register(0.70)
    assert worse.alias == CHALLENGER and worse.champion_version == "1" and worse.champion_score == 0.8
    assert "champion stays version 1" in worse.serve_hint() and f"{NAME}@challenger" in worse.serve_hint()
    assert aliases(client) == {CHAMPION: "1", CHALLENGER: "2"}

    barely, _ = setup.register(0.801)  # better, but not by more than min_delta
    assert barely.alias == CHALLENGER and aliases(client)[CHAMPION] == "1"

    better, run_id = setup.register(0.85)
    assert better.alias == CHAMPION and better.decision == "promoted" and better.model_uri == f"models:/{NAME}/4"
    assert aliases(client) == {CHAMPION: "4", PREVIOUS: "1", CHALLENGER: "3"}

    digest = tracking.split_dataset(setup.test, "test", setup.source).digest
    mv = client.get_model_version(NAME, "4")
    scores = model_metrics(client, mv)
    assert scores[("test/max_f", digest)] == pytest.approx(0.85) and scores[("test/mae", digest)] == pytest.approx(0.15)
    assert {d for _, d in scores} == {digest}  # every score linked to the test dataset it was measured on
    assert client.get_logged_model(model_id_of(mv)).source_run_id == run_id
    assert mv.tags["git.commit"] == "abc123" and mv.tags["decision"] == CHAMPION and mv.tags["test_set"] == digest
    assert mv.tags["n_test_images"] == "4" and mv.tags["runtime"] == "keras" and mv.tags["input_size"] == "32"
    assert not [k for k in mv.tags if k.startswith("metric.")]  # scores are model metrics, not tags
    assert "max_f 0.8500 on 4 test images (stock U²-NetP 0.5000)" in mv.description
    assert client.get_run(run_id).data.tags["registry.version"] == "4"
    assert client.get_run(run_id).data.tags["registry.alias"] == CHAMPION
    # The champion serves: the alias resolves to a loadable bgremoval model.
    served = load(f"models:/{NAME}@champion")
    assert served.config == ServingConfig.read(setup.served) and served.config.size == 32


@pytest.mark.slow
def test_a_resolved_champion_opens_without_mlflow_until_the_registry_changes(setup, tmp_path, monkeypatch):
    """The first load asks MLflow and keeps where the alias led; the next ones, in this process or a new
    `bgremoval predict`, open that file without importing MLflow; a new champion is seen at once."""
    import subprocess
    import sys

    import mlflow.artifacts

    from bgremoval.serving import resolved
    from bgremoval.serving.load import load
    from tests.helpers import project_env
    from tests.test_cli import IMPORT_PROBE

    monkeypatch.setenv(resolved.CACHE_ENV, str(tmp_path / "cache"))
    champion, uri = f"models:/{NAME}@champion", mlflow.get_tracking_uri()
    setup.register(0.80)
    first = load(champion, uri)
    assert len(list((tmp_path / "cache" / "resolved").glob("*.json"))) == 1
    asked = []
    real_download = mlflow.artifacts.download_artifacts
    monkeypatch.setattr(mlflow.artifacts, "download_artifacts", lambda **kw: asked.append(kw) or real_download(**kw))
    assert load(champion, uri).config == first.config and asked == []  # kept: MLflow not asked
    image, _ = disc_image(40, 48)
    Image.fromarray(image).save(tmp_path / "photo.png")
    run = subprocess.run([sys.executable, "-c", IMPORT_PROBE, "predict", "--model", champion, "--tracking-uri", uri,
                          "--quiet", "--output", "mask", str(tmp_path / "photo.png"), str(tmp_path / "mask.png")],
                         cwd=tmp_path, env={**project_env(), resolved.CACHE_ENV: str(tmp_path / "cache")},
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and "IMPORTED" in run.stdout, run.stderr
    assert "mlflow" not in run.stdout.split("IMPORTED")[1], run.stdout
    assert Image.open(tmp_path / "mask.png").size == (48, 40)
    better, _ = setup.register(0.85)  # version 2 becomes champion: the registry file changed
    assert better.alias == CHAMPION and better.version == "2"
    load(champion, uri)
    assert [kw["artifact_uri"] for kw in asked] == [champion]  # asked again, once
    served_file, _ = resolved.lookup(champion, resolved.registry_state(champion, uri))
    assert served_file.is_relative_to(Path(real_download(artifact_uri=f"models:/{NAME}/2")).resolve())


@pytest.mark.slow
def test_the_registrys_champion_drafts_when_there_is_one(setup):
    import numpy as np

    from bgremoval.labelling.drafts import open_drafter, registry_has
    from bgremoval.serving.served import Served

    champion = f"models:/{NAME}@champion"
    assert not registry_has(champion, mlflow.get_tracking_uri())
    setup.register(0.80)
    assert registry_has(champion, mlflow.get_tracking_uri())
    drafter = open_drafter(None, champion, mlflow.get_tracking_uri())
    assert drafter.name == champion and drafter.second_name == "u2netp"
    image, _ = disc_image(40, 48, seed=3)
    assert np.allclose(drafter.predict(image), Served.from_folder(setup.served)(image), atol=1e-6)


@pytest.mark.slow
def test_registering_the_same_run_again_adds_no_version(setup):
    client = MlflowClient()
    first, run_id = setup.register(0.80)
    again = register(setup.served, run_id, 0.80, setup.test, setup.source)
    assert again.version == first.version and again.alias == CHAMPION and "already the champion" in again.reason
    assert len(client.search_model_versions(f"name='{NAME}'")) == 1
    assert len(client.search_logged_models(experiment_ids=[client.get_run(run_id).info.experiment_id])) == 1


@pytest.mark.slow
def test_the_champion_is_rescored_only_when_the_test_set_changed(setup, monkeypatch):
    from bgremoval.scoring.metrics import summarise
    from bgremoval.scoring.score import score
    from bgremoval.serving.served import Served

    rescored = []
    real_rescore = versions.rescore
    monkeypatch.setattr(versions, "rescore", lambda client, name, mv, **kw: rescored.append(str(mv.version))
                        or real_rescore(client, name, mv, **kw))
    client = MlflowClient()
    subset = setup.test.iloc[:2].reset_index(drop=True)
    setup.register(0.99, rows=subset)  # the champion's recorded 0.99 is on other images
    assert rescored == []
    result, _ = setup.register(0.50)
    # The recorded 0.99 is not used: the champion (the toy model) is scored on these images, now.
    assert rescored == ["1"]
    truth = summarise(score(setup.test, Served.from_folder(setup.served), 10**6)[1])["max_f"]
    assert result.champion_version == "1" and result.champion_score == pytest.approx(truth, abs=1e-6)
    assert result.champion_score != 0.99
    assert result.alias == (CHAMPION if 0.50 - truth > 0.002 else CHALLENGER)
    # The rescore is kept with the champion's logged model, on this test set beside the old one.
    digests = {name: tracking.split_dataset(rows, "test", setup.source).digest
               for name, rows in (("subset", subset), ("full", setup.test))}
    scores = model_metrics(client, client.get_model_version(NAME, "1"))
    assert scores[("test/max_f", digests["subset"])] == pytest.approx(0.99)
    assert scores[("test/max_f", digests["full"])] == pytest.approx(truth)
    # On the same test set again, the kept score is used: nothing is rescored.
    third, _ = setup.register(0.45)
    assert rescored == ["1"] and third.champion_score == pytest.approx(result.champion_score)


@pytest.mark.slow
def test_the_same_model_served_differently_is_a_new_version_and_keeps_the_title(setup, tmp_path):
    client = MlflowClient()
    first, run_id = setup.register(0.80)
    at48 = served_folder(tmp_path / "at48", setup.served / "model.keras", size=48)
    again = register(at48, run_id, 0.80, setup.test, setup.source)
    assert again.version != first.version and again.alias == CHAMPION and "new serving set-up" in again.reason
    assert aliases(client) == {CHAMPION: again.version, PREVIOUS: first.version}
    assert client.get_model_version(NAME, again.version).tags["input_size"] == "48"


# --- concurrent registrations --------------------------------------------------------------------------

def register_at_barrier(tracking_uri: str, artifacts: str, served: str, data: str, score: float, barrier, results) -> None:
    """One registration in its own process: log a run, wait for the others, then register all at once."""
    mlflow.set_tracking_uri(tracking_uri)
    experiment = mlflow.get_experiment_by_name("gate") or mlflow.get_experiment(
        mlflow.create_experiment("gate", artifact_location=artifacts))
    mlflow.set_experiment(experiment_id=experiment.experiment_id)
    test = rows_of(Path(data))
    with mlflow.start_run() as run:
        pass
    barrier.wait(timeout=300)
    record = register(Path(served), run.info.run_id, score, test, str(Path(data) / "manifest.parquet"))
    results.put(record.to_dict())


def register_concurrently(tracking_uri: str, tmp_path: Path, model: Path, scores: list[float]) -> list[dict]:
    """Register len(scores) runs from as many processes released together; their records. `model` is a
    served folder, or a model file to serve as one."""
    import multiprocessing as mp
    import queue

    served = model if (Path(model) / CONFIG_FILE).is_file() else served_folder(tmp_path / "served", Path(model))
    folder = disc_folder(tmp_path / "data", 3)
    mlflow.set_tracking_uri(tracking_uri)  # the experiment once, before the race
    mlflow.create_experiment("gate", artifact_location=(tmp_path / "artifacts").as_uri())
    # Fresh processes, none sharing the parent's database connections: forked from a server process that has
    # imported this module (MLflow with it) once, where spawning each would import MLflow again (4.5 s of CPU).
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload([__name__])
    barrier, results = ctx.Barrier(len(scores)), ctx.Queue()
    procs = [ctx.Process(target=register_at_barrier, args=(tracking_uri, (tmp_path / "artifacts").as_uri(),
                                                           str(served), str(folder), s, barrier, results))
             for s in scores]
    for p in procs:
        p.start()
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
    assert [r["score"] for r in promoted] == sorted(r["score"] for r in promoted)
    if PREVIOUS in names:
        assert by_version[names[PREVIOUS]]["score"] < max(scores)


@pytest.mark.slow
def test_concurrent_registrations_keep_the_aliases_consistent(tmp_path, onnx_served):
    scores = [0.70, 0.90, 0.80, 0.85]
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with tracking_store(uri):
        records = register_concurrently(uri, tmp_path, onnx_served, scores)
        assert_consistent_aliases(MlflowClient(), records, scores)


@pytest.mark.slow
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
