"""The served model's configuration: what the export stage chose and params' serve: section set.

It travels with the model: as `serving.json` beside the served file (a DVC output), and as the
registered model's MLflow model_config. Serving, `bgremoval predict` and the benchmarks read it
from there; nothing reads it back out of a metrics file.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bgremoval.serving.options import RequestError, options_from
from bgremoval.serving.refine import Refine

CONFIG_FILE = "serving.json"
# The registered model's code file ("models from code", serving/served_model.py): how a bgremoval model is known.
SERVED_MODEL_CODE = "served_model.py"
RUNTIMES = ("onnxruntime", "keras")


@dataclass(frozen=True)
class ServingConfig:
    """How one served model cuts images out."""

    runtime: str              # onnxruntime | keras
    model_file: str           # the served file's name beside serving.json: model.onnx | model.keras
    size: int                 # square input side the network sees
    refine: Refine            # the refinement export chose on val (the default of every request)
    int8: bool                # the ONNX file is quantised
    max_pixels: int           # larger inputs are refused before decoding
    max_request_mb: float     # base64 image data per request
    defaults: dict[str, Any]  # request options when a request names none (params serve.defaults)

    def __post_init__(self):
        if self.runtime not in RUNTIMES:
            raise ValueError(f"serving config: runtime {self.runtime!r} is not one of {', '.join(RUNTIMES)}")
        try:  # what every request starts from parses: a bad serve.defaults fails the export, not a request
            options_from(None, self.defaults, self.max_pixels)
        except RequestError as exc:
            raise ValueError(f"serving config: serve.defaults: {exc}") from None

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "refine": self.refine.to_dict()}

    @classmethod
    def from_dict(cls, value: dict[str, Any]) -> "ServingConfig":
        try:
            return cls(**{**value, "refine": Refine.from_dict(value["refine"])})
        except (KeyError, TypeError) as exc:
            raise ValueError(f"serving config {sorted(value)}: not a bgremoval serving config ({exc})") from None

    def write(self, folder: Path) -> Path:
        path = Path(folder) / CONFIG_FILE
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    @classmethod
    def read(cls, folder: Path) -> "ServingConfig":
        path = Path(folder) / CONFIG_FILE
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: no serving config; run `dvc repro export` to make the served model") from None
