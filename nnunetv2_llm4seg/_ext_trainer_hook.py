"""Run at interpreter start-up by the installed `nnunetv2_llm4seg_trainers.pth`.

Stock nnU-Net looks for trainer classes only inside its own package and in the folders listed in the
environment variable nnUNet_extTrainer. This adds the folder of `nnunetv2_llm4seg.trainers` to that list
(keeping whatever the user set), so `nnUNetv2_train ... -tr nnUNetTrainerLLM4Seg` works with no setup.
It must stay cheap and must never break start-up: it imports nothing heavy and swallows its own errors.
"""
import os

EXT_TRAINER_VARIABLE = "nnUNet_extTrainer"


def trainers_folder() -> str | None:
    from importlib.util import find_spec

    spec = find_spec("nnunetv2_llm4seg.trainers")
    if spec is None or not spec.submodule_search_locations:
        return None
    return os.path.abspath(list(spec.submodule_search_locations)[0])


def register() -> None:
    folder = trainers_folder()
    if folder is None:
        return
    current = [p for p in os.environ.get(EXT_TRAINER_VARIABLE, "").split(os.pathsep) if p]
    if folder not in current:
        os.environ[EXT_TRAINER_VARIABLE] = os.pathsep.join(current + [folder])


try:
    register()
except Exception:  # never let a plugin break Python start-up
    pass
