"""Evaluation: metrics (shared with training), model profiling and the ``mtl-eval`` command."""
