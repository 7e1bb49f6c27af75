"""The nnU-Net trainers of nnunetv2-llm4seg, importable as `nnunetv2_llm4seg.trainers`.

nnU-Net itself finds them through nnUNet_extTrainer (set at start-up by the installed .pth hook), importing
each module of this folder as a top-level module: modules here use absolute imports only.
"""
from nnunetv2_llm4seg.trainers import llm4seg_cmunext_trainers as _cmunext
from nnunetv2_llm4seg.trainers import llm4seg_unet_trainers as _unet
from nnunetv2_llm4seg.trainers.llm4seg_cmunext_trainers import *  # noqa: F401,F403
from nnunetv2_llm4seg.trainers.llm4seg_unet_trainers import *  # noqa: F401,F403

__all__ = _unet.__all__ + _cmunext.__all__
