"""What a run says before it labels: the model, the backend, the work, and each warning its plan gives.

Said through the run's logger (the flow run's, in the Prefect UI), before any image: a long run's warnings would
otherwise come hours later, or never.
"""

from __future__ import annotations

import os
from pathlib import Path

from alps_client.backends.manifest import family_name
from alps_client.io.dataset import last_run_record
from alps_client.io.items import by_reason, one_line
from alps_client.io.layout import shard_dir
from alps_client.runs.finish import Log
from alps_client.runs.plan import RunPlan, describe_items, unused_input_settings


def announce(plan: RunPlan, dask_address: str | None, dask_workers: int | None, logger: Log) -> None:
    """Log what the run labels, with what and where, and each warning its plan gives (before any image)."""
    dataset, out, config = plan.dataset, plan.out, plan.config
    if plan.manifest.is_stand_in:
        logger.warning("Model: %s from %s is a STAND-IN (not %s): labels demonstrate the pipeline only",
                       plan.manifest.model_type, plan.manifest.root, family_name(plan.manifest.model_family))
    elif plan.manifest.random_init:
        logger.warning("Model: %s (%s) from %s has RANDOM weights (exported with --random-init, no checkpoint): its "
                       "masks and classes mean nothing (shape and speed checks only)", plan.manifest.model_type,
                       plan.manifest.precision, plan.manifest.root)
    else:
        logger.info("Model: %s (%s) from %s", plan.manifest.model_type, plan.manifest.precision, plan.manifest.root)
    # Relative to the run's process's folder (a deployment run: the `alps serve` process's), so said resolved.
    process = (f"the Dask workers of {dask_address}" if dask_address else
               f"{dask_workers} Dask worker process{'es' if dask_workers > 1 else ''}" if dask_workers else
               "the run's process")
    logger.info("Backend: %s; model repository %s", config.backend.describe(process),
                Path(config.backend.model_repository).resolve())
    logger.info("%s: %d to label, %d already labelled (skipped); %d rejected input(s)", describe_items(plan.items),
                len(plan.items) - plan.n_done, plan.n_done, len(plan.rejected))
    if plan.rejected:  # each is named after the images (a long run: hours later)
        logger.warning("%d input(s) rejected before labelling (%s): each is named once the images are labelled, and "
                       "in the dataset's errors.jsonl", len(plan.rejected),
                       by_reason([e.to_json() for e in plan.rejected]))
    if plan.n_pooled_otherwise:
        logger.warning("%d image(s) were labelled by an earlier alps, which pooled the features of masks at their "
                       "bottom or right edge partly from SAM's padding (their side fills a whole number of its 16-px "
                       "cells, e.g. 768 px in its 1024 frame): labelling them again, so that the dataset's features "
                       "are pooled one way", plan.n_pooled_otherwise)
    if plan.n_changed:
        logger.warning("%d image(s) changed since they were labelled (another file, size, modification time or "
                       "bytes; or a shard from an earlier alps, which does not say): labelling them again",
                       plan.n_changed)
    if plan.n_damaged:
        logger.warning("%d image(s) have a shard in %s that cannot be read whole (cut short or altered, e.g. by a "
                       "crash or a full disk): labelling them again", plan.n_damaged, shard_dir(out))
    if plan.gone:
        logger.warning("%d input(s) of the dataset in %s are no longer under %s, and the dataset this run writes leaves "
                       "them out: %s%s (their shards stay in %s: put the files back and run again to have them)%s",
                       len(plan.gone), out, dataset, ", ".join(plan.gone[:5]), ", ..." if len(plan.gone) > 5 else "",
                       shard_dir(out), _another_dataset(out, dataset))
    for line in unused_input_settings(config, plan.items):
        logger.warning("%s", line)
    from alps_client.labels.clustering import centroids_family, check_centroids_model

    if config.cluster.centroids and centroids_family(config.cluster.centroids)[0] is None:
        logger.warning("--centroids %s: nothing beside them says which model's features they were fitted on; taken "
                       "as SAM's (written before SAM 2.1 support): if a SAM 2.1 run wrote them, its classes mean "
                       "nothing here", config.cluster.centroids)
    if config.cluster.centroids:
        check_centroids_model(config.cluster.centroids, plan.manifest.raw, lambda line: logger.warning("%s", line))
    if plan.multipage:
        path, pages = plan.multipage[0]
        logger.warning("%d input(s) hold several pages or volumes (a TIFF stack's planes or pyramid levels, a 4-D "
                       "NIfTI's volumes, an animated PNG's or WebP's frames): only the first of each is labelled, "
                       "e.g. %s (%d)", len(plan.multipage),
                       one_line(path), pages)
    if plan.stretched:
        path, (rows, columns) = plan.stretched[0]
        logger.warning("%d volume(s) are cut into slices of far from square pixels (e.g. %s: %.3g x %.3g along "
                       "--slice-axis %d, %.3g:1): SAM sees their anatomy stretched that much; slice them along the "
                       "axis of their finest plane (--slice-axis), or resample them to square pixels first",
                       len(plan.stretched), one_line(path), rows, columns, config.inputs.slice_axis,
                       max(rows, columns) / min(rows, columns))
    if plan.left_out:
        logger.warning("Left out %d folder(s) inside the dataset holding alps outputs, or links into this run's OUT "
                       "(not images to label): %s",
                       len(plan.left_out), ", ".join(plan.left_out))


def _another_dataset(out: str, dataset: str) -> str:
    """``; OUT was last labelled from ...`` when ``OUT``'s last run labelled another folder, still there; else "".

    Labelling another dataset into an ``OUT`` replaces the dataset it holds: its inputs were said "no longer under"
    the new folder, to be put back, though they never were there.
    """
    earlier = last_run_record(out).get("dataset")
    if not isinstance(earlier, str) or os.path.abspath(earlier) == dataset or not os.path.exists(earlier):
        return ""
    return (f"; {out} was last labelled from {earlier}, which is still there: if {dataset} is another dataset, this "
            "run replaces that one's in OUT (give another --out to keep both)")
