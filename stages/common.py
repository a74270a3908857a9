"""What every stage does first (configure logging, read its own params) and last (exit with its status)."""

from __future__ import annotations

import logging
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

import stages


def start(stage: str) -> dict[str, Any]:
    """Configure logging for a stage run and return the params the stage declares in dvc.yaml."""
    # Quiet by default: our own loggers at INFO, third-party libraries only when they warn.
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    level = os.environ.get("BGREMOVAL_LOG_LEVEL", "INFO")
    for name in ("bgremoval", "stages"):
        logging.getLogger(name).setLevel(level)
    # Third-party INFO lines (GX sets INFO on its loggers when it is imported) are dropped at the handler.
    for handler in logging.getLogger().handlers if level.upper() != "DEBUG" else []:
        handler.addFilter(lambda record: record.levelno >= logging.WARNING or record.name.startswith(("bgremoval", "stages")))
    return declared_params(stage)


def declared_params(stage: str, root: Path = Path(".")) -> dict[str, Any]:
    """The params.yaml keys listed under the stage's `params:` in dvc.yaml, nested as in params.yaml: what
    `dvc.api.params_show(stages=stage)` returns (tests/test_spec.py compares them), read without loading
    the whole DVC repo, which costs a stage about 3 s on 2 cores. Only the declared keys come back, so an
    undeclared read fails, and DVC re-runs the stage whenever one of them changes."""
    def load(name: str) -> dict:
        return yaml.load((root / name).read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))

    declared = load("dvc.yaml")["stages"][stage].get("params", [])
    params, picked = load("params.yaml"), {}
    for key in declared:
        if not isinstance(key, str):
            raise ValueError(f"dvc.yaml: stage {stage} lists params of another file ({key}); stages read params.yaml only")
        node, into = params, picked
        *parents, last = key.split(".")
        for part in parents:
            node, into = node[part], into.setdefault(part, {})
        into[last] = node[last]
    return picked


_OURS = tuple(str(Path(__file__).resolve().parents[1] / d) + os.sep for d in ("bgremoval", "stages"))


def run(main: Callable[[], int]) -> None:
    """Run a stage's main(). An error this project raised on purpose (a bad setting, file or model; its
    message says what to fix) ends with that message, not a traceback; anything else keeps its traceback
    (so does everything with BGREMOVAL_LOG_LEVEL=DEBUG)."""
    module = sys.modules.get(main.__module__)
    spec = getattr(module, "__spec__", None)  # `python -m stages.train` runs as __main__
    stage = (spec.name if spec else main.__module__).rsplit(".", 1)[-1]
    try:
        code = main()
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        raised_at = traceback.extract_tb(exc.__traceback__)[-1].filename
        if not raised_at.startswith(_OURS) or os.environ.get("BGREMOVAL_LOG_LEVEL", "").upper() == "DEBUG":
            raise
        print(f"{stage}: {exc}\n(BGREMOVAL_LOG_LEVEL=DEBUG shows the traceback)", file=sys.stderr)
        code = 1
    stages.exit_status = int(code or 0)  # what the stage program exits with, past the interpreter's teardown
    sys.exit(code)
