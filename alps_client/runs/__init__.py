"""A labelling run without Prefect: set-up, per-image work, where it runs, retries.

:mod:`.plan` (set-up), :mod:`.work` and :mod:`.labellers` (per-image work, threads or Dask), :mod:`.threads`
(interruptible waits), :mod:`.moves` (inputs renamed or moved since the last run), :mod:`.retry` (the one retry
layer). The dataset is written by :func:`alps_client.io.writer.write_dataset` and published by
:mod:`alps_client.io.publish`. ``flows/`` wraps these in Prefect tasks; nothing here imports Prefect, so Dask
workers run them as plain functions.
"""
