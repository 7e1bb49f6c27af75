"""The nnU-Net trainers of nnunetv2-llm4seg, importable as `nnunetv2_llm4seg.trainers`.

The base classes are written out in the two modules below. Short schedules named like nnU-Net's own
(`<Trainer>_1epoch`, `<Trainer>_<N>epochs` for any N >= 1, e.g. nnUNetTrainerLLM4SegMiniLM_20epochs) are built on
first access and cached, so every lookup returns the same, picklable class. nnU-Net finds all of them through
nnunetv2_llm4seg/nnunet_ext_trainers (on nnUNet_extTrainer), which re-exports this module.
"""
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunetv2_llm4seg.trainer import find_schedule_variant
from nnunetv2_llm4seg.trainers import llm4seg_cmunext_trainers as _cmunext
from nnunetv2_llm4seg.trainers import llm4seg_unet_trainers as _unet

BASE_TRAINERS: dict[str, type[nnUNetTrainer]] = {
    name: cls for module in (_unet, _cmunext) for name, cls in vars(module).items()
    if isinstance(cls, type) and issubclass(cls, nnUNetTrainer) and cls.__module__ == module.__name__}
globals().update(BASE_TRAINERS)
__all__ = sorted(BASE_TRAINERS)


def __getattr__(name: str) -> type[nnUNetTrainer]:
    """`<Trainer>_<N>epochs` of any trainer above, built on first use (module attribute lookup, PEP 562)."""
    return find_schedule_variant(name, BASE_TRAINERS, __name__)
