"""Versions of Python and of the packages that decide outputs, recorded in model and dataset manifests."""

from __future__ import annotations

import importlib.metadata as md
import platform

PACKAGES = ("alps", "numpy", "onnxruntime", "onnx", "scikit-learn", "pycocotools", "prefect", "torch",
            "segment-anything", "sam2", "tritonclient")


def versions() -> dict[str, str]:
    """``{"python": ..., package: version}`` for the installed packages among :data:`PACKAGES`."""
    out = {"python": platform.python_version()}
    for pkg in PACKAGES:
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out
