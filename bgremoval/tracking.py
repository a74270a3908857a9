"""MLflow: where runs go, which run a stage logs into, datasets and lineage.

Every stage that logs calls `configure` then `run`. Started by `mlflow run`, which owns a run of its
own (MLFLOW_RUN_ID), the stages' runs nest under it, in its experiment; otherwise they are top-level
runs in params' mlflow.experiment.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)

# The experiment is one of training runs (MLflow 3's UI otherwise may open it on its GenAI pages).
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")
_owner: str | None = None  # the run `mlflow run` made for this process tree, if any
_experiment: str | None = None  # the experiment configure() chose for this process
_store: str | None = None  # the tracking URI configure() chose it in


def configure(default_uri: str, experiment: str) -> str:
    """Point MLflow at $MLFLOW_TRACKING_URI, else default_uri, and select the experiment the stage's runs go
    to: the one of the run `mlflow run` owns, else `experiment`."""
    import mlflow

    global _owner, _experiment, _store
    uri = os.environ.get("MLFLOW_TRACKING_URI") or default_uri
    mlflow.set_tracking_uri(uri)
    # MLflow would resume the owner run for any start_run() without a run id: take it out of the environment.
    _owner = os.environ.pop("MLFLOW_RUN_ID", None) or _owner
    if _owner:
        os.environ.pop("MLFLOW_EXPERIMENT_ID", None)
        exp = mlflow.set_experiment(experiment_id=mlflow.get_run(_owner).info.experiment_id)
    else:
        exp = _racing(lambda: mlflow.set_experiment(experiment), f"experiment {experiment}")
    _experiment, _store = exp.experiment_id, mlflow.get_tracking_uri()
    if exp.tags.get(EXPERIMENT_KIND[0]) != EXPERIMENT_KIND[1]:
        _racing(lambda: mlflow.MlflowClient().set_experiment_tag(exp.experiment_id, *EXPERIMENT_KIND),
                f"experiment tag {EXPERIMENT_KIND[0]}")
    return uri


@contextlib.contextmanager
def run(name: str | None = None, run_id: str | None = None) -> Iterator:
    """The run a stage logs into: `run_id`'s (resumed), or a new one called `name` (under `mlflow run`'s, if any).
    A resumed run may live in another experiment than the active one (trained under `mlflow run`, then
    registered by a plain `dvc exp run`): MLflow reopens a run only inside its own experiment."""
    import mlflow

    if run_id:
        home = mlflow.get_run(run_id).info.experiment_id
        # configure()'s experiment, unless MLflow was pointed at another store since: its ids are not this one's.
        back = _experiment if _store == mlflow.get_tracking_uri() else None
        if home != back:
            mlflow.set_experiment(experiment_id=home)
        try:
            with mlflow.start_run(run_id=run_id) as active:
                yield active
        finally:  # later runs of this process go where configure() sent them
            if back and home != back:
                mlflow.set_experiment(experiment_id=back)
    else:
        with mlflow.start_run(run_name=name, parent_run_id=_owner) as active:
            yield active


def unfinished_run(tag: str, value: str) -> str | None:
    """The id of a run in the active experiment tagged tag=value that never finished (killed), if any."""
    import mlflow

    runs = mlflow.search_runs(filter_string=f"tags.`{tag}` = '{value}' and attributes.status != 'FINISHED'",
                              order_by=["attributes.start_time DESC"], max_results=1, output_format="list")
    return runs[0].info.run_id if runs else None


def split_dataset(manifest, split: str, source: str):
    """One split of the manifest as an MLflow dataset: its rows, named after the split, sourced from the
    manifest file, with a digest of its files' content (the same pairs give the same digest)."""
    import warnings

    import mlflow.data

    rows = manifest[manifest["split"] == split].reset_index(drop=True)
    digest = hashlib.sha256("\n".join(f"{n}\0{h}" for n, h in sorted(zip(rows["name"], rows["content_hash"].astype(str))))
                            .encode()).hexdigest()[:16]
    with warnings.catch_warnings():  # MLflow registers its local-file source twice and warns that it cannot choose
        warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted in multiple ways")
        return mlflow.data.from_pandas(rows, source=Path(source).resolve().as_uri(), name=split, digest=digest)


def _racing(write, what: str, attempts: int = 5):
    """write(), tried again when another process made the same row at the same moment. MLflow's stores
    get-or-create some rows (an experiment, its tags, a dataset) without a lock, so two runs that write the
    same one at once (queued experiments, several workers) can lose the race with a unique-key error from
    the server's database; the second try finds the row the winner wrote."""
    from mlflow.exceptions import MlflowException

    for attempt in range(attempts):
        try:
            return write()
        except MlflowException as exc:
            raced = any(word in str(exc).lower() for word in ("unique", "duplicate", "already exists"))
            if attempt == attempts - 1 or not raced:
                raise
            log.info("%s was being written by another run; trying again", what)
            time.sleep(0.2 * (attempt + 1))


def log_split_inputs(manifest, source: str) -> None:
    """Log the train, val and test splits as the active run's input datasets."""
    import mlflow

    for split, context in (("train", "training"), ("val", "validation"), ("test", "testing")):
        dataset = split_dataset(manifest, split, source)
        _racing(lambda: mlflow.log_input(dataset, context=context), f"dataset {split}")  # noqa: B023


def git_commit(repo: Path) -> str:
    """HEAD's commit, with '-dirty' when tracked files have uncommitted changes; 'unknown' outside git."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo, capture_output=True, text=True).stdout.strip()
        return head + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def dvc_out_hash(lock_file: Path, stage: str, out_path: str) -> str | None:
    """The md5 dvc.lock records for one output of a stage (the data a run trained on)."""
    import yaml

    if not Path(lock_file).exists():
        return None
    lock = yaml.safe_load(Path(lock_file).read_text()) or {}
    for out in lock.get("stages", {}).get(stage, {}).get("outs", []):
        if out.get("path") == out_path:
            return out.get("md5")
    return None


def fingerprint(files: list[Path]) -> str:
    """sha256 over files' names and bytes."""
    digest = hashlib.sha256()
    for f in sorted(files):
        digest.update(Path(f).name.encode())
        digest.update(Path(f).read_bytes())
    return digest.hexdigest()
