"""The folder the start-up hook puts on nnUNet_extTrainer.

nnU-Net imports every module of an nnUNet_extTrainer folder as a top-level module. The one module here only
re-exports `nnunetv2_llm4seg.trainers`, so nnU-Net's lookup returns the package's own classes (the same objects,
picklable, isinstance-compatible) instead of orphaned second copies.
"""
