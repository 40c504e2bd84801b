"""Inputs and outputs: finding and reading images, shards on disk, the labelled dataset, GeoTIFF and NIfTI."""
