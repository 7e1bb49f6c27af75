"""The verdict of `llm4seg check` from the steps it measured (the command itself runs in test_nnunet_trainer)."""
from __future__ import annotations

import math

import pytest

from nnunetv2_llm4seg.preflight import TrainerSteps, judge


def steps(losses, scales=(), seconds=(1.0, 1.0)) -> TrainerSteps:
    return TrainerSteps("t", compiled=True, seconds=list(seconds), losses=list(losses), scales=list(scales))


@pytest.mark.parametrize("mine, ratio, verdict, ok", [
    (steps([0.5, math.nan, 0.4]), 1.0, "FAIL: non-finite training loss in 1 of 3 steps", False),
    (steps([0.5] * 4, [65536, 32768, 16384, 8192]), 1.0, "FAIL: the grad scaler skipped 3 of 4 steps", False),
    (steps([0.5] * 4, [65536, 32768, 32768, 32768]), 1.0, "WARN: the grad scaler skipped 1 steps against 0", True),
    (steps([0.5] * 4, [65536] * 4), 1.4, "WARN: a step takes 1.40x base's", True),
    (steps([0.5] * 4, [65536] * 4), 1.1, "OK: losses finite, 0 skipped steps, step time 1.10x base", True),
])
def test_the_verdict_names_what_matters_most(mine, ratio, verdict, ok):
    base = TrainerSteps("base", compiled=True, seconds=[1.0], losses=[0.5] * 4, scales=[65536] * 4)
    line, passed = judge(mine, base, ratio)
    assert line.startswith(verdict) and passed is ok


def test_skipped_steps_are_the_scale_decreases():
    assert steps([1.0] * 5, [65536, 32768, 32768, 65536, 32768]).skipped_steps == 2
    assert steps([1.0]).skipped_steps == 0
