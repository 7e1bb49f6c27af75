"""Re-exports nnunetv2_llm4seg.trainers for nnU-Net's trainer lookup (imported as a top-level module)."""
from nnunetv2_llm4seg.trainers import *  # noqa: F401,F403
from nnunetv2_llm4seg.trainers import __getattr__  # noqa: F401  (the <Trainer>_<N>epochs schedules)
