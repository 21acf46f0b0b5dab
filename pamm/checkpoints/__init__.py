"""Released checkpoints into pamm-bench runs: converters registered in ``pamm.checkpoints.registry``."""
