"""For programs (stages, the CLI), not the library: import TensorFlow without its native start-up lines.

TensorFlow's C++ side prints absl and oneDNN notices to stderr on import, before TF_CPP_MIN_LOG_LEVEL
is read, and on a machine without a GPU an error that CUDA could not start when it first looks for
devices; they say nothing a user can act on. BGREMOVAL_LOG_LEVEL=DEBUG keeps them.

Keras, which TensorFlow imports, also imports scikit-learn (for its scikit-learn wrappers) and matplotlib's
pyplot (for its image galleries) wherever they are installed, as MLflow's dependencies are here: 0.9 s of
the 3.2 s `import tensorflow` takes on 2 Xeon cores. These programs use neither through Keras, so while TensorFlow is imported the
two are hidden (Keras then takes them for absent) and afterwards are importable as before.
"""

from __future__ import annotations

import contextlib
import os
import sys

# Optional packages Keras imports only for features these programs do not use (see above).
KERAS_EXTRAS = ("sklearn", "matplotlib")


def import_tensorflow_quietly() -> None:
    """Import tensorflow once and look for its devices, with the process's stderr (fd 2) pointed at /dev/null
    meanwhile."""
    if "tensorflow" in sys.modules or os.environ.get("BGREMOVAL_LOG_LEVEL", "").upper() == "DEBUG":
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        with hidden(*KERAS_EXTRAS):
            import tensorflow

        tensorflow.config.list_physical_devices()
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


@contextlib.contextmanager
def hidden(*packages: str):
    """Within the block, `import PACKAGE` (and its submodules) fails as if it were not installed; afterwards it
    imports as usual. A package already imported stays as it is."""
    hide = [name for name in packages if name not in sys.modules]
    for name in hide:
        sys.modules[name] = None  # the import system's "not importable here"
    try:
        yield
    finally:
        for name in hide:
            if sys.modules.get(name, 0) is None:
                del sys.modules[name]
