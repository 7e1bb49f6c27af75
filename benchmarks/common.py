"""Shared helpers for the benchmarks: machine description, alternated repeats, memory of a process."""
from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

CACHE = Path(os.environ.get("LLM4SEG_BENCH_CACHE", Path.home() / ".cache" / "llm4seg-benchmarks"))


def machine() -> dict:
    """What the numbers were measured on."""
    import torch
    import transformers

    import nnunetv2_llm4seg

    try:
        from importlib.metadata import version

        nnunet = version("nnunetv2")
    except Exception:  # pragma: no cover - only for the report
        nnunet = "?"
    cpu = platform.processor() or platform.machine()
    if Path("/proc/cpuinfo").is_file():
        names = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                 if line.startswith("model name")]
        cpu = names[0] if names else cpu
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "nnunetv2": nnunet, "llm4seg": nnunetv2_llm4seg.__version__,
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def alternate(runs: dict[str, Callable[[], float]], repeats: int) -> dict[str, list[float]]:
    """Call each measurement in turn (A, B, A, B, ...) so that machine noise hits all of them alike."""
    samples: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            samples[name].append(run())
    return samples


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def run_python(code: str, env: dict | None = None, timeout: int = 3600) -> dict:
    """Run `code` in a fresh Python process; it must print one JSON object on its last line."""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout,
                            env={**os.environ, **(env or {})})
    if result.returncode != 0:
        raise RuntimeError(f"benchmark child failed:\n{result.stderr[-4000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


# Code run inside a child process: peak resident memory since a reset point (Linux /proc).
MEMORY_PROBE = '''
def rss_kib():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])

def peak_kib():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])

def reset_peak():
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")
'''


def write_report(path: Path, report: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


def timed(function: Callable[[], object]) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start
