"""dfsearch: distributed hyperparameter search and ensembling for deepfake image detection.

The package follows the data: ``data`` (discover, synthesise, load) -> ``models`` (one registry,
one factory) -> ``train`` (the per-worker loop, one Ray Train trial) -> ``search`` (the driver)
-> ``store`` (the prediction contract) -> ``ensemble`` -> ``predict``.

Label convention everywhere: real = 0, fake = 1.
"""

__version__ = "0.1.0"

from dfsearch.errors import DfsearchError  # noqa: F401  (re-exported)
