"""The benchmarks stay runnable: each script's --smoke run (tiny sizes) finishes and writes its report.
Their numbers are measured by hand and recorded in docs/benchmarks.md, not asserted here."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("benchmark_cache")]  # inference reuses the smoke plans
BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("bench-cache")


@pytest.mark.parametrize("script, extra, keys", [
    ("bench_loading.py", [], ["models"]),
    ("bench_training_step.py", [], ["configs"]),
    ("bench_inference.py", [], ["configs"]),
    ("gpu_step.py", ["--device", "cpu"], ["step_time_ratio", "stock", "llm4seg"]),
])
def test_benchmark_smoke_run(script, extra, keys, cache, tmp_path):
    output = tmp_path / "report.json"
    result = subprocess.run([sys.executable, str(BENCHMARKS / script), "--smoke", "--output", str(output), *extra],
                            capture_output=True, text=True, timeout=900,
                            env={**__import__("os").environ, "LLM4SEG_BENCH_CACHE": str(cache)})
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(output.read_text())
    assert report["smoke"] is True and all(key in report for key in keys)
    assert report["machine"]["torch"]
