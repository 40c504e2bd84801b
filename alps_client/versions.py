"""Versions of Python and of the packages that decide outputs, recorded in model and dataset manifests."""

from __future__ import annotations

import importlib.metadata as md
import platform
import subprocess
from pathlib import Path

# Pillow decodes and resizes every image for SAM, OpenCV removes small regions, scipy, rasterio (GDAL) and nibabel
# read and write, dask and dask-ml cluster: each can change a label.
PACKAGES = ("alps", "numpy", "onnxruntime", "onnx", "scikit-learn", "pycocotools", "prefect", "torch",
            "segment-anything", "sam2", "tritonclient", "pillow", "opencv-python-headless", "opencv-python", "scipy",
            "rasterio", "nibabel", "pyogrio", "shapely", "pyproj", "dask", "dask-ml")


def versions() -> dict[str, str]:
    """``{"python": ..., package: version}`` for the installed packages among :data:`PACKAGES`.

    With ``alps_commit`` (:func:`source_commit`) where the source is a git checkout: every commit is 0.1.0.
    """
    out = {"python": platform.python_version()}
    for pkg in PACKAGES:
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    commit = source_commit()
    if commit:
        out["alps_commit"] = commit
    return out


def source_commit() -> str | None:
    """The git commit of the alps source this process runs, or None outside a git checkout.

    ``abc1234``, with ``-dirty`` after it when tracked files differ: every commit is version 0.1.0, and a bug
    report needs which one.
    """
    source = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "-C", str(source), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=5, check=True).stdout.strip()
        changed = subprocess.run(["git", "-C", str(source), "status", "--porcelain", "--untracked-files=no"],
                                 capture_output=True, text=True, timeout=5, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{head}-dirty" if changed else head or None
