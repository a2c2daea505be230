"""dfsearch: distributed hyperparameter search and ensembling for deepfake image detection.

The package follows the data: ``data`` (discover, synthesise, load) -> ``models`` (one registry,
one factory) -> ``worker`` (the per-worker training loop) -> ``train`` (one trial as one Ray
Train run) / ``pool`` (warm worker pools) -> ``search`` (the driver: Tune + Optuna + ASHA) ->
``checkpoint_policy`` + ``store`` (what a search keeps) -> ``ensemble`` -> ``predict``. Ray
plumbing is in ``cluster`` (and every private Ray use in ``ray_compat``), caches in ``paths``.
The README's Layout table maps each step to its file.

Label convention everywhere: real = 0, fake = 1.
"""

__version__ = "0.1.0"

from dfsearch.errors import DfsearchError  # noqa: F401  (re-exported)
