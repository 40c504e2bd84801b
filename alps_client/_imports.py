"""Lazy import of optional dependencies with an install hint."""

from __future__ import annotations

import importlib
from types import ModuleType

from alps_client.errors import DependencyNotFoundError

# Import name -> PyPI name, where they differ.
_PYPI_NAMES = {
    "cv2": "opencv-python-headless",
    "tritonclient": "tritonclient[grpc,http]",
    "cuml": "cuml-cu13 (RAPIDS, needs a CUDA GPU; cuml-cu12 for CUDA 12)",
    "dask_ml": "dask-ml",
    "prefect_dask": "prefect-dask",
    "segment_anything": "segment-anything",
}

# The optional-dependency groups of pyproject.toml, by import name: a hint names the whole group, so that the next
# missing module of the same feature is not found one at a time (--vector asked for rasterio, then shapely, ...).
_EXTRAS = {
    "geo": ("rasterio", "nibabel", "pyogrio", "shapely", "pyproj"),
    "triton": ("tritonclient",),
    "dask": ("prefect_dask", "dask", "distributed", "dask_ml"),
    "export": ("torch", "segment_anything", "onnx", "onnxscript"),
}


def install_hint(top: str) -> str:
    """How to install the package of import name ``top``: its extra's packages where it has one.

    Examples:
        >>> install_hint("shapely")
        "pip install rasterio nibabel pyogrio shapely pyproj (alps's geo extra: pip install '.[geo]' in its source folder)"
        >>> install_hint("cv2")
        'pip install opencv-python-headless'
    """
    for extra, modules in _EXTRAS.items():
        if top in modules:
            names = [_PYPI_NAMES.get(module, module) for module in modules]
            packages = " ".join(f"'{name}'" if "[" in name else name for name in names)  # a shell globs [...]
            return f"pip install {packages} (alps's {extra} extra: pip install '.[{extra}]' in its source folder)"
    return f"pip install {_PYPI_NAMES.get(top, top)}"


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
        raise DependencyNotFoundError(
            f"{name} is not installed, but this feature needs it; install it with: {install_hint(name.split('.')[0])}"
        ) from err
