"""params.yaml sections as typed configurations: a frozen dataclass per section, and tuned values applied to
it by dotted key (`train.learning_rate`), as tune's best values reach train."""

from __future__ import annotations

from dataclasses import asdict, replace
from typing import Any


def apply_overrides(section: str, config, values: dict[str, Any]):
    """A copy of a frozen config with the `section.field` values that belong to it replaced."""
    return replace(config, **tuned_section(section, asdict(config), values))


def tuned_section(section: str, values: dict[str, Any], apply: dict[str, Any]) -> dict[str, Any]:
    """A params section (a mapping) with the tuned `section.key` values from tune's `apply` replaced."""
    fields = {k.split(".", 1)[1]: v for k, v in apply.items() if k.split(".", 1)[0] == section}
    unknown = set(fields) - set(values)
    if unknown:
        raise ValueError(f"{section}: no such setting(s) {sorted(unknown)}; check their spelling in tune.space and "
                         f"tune.apply against the {section}: section of params.yaml")
    return {**values, **fields}
