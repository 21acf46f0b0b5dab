"""Turn run directories into tables and figures (reads files only; never runs a model)."""
