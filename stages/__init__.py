"""Thin DVC stages: `python -m stages.NAME` reads params.yaml's NAME section and calls the library."""

import os

# Stages are programs, not library code: they may decide how chatty TensorFlow is, and must do
# so before it is first imported.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
