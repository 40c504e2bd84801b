"""OUT brought up to a run's plan before it labels, under the run's lock on OUT.

Shards restamped and moved with their inputs, the inputs' names recorded, what interrupted runs and writes left
removed.
"""

from __future__ import annotations

from pathlib import Path

from alps_client.io import atomic, publish
from alps_client.io.layout import shard_dir, work_dir
from alps_client.io.registry import record_names
from alps_client.io.rewrite import EARLIER, SET_ASIDE
from alps_client.runs.finish import Log
from alps_client.runs.moves import apply_moves, restamp
from alps_client.runs.plan import RunPlan


def tidy_out(plan: RunPlan, logger: Log) -> None:
    """Bring OUT up to the plan before labelling.

    Shards restamped and moved with their inputs, the inputs' names recorded, what interrupted runs and writes
    left removed.
    """
    out = plan.out
    if plan.restamped:  # before the retimed are rewritten: theirs may be among them
        n = restamp(out, plan.restamped, plan.fingerprint, plan.labelling or {})
        logger.info("%d image(s) were labelled with another --stitch or --write-nifti-labels, which change no shard: "
                    "their shards stand, stamped with this run's settings", n)
    moved = apply_moves(out, list(plan.moved), plan.items)
    if moved:
        logger.info("%d input(s) moved or renamed since they were labelled, the same bytes: their labels and split go "
                    "with them: %s%s", len(moved), ", ".join(f"{m.old} -> {m.new}" for m in moved[:5]),
                    ", ..." if len(moved) > 5 else "")
    retimed = apply_moves(out, list(plan.retimed), plan.items)
    if retimed:
        logger.info("%d input(s) have other modification times than when they were labelled, the same bytes (sha256): "
                    "their labels stand: %s%s", len(retimed), ", ".join(m.old for m in retimed[:5]),
                    ", ..." if len(retimed) > 5 else "")
    record_names(out, {item.relative: item.scene or item.stem for item in plan.items})  # a killed run's too
    work = work_dir(out)
    leftovers = sum(atomic.remove_leftover_temp_files(folder) for folder in  # `alps evaluate` writes into OUT too
                    (Path(out), work, shard_dir(out), work / "images",
                     *(work / SET_ASIDE).glob("*/"), *(work / EARLIER).glob("*/")))
    if leftovers:
        logger.info("Removed %d temporary file(s) that an interrupted run left in %s", leftovers, out)
    unfinished = publish.remove_write_leftovers(out)
    if unfinished:
        logger.info("Removed %s, left by a dataset write that was interrupted before or after its swap",
                    " and ".join(unfinished))
