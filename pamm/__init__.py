"""pamm-bench: multi-task dense prediction with Mamba decoders, benchmarked.

Importing ``pamm`` is cheap: heavy optional dependencies (timm, mamba-ssm, fvcore,
ptflops) are imported where used.
"""
__version__ = "0.1.0"
