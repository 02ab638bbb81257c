# SPDX-License-Identifier: Apache-2.0
"""Evaluation: metrics (shared with training), model profiling and the ``mtl-eval`` command."""
