"""pamm-bench: multi-task dense prediction with Mamba decoders, benchmarked.

Importing ``pamm`` is cheap: heavy optional dependencies (timm, mamba-ssm, fvcore,
ptflops) are imported where used.
"""
from pamm import _compat  # noqa: F401  (sets HF_HUB_OFFLINE before anything imports timm)

__version__ = "0.1.0"
