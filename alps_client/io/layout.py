"""Where an alps output folder keeps its work: ``OUT/.alps`` (shards, run records, staging of the next write)."""

from __future__ import annotations

from pathlib import Path

# Every alps output folder holds its work folder under this name.
WORK_DIR = ".alps"


def work_dir(out: str | Path) -> Path:
    """``OUT/.alps``: shards, prepared images, run records, the temporary Prefect API's pid file."""
    return Path(out) / WORK_DIR


def shard_dir(out: str | Path) -> Path:
    """``OUT/.alps/shards``: one shard per labelled image."""
    return work_dir(out) / "shards"
