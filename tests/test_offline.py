"""Air-gapped use: importing the package does no network I/O; a cached hub model loads with HF_HUB_OFFLINE=1
(test_loading.py); inference never touches the network (test_nnunet_cli.py runs nnUNetv2_predict this way)."""
import os
import subprocess
import sys
from pathlib import Path

OFFLINE_SITE = Path(__file__).resolve().parent / "offline_site"


def offline_env(log: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(OFFLINE_SITE), os.environ.get("PYTHONPATH", "")]),
            "LLM4SEG_NETWORK_LOG": str(log)}


def test_the_network_guard_itself_works(tmp_path):
    log = tmp_path / "network.log"
    code = "import urllib.request\ntry:\n    urllib.request.urlopen('http://example.com', timeout=2)\nexcept OSError:\n    pass"
    subprocess.run([sys.executable, "-c", code], env=offline_env(log), check=True, timeout=120)
    assert "example.com" in log.read_text()


def test_importing_every_module_does_no_network_io(tmp_path):
    log = tmp_path / "network.log"
    modules = ["nnunetv2_llm4seg", "nnunetv2_llm4seg._ext_trainer_hook", "nnunetv2_llm4seg.cli",
               "nnunetv2_llm4seg.trainers", "nnunetv2_llm4seg.loading", "nnunetv2_llm4seg.sources",
               "nnunetv2_llm4seg.presets", "nnunetv2_llm4seg.booster", "nnunetv2_llm4seg.converters",
               "nnunetv2_llm4seg.demo", "nnunetv2_llm4seg.ablate"]
    code = "import importlib\n" + "".join(f"importlib.import_module({m!r})\n" for m in modules) + \
        "from nnunetv2_llm4seg.presets import load_preset\nfrom nnunetv2_llm4seg.parameters import describe_booster\n" \
        "print(describe_booster(load_preset('llama3.2-1b-l15'), 1024)['adapter_params'])"
    result = subprocess.run([sys.executable, "-c", code], env=offline_env(log), capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("4197376")
    assert not log.exists(), log.read_text()


def test_packaged_minilm_loads_with_the_network_blocked(tmp_path):
    log = tmp_path / "network.log"
    code = ("from nnunetv2_llm4seg.presets import load_preset\nfrom nnunetv2_llm4seg.loading import fetch_layer\n"
            "print(fetch_layer(load_preset('minilm-l6'))['sha256'])")
    result = subprocess.run([sys.executable, "-c", code], env=offline_env(log), capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.strip().splitlines()[-1]) == 64 and not log.exists()
