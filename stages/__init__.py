"""Thin DVC stages: `python -m stages.NAME` reads params.yaml's NAME section and calls the library."""

import os
import sys

# Stages are programs, not library code: they may decide how chatty TensorFlow is, and must do
# so before it is first imported.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # MLflow's own INFO lines (table creation, ...)

# The stages that train or run Keras networks import TensorFlow: do it first, without its native start-up
# notices (`python -m stages.NAME` is in sys.orig_argv before the stage module is found).
_TENSORFLOW_STAGES = {f"stages.{name}" for name in ("augment", "tune", "train", "export")}
if _TENSORFLOW_STAGES & set(sys.orig_argv):
    from bgremoval.quiet import import_tensorflow_quietly

    import_tensorflow_quietly()
