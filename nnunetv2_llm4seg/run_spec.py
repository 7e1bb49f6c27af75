"""Which spec an nnU-Net run uses, and where it is stored so that a trained model needs nothing else.

The trainer class and the plans file define the network: the configuration's "llm4seg" entry (written by
`llm4seg plans`, used with `-p`) if there is one, else the trainer's default preset; the trainer's row overrides
(trainable, init, attention, ...) are applied last. `nnUNet_llm4seg_source` only says where the weights are read
from (a local copy or another hub id): it never changes the network, and the sha256 of what was read is checked.
The resolved spec is written into the run's plans (configuration entry "llm4seg"), hence into the results
folder's plans.json and every checkpoint; inference, --c and --val read it back from there.
"""
from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Any, Mapping

import torch

from nnunetv2_llm4seg.errors import CheckpointError, SpecConflictError, SpecError
from nnunetv2_llm4seg.presets import load_preset, load_spec
from nnunetv2_llm4seg.sources import first_sentence, refused_global
from nnunetv2_llm4seg.spec import BoosterSpec, describe_differences

PLANS_KEY = "llm4seg"
SOURCE_VARIABLE = "nnUNet_llm4seg_source"
RETIRED_SPEC_VARIABLE = "nnUNet_llm4seg_spec"

def refuse_retired_variable() -> None:
    if os.environ.get(RETIRED_SPEC_VARIABLE, "").strip():
        raise SpecError(f"{RETIRED_SPEC_VARIABLE} is no longer read: the network is defined by the trainer class "
                        "and the plans file, so that each LLM gets its own results folder. Write a plans variant "
                        "instead: `llm4seg plans DATASET --preset NAME_OR_JSON --name NAME`, then train and predict "
                        f"with `-p nnUNetPlans_NAME`; unset {RETIRED_SPEC_VARIABLE}.")


def requested_spec(configuration: Mapping[str, Any], default_preset: str,
                   overrides: Mapping[str, Any]) -> BoosterSpec:
    """The spec a new run asks for (plans entry, else the trainer's default preset), with the trainer's overrides
    applied and the weights' location taken from nnUNet_llm4seg_source when it is set."""
    refuse_retired_variable()
    entry = configuration.get(PLANS_KEY)
    spec = load_spec(entry, where=f"plans entry {PLANS_KEY!r}") if entry is not None else load_preset(default_preset)
    source = os.environ.get(SOURCE_VARIABLE, "").strip()
    if source:
        spec = spec.replace(source=source)
    return spec.replace(provenance=None, **overrides)


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


def read_checkpoint(path: str | Path) -> dict:
    """An nnU-Net checkpoint read without running pickled code (weights_only=True with the few plain types
    nnU-Net stores besides tensors); a truncated or foreign file is refused with the ways out."""
    import numpy as np

    path = Path(path)
    multiarray = (np._core if hasattr(np, "_core") else np.core).multiarray  # numpy 2 / numpy 1
    # nnU-Net's logs hold numpy scalars (np.float64 Dice values); nothing else outside tensors and builtins
    allowed = [np.dtype, np.ndarray, multiarray.scalar, multiarray._reconstruct,
               *(type(np.dtype(kind)) for kind in (np.float64, np.float32, np.int64, np.int32, np.bool_))]
    try:
        with torch.serialization.safe_globals(allowed):
            checkpoint = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except pickle.UnpicklingError as error:
        raise CheckpointError(
            f"{path} was refused unread: it holds pickled Python objects besides tensors and plain values "
            f"({refused_global(error)}), and unpickling them could run "
            "code. Use a checkpoint written by nnUNetv2_train from a run you trust; move this one away and "
            "continue from another checkpoint of the fold, or start the fold afresh.") from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as error:
        raise CheckpointError(
            f"{path} cannot be read as an nnU-Net checkpoint ({first_sentence(error)}). It may be truncated (a run "
            "killed while saving, a full disk) or not be a checkpoint. Ways out: continue from another checkpoint of "
            f"the same fold (move {path.name} away; nnU-Net then takes checkpoint_best.pth), or start the fold "
            "afresh without --c after moving the fold folder away.") from None
    if not isinstance(checkpoint, dict) or "network_weights" not in checkpoint:
        raise CheckpointError(f"{path} holds no nnU-Net checkpoint (no 'network_weights'); use a checkpoint "
                              "written by nnUNetv2_train.")
    return checkpoint


def spec_in_checkpoint(checkpoint: dict | str | Path, configuration_name: str) -> BoosterSpec | None:
    """The spec an nnU-Net checkpoint was trained with (its init_args hold the run's plans)."""
    if not isinstance(checkpoint, dict):
        checkpoint = read_checkpoint(checkpoint)
    configuration = checkpoint.get("init_args", {}).get("plans", {}).get("configurations", {}).get(
        configuration_name, {})
    entry = configuration.get(PLANS_KEY)
    return None if entry is None else load_spec(entry, where=f"checkpoint ({configuration_name})")


def spec_in_results_plans(plans_file: str | Path, configuration_name: str) -> BoosterSpec | None:
    """The spec in a results folder's plans.json (None if there is none yet)."""
    plans_file = Path(plans_file)
    if not plans_file.is_file():
        return None
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    configuration = PlansManager(str(plans_file)).get_configuration(configuration_name).configuration
    entry = configuration.get(PLANS_KEY)
    return None if entry is None else load_spec(entry, where=str(plans_file))


def check_plans_of_checkpoint(checkpoint: dict, plans_file: Path, where: str) -> None:
    """A model folder's plans.json must still describe the network its checkpoint was trained with (the run's
    plans in init_args): checkpoints without the booster's network_spec buffer are otherwise checked by shape
    only, and a hand-edited llm4seg entry (attention, positions, ...) would change the network silently."""
    configuration = checkpoint.get("init_args", {}).get("configuration")
    stored = spec_in_checkpoint(checkpoint, configuration) if isinstance(configuration, str) else None
    current = spec_in_results_plans(plans_file, configuration) if stored is not None else None
    diff = current.network_differences(stored) if current is not None else {}
    if diff:
        raise SpecConflictError(
            f"{plans_file} describes another LLM4Seg network than {where} was trained with (plans.json vs "
            f"checkpoint: {describe_differences(diff)}). Nothing was predicted. Restore the llm4seg entry of "
            "plans.json as it was at training (the checkpoint's init_args hold it).")


def check_resume(requested: BoosterSpec, stored: BoosterSpec, where: str) -> None:
    """--c and --val continue with the checkpoint's network and weights: a plans entry or trainer that would build
    another network is refused (where the weights would be read from does not matter)."""
    diff = requested.network_differences(stored)
    if diff:
        raise SpecConflictError(
            f"the checkpoint {where} was trained with another LLM4Seg network than the one this trainer and plans "
            f"define. Differing fields (requested vs checkpoint): {describe_differences(diff)}. Nothing was overwritten. "
            "Continue with the trainer (-tr) and plans (-p) the fold was trained with, or move the fold away to "
            "train the new network.")


def check_same_model(new: BoosterSpec, stored: BoosterSpec, where: str) -> None:
    """A fresh fold must not write into a results folder whose other folds hold another network or other
    pre-trained weights."""
    diff = new.network_differences(stored)
    new_hash = (new.weights.provenance or {}).get("sha256")
    stored_hash = (stored.weights.provenance or {}).get("sha256")
    if new_hash and stored_hash and new_hash != stored_hash:
        diff["weights sha256"] = (new_hash, stored_hash)
    if diff:
        raise SpecConflictError(
            f"{where} already holds a model trained with another LLM4Seg network or other pre-trained weights; "
            f"training this fold would mix two models in one model folder. Differing (new vs stored): "
            f"{describe_differences(diff)}. Nothing was overwritten. Read the layer from the same model "
            f"({SOURCE_VARIABLE} pointing at the same weights), write a plans variant for the new one "
            "(`llm4seg plans ... --name NAME`, then -p nnUNetPlans_NAME), or move the old results folder away.")
