"""Thin DVC stages: `python -m stages.NAME` reads params.yaml's NAME section and calls the library."""

import atexit
import logging
import os
import sys

# Stages are programs, not library code: they may decide how chatty TensorFlow is, and must do
# so before it is first imported.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # MLflow's own INFO lines (table creation, ...)

# `python -m stages.NAME`: the module about to run, known before it is found.
PROGRAM = sys.orig_argv[sys.orig_argv.index("-m") + 1] if "-m" in sys.orig_argv[:-1] else ""

# A stage program that has finished has written its outputs and closed its MLflow runs; what is left is the
# interpreter's teardown (TensorFlow's takes 1-3 s on 2 cores). Registered before anything else, this runs
# after every other exit handler and then ends the process with the stage's status: stages.common.run's, or
# 1 where the stage died of an uncaught exception (already printed by then).
exit_status = 1


def _exit_without_teardown() -> None:
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(exit_status)


if PROGRAM.startswith("stages."):  # run as a program, not imported by a test
    atexit.register(_exit_without_teardown)
    # No stage runs Spark. Where the `spark` extra is installed, MLflow and Great Expectations would import
    # pyspark only to learn that it is there (0.5 s per MLflow stage, 1.3 s more in validate, on 2 Xeon
    # cores, and pyspark's warnings about pandas 3 on stderr): to a stage it is not installed.
    sys.modules["pyspark"] = None


# The stages that train or run Keras networks import TensorFlow: do it first, without its native start-up
# notices.
if PROGRAM in {f"stages.{name}" for name in ("augment", "tune", "train", "export")}:
    from bgremoval.quiet import import_tensorflow_quietly

    import_tensorflow_quietly()
