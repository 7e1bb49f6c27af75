"""The package reads top-down: CLI -> experiments -> trainer -> network -> booster -> layers -> spec. No module
imports one of its own layer or above (imports inside functions count too), and the networks the booster is put
into state the interface it needs."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Top to bottom; a module may import modules of lower layers only.
LAYERS = (
    ("cli",),
    ("ablate", "demo", "preflight", "explain"),
    ("explain_plot",),
    ("study", "converters", "explanation"),
    ("held_out", "evidence"),
    ("experiments",),
    ("plans_variants",),
    ("nnunet_ext_trainers",),
    ("trainers",),
    ("trainer",),
    ("network", "parameters", "run_spec", "attention_maps"),
    ("booster", "presets"),
    ("loading",),
    ("layers",),
    ("spec",),
    ("families", "sources", "cmunext", "metrics", "report", "synthetic", "paths", "precision", "_ext_trainer_hook",
     "case_metadata", "stats"),
    ("errors",),
)
RANK = {name: len(LAYERS) - index for index, layer in enumerate(LAYERS) for name in layer}


def _modules() -> dict[str, Path]:
    """Top-level module name (within the package) -> file, for every source file of the package."""
    files = {}
    for path in sorted((ROOT / "nnunetv2_llm4seg").rglob("*.py")):
        parts = path.relative_to(ROOT / "nnunetv2_llm4seg").with_suffix("").parts
        if parts != ("__init__",):
            files[f"{'.'.join(parts)}"] = path
    for path in sorted((ROOT / "trainers").glob("*.py")):
        files[f"trainers.{path.stem}"] = path
    return files


def _imported(path: Path) -> set[str]:
    """Top-level package modules imported anywhere in the file."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("nnunetv2_llm4seg"):
            rest = node.module.split(".")[1:]
            names |= {rest[0]} if rest else {alias.name for alias in node.names}
        elif isinstance(node, ast.Import):
            names |= {a.name.split(".")[1] for a in node.names if a.name.startswith("nnunetv2_llm4seg.")}
    return names


def test_every_module_has_a_layer():
    missing = sorted({name.split(".")[0] for name in _modules()} - set(RANK))
    assert not missing, f"add these modules to LAYERS: {missing}"


@pytest.mark.parametrize("module", sorted(_modules()))
def test_no_module_imports_its_own_layer_or_above(module):
    top = module.split(".")[0]
    upward = sorted(name for name in _imported(_modules()[module]) - {top} if RANK[name] >= RANK[top])
    assert not upward, f"{module} (layer {RANK[top]}) imports {upward}: move the shared code down a layer"


def test_nnunet_and_cmunext_networks_satisfy_the_booster_interface():
    import torch
    from dynamic_network_architectures.architectures.unet import PlainConvUNet, ResidualEncoderUNet

    from nnunetv2_llm4seg.cmunext import CMUNeXt
    from nnunetv2_llm4seg.errors import SpecError
    from nnunetv2_llm4seg.network import BoostableUNet, boost_unet
    from nnunetv2_llm4seg.presets import load_preset

    common = dict(input_channels=1, n_stages=3, features_per_stage=[4, 8, 16], conv_op=torch.nn.Conv2d,
                  kernel_sizes=3, strides=[1, 2, 2], num_classes=2)
    networks = [PlainConvUNet(**common, n_conv_per_stage=1, n_conv_per_stage_decoder=1),
                ResidualEncoderUNet(**common, n_blocks_per_stage=1, n_conv_per_stage_decoder=1),
                CMUNeXt(1, 2, (32, 32))]
    assert all(isinstance(network, BoostableUNet) for network in networks)
    with pytest.raises(SpecError, match="cannot be placed in it"):
        boost_unet(torch.nn.Conv2d(1, 2, 3), load_preset("minilm-l6"))
