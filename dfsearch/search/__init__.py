"""The search (driver side), one module a job, in the order a search uses them:

``cli`` (flags) -> ``spec`` (what the search is; ``search.json``) -> ``run_folder`` (where it lives)
-> ``plan`` (what the cluster gives) -> ``searcher`` (Optuna TPE) + ``schedulers`` (ASHA, the epoch
budget) -> ``trainable`` (a Tune trial) -> ``backends`` (warm pool or one TorchTrainer) ->
``callbacks`` (bookkeeping as trials end) -> ``outcome`` (completed / pruned / failed) ->
``results`` (tables, summary) + ``plots``; ``signals`` (Ctrl-C); ``driver`` ties them together.
"""


def run(args, report_to=None) -> int:
    """``python run_search.py``: see ``dfsearch.search.driver.run``."""
    from dfsearch.search.driver import run as _run

    return _run(args, report_to)
