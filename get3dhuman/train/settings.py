"""Training settings from a file: `get3dhuman train STAGE --config FILE.json`.

The file is one JSON object with a section per stage, each a mapping of that stage's config
fields to values, for example::

    {"reconstructor": {"steps": 8000, "learning_rate": 3e-4},
     "generator": {"steps": 6000, "adversarial_weight": 0.1}}

A stage without a section keeps its preset. The same file serves `train all` and each stage on
its own. The preset itself is chosen with `--preset`, not in the file: it fixes the network
sizes the stages must share.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from typing import Any, TypeVar

Config = TypeVar("Config")

STAGES = ("reconstructor", "prior", "generator", "refiner")


def apply_overrides(config: Config, overrides: Mapping[str, Any], source: str = "overrides") -> Config:
    """A copy of the config dataclass `config` with the fields in `overrides` replaced.

    Checks every name and value first and raises ValueError naming the setting, `source` (where
    it came from, for the message) and what was expected: names must be fields of the config
    other than `preset`; booleans must be true/false, integers whole numbers >= 1 (`seed` >= 0),
    floats finite numbers >= 0, strings strings.
    """
    kind = type(config).__name__
    names = [field.name for field in dataclasses.fields(config) if field.name != "preset"]
    checked = {}
    for name, value in overrides.items():
        if name == "preset":
            raise ValueError(f"{source}: 'preset' cannot be set here (choose it with --preset; it fixes the "
                             f"network sizes every stage shares)")
        if name not in names:
            raise ValueError(f"{source}: {kind} has no setting {name!r}; expected one of {', '.join(names)}")
        checked[name] = _checked_value(getattr(config, name), value, f"{source}: {name}")
    return dataclasses.replace(config, **checked)


def _checked_value(default: Any, value: Any, where: str) -> Any:
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ValueError(f"{where} must be true or false, got {value!r}")
        return value
    if isinstance(default, int):
        lowest = 0 if where.endswith(": seed") else 1
        if isinstance(value, bool) or not isinstance(value, int) or value < lowest:
            raise ValueError(f"{where} must be a whole number >= {lowest}, got {value!r}")
        return value
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise ValueError(f"{where} must be a finite number >= 0, got {value!r}")
        return float(value)
    if not isinstance(value, str):
        raise ValueError(f"{where} must be a string, got {value!r}")
    return value


def read_overrides(path: str) -> dict[str, dict[str, Any]]:
    """The sections of the settings file at `path`: {stage: {field: value}}, every stage named
    (empty where the file has no section). Raises ValueError for a file that is not such a JSON
    object, naming the path and what was expected."""
    try:
        with open(path) as handle:
            sections = json.load(handle)
    except json.JSONDecodeError as error:
        raise ValueError(f"--config {path}: not valid JSON ({error})") from error
    if not isinstance(sections, dict):
        raise ValueError(f"--config {path}: expected a JSON object with sections {', '.join(STAGES)}, "
                         f"got {type(sections).__name__}")
    unknown = sorted(set(sections) - set(STAGES))
    if unknown:
        raise ValueError(f"--config {path}: unknown sections {', '.join(unknown)}; expected some of {', '.join(STAGES)} "
                         "(each a mapping of that stage's settings)")
    for stage, section in sections.items():
        if not isinstance(section, dict):
            raise ValueError(f"--config {path}: section {stage!r} must be a JSON object of settings, "
                             f"got {type(section).__name__}")
    return {stage: sections.get(stage, {}) for stage in STAGES}
