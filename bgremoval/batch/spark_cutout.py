"""A catalogue of photos cut out on Spark: the registered model as MLflow's spark_udf over Spark's binaryFile source.

    bgremoval spark-cutout PHOTOS OUT [--model models:/bgremoval@champion] [--output mask] [--master local[2]]
    spark-submit --master yarn bgremoval/batch/spark_cutout.py s3a://shop/photos/ s3a://shop/cutouts/ ...

PHOTOS is a folder (searched recursively) or a glob, on any file system Spark reads (file:, s3a:, hdfs:,
abfss:, gs:); the photos are those whose names end in an image extension. OUT is a Parquet table, one row per
photo: path, png (the PNG's bytes: mask, cut-out or composite, as the request options ask), width, height,
foreground (share of pixels with alpha >= 0.5) and error (null, or why that photo has no picture, naming it).
A photo that cannot be read costs its own row only (the model's request param errors=row); the job finishes.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import warnings
from dataclasses import dataclass
from typing import Any

from bgremoval.images import IMAGE_EXTENSIONS
from bgremoval.serving.options import ERRORS_PARAM, add_option_flags

# What the model answers for each photo, as Spark types (the served signature's outputs, with `error`).
RESULT_TYPE = "png string, width long, height long, foreground double, error string"
COLUMNS = ("path", "png", "width", "height", "foreground", "error")
# The options a job passes to the model, as the CLI spells them (bg_image, a picture, is a request's only).
JOB_OPTIONS = ("output", "threshold", "background", "bg_color", "bg_blur", "estimate_foreground", "matting",
               "main_object", "sharpen")


@dataclass(frozen=True)
class SparkCutout:
    """One batch job: where the photos are, where the table goes, which model, and how it renders."""

    photos: str                # a folder or glob, any file system Spark reads
    out: str                   # the Parquet table written
    model: str                 # any MLflow model URI of a bgremoval model
    options: dict[str, Any]    # request options (JOB_OPTIONS); one not given: the model's own serve.defaults
    batch: int                 # photos per Arrow batch (params spark.batch)
    partition_photos: int      # photos per partition, one task (params spark.partition_photos)
    threads: int               # onnxruntime threads per task (params spark.threads)
    mode: str                  # Spark's save mode for OUT: errorifexists | overwrite

    def __post_init__(self):
        unknown = sorted(set(self.options) - set(JOB_OPTIONS))
        if unknown:
            raise ValueError(f"unknown option(s) {', '.join(unknown)}; a job takes {', '.join(JOB_OPTIONS)}")
        for name, value in (("batch", self.batch), ("threads", self.threads), ("partition_photos", self.partition_photos)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"spark.{name} must be a whole number of at least 1, not {value!r}")
        if self.mode not in ("errorifexists", "overwrite"):
            raise ValueError(f"mode must be errorifexists or overwrite, not {self.mode!r}")


def image_pattern() -> str:
    """A Spark SQL regex matching the names of the photos (case-insensitive), from IMAGE_EXTENSIONS."""
    return r"(?i)\.(" + "|".join(ext.lstrip(".") for ext in IMAGE_EXTENSIONS) + r")$"


def cutouts(spark, job: SparkCutout):
    """The job's DataFrame (COLUMNS), not yet run: binaryFile's photos through the model's spark_udf."""
    import mlflow.pyfunc
    from pyspark.sql import functions as F

    from bgremoval.serving.request import INPUT_COLUMN
    from bgremoval.serving.runtime import THREADS_ENV

    photos = (spark.read.format("binaryFile").option("recursiveFileLookup", "true").load(job.photos)
              .where(F.col("path").rlike(image_pattern())).select("path", "content"))
    # binaryFile packs small files into few large partitions (128 MB each): a task would hold hundreds of photos and
    # their pictures, and cores would idle. Counting lists the files only; no photo is read for it.
    photos = photos.repartition(max(spark.sparkContext.defaultParallelism, math.ceil(photos.count() / job.partition_photos)))
    params = {k: v for k, v in job.options.items() if v is not None} | {ERRORS_PARAM: "row"}
    # the driver fetches the model here and hands it to the executors
    udf = mlflow.pyfunc.spark_udf(spark, job.model, result_type=RESULT_TYPE, env_manager="local", params=params,
                                  extra_env={THREADS_ENV: str(job.threads)})
    answer = udf(F.struct(F.base64("content").alias(INPUT_COLUMN)))
    failed = F.col("r.error") != ""  # the model answers an empty error, and an empty png, rather than nulls
    # "row 3 (image): ..." counts rows of a batch the job never shows: the path names the photo
    why = F.regexp_replace("r.error", rf"^row \d+ \({INPUT_COLUMN}\): ", "")
    columns = {"path": F.col("path"), "png": F.when(~failed, F.unbase64("r.png")), "width": F.col("r.width"),
               "height": F.col("r.height"), "foreground": F.when(~failed, F.col("r.foreground")),
               "error": F.when(failed, F.concat(F.col("path"), F.lit(": "), why))}
    return photos.withColumn("r", answer).select(*(columns[name].alias(name) for name in COLUMNS))


def run(spark, job: SparkCutout) -> tuple[int, int]:
    """Run the job: OUT written; (photos with a picture, photos with an error)."""
    from pyspark.sql import functions as F

    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(job.batch))
    cutouts(spark, job).write.mode(job.mode).parquet(job.out)
    rows, failed = spark.read.parquet(job.out).select(F.count("*"), F.count("error")).first()
    return rows - failed, failed


def session(master: str | None, app: str = "bgremoval spark-cutout"):
    """The SparkSession: spark-submit's (its --master, unless `master` is given), else a local one on `master`
    (default local[*]) whose Python workers run this interpreter, where the package and the model's libraries are."""
    from pyspark.sql import SparkSession

    builder = SparkSession.builder.appName(app)
    if "PYSPARK_GATEWAY_PORT" in os.environ:  # under spark-submit (or pyspark's shell): its JVM, its settings
        return (builder.master(master) if master else builder).getOrCreate()
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    return builder.master(master or "local[*]").getOrCreate()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The job's arguments (the same for `bgremoval spark-cutout` and spark-submit)."""
    parser.add_argument("photos", help="a folder of photos (searched recursively) or a glob; any path Spark reads "
                                       "(file:, s3a:, hdfs:, abfss:, gs:)")
    parser.add_argument("out", help="the Parquet table to write: path, png (bytes), width, height, foreground, error")
    parser.add_argument("--model", help="an MLflow model URI (default: models:/<register.model_name>@champion of "
                                        "params.yaml, in its tracking store)")
    parser.add_argument("--tracking-uri", help="MLflow tracking/registry URI (default: $MLFLOW_TRACKING_URI, else "
                                               "params.yaml's mlflow.tracking_uri)")
    parser.add_argument("--master", help="Spark master, e.g. local[2] (default: spark-submit's, else local[*])")
    add_option_flags(parser, skip=("bg_image",))  # a background picture is a request's only
    parser.add_argument("--batch", type=int, help="photos per Arrow batch handed to the model (default: params.yaml's "
                                                  "spark.batch)")
    parser.add_argument("--partition-photos", type=int, metavar="N",
                        help="photos per partition, one task (default: params.yaml's spark.partition_photos)")
    parser.add_argument("--threads", type=int, help="onnxruntime threads per Spark task (default: params.yaml's "
                                                    "spark.threads)")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    parser.add_argument("--params", default="params.yaml", help=argparse.SUPPRESS)


def check_model(uri: str) -> None:
    """Refuse a model that is not there, or not a bgremoval one, before Spark starts (its MLmodel file only)."""
    from mlflow.exceptions import MlflowException
    from mlflow.models import get_model_info

    try:
        info = get_model_info(uri)
    except (MlflowException, OSError) as exc:
        message = getattr(exc, "message", None) or str(exc)
        raise ValueError(f"cannot load model {uri!r}: {message.splitlines()[0]} (--model names it; --tracking-uri "
                         "says where the registry is)") from None
    params = {p.name for p in (info.signature.params.params if info.signature and info.signature.params else [])}
    if ERRORS_PARAM not in params:
        raise ValueError(f"model {uri!r} takes no {ERRORS_PARAM!r} param: it is not a bgremoval model, or one logged "
                         "before batch jobs could name a bad photo's row; re-register it (`dvc repro register`)")


def job_from(args: argparse.Namespace) -> SparkCutout:
    """The job the arguments describe: flags over params.yaml's spark section; the model and tracking store
    default as `bgremoval predict`'s do."""
    import yaml

    params = yaml.safe_load(open(args.params)) if os.path.isfile(args.params) else {}
    section = params.get("spark") or {}
    flags = {"batch": args.batch, "threads": args.threads, "partition_photos": args.partition_photos}
    missing = [name for name, flag in flags.items() if flag is None and section.get(name) is None]
    if missing:
        raise ValueError(f"{args.params} (where spark.{missing[0]} is set) not found or silent; run from the project "
                         f"root, or pass {' '.join('--' + name.replace('_', '-') + ' N' for name in missing)}")
    settings = {name: section.get(name) if flag is None else flag for name, flag in flags.items()}
    model = args.model
    if not model or model.startswith("models:"):
        import mlflow

        model = model or f"models:/{(params.get('register') or {}).get('model_name', 'bgremoval')}@champion"
        uri = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or (params.get("mlflow") or {}).get("tracking_uri")
        if uri:
            mlflow.set_tracking_uri(uri)
    check_model(model)
    return SparkCutout(photos=args.photos, out=args.out, model=model,
                       options={name: getattr(args, name) for name in JOB_OPTIONS}, **settings,
                       mode="overwrite" if args.overwrite else "errorifexists")


def main(args: argparse.Namespace) -> int:
    """Run the job the arguments describe; exit 1 if any photo could not be cut out (the table names them)."""
    try:
        job = job_from(args)
    except ValueError as exc:
        sys.exit(f"bgremoval spark-cutout: {exc}")
    warnings.filterwarnings("ignore", message="PySpark does not yet fully support pandas")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # Spark's progress is the one that counts
    from pyspark.errors import AnalysisException

    spark = session(args.master)
    try:
        done, failed = run(spark, job)
    except AnalysisException as exc:  # before any photo is cut out: no photos there, or OUT already written
        hint = "; pass --overwrite to replace it" if exc.getCondition() == "PATH_ALREADY_EXISTS" else ""
        sys.exit(f"bgremoval spark-cutout: {str(exc).splitlines()[0]}{hint}")
    finally:
        spark.stop()
    print(f"wrote {done + failed} rows to {job.out}: {done} PNGs"
          + (f", {failed} photos with an error (column error names each)" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":  # spark-submit bgremoval/batch/spark_cutout.py PHOTOS OUT [options]
    parser = argparse.ArgumentParser(prog="spark_cutout.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    sys.exit(main(parser.parse_args()))
