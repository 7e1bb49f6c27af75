"""`llm4seg plans`: a plans variant that names the LLM, nnU-Net's way of giving a network its own results folder.

nnU-Net keeps one results folder per (trainer, plans identifier, configuration). A plans variant
`<base>_<name>.json` next to nnU-Net's plans, with the booster spec as the `llm4seg` entry of its configurations,
is used with `-p <base>_<name>` by nnUNetv2_train and nnUNetv2_predict: another LLM, a local copy of the weights,
another stage or the paper's U-Net widths never share a results folder with the defaults. The variant reuses the
base plans' preprocessed data (same data identifiers): nothing is preprocessed again.
"""
from __future__ import annotations

import argparse
import json
import os
import re
from pathlib import Path
from typing import Any, Sequence

from nnunetv2_llm4seg.errors import LLM4SegError, SpecError
from nnunetv2_llm4seg.paths import dataset_name, find_dataset, plans_identifier
from nnunetv2_llm4seg.presets import load_spec
from nnunetv2_llm4seg.run_spec import PLANS_KEY
from nnunetv2_llm4seg.spec import BoosterSpec

# The U-Net of the paper (and of the official code): 5 levels, 64-128-256-512-1024 channels.
PAPER_UNET_FEATURES = (64, 128, 256, 512, 1024)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.-]*(_[A-Za-z0-9.-]+)*$")
_PER_STAGE_KEYS = ("kernel_sizes", "strides", "n_conv_per_stage", "n_blocks_per_stage")


class PlansVariantError(LLM4SegError, ValueError):
    """A plans variant cannot be written (dataset, base plans, name or options)."""


def _check_name(name: str) -> None:
    if not _NAME.match(name) or "__" in name or len(name) > 80:
        raise PlansVariantError(f"--name {name!r} is not usable in nnU-Net's folder names: use letters, digits, '.', "
                                "'-' and single '_' (nnU-Net splits results folder names at '__'), at most 80 "
                                "characters.")


def keep_first_stages(arch: dict[str, Any], features: Sequence[int]) -> None:
    """Cut a U-Net's arch_kwargs (in place) to its first len(features) stages, with these widths."""
    arch["n_stages"] = len(features)
    arch["features_per_stage"] = list(features)
    for key in _PER_STAGE_KEYS:
        if key in arch:
            arch[key] = arch[key][: len(features)]
    arch["n_conv_per_stage_decoder"] = arch["n_conv_per_stage_decoder"][: len(features) - 1]


def _divisible_patch(patch: list[int], cap: int, strides: list[list[int]]) -> tuple[list[int], int]:
    """The patch capped at `cap` per axis and the number of stages that still fit (bottleneck >= 4 voxels)."""
    capped = [min(size, cap) for size in patch]
    stages, total = 0, [1] * len(capped)
    for stride in strides:
        nxt = [t * s for t, s in zip(total, stride)]
        if any(size // n < 4 for size, n in zip(capped, nxt)):
            break
        stages, total = stages + 1, nxt
    return [max(t, size // t * t) for size, t in zip(capped, total)], stages


def cap_configuration(configuration: dict, max_patch: int, max_features: int, max_batch: int) -> dict:
    """A copy of a plans configuration with patch, feature and batch caps; stages that no longer fit are cut."""
    capped = json.loads(json.dumps(configuration))
    arch = capped["architecture"]["arch_kwargs"]
    patch, stages = _divisible_patch(capped["patch_size"], max_patch, arch["strides"])
    capped["patch_size"] = patch
    capped["batch_size"] = min(capped["batch_size"], max_batch)
    keep_first_stages(arch, [min(f, max_features) for f in arch["features_per_stage"][:stages]])
    return capped


def with_unet_features(configuration: dict[str, Any], features: Sequence[int], where: str) -> dict[str, Any]:
    """A copy of a plans configuration whose U-Net has len(features) stages with these widths (the first stages
    of nnU-Net's topology are kept; the decoder follows)."""
    configuration = json.loads(json.dumps(configuration))
    arch = configuration.get("architecture", {}).get("arch_kwargs")
    if not isinstance(arch, dict) or "features_per_stage" not in arch:
        raise PlansVariantError(f"{where} has no U-Net architecture (architecture.arch_kwargs.features_per_stage) "
                                "whose widths could be set.")
    stages = len(arch["features_per_stage"])
    if not 2 <= len(features) <= stages:
        raise PlansVariantError(f"--unet-features gives {len(features)} stages, but {where} plans {stages}: give 2.."
                                f"{stages} widths (the paper's U-Net: {','.join(map(str, PAPER_UNET_FEATURES))}).")
    keep_first_stages(arch, features)
    return configuration


def plans_variant(plans: dict[str, Any], name: str, entry: Any, configurations: Sequence[str],
                  unet_features: Sequence[int] | None = None,
                  caps: tuple[int, int, int] | None = None) -> dict[str, Any]:
    """The plans dict of the variant: `name` as plans_name and, in `configurations`, the llm4seg entry (none:
    stock nnU-Net), the U-Net widths and/or the (patch, features, batch) caps of CPU studies."""
    variant = json.loads(json.dumps(plans))
    variant["plans_name"] = name
    available = variant.get("configurations", {})
    missing = [c for c in configurations if c not in available]
    if missing:
        raise PlansVariantError(f"configuration(s) {', '.join(missing)} are not in the plans; available: "
                                f"{', '.join(available)}.")
    for configuration in configurations:
        if unet_features is not None and "architecture" in available[configuration]:
            available[configuration] = with_unet_features(available[configuration], unet_features,
                                                          f"configuration {configuration!r}")
        if caps is not None:
            available[configuration] = cap_configuration(available[configuration], *caps)
        if entry is not None:
            available[configuration][PLANS_KEY] = entry
    return variant


def spec_entry(preset: str, source: str | None, stage: int | None) -> Any:
    """The llm4seg entry for a preset name or spec JSON file, with the options applied, validated now (a spec
    file is stored whole, so the file can go)."""
    from nnunetv2_llm4seg.presets import preset_names

    changes = {key: value for key, value in (("source", source), ("stage", stage)) if value is not None}
    spec = load_spec(preset, where="--preset").replace(**changes)  # validates the combination now
    if source is not None:
        check_source(spec)
    if preset in preset_names():
        return {"preset": preset, **changes} if changes else preset
    return spec.replace(provenance=None).to_dict()


def check_source(spec: BoosterSpec) -> None:
    """A local --source must exist and hold the model the spec describes (config.json only: nothing is loaded);
    a hub id is checked when the weights are fetched."""
    from nnunetv2_llm4seg.loading import check_config_agrees, read_source_config
    from nnunetv2_llm4seg.sources import LocalFolder, open_source

    source = open_source(spec.weights.source)
    if isinstance(source, LocalFolder):
        check_config_agrees(spec, read_source_config(source), source.label)


def check_stages(spec: BoosterSpec, plans: dict[str, Any], configurations: Sequence[str]) -> None:
    """The entry's stage exists in each configuration's U-Net (or in CMUNeXt's five stages)."""
    from nnunetv2_llm4seg.cmunext import DEFAULT_DIMS
    from nnunetv2_llm4seg.network import booster_stage_index

    for configuration in configurations:
        arch = plans["configurations"][configuration].get("architecture", {}).get("arch_kwargs", {})
        stages = max(len(arch.get("features_per_stage", ())), len(DEFAULT_DIMS))
        try:
            booster_stage_index(spec, stages)
        except SpecError as error:
            raise PlansVariantError(f"--stage: configuration {configuration!r}: {error}") from None


def write_plans_variant(dataset: str, preset: str, name: str | None = None, base: str = "nnUNetPlans",
                        source: str | None = None, stage: int | None = None,
                        configurations: Sequence[str] | None = None,
                        unet_features: Sequence[int] | None = None, force: bool = False) -> Path:
    """Write `<base>_<name>.json` next to the base plans in nnUNet_preprocessed; returns its path."""
    if not os.environ.get("nnUNet_preprocessed"):
        raise PlansVariantError("nnUNet_preprocessed is not set: export nnU-Net's path variables first.")
    plans_identifier(base, "-pl")
    entry = spec_entry(preset, source, stage)
    if name is None:
        name = "llm4seg-" + re.sub(r"[^A-Za-z0-9.-]+", "-", Path(preset).stem if preset.endswith(".json") else preset)
    _check_name(name)
    name_of_dataset = find_dataset(dataset)
    if name_of_dataset is None:
        raise PlansVariantError(f"dataset {dataset!r} was not found in nnUNet_raw, nnUNet_preprocessed or "
                                "nnUNet_results: convert it (llm4seg convert), then plan and preprocess it "
                                "(nnUNetv2_plan_and_preprocess -d ID).")
    folder = Path(os.environ["nnUNet_preprocessed"]) / dataset_name(name_of_dataset, f"dataset {dataset!r}")
    base_file = folder / f"{base}.json"
    if not base_file.is_file():
        raise PlansVariantError(f"{base_file} does not exist: run nnUNetv2_plan_and_preprocess -d {dataset} first "
                                "(or name existing plans with -pl).")
    plans = json.loads(base_file.read_text())
    configurations = list(configurations or plans["configurations"])
    variant = plans_variant(plans, f"{base}_{name}", entry, configurations, unet_features)
    check_stages(load_spec(entry, where="--preset"), variant, configurations)
    target = folder / f"{base}_{name}.json"
    text = json.dumps(variant, indent=2) + "\n"
    if target.exists() and target.read_text() != text and not force:
        raise PlansVariantError(f"{target} already exists with other content (results trained with it may depend "
                                "on it); choose another --name, or --force to replace it.")
    target.write_text(text)
    return target


def _features(text: str) -> tuple[int, ...]:
    if text == "paper":
        return PAPER_UNET_FEATURES
    try:
        features = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected widths like 64,128,256,512,1024 or 'paper'") from None
    if any(f <= 0 or f > 4096 for f in features):
        raise argparse.ArgumentTypeError(f"{text!r}: widths must be between 1 and 4096")
    return features


def add_plans_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("plans", help="write a plans variant that names the LLM (train with -p)",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", help="dataset id or name (planned and preprocessed by nnU-Net)")
    parser.add_argument("--preset", required=True, help="preset name (llm4seg presets) or spec JSON file")
    parser.add_argument("--source", help="read the weights from here: local model folder or hub id")
    parser.add_argument("--stage", type=int, help="encoder stage the booster follows: -1 bottleneck, -2 above")
    parser.add_argument("-pl", "--base-plans", default="nnUNetPlans", help="plans identifier to start from")
    parser.add_argument("--name", help="variant name; the plans identifier is <base>_<name> (default: from preset)")
    parser.add_argument("-c", "--configurations", nargs="+", help="configurations to give the entry (default: all)")
    parser.add_argument("--unet-features", type=_features, help="U-Net widths per stage, e.g. 'paper' = "
                        "64,128,256,512,1024 (the paper's U-Net: a 1024-channel bottleneck)")
    parser.add_argument("--force", action="store_true", help="replace an existing variant of that name")
    parser.set_defaults(handler=_cmd_plans)


def _cmd_plans(args: argparse.Namespace) -> int:
    path = write_plans_variant(args.dataset, args.preset, args.name, args.base_plans, args.source, args.stage,
                               args.configurations, args.unet_features, args.force)
    identifier = path.stem
    print(f"wrote {path}\ntrain:   nnUNetv2_train {args.dataset} CONFIGURATION FOLD -tr TRAINER -p {identifier}\n"
          f"predict: nnUNetv2_predict -i IN -o OUT -d {args.dataset} -c CONFIGURATION -tr TRAINER -p {identifier}")
    return 0
