"""Presets (JSON files in plans/) and turning a user's reference into a spec.

A reference is a preset name, a path to a spec JSON file, or a spec object. A spec object may start from a
preset ({"preset": "minilm-l6", "trainable": true}) and may leave out "config": then the model's own
config.json is read from its source (a local folder or package; for a hub id, config.json is downloaded).
"""
from __future__ import annotations

import json
import os
from importlib import resources
from typing import Any, Mapping

from nnunetv2_llm4seg.errors import SpecError
from nnunetv2_llm4seg.sources import open_source, path_status, read_json, shown
from nnunetv2_llm4seg.spec import BoosterSpec

PRESET_PACKAGE = "nnunetv2_llm4seg.plans"


def _preset_files() -> dict[str, Any]:
    folder = resources.files(PRESET_PACKAGE)
    return {entry.name[:-len(".json")]: entry for entry in folder.iterdir()
            if entry.name.endswith(".json") and entry.is_file()}


def preset_names() -> list[str]:
    return sorted(_preset_files())


def load_preset(name: str) -> BoosterSpec:
    files = _preset_files()
    if not isinstance(name, str) or name not in files:
        raise SpecError(f"unknown preset {shown(name)}; available presets: {', '.join(sorted(files))} "
                        "(or give the path of a spec JSON file).")
    return BoosterSpec.from_dict(json.loads(files[name].read_text()), where=f"preset {name}")


def spec_from_mapping(data: Mapping[str, Any], where: str) -> BoosterSpec:
    """A spec object, optionally based on a preset ("preset": name) and with config read from its source."""
    if not isinstance(data, Mapping):
        raise SpecError(f"{where}: expected a preset name or a JSON object, got {type(data).__name__}.")
    values = dict(data)
    preset = values.pop("preset", None)
    if preset is not None:  # load_preset refuses anything but a preset's name
        values = {**load_preset(preset).to_dict(), "name": None, **values}
    if "config" not in values and isinstance(values.get("source"), str):
        from nnunetv2_llm4seg.loading import read_source_config  # imports torch: only when needed

        if not isinstance(values.get("revision"), (str, type(None))):
            raise SpecError(f"{where}: 'revision' must be a string or null, got {values['revision']!r}.")
        values["config"] = read_source_config(open_source(values["source"], values.get("revision")))
    return BoosterSpec.from_dict(values, where=where)


def load_spec(reference: str | Mapping[str, Any], where: str = "spec") -> BoosterSpec:
    """A spec from a preset name, a JSON file path, or a spec object."""
    if isinstance(reference, Mapping):
        return spec_from_mapping(reference, where)
    if not isinstance(reference, str):
        raise SpecError(f"{where}: expected a preset name, a JSON file path or an object, got {reference!r}.")
    if reference in _preset_files():
        return load_preset(reference)
    path = os.path.expanduser(reference)
    if path_status(path, f"{where}: spec file", SpecError) is None:
        if reference.endswith(".json") or os.sep in reference:
            raise SpecError(f"{where}: spec file {shown(reference)} does not exist.")
        return load_preset(reference)
    return spec_from_mapping(read_json(path, f"{where}: spec file", SpecError), where=f"{where} ({path})")
