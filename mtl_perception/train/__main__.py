# SPDX-License-Identifier: Apache-2.0
"""``python -m mtl_perception.train`` = ``mtl-train``."""

from mtl_perception.train.cli import main

main()
