"""Run at interpreter start-up by the installed `nnunetv2_llm4seg_trainers.pth`.

Stock nnU-Net looks for trainer classes only inside its own package and in the folders listed in the
environment variable nnUNet_extTrainer. This adds nnunetv2_llm4seg/nnunet_ext_trainers (one module that re-exports
`nnunetv2_llm4seg.trainers`) to that list, keeping whatever the user set, so `nnUNetv2_train ... -tr
nnUNetTrainerLLM4Seg` works with no setup. Set nnUNet_llm4seg_disable_hook=1 to opt out. It must stay cheap and
must never break start-up: it imports nothing beyond `os` and swallows its own errors.
"""
import os

EXT_TRAINER_VARIABLE = "nnUNet_extTrainer"
DISABLE_VARIABLE = "nnUNet_llm4seg_disable_hook"


def trainers_folder() -> str:
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "nnunet_ext_trainers")


def register() -> None:
    if os.environ.get(DISABLE_VARIABLE, "").strip().lower() in ("1", "true", "yes", "on"):
        return
    folder = trainers_folder()
    current = [p for p in os.environ.get(EXT_TRAINER_VARIABLE, "").split(os.pathsep) if p]
    if folder not in current:
        os.environ[EXT_TRAINER_VARIABLE] = os.pathsep.join(current + [folder])


try:
    register()
except Exception:  # never let a plugin break Python start-up
    pass
