"""What a search is (``SearchSpec``: saved as ``search.json``, read back by ``--resume``) and how
this invocation runs it (``Options``: flags that may differ between a run and its resume)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict

SPEC_FILE = "search.json"


class SearchSpec(BaseModel):
    """The search as first started. Budgets left None take the profile's values (``plan``)."""

    model_config = ConfigDict(extra="ignore", frozen=True)
    space: str
    data: Optional[str] = None  # None: the embedded benchmark
    name: str
    profile: Optional[str] = None  # None: gpu if the cluster has GPUs, else cpu
    num_samples: Optional[int] = None
    max_epochs: Optional[int] = None
    workers_per_trial: Optional[int] = None
    grace_period: Optional[int] = None
    seed: int = 0
    pool: bool = True
    searcher: Literal["tpe", "random"] = "tpe"
    scheduler: Literal["asha", "fifo"] = "asha"
    budget_epochs: Optional[int] = None

    @classmethod
    def from_args(cls, args, name: str) -> "SearchSpec":
        return cls(name=name, **{k: getattr(args, k) for k in cls.model_fields if k != "name"})

    def save(self, run_dir: Path) -> None:
        (run_dir / SPEC_FILE).write_text(self.model_dump_json(indent=2))

    @classmethod
    def load(cls, run_dir: Path) -> "SearchSpec":
        doc = json.loads((run_dir / SPEC_FILE).read_text())
        return cls(**{**doc.pop("args", {}), **doc})  # ("args": how searches before 0.1.1 nested the budgets)


@dataclass(frozen=True)
class Options:
    """How this invocation runs (not saved: a resume may use other values)."""

    out: str = "runs"
    address: Optional[str] = None
    dashboard: Optional[bool] = None
    cpus_per_worker: float = 1.0
    gpus_per_worker: Optional[float] = None
    max_concurrent: Optional[int] = None
    max_failures: int = 2
    wandb_mode: Optional[str] = None
    wandb_project: str = "dfsearch"
    json: bool = False
    verbose: bool = False

    @classmethod
    def from_args(cls, args) -> "Options":
        return cls(**{k: getattr(args, k) for k in cls.__dataclass_fields__})
