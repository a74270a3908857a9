"""For programs (stages, the CLI), not the library: import TensorFlow without its native start-up lines.

TensorFlow's C++ side prints absl and oneDNN notices to stderr on import, before TF_CPP_MIN_LOG_LEVEL
is read, and on a machine without a GPU an error that CUDA could not start when it first looks for
devices; they say nothing a user can act on. BGREMOVAL_LOG_LEVEL=DEBUG keeps them.
"""

from __future__ import annotations

import os
import sys


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
        import tensorflow

        tensorflow.config.list_physical_devices()
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
