"""Preset booster specs (JSON files in this folder), loadable by name: see nnunetv2_llm4seg.presets."""
