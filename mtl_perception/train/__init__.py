# SPDX-License-Identifier: Apache-2.0
"""Training: config, dataset, transforms, loops, checkpoints, distributed helpers, mtl-train."""
