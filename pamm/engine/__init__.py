"""Training, evaluation and profiling of one run directory."""
