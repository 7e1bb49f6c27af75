"""The `llm4seg` command: presets, describe, trainers, fetch, plans, check, convert, demo, ablate, study."""
from __future__ import annotations

import argparse
import json
import sys
from typing import Callable, Sequence

from nnunetv2_llm4seg.errors import LLM4SegError


def _spatial(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(part) for part in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--spatial {text!r}: expected sizes like 4x4 or 4x4x4") from None
    if len(sizes) not in (2, 3) or min(sizes) <= 0:
        raise argparse.ArgumentTypeError(f"--spatial {text!r}: expected 2 or 3 positive sizes like 4x4 or 4x4x4")
    return sizes


def _channels(text: str) -> int:
    try:
        channels = int(text)
    except ValueError:
        channels = 0
    if channels < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: the number of channels at the booster's stage must be an "
                                         "integer >= 1")
    return channels


def _spec_from_args(args: argparse.Namespace):
    from nnunetv2_llm4seg.presets import load_spec

    spec = load_spec(args.preset, where="--preset")
    changes = {}
    if getattr(args, "source", None) is not None:
        changes["source"] = args.source
    if getattr(args, "init", None):
        changes["init"] = args.init
    if getattr(args, "trainable", None) is not None:
        changes["trainable"] = args.trainable
    if getattr(args, "lora_rank", None) is not None:
        changes["lora"] = {"rank": args.lora_rank, "alpha": 2 * args.lora_rank}
    if getattr(args, "gated", False):
        changes["residual"] = "gated"
    return spec.replace(**changes) if changes else spec


def cmd_presets(args: argparse.Namespace) -> int:
    from nnunetv2_llm4seg.presets import load_preset, preset_names

    specs = [load_preset(name) for name in preset_names()]
    if args.json:
        print(json.dumps([spec.to_dict() for spec in specs], indent=2))
        return 0
    for spec in specs:
        layer = f"layer index {spec.layer}" + (f" (paper: {spec.paper_layer})" if spec.paper_layer else "")
        print(f"{spec.name}\n  {spec.weights.source}, {spec.family}, hidden {spec.hidden_size}, {layer}\n"
              f"  {spec.init}, {'trainable' if spec.trainable else 'frozen'}, attention {spec.attention}, "
              f"positions {spec.positions}, dtype {spec.dtype}\n  {spec.description}\n")
    return 0


def cmd_describe(args: argparse.Namespace) -> int:
    from nnunetv2_llm4seg.network import check_token_budget
    from nnunetv2_llm4seg.parameters import describe_booster

    spec = _spec_from_args(args)
    if args.spatial:  # the checks training makes at this stage (tokens, learned positions, budget)
        check_token_budget(spec, args.spatial, [[1] * len(args.spatial)], 0)
    report = describe_booster(spec, args.channels, args.spatial)
    if args.json:
        print(json.dumps(report))
        return 0
    tokens = report["tokens"] if report["tokens"] is not None else "any (give --spatial)"
    rows = [
        ("preset", report["preset"] or "(custom)"), ("source", report["source"]),
        ("family / layer", f"{report['family']}, layer index {report['layer']}"
                           + (f" (paper: {report['paper_layer']})" if report["paper_layer"] else "")),
        ("hidden size", report["hidden_size"]), ("channels", report["channels"]), ("tokens", tokens),
        ("init / state", f"{report['init']}, {'trainable' if report['trainable'] else 'frozen'}"),
        ("attention / positions", f"{report['attention']}, {report['positions']}, {report['dtype']}"),
        ("adapter params", f"{report['adapter_params']:,}"),
        ("LLM layer params", f"{report['llm_layer_params']:,}"),
        ("LoRA params", f"{report['lora_params']:,}" + (f" (rank {report['lora']['rank']})" if report["lora"] else "")),
        ("gate params", f"{report['gate_params']:,}"),
        ("position params", f"{report['position_params']:,}"),
        ("trainable params", f"{report['trainable_params']:,}"),
        ("frozen params", f"{report['frozen_params']:,}"),
    ]
    width = max(len(name) for name, _ in rows)
    print("\n".join(f"{name:<{width}}  {value}" for name, value in rows))
    return 0


def cmd_trainers(args: argparse.Namespace) -> int:
    from importlib.metadata import entry_points

    registered = sorted(entry_points(group="nnunetv2.trainers"), key=lambda ep: ep.name)
    for entry in registered:
        print(f"{entry.name}  ({entry.value})" if args.verbose else entry.name)
    if not registered:
        print("no trainers registered: is nnunetv2-llm4seg installed (pip install -e .)?", file=sys.stderr)
        return 1
    print(f"\nshort schedules of each, built on demand: <trainer>_1epoch, <trainer>_<N>epochs for any N >= 1 "
          f"(e.g. {registered[0].name}_5epochs)")
    return 0


def cmd_fetch(args: argparse.Namespace) -> int:
    from nnunetv2_llm4seg.loading import fetch_layer

    spec = _spec_from_args(args)
    if not spec.has_llm_layer:
        raise LLM4SegError("this spec has init 'none' (adapters only): there is no layer to fetch.")
    provenance = fetch_layer(spec)
    print(json.dumps(provenance, indent=2) if args.json else
          f"loaded {provenance['tensors']} tensors of layer {spec.layer} from {provenance['source']} "
          f"({', '.join(provenance['files'])}, revision {provenance['revision']})\nsha256 {provenance['sha256']}")
    return 0


def _add_spec_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", required=True, help="preset name (see `llm4seg presets`) or spec JSON file")
    parser.add_argument("--source", help="override the preset's source: hub id, local folder or package:<name>")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llm4seg", description="LLM4Seg for nnU-Net v2: a frozen LLM layer "
                                     "at the bottleneck of nnU-Net's U-Nets.")
    commands = parser.add_subparsers(dest="command", required=True)

    presets = commands.add_parser("presets", help="list the shipped presets")
    presets.add_argument("--json", action="store_true", help="print the full specs as JSON")
    presets.set_defaults(handler=cmd_presets)

    describe = commands.add_parser("describe", help="parameter counts of a booster (no download)")
    _add_spec_arguments(describe)
    describe.add_argument("--channels", type=_channels, required=True, help="channels at the booster's stage")
    describe.add_argument("--spatial", type=_spatial, help="feature map size at that stage, e.g. 4x4 or 4x4x4")
    describe.add_argument("--init", choices=("pretrained", "random", "none"))
    state = describe.add_mutually_exclusive_group()
    state.add_argument("--trainable", dest="trainable", action="store_true", default=None)
    state.add_argument("--frozen", dest="trainable", action="store_false")
    describe.add_argument("--lora-rank", type=int, help="add LoRA adapters of this rank (alpha = 2 x rank)")
    describe.add_argument("--gated", action="store_true", help="add the booster through a gate that starts at 0")
    describe.add_argument("--json", action="store_true", help="print one JSON object")
    describe.set_defaults(handler=cmd_describe)

    trainers = commands.add_parser("trainers", help="list the nnU-Net trainers this package registers")
    trainers.add_argument("-v", "--verbose", action="store_true", help="also show where each class lives")
    trainers.set_defaults(handler=cmd_trainers)

    fetch = commands.add_parser("fetch", help="load (and cache) a preset's layer once, print its sha256")
    _add_spec_arguments(fetch)
    fetch.add_argument("--json", action="store_true", help="print the provenance as JSON")
    fetch.set_defaults(handler=cmd_fetch)

    from nnunetv2_llm4seg.ablate import add_ablate_parser
    from nnunetv2_llm4seg.converters import add_convert_parser
    from nnunetv2_llm4seg.demo import add_demo_parser
    from nnunetv2_llm4seg.explain import add_explain_parser
    from nnunetv2_llm4seg.plans_variants import add_plans_parser
    from nnunetv2_llm4seg.preflight import add_check_parser
    from nnunetv2_llm4seg.study import add_study_parser

    add_plans_parser(commands)
    add_check_parser(commands)
    add_convert_parser(commands)
    add_demo_parser(commands)
    add_ablate_parser(commands)
    add_study_parser(commands)
    add_explain_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except LLM4SegError as error:
        print(f"llm4seg {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
