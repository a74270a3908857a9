"""A catalogue cut out on Spark: the registered model as MLflow's spark_udf on local[2], over real photos."""

from __future__ import annotations

import io
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow.pyfunc
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from bgremoval.batch.spark_cutout import JOB_OPTIONS, SparkCutout, image_pattern
from bgremoval.serving.config import ServingConfig
from bgremoval.serving.load import load
from bgremoval.serving.options import options_from
from bgremoval.serving.render import png_bytes, render
from tests.helpers import PHOTOS, ROOT, project_env, sample_photo, served_folder, stock_onnx_export, tracking_store

SPARK_SUBMIT = Path(sys.executable).with_name("spark-submit")


def test_the_photos_are_the_files_with_an_image_extension_in_any_case():
    import re

    pattern = re.compile(image_pattern().replace("(?i)", ""), re.IGNORECASE)  # Java's (?i) is Python's flag
    names = ["a.jpg", "b.JPEG", "c/d.png", "e.WebP", "f.bmp", "g.txt", "h.jpg.txt", "jpg", "i.tiff"]
    assert [n for n in names if pattern.search(n)] == ["a.jpg", "b.JPEG", "c/d.png", "e.WebP", "f.bmp"]


def test_a_job_refuses_what_it_cannot_run():
    job = {"photos": "photos", "out": "out", "model": "models:/bgremoval@champion", "options": {}, "batch": 16,
           "partition_photos": 64, "threads": 1, "mode": "errorifexists"}
    with pytest.raises(ValueError, match="unknown option.*bg_image; a job takes output"):
        SparkCutout(**job | {"options": {"bg_image": "x"}})
    for bad, needle in (({"batch": 0}, "batch must be"), ({"threads": 1.5}, "threads must be"),
                        ({"partition_photos": 0}, "partition_photos must be"), ({"mode": "append"}, "mode must be")):
        with pytest.raises(ValueError, match=needle):
            SparkCutout(**job | bad)
    assert set(JOB_OPTIONS) == set(options_from(None, _defaults(), 10**6).__dataclass_fields__) - {"bg_image"}


def test_a_model_that_is_not_there_or_not_ours_is_refused_before_spark_starts(catalogue, tmp_path, capsys):
    from bgremoval.cli import main as cli

    with tracking_store(catalogue["uri"]):
        with mlflow.start_run():
            other = mlflow.pyfunc.log_model(name="model", python_model=_Echo()).model_uri
    for model, needle in (("models:/elsewhere@champion", "cannot load model 'models:/elsewhere@champion': "),
                          (str(tmp_path / "nothing"), "cannot load model"),
                          (other, "takes no 'errors' param: it is not a bgremoval model")):
        with pytest.raises(SystemExit) as exit_:
            cli(["spark-cutout", str(catalogue["photos"]), str(tmp_path / "out"), "--model", model,
                 "--tracking-uri", catalogue["uri"], "--params", str(ROOT / "params.yaml")])
        assert str(exit_.value.code).startswith("bgremoval spark-cutout: ") and needle in str(exit_.value.code)
    assert not (tmp_path / "out").exists()
    with pytest.raises(SystemExit) as exit_:  # outside the project, the job's settings must be given
        cli(["spark-cutout", str(catalogue["photos"]), str(tmp_path / "out"), "--params", str(tmp_path / "none.yaml"),
             "--threads", "1"])
    assert ("none.yaml (where spark.batch is set) not found or silent; run from the project root, or pass --batch N "
            "--partition-photos N") in str(exit_.value.code)


class _Echo(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input, params=None):
        return model_input


def _defaults() -> dict:
    from tests.helpers import PARAMS

    return PARAMS["serve"]["defaults"]


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory):
    """Stock U²-NetP (onnxruntime at 96) registered as bgremoval@champion in a SQLite store, and a folder of
    photos: the two real ones, one again as PNG in a sub-folder, one broken file, and a note that is no photo."""
    import mlflow

    from bgremoval.serving.pyfunc import log_model

    tmp = tmp_path_factory.mktemp("spark")
    served = served_folder(tmp / "served", stock_onnx_export(tmp / "model.onnx"), runtime="onnxruntime", size=96)
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    with tracking_store(uri):
        mlflow.set_experiment("spark")
        config = ServingConfig.read(served)
        with mlflow.start_run():
            info = log_model(served / config.model_file, config, png_bytes(Image.new("RGB", (24, 24))), name="model")
        version = mlflow.register_model(info.model_uri, "bgremoval").version
        mlflow.MlflowClient().set_registered_model_alias("bgremoval", "champion", version)
    photos = tmp / "photos"
    (photos / "more").mkdir(parents=True)
    for name in ("china.jpg", "flower.jpg"):
        shutil.copy(PHOTOS / name, photos / name)
    Image.fromarray(sample_photo("flower.jpg")[::2, ::2]).save(photos / "more" / "small flower.PNG")
    (photos / "broken.jpg").write_bytes(b"not a jpeg at all")
    (photos / "notes.txt").write_text("not a photo")
    return {"uri": uri, "photos": photos, "tmp": tmp}


def _table(out: Path) -> pd.DataFrame:
    table = pd.read_parquet(out)
    table["name"] = [Path(p).relative_to(Path(p).parents[0 if "/more/" not in p else 1]).as_posix()
                     for p in table["path"].str.removeprefix("file:")]
    return table.set_index("name").sort_index()


def _as_served(table: pd.DataFrame, photos: Path, uri: str, request: dict) -> None:
    """Each served row's PNG is, pixel for pixel, what the registered model gives that photo when served."""
    with tracking_store(uri):
        served = load("models:/bgremoval@champion")
    opts = options_from(request, served.config.defaults, served.max_pixels)
    predict = served.predictor_for(opts)
    for name, row in table[table["error"].isna()].iterrows():
        image = np.asarray(Image.open(photos / name).convert("RGB"))
        expected = np.asarray(render(image, predict(image), opts))
        got = np.asarray(Image.open(io.BytesIO(row["png"])))
        assert got.shape == expected.shape and np.array_equal(got, expected), name
        assert (row["width"], row["height"]) == (image.shape[1], image.shape[0])


@pytest.mark.slow
def test_bgremoval_spark_cutout_writes_each_photos_mask_as_served_and_names_the_broken_one(catalogue, tmp_path):
    out = tmp_path / "masks.parquet"
    run = subprocess.run(
        ["bgremoval", "spark-cutout", str(catalogue["photos"]), str(out), "--master", "local[2]",
         "--output", "mask", "--tracking-uri", catalogue["uri"], "--params", str(ROOT / "params.yaml")],
        cwd=tmp_path, env=project_env(), capture_output=True, text=True, timeout=300)
    assert run.returncode == 1, run.stderr[-3000:]  # one photo could not be read; the job still finished
    assert f"wrote 4 rows to {out}: 3 PNGs, 1 photos with an error" in run.stdout
    table = _table(out)
    assert table.index.tolist() == ["broken.jpg", "china.jpg", "flower.jpg", "more/small flower.PNG"]
    broken = table.loc["broken.jpg"]
    assert str(catalogue["photos"] / "broken.jpg") in broken["error"] and "cannot be decoded as an image" in broken["error"]
    assert "row " not in broken["error"]  # a batch's row number means nothing to whoever reads the table
    assert broken["png"] is None and table["error"].drop("broken.jpg").isna().all()
    _as_served(table, catalogue["photos"], catalogue["uri"], {"output": "mask"})
    assert all(np.asarray(Image.open(io.BytesIO(p))).ndim == 2 for p in table["png"].dropna())  # masks: one channel


@pytest.mark.slow
def test_spark_submit_runs_the_job_with_the_models_own_options_and_refuses_to_overwrite(catalogue, tmp_path):
    out = tmp_path / "composites.parquet"
    photos = tmp_path / "photos"
    shutil.copytree(catalogue["photos"], photos, ignore=shutil.ignore_patterns("broken.jpg"))
    args = [str(SPARK_SUBMIT), "--master", "local[2]", str(Path(sys.modules["bgremoval"].__file__).parent
                                                             / "batch" / "spark_cutout.py"),
            str(photos), str(out), "--tracking-uri", catalogue["uri"], "--output", "composite", "--bg-color", "#00ff00",
            "--params", str(ROOT / "params.yaml")]
    env = project_env(PYSPARK_PYTHON=sys.executable)
    run = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.strip().splitlines()[-1] == f"wrote 3 rows to {out}: 3 PNGs"
    table = _table(out)
    assert table["error"].isna().all() and len(table) == 3
    _as_served(table, photos, catalogue["uri"], {"output": "composite", "bg_color": "#00ff00"})
    again = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    # spark-submit hands on its Python driver's stderr on its stdout
    said = [line for line in again.stdout.splitlines() if line.startswith("bgremoval spark-cutout:")]
    assert again.returncode == 1 and said == [f"bgremoval spark-cutout: [PATH_ALREADY_EXISTS] Path file:{out} "
                                              "already exists. Set mode as \"overwrite\" to overwrite the existing "
                                              "path. SQLSTATE: 42K04; pass --overwrite to replace it"]
    assert pd.read_parquet(out).equals(pd.read_parquet(out))  # nothing lost: the table is still there, whole
    missing = subprocess.run(args[:4] + [str(tmp_path / "nowhere"), str(tmp_path / "x.parquet")] + args[6:],
                             cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert missing.returncode == 1 and f"bgremoval spark-cutout: [PATH_NOT_FOUND] Path does not exist: file:{tmp_path}/nowhere" in missing.stdout
