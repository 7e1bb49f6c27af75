"""The booster's precision per device (no native bfloat16 before compute capability 8.0) and the per-case
state-dict loads of nnU-Net's predictor. CUDA is simulated by monkeypatching torch's capability queries."""
from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import nnunetv2_llm4seg.booster as booster_module
from nnunetv2_llm4seg.booster import LLMBooster
from nnunetv2_llm4seg.precision import Precision, layer_precision
from test_booster import small_spec

CUDA = torch.device("cuda", 0)


@pytest.fixture
def gpu(monkeypatch):
    """A fake CUDA GPU whose compute capability the test sets."""
    def install(name: str, capability: tuple[int, int]) -> None:
        monkeypatch.setattr(torch.version, "hip", None)
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    return install


@pytest.mark.parametrize("name, capability, expected", [
    ("Tesla V100-SXM2-16GB", (7, 0), torch.float32), ("Tesla T4", (7, 5), torch.float32),
    ("NVIDIA A100-SXM4-40GB", (8, 0), torch.bfloat16), ("NVIDIA H200", (9, 0), torch.bfloat16)])
def test_bfloat16_is_kept_where_native_and_float32_elsewhere(gpu, name, capability, expected):
    gpu(name, capability)
    precision = layer_precision(torch.bfloat16, CUDA)
    assert precision.dtype == expected
    if expected == torch.float32:
        assert name in precision.path and f"{capability[0]}.{capability[1]}" in precision.path
        assert precision.path.startswith("float32 fallback")
    else:
        assert precision.path == "bfloat16 (native)"


def test_float32_specs_and_other_devices_keep_their_dtype(gpu):
    gpu("Tesla T4", (7, 5))
    assert layer_precision(torch.float32, CUDA).dtype == torch.float32
    assert layer_precision(torch.bfloat16, torch.device("cpu")) == Precision(torch.bfloat16, "bfloat16 on cpu")


def test_a_frozen_bf16_layer_on_an_old_gpu_is_stored_in_float32_with_the_same_values(gpu):
    gpu("Tesla T4", (7, 5))
    booster = LLMBooster(16, small_spec(dtype="bfloat16"))
    weights = {name: t.clone() for name, t in booster.llm.state_dict().items()}
    precision = booster.adopt_precision(CUDA)
    assert precision.dtype == booster.compute_dtype == torch.float32
    for name, tensor in booster.llm.state_dict().items():
        assert tensor.dtype == torch.float32 and torch.equal(tensor, weights[name].float()), name


@pytest.fixture
def no_native_bfloat16(monkeypatch):
    """Every device behaves like a GPU without bfloat16 (so that the fallback runs on this CPU)."""
    monkeypatch.setattr(booster_module, "layer_precision",
                        lambda requested, device: Precision(torch.float32, "float32 fallback (test)"))


@pytest.mark.parametrize("trainable", [False, True])
def test_a_bf16_checkpoint_runs_in_float32_where_bf16_is_not_native(no_native_bfloat16, trainable):
    """A model trained in bf16 predicts (and trains) on a GPU without bf16: the same weights, computed in
    float32, never under bf16 autocast."""
    spec = small_spec(dtype="bfloat16", trainable=trainable)
    torch.manual_seed(0)
    trained = LLMBooster(16, spec)
    checkpoint = trained.state_dict()
    booster = LLMBooster(16, spec)
    booster.load_state_dict(checkpoint)
    computed = []
    booster.llm.layer.mlp.up_proj.register_forward_hook(lambda module, args, output: computed.append(output.dtype))
    features = torch.randn(2, 16, 3, 3)
    with torch.autocast("cpu", dtype=torch.float16):
        out = booster(features)
    out.float().sum().backward()
    assert computed == [torch.float32] and torch.isfinite(out).all()
    reference = LLMBooster(16, spec.replace(dtype="float32"))
    reference.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in checkpoint.items()
                               if k != "network_spec"}, strict=False)
    with torch.autocast("cpu", dtype=torch.float16):
        expected = reference(features)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)


class CopyCounter(TorchDispatchMode):
    """Bytes really copied by aten.copy_ (a copy of a tensor onto itself is free)."""

    def __init__(self):
        super().__init__()
        self.copied = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten.copy_.default and args[0].data_ptr() != args[1].data_ptr():
            self.copied += args[1].numel() * args[1].element_size()
        return func(*args, **(kwargs or {}))


def test_repeated_loads_of_the_same_checkpoint_do_not_copy_the_frozen_layer_again():
    """nnU-Net's predictor calls load_state_dict with the same checkpoint tensors for every case."""
    booster = LLMBooster(16, small_spec(dtype="bfloat16"))
    checkpoint = {k: v.clone() for k, v in LLMBooster(16, small_spec(dtype="bfloat16")).state_dict().items()}
    layer_bytes = sum(t.numel() * t.element_size() for t in booster.llm.parameters())
    adapter_bytes = sum(t.numel() * t.element_size() for n, t in booster.named_parameters() if "adapter" in n)
    copies = []
    for _ in range(3):
        with CopyCounter() as counter:
            booster.load_state_dict(checkpoint)
        copies.append(counter.copied)
    assert copies[0] >= layer_bytes and copies[1] == copies[2] and copies[1] < adapter_bytes + 1024
    for name, tensor in booster.state_dict().items():
        assert torch.equal(tensor, checkpoint[name]), name

    checkpoint["llm.layer.mlp.up_proj.weight"].add_(1.0)  # the same object, changed in place: copied again
    booster.load_state_dict(checkpoint)
    assert torch.equal(booster.llm.layer.mlp.up_proj.weight, checkpoint["llm.layer.mlp.up_proj.weight"])
    other = {k: v.clone() for k, v in checkpoint.items()}  # equal values, other objects: copied
    other["llm.layer.mlp.down_proj.weight"].zero_()
    booster.load_state_dict(other)
    assert not booster.llm.layer.mlp.down_proj.weight.any()
    with torch.no_grad():  # the booster's own tensor changed since: the next load restores it
        booster.llm.layer.mlp.down_proj.weight.fill_(3.0)
    booster.load_state_dict(other)
    assert not booster.llm.layer.mlp.down_proj.weight.any()
