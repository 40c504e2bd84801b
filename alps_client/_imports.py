"""Lazy import of optional dependencies with an install hint."""

from __future__ import annotations

import importlib
from types import ModuleType

from alps_client.errors import DependencyNotFoundError

# Import name -> PyPI name, where they differ.
_PYPI_NAMES = {
    "cv2": "opencv-python-headless",
    "tritonclient": "tritonclient[grpc,http]",
    "pycocotools": "pycocotools",
    "cuml": "cuml-cu13 (RAPIDS, needs a CUDA GPU; cuml-cu12 for CUDA 12)",
    "dask_ml": "dask-ml",
    "rasterio": "rasterio",
    "nibabel": "nibabel",
}


def lazy_import(name: str) -> ModuleType:
    """Import a module by name, or raise an error that says how to install it.

    Args:
        name: dotted module name, e.g. ``"tritonclient.grpc"``.

    Returns:
        The imported module.

    Raises:
        DependencyNotFoundError: If the module (or its top-level package) is not installed.
    """
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as err:
        top = name.split(".")[0]
        pypi = _PYPI_NAMES.get(top, top)
        raise DependencyNotFoundError(
            f"{name} is not installed, but this feature needs it; install it with: pip install {pypi}"
        ) from err
