"""Dataset families, one module per family or source (``shared.data.minari``: local Minari datasets converted to
the suite's D4RL-style arrays, and their recorded evaluation envs). The families that still live in
``shared.datasets`` (embedded maze2d generation, D4RL HDF5 files) will move here later; every module returns the
same dict layout as ``shared.datasets.load_dataset`` and validates it with ``shared.datasets.validate``."""
