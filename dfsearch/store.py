"""The prediction store: the contract between trials and the ensembler.

Two parquet files in one folder:

``predictions.parquet``
    ``candidate`` (str), ``split`` (``"val"`` | ``"test"``), ``sample_id`` (str: image path relative
    to the dataset root), ``label`` (int8, 1 = fake), ``prob_fake`` (float32).
``candidates.parquet``
    ``candidate`` (str), ``trial_id`` (str), ``arch`` (str), ``config`` (JSON str), ``val_acc``,
    ``val_auc``, ``val_loss`` (float64), ``checkpoint`` (str: path or URI of the weights folder).

Users may bring predictions from other systems in the same format; only ``predictions.parquet``
is required (``candidates.parquet`` adds arch/checkpoint information used by ``predict``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from dfsearch.errors import DfsearchError

PREDICTIONS_FILE = "predictions.parquet"
CANDIDATES_FILE = "candidates.parquet"
SPLITS = ("val", "test")

PREDICTIONS_SCHEMA = pa.schema(
    [
        ("candidate", pa.string()),
        ("split", pa.string()),
        ("sample_id", pa.string()),
        ("label", pa.int8()),
        ("prob_fake", pa.float32()),
    ]
)
CANDIDATES_SCHEMA = pa.schema(
    [
        ("candidate", pa.string()),
        ("trial_id", pa.string()),
        ("arch", pa.string()),
        ("config", pa.string()),
        ("val_acc", pa.float64()),
        ("val_auc", pa.float64()),
        ("val_loss", pa.float64()),
        ("checkpoint", pa.string()),
    ]
)


def predictions_frame(candidate: str, split: str, sample_ids, labels, probs) -> pd.DataFrame:
    """Plain arrays in, one contract-shaped frame out."""
    if split not in SPLITS:
        raise DfsearchError(f"split {split!r} is not one of {SPLITS}")
    n = len(sample_ids)
    return pd.DataFrame(
        {
            "candidate": [candidate] * n,
            "split": [split] * n,
            "sample_id": list(map(str, sample_ids)),
            "label": pd.Series(labels, dtype="int8"),
            "prob_fake": pd.Series(probs, dtype="float32"),
        }
    )


def _write(df: pd.DataFrame, schema: pa.Schema, path: Path) -> None:
    table = pa.Table.from_pandas(df[schema.names], schema=schema, preserve_index=False)
    tmp = path.with_suffix(path.suffix + ".tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def write_predictions(df: pd.DataFrame, folder: str | Path) -> Path:
    """Write (replace) ``predictions.parquet`` in ``folder``; atomic."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / PREDICTIONS_FILE
    _write(df, PREDICTIONS_SCHEMA, path)
    return path


def candidate_row(candidate: str, trial_id: str, arch: str, config: dict, metrics: dict,
                  checkpoint: str) -> dict:
    return {
        "candidate": candidate,
        "trial_id": str(trial_id),
        "arch": arch,
        "config": json.dumps(config, sort_keys=True, default=str),
        "val_acc": float(metrics.get("val_acc", float("nan"))),
        "val_auc": float(metrics.get("val_auc", float("nan"))),
        "val_loss": float(metrics.get("val_loss", float("nan"))),
        "checkpoint": str(checkpoint),
    }


def write_candidates(rows: list[dict] | pd.DataFrame, folder: str | Path) -> Path:
    """Write (replace) ``candidates.parquet`` in ``folder``; atomic."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    df = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(rows, columns=CANDIDATES_SCHEMA.names)
    path = folder / CANDIDATES_FILE
    _write(df, CANDIDATES_SCHEMA, path)
    return path


def write_store(summaries: list[dict], folder, relative_to: Path | None = None) -> None:
    """Collect each trial's best-checkpoint predictions into the store in ``folder``. A summary is
    ``{"candidate", "trial_id", "arch", "config", "best" (metrics), "checkpoint" (folder)}``. With
    ``relative_to`` (a search's run folder), checkpoints are recorded relative to it, so the run
    folder can be moved or copied (e.g. from S3) and still feeds the ensemble."""
    frames, rows = [], []
    for s in summaries:
        if not s.get("checkpoint"):
            continue
        p = Path(s["checkpoint"]) / PREDICTIONS_FILE
        if not p.exists():
            continue
        frame = pd.read_parquet(p)
        frame["candidate"] = s["candidate"]  # the store's name for it, whatever the trial called itself
        frames.append(frame)
        ckpt = Path(s["checkpoint"])
        rows.append(candidate_row(s["candidate"], s["trial_id"], s["arch"], s["config"], s["best"],
                                  ckpt.relative_to(relative_to).as_posix() if relative_to else ckpt))
    if frames:
        write_predictions(pd.concat(frames, ignore_index=True), folder)
        write_candidates(rows, folder)


def _check_columns(df: pd.DataFrame, schema: pa.Schema, path: Path) -> None:
    missing = [c for c in schema.names if c not in df.columns]
    if missing:
        raise DfsearchError(
            f"{path}: missing column(s) {missing}; the contract needs {schema.names}"
        )


def read_predictions(folder: str | Path) -> pd.DataFrame:
    """Read and validate every ``predictions*.parquet`` in ``folder`` (concatenated).

    Raises DfsearchError naming the file and the problem: no parquet files, missing columns,
    a split other than val/test, labels other than 0/1, duplicated (candidate, split, sample_id).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DfsearchError(f"predictions folder {folder} does not exist")
    files = sorted(folder.glob("predictions*.parquet"))
    if not files:
        raise DfsearchError(
            f"{folder}: no predictions*.parquet files; expected {PREDICTIONS_FILE} with columns "
            f"{PREDICTIONS_SCHEMA.names}"
        )
    frames = []
    for f in files:
        try:
            df = pd.read_parquet(f)
        except Exception as e:  # corrupted parquet
            raise DfsearchError(f"{f}: not a readable parquet file ({e})") from e
        _check_columns(df, PREDICTIONS_SCHEMA, f)
        bad_split = sorted(set(df["split"].unique()) - set(SPLITS))
        if bad_split:
            raise DfsearchError(f"{f}: split values {bad_split} are not accepted; use {list(SPLITS)}")
        bad_label = sorted(set(pd.unique(df["label"])) - {0, 1})
        if bad_label:
            raise DfsearchError(f"{f}: label values {bad_label} are not accepted; use 0 (real) or 1 (fake)")
        frames.append(df[PREDICTIONS_SCHEMA.names])
    out = pd.concat(frames, ignore_index=True)
    out["label"] = out["label"].astype("int8")
    out["prob_fake"] = out["prob_fake"].astype("float32")
    dup = out.duplicated(["candidate", "split", "sample_id"])
    if dup.any():
        row = out[dup].iloc[0]
        raise DfsearchError(
            f"{folder}: candidate {row.candidate!r} has sample {row.sample_id!r} twice in split "
            f"{row.split!r}; each (candidate, split, sample_id) must appear once"
        )
    return out


def read_candidates(folder: str | Path) -> pd.DataFrame | None:
    """``candidates.parquet`` of ``folder``, or None when the folder has none."""
    path = Path(folder) / CANDIDATES_FILE
    if not path.exists():
        return None
    df = pd.read_parquet(path)
    _check_columns(df, CANDIDATES_SCHEMA, path)
    return df
