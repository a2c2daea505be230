"""Warm worker pools: many trials on one long-lived Ray Train worker group.

Starting a Ray Train run costs ~15 s on a small machine (controller and worker actors, fresh
processes importing torch and timm, the gloo/nccl group; BENCHMARKS.md), more than a short trial
trains. So a search starts one pool per concurrent trial (``pools.Pools``): a ``TorchTrainer``
whose DDP workers run ``runner.pool_loop`` (take a trial from the broker, run
``worker.train_loop`` on it, take the next). A Tune trial submits its request to the broker
(``broker.Broker``) and streams back its epoch results (``dfsearch.search.backends.PoolBackend``).
Every message and the whole contract are in ``protocol``.
"""
