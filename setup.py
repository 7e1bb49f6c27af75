"""Packaging lives in setup.cfg; this file only adds the start-up hook (a .pth file) to wheels.

The .pth file lets stock nnU-Net find our trainers (see nnunetv2_llm4seg/_ext_trainer_hook.py). setuptools has
no declarative way to install a .pth file, so build_py copies it next to the packages: into build_lib for a
regular wheel, and into the wheel's root for an editable install (where build_lib is thrown away).
"""
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

PTH_FILE = "nnunetv2_llm4seg_trainers.pth"


class BuildPyWithStartupHook(build_py):
    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            target_root = self.get_finalized_command("install").install_lib
        else:
            target_root = self.build_lib
        self.copy_file(str(Path(__file__).parent / PTH_FILE), str(Path(target_root) / PTH_FILE))

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        return super().get_outputs(include_bytecode) + [str(Path(self.build_lib) / PTH_FILE)]


setup(cmdclass={"build_py": BuildPyWithStartupHook})
