"""A labelling run without Prefect: set-up, per-image work, where it runs, retries, publishing the dataset.

:mod:`.plan` (set-up), :mod:`.work` and :mod:`.labellers` (per-image work, threads or Dask), :mod:`.retry` (the one
retry layer), :mod:`.outputs` (publishing). ``flows/`` wraps these in Prefect tasks; nothing here imports
Prefect, so Dask workers run them as plain functions.
"""
