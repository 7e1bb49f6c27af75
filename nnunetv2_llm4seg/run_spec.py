"""Which spec an nnU-Net run uses, and where it is stored so that a trained model needs nothing else.

Requested spec, in this order: the configuration's "llm4seg" entry in the plans file, then nnUNet_llm4seg_spec,
then the trainer's default preset; nnUNet_llm4seg_source then points whichever spec at another copy of the model,
and the trainer's ablation overrides (trainable, init) are applied last.
The resolved spec is written into the run's plans (configuration entry "llm4seg"), hence into the results
folder's plans.json and every checkpoint; inference, --c and --val read it back from there.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch

from nnunetv2_llm4seg.errors import SpecConflictError, SpecError
from nnunetv2_llm4seg.presets import load_preset, load_spec
from nnunetv2_llm4seg.spec import DESCRIPTIVE_FIELDS, BoosterSpec

PLANS_KEY = "llm4seg"
SPEC_VARIABLE = "nnUNet_llm4seg_spec"
SOURCE_VARIABLE = "nnUNet_llm4seg_source"
TRAINER_DEFAULT = "trainer default"
# Where the weights come from does not change the network when their sha256 is the same.
LOCATION_FIELDS = ("source", "revision", "allow_pickle")


@dataclass(frozen=True)
class RequestedSpec:
    spec: BoosterSpec
    origin: str

    @property
    def explicit(self) -> bool:
        """True when the user chose the spec (plans entry or environment), not the trainer's default."""
        return self.origin != TRAINER_DEFAULT


def requested_spec(configuration: Mapping[str, Any], default_preset: str,
                   overrides: Mapping[str, Any]) -> RequestedSpec:
    """The spec a new run asks for (plans entry > environment > trainer default), with overrides applied."""
    entry = configuration.get(PLANS_KEY)
    env_spec = os.environ.get(SPEC_VARIABLE, "").strip()
    env_source = os.environ.get(SOURCE_VARIABLE, "").strip()
    if entry is not None:
        spec, origin = load_spec(entry, where=f"plans entry {PLANS_KEY!r}"), "plans entry"
    elif env_spec:
        spec, origin = load_spec(env_spec, where=SPEC_VARIABLE), SPEC_VARIABLE
    else:
        spec, origin = load_preset(default_preset), TRAINER_DEFAULT
    if env_source:  # where the weights are read from: also for a plans entry (it does not change the network)
        spec = spec.replace(source=env_source)
        origin = SOURCE_VARIABLE if origin == TRAINER_DEFAULT else f"{origin} + {SOURCE_VARIABLE}"
    return RequestedSpec(spec.replace(provenance=None, **overrides), origin)


def configured_spec(configuration: Mapping[str, Any]) -> BoosterSpec:
    """The spec stored in a configuration (what build_network_architecture sees, also at inference)."""
    entry = configuration.get(PLANS_KEY)
    if entry is None:
        raise SpecError(f"this configuration has no {PLANS_KEY!r} entry in its plans, so the LLM4Seg network "
                        "cannot be rebuilt. Models trained with an LLM4Seg trainer carry it in the plans.json "
                        "of their results folder; was this model trained with another trainer?")
    return load_spec(entry, where=f"plans entry {PLANS_KEY!r}")


def install_spec(plans: dict, configuration_name: str, configuration: dict, spec: BoosterSpec) -> None:
    """Write the resolved spec into the plans dict (saved as plans.json and in checkpoints) and the
    configuration dict nnU-Net builds the network from."""
    plans["configurations"][configuration_name][PLANS_KEY] = spec.to_dict()
    configuration[PLANS_KEY] = spec.to_dict()


def spec_in_checkpoint(path: str | Path, configuration_name: str) -> BoosterSpec | None:
    """The spec an nnU-Net checkpoint was trained with (its init_args hold the run's plans)."""
    checkpoint = torch.load(path, map_location="cpu", mmap=True, weights_only=False)
    configuration = checkpoint.get("init_args", {}).get("plans", {}).get("configurations", {}).get(
        configuration_name, {})
    entry = configuration.get(PLANS_KEY)
    return None if entry is None else load_spec(entry, where=f"checkpoint {path}")


def spec_in_results_plans(plans_file: str | Path, configuration_name: str) -> BoosterSpec | None:
    """The spec in a results folder's plans.json (None if there is none yet)."""
    plans_file = Path(plans_file)
    if not plans_file.is_file():
        return None
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    configuration = PlansManager(str(plans_file)).get_configuration(configuration_name).configuration
    entry = configuration.get(PLANS_KEY)
    return None if entry is None else load_spec(entry, where=str(plans_file))


def _describe(diff: Mapping[str, tuple]) -> str:
    def short(value: Any) -> str:
        text = repr(value)
        return text if len(text) <= 60 else text[:57] + "..."

    return "; ".join(f"{name}: {short(a)} vs {short(b)}" for name, (a, b) in diff.items())


def check_resume(requested: RequestedSpec, stored: BoosterSpec, where: str) -> None:
    """Resuming (--c, --val) uses the stored spec and the checkpoint's weights; an explicitly requested spec that
    would build another network is an error (where the weights would be read from does not matter)."""
    if not requested.explicit:
        return
    diff = requested.spec.differences(stored, ignore=DESCRIPTIVE_FIELDS + LOCATION_FIELDS)
    if diff:
        raise SpecConflictError(
            f"the run in {where} was trained with another LLM4Seg spec than the one requested by "
            f"{requested.origin}. Differing fields (requested vs stored): {_describe(diff)}. Nothing was changed. "
            f"To continue that run, unset {SPEC_VARIABLE}/{SOURCE_VARIABLE} (or the plans entry) so the stored "
            "spec is used; to train the new spec, use another trainer or plans name, or move the old results away.")


def check_same_model(new: BoosterSpec, stored: BoosterSpec, where: str) -> None:
    """A fresh run must not write into a results folder whose other folds hold another network."""
    diff = new.differences(stored, ignore=DESCRIPTIVE_FIELDS + LOCATION_FIELDS)
    new_hash = (new.provenance or {}).get("sha256")
    stored_hash = (stored.provenance or {}).get("sha256")
    if new_hash and stored_hash and new_hash != stored_hash:
        diff["weights sha256"] = (new_hash, stored_hash)
    if diff:
        raise SpecConflictError(
            f"{where} already holds a model trained with another LLM4Seg spec; training this fold with the new "
            f"spec would mix two networks in one model folder. Differing fields (new vs stored): {_describe(diff)}. "
            "Nothing was overwritten. Use the same spec (unset or fix nnUNet_llm4seg_spec / "
            "nnUNet_llm4seg_source), another trainer or plans name, or move the old results folder away.")
