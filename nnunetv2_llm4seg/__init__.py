"""nnunetv2-llm4seg: a frozen pre-trained LLM layer at the bottleneck of nnU-Net's U-Nets (LLM4Seg).

Importing this package is cheap (no torch, no network): it is imported at interpreter start-up by the
installed .pth hook that lets stock nnU-Net find our trainers.
"""

__version__ = "0.1.0"
