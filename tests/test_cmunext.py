"""CMUNeXt in nnU-Net: fidelity to the published network, shapes, deep supervision, booster, optimiser, CLI run."""
from __future__ import annotations

import json
import textwrap
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from nnunetv2_llm4seg.cmunext import CMUNeXt, PatchSizeError, deep_supervision_scales
from nnunetv2_llm4seg.errors import LLM4SegError
from nnunetv2_llm4seg.network import boost_unet
from nnunetv2_llm4seg.presets import load_preset

# sum(p.numel()) of CMUNeXt(input_channel=3, num_classes=1) with the default dims/depths/kernels, computed by
# running the official network/CMUNeXt.py (github.com/FengheTan9/CMUNeXt, identical in Mwxinnn/LLM4Seg).
OFFICIAL_PARAMETERS = 3_149_185
DIMS = (16, 32, 128, 160, 256)


def auxiliary_head_parameters(num_classes: int) -> int:
    """The 1x1 deep-supervision heads at the 1/2, 1/4 and 1/8 decoder stages, which the official net lacks."""
    return sum(channels * num_classes + num_classes for channels in DIMS[1:4])


def test_parameters_in_use_with_deep_supervision_off_match_the_official_network():
    torch.manual_seed(0)
    network = CMUNeXt(3, 1, (256, 256), deep_supervision=False)
    network(torch.randn(2, 3, 64, 64)).sum().backward()
    used = sum(p.numel() for p in network.parameters() if p.grad is not None)
    total = sum(p.numel() for p in network.parameters())
    assert used == OFFICIAL_PARAMETERS
    assert total == OFFICIAL_PARAMETERS + auxiliary_head_parameters(1)


@pytest.mark.parametrize("patch", [(64, 64), (32, 48), (16, 32, 32)], ids=["2d", "2d-rect", "3d"])
@pytest.mark.parametrize("batch", [1, 3])
@torch.no_grad()
def test_forward_shapes_with_and_without_deep_supervision(patch: tuple[int, ...], batch: int):
    network = CMUNeXt(2, 3, patch, deep_supervision=True)
    x = torch.randn(batch, 2, *patch)
    outputs = network(x)
    scales = deep_supervision_scales(len(patch))
    assert len(outputs) == len(scales) == 4
    for output, scale in zip(outputs, scales):
        assert output.shape == (batch, 3, *[round(size * s) for size, s in zip(patch, scale)])
    network.decoder.deep_supervision = False  # what nnU-Net's set_deep_supervision_enabled does
    assert network(x).shape == (batch, 3, *patch)
    assert CMUNeXt(2, 3, patch, deep_supervision=False)(x).shape == (batch, 3, *patch)


def test_3d_variant_uses_3d_depthwise_convolutions():
    network = CMUNeXt(1, 2, (16, 32, 32))
    convs = [m for m in network.modules() if isinstance(m, nn.modules.conv._ConvNd)]
    assert convs and all(isinstance(m, nn.Conv3d) for m in convs)
    depthwise = [m for m in convs if m.groups == m.in_channels > 1]
    assert [m.kernel_size for m in depthwise] == [(3, 3, 3), (3, 3, 3), (7, 7, 7), *[(7, 7, 7)] * 3, (7, 7, 7)]
    assert not any(isinstance(m, (nn.Conv2d, nn.BatchNorm2d)) for m in network.modules())


@pytest.mark.parametrize("patch", [(64, 40), (24, 64, 64), (8, 16)])
def test_refuses_a_patch_not_divisible_by_16_and_says_what_to_change(patch: tuple[int, ...]):
    with pytest.raises(PatchSizeError) as caught:
        CMUNeXt(1, 2, patch)
    assert isinstance(caught.value, ValueError) and isinstance(caught.value, LLM4SegError)
    message = str(caught.value)
    assert "divisible by 16" in message and "patch_size" in message
    suggestion = json.loads(message.split("to e.g. ")[1].split("]")[0] + "]")
    assert all(size % 16 == 0 for size in suggestion) and len(suggestion) == len(patch)


def test_refuses_a_patch_that_is_neither_2d_nor_3d():
    with pytest.raises(PatchSizeError, match="2D or 3D"):
        CMUNeXt(1, 2, (64,))


def test_llama_booster_at_the_bottleneck_adds_only_the_adapters_as_trainable():
    with torch.device("meta"):
        network = CMUNeXt(3, 1, (256, 256))
        trainable_before = sum(p.numel() for p in network.parameters() if p.requires_grad)
        boosted = boost_unet(network, load_preset("llama3.2-1b-l15"))
    trainable_after = sum(p.numel() for p in boosted.parameters() if p.requires_grad)
    assert boosted.booster_stage == 4 and boosted.booster.adapter_in.in_features == 256
    assert trainable_after - trainable_before == 2 * 256 * 2048 + 2048 + 256


@torch.no_grad()
def test_boosted_cmunext_runs_with_and_without_deep_supervision():
    boosted = boost_unet(CMUNeXt(1, 2, (64, 64), deep_supervision=True), load_preset("minilm-l6"))
    boosted.booster.load_pretrained(load_preset("minilm-l6"))
    x = torch.randn(2, 1, 64, 64)
    assert [tuple(o.shape[2:]) for o in boosted(x)] == [(64, 64), (32, 32), (16, 16), (8, 8)]
    boosted.decoder.deep_supervision = False
    assert boosted(x).shape == (2, 2, 64, 64)


def test_optimiser_is_the_published_sgd_on_trainable_parameters_only():
    from nnunetv2_llm4seg.trainers.llm4seg_cmunext_trainers import CMUNeXtTraining

    boosted = boost_unet(CMUNeXt(1, 2, (64, 64)), load_preset("minilm-l6"))
    trainer = SimpleNamespace(network=boosted, initial_lr=1e-2, weight_decay=1e-4, num_epochs=10)
    optimizer, scheduler = CMUNeXtTraining.configure_optimizers(trainer)
    group = optimizer.param_groups[0]
    assert (group["lr"], group["momentum"], group["nesterov"], group["weight_decay"]) == (1e-2, 0.9, False, 1e-4)
    optimised = {id(p) for p in group["params"]}
    assert optimised == {id(p) for p in boosted.parameters() if p.requires_grad}
    assert not any(id(p) in optimised for p in boosted.booster.llm.parameters())


def test_deep_supervision_targets_match_the_network_not_the_plans():
    from nnunetv2_llm4seg.trainers.llm4seg_cmunext_trainers import CMUNeXtTraining

    plans_strides = [[1, 1], [2, 2], [2, 2], [2, 2], [2, 2], [2, 2], [2, 2]]  # nnU-Net's U-Net: 7 stages
    trainer = SimpleNamespace(enable_deep_supervision=True, configuration_manager=SimpleNamespace(
        patch_size=[128, 96], pool_op_kernel_sizes=plans_strides))
    scales = CMUNeXtTraining._get_deep_supervision_scales(trainer)
    outputs = CMUNeXt(1, 2, (128, 96), deep_supervision=True)(torch.randn(1, 1, 128, 96))
    assert [list(o.shape[2:]) for o in outputs] == [[round(128 * a), round(96 * b)] for a, b in scales]
    trainer.enable_deep_supervision = False
    assert CMUNeXtTraining._get_deep_supervision_scales(trainer) is None


def test_cmunext_trainers_and_their_rows():
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    import nnunetv2_llm4seg.trainers as trainers
    from nnunetv2_llm4seg.presets import load_preset
    from nnunetv2_llm4seg.trainer import LLM4SegTrainer
    from nnunetv2_llm4seg.trainers.llm4seg_cmunext_trainers import CMUNeXtTraining

    paper = {"attention": "causal", "positions": "paper", "dtype": "float32"}  # what the official code computes
    rows = {"": ("llama3.2-1b-l15", {}), "Unfrozen": ("llama3.2-1b-l15", {"trainable": True}),
            "RandomInit": ("llama3.2-1b-l15", {"init": "random", "trainable": True}),
            "AdaptersOnly": ("llama3.2-1b-l15", {"init": "none"}), "MiniLM": ("minilm-l6", {}),
            "Paper": ("llama3.2-1b-l15-paper", paper),
            "PaperUnfrozen": ("llama3.2-1b-l15-paper", {**paper, "trainable": True}),
            "PaperRandomInit": ("llama3.2-1b-l15-paper", {**paper, "init": "random-linear", "trainable": True})}
    for row, (preset, overrides) in rows.items():
        trainer = getattr(trainers, f"nnUNetTrainerCMUNeXtLLM4Seg{row}")
        assert issubclass(trainer, CMUNeXtTraining) and issubclass(trainer, LLM4SegTrainer)
        assert (trainer.default_preset, trainer.row_overrides()) == (preset, overrides), row
        load_preset(preset).replace(**overrides)  # a valid spec
    assert issubclass(trainers.nnUNetTrainerCMUNeXt, nnUNetTrainer)
    assert not issubclass(trainers.nnUNetTrainerCMUNeXt, LLM4SegTrainer)
    assert trainers.nnUNetTrainerCMUNeXt_20epochs.schedule_epochs == 20


# ---- end to end through nnU-Net's command lines ----------------------------------------------------------------
TEST_TRAINER = "nnUNetTrainerCMUNeXtLLM4SegMiniLM_test"
TEST_TRAINER_MODULE = f'''
    import torch

    from nnunetv2_llm4seg.trainers.llm4seg_cmunext_trainers import nnUNetTrainerCMUNeXtLLM4SegMiniLM


    class {TEST_TRAINER}(nnUNetTrainerCMUNeXtLLM4SegMiniLM):
        def __init__(self, plans, configuration, fold, dataset_json, device=torch.device("cuda")):
            super().__init__(plans, configuration, fold, dataset_json, device)
            self.num_iterations_per_epoch = 20
            self.num_val_iterations_per_epoch = 2
            self.num_epochs = 2

        def perform_actual_validation(self, save_probabilities=False):
            pass  # the test predicts and scores its own held-out cases; the U-Net tests cover the validation
'''
DATASET_ID = 731


def dice(prediction: np.ndarray, reference: np.ndarray) -> float:
    overlap = np.logical_and(prediction == 1, reference == 1).sum()
    return 2 * overlap / max((prediction == 1).sum() + (reference == 1).sum(), 1)


@pytest.mark.slow
def test_nnunet_cli_trains_and_predicts_cmunext_with_minilm_booster(tmp_path: Path):
    from PIL import Image

    from helpers import run_cli
    from nnunetv2_llm4seg.synthetic import make_ultrasound_dataset

    trainers = tmp_path / "test_trainers"
    trainers.mkdir()
    (trainers / "cmunext_test_trainers.py").write_text(textwrap.dedent(TEST_TRAINER_MODULE))
    env = {"nnUNet_raw": str(tmp_path / "raw"), "nnUNet_preprocessed": str(tmp_path / "preprocessed"),
           "nnUNet_results": str(tmp_path / "results"), "nnUNet_extTrainer": str(trainers),
           "nnUNet_n_proc_DA": "1", "nnUNet_compile": "f", "nnUNet_def_n_proc": "1"}
    dataset = make_ultrasound_dataset(tmp_path / "raw", DATASET_ID, cases=12, size=64, test_cases=4)

    def run(*args: str) -> None:
        result = run_cli(*args, env=env, timeout=400)
        assert result.returncode == 0, f"{args[0]} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"

    run("nnUNetv2_plan_and_preprocess", "-d", str(DATASET_ID), "-c", "2d", "-np", "1")
    run("nnUNetv2_train", str(DATASET_ID), "2d", "0", "-tr", TEST_TRAINER, "-device", "cpu")
    predictions = tmp_path / "predictions"
    run("nnUNetv2_predict", "-i", str(dataset / "imagesTs"), "-o", str(predictions), "-d", str(DATASET_ID),
        "-c", "2d", "-f", "0", "-tr", TEST_TRAINER, "-device", "cpu", "-npp", "1", "-nps", "1", "--disable_tta")

    log = next((tmp_path / "results").rglob("training_log_*.txt")).read_text()
    assert "LLM4Seg booster" in log and "256 channels" in log
    scores = [dice(np.asarray(Image.open(predictions / label.name)), np.asarray(Image.open(label)))
              for label in sorted((dataset / "labelsTs").glob("*.png"))]
    assert len(scores) == 4
    # predicting all background scores 0, all foreground about 0.1 (the lesions cover ~5% of each image)
    assert np.mean(scores) > 0.5, scores
