"""How the programs import TensorFlow: without its native start-up lines, and without the optional packages
Keras would import for features the programs do not use."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from bgremoval.quiet import hidden
from tests.helpers import ROOT, project_env

PROBE = """
import json, sys
from bgremoval.quiet import import_tensorflow_quietly
import_tensorflow_quietly()
import keras.src.wrappers.fixes as fixes
seen = {name: name in sys.modules for name in ("tensorflow", "keras", "sklearn", "matplotlib")}
import sklearn.base, matplotlib.pyplot  # importable as usual afterwards
print(json.dumps({"seen": seen, "keras_sklearn": fixes.sklearn is not None}))
"""


def test_hidden_packages_do_not_import_inside_the_block_and_do_after():
    name = "tabnanny"  # a standard module nothing here imports
    sys.modules.pop(name, None)
    with hidden(name, "json"):  # json is already imported: it stays
        with pytest.raises(ImportError):
            __import__(name)
        assert sys.modules["json"] is json
    assert __import__(name).__name__ == name and sys.modules["json"] is json


def test_tensorflow_is_imported_without_scikit_learn_or_matplotlib():
    run = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, env=project_env(), capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    got = json.loads(run.stdout.strip().splitlines()[-1])
    assert got["seen"] == {"tensorflow": True, "keras": True, "sklearn": False, "matplotlib": False}, got
    assert not got["keras_sklearn"]  # Keras took scikit-learn for absent
    assert run.stderr == ""  # nor a line of TensorFlow's start-up


def test_a_stage_program_never_imports_pyspark():
    """No stage runs Spark: where the `spark` extra is installed, MLflow (and Great Expectations) would import it."""
    import importlib.util

    if importlib.util.find_spec("pyspark") is None:
        pytest.skip("pyspark is not installed here (`make spark`): nothing to leave out")
    # What `python -m stages.evaluate` imports as it starts (MLflow among it), without running the stage.
    probe = ("import json, sys; sys.orig_argv = [sys.executable, '-m', 'stages.evaluate']; import stages.evaluate; "
             "print(json.dumps(sorted(m for m, module in sys.modules.items() if module and m.split('.')[0] in ('mlflow', 'pyspark'))))")
    run = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env=project_env(), capture_output=True, text=True,
                         timeout=300)
    assert run.stdout.strip(), run.stderr[-3000:]  # (its status is 1: a stage program whose stage never ran)
    loaded = json.loads(run.stdout.strip().splitlines()[-1])
    assert "mlflow" in loaded and not [m for m in loaded if m.startswith("pyspark")]
