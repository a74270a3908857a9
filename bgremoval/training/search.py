"""The search space params.yaml declares (tune.space): what a trial draws, and its values back as declared."""

from __future__ import annotations

import json
from typing import Any

import optuna

SEARCHABLE = ("model.", "train.")


def stored(choice: Any) -> Any:
    """A categorical choice as the study stores it: None, bools, numbers and strings as they are, anything else
    (a list, such as a U-Net's filters) as its JSON text, which every Optuna storage keeps and compares."""
    return choice if choice is None or isinstance(choice, (bool, int, float, str)) else json.dumps(choice)


def declared(space: dict[str, dict[str, Any]], params: dict[str, Any]) -> dict[str, Any]:
    """A trial's params with each categorical value back as the choice params.yaml declares (a list again)."""
    values = dict(params)
    for key, spec in space.items():
        if spec.get("type") == "categorical" and key in values:
            values[key] = next((c for c in spec["choices"] if stored(c) == values[key]), values[key])
    return values


def suggest(trial: optuna.Trial, space: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Draw one value per dotted key of the declared space (float / int / categorical)."""
    values = {}
    for key, spec in space.items():
        if not key.startswith(SEARCHABLE):
            raise ValueError(f"tune.space.{key}: only model.* and train.* can be searched (export chooses the "
                             "serving set-up on val after training); "
                             "remove it from tune.space or set it in its own section")
        kind = spec["type"]
        if kind == "float":
            values[key] = trial.suggest_float(key, float(spec["low"]), float(spec["high"]), log=bool(spec.get("log", False)))
        elif kind == "int":
            values[key] = trial.suggest_int(key, int(spec["low"]), int(spec["high"]), log=bool(spec.get("log", False)))
        elif kind == "categorical":
            drawn = trial.suggest_categorical(key, [stored(c) for c in spec["choices"]])
            values[key] = declared({key: spec}, {key: drawn})[key]
        else:
            raise ValueError(f"tune.space.{key}: type must be float, int or categorical; got {kind!r}")
    return values
