"""Training: config, dataset, transforms, loops, checkpoints, distributed helpers, ``mtl-train``."""
