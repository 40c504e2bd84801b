"""`make demo`: stand-in model repository -> synthetic scenes -> the Prefect flow -> evaluation, figures printed.

The model is the structured STAND-IN (segments by colour), not SAM: no SAM weights can be shipped or
downloaded here. With a real checkpoint, export it with export/export_sam.py and run `alps run` instead.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def ensure_model_repository(path: Path, spare: Path) -> tuple[Path, dict]:
    """The stand-in's repository: ``path`` (exported there if empty), or ``spare`` if ``path`` holds another model.

    The demo's figures are the stand-in's: a SAM exported into ``model_repository/`` (the exporter's default
    folder) ran at Meta's grid on the CPU instead, for long, to other figures, unsaid.
    """
    manifest = path / "manifest.json"
    if manifest.is_file():
        model = json.loads(manifest.read_text())
        if _demo_model(model):
            return path, model
        print(f"[demo] {path} holds {model.get('model_type')}, not the stand-in the demo is made for: using "
              f"{spare} instead")
        path, manifest = spare, spare / "manifest.json"
        if manifest.is_file() and _demo_model(spare_model := json.loads(manifest.read_text())):
            return path, spare_model
    from export.export_sam import run_export

    print(f"[demo] exporting the structured stand-in model (not SAM) to {path} ...")
    run_export("stand-in", path, cpu=True)
    return path, json.loads(manifest.read_text())


def _demo_model(manifest: dict) -> bool:
    """A SAM stand-in (the structured one, or the tests' numpy fake): what the demo's figures are for."""
    return bool(manifest.get("is_stand_in")) and manifest.get("model_family", "sam") == "sam"


def main(argv: list[str] | None = None) -> int:
    """``make demo``: returns the exit status of the last ``alps`` command it ran."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="runs/demo")
    parser.add_argument("--model-repository", default="model_repository")
    parser.add_argument("--images", type=int, default=12)
    parser.add_argument("--size", type=int, default=256)
    args = parser.parse_args(argv)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    work = Path(args.workdir)
    repo, model = ensure_model_repository(Path(args.model_repository), work / "model_repository")
    from alps_client.synthetic import GT_CLASSES_FILE, write_synthetic_dataset
    from flows.cli import main as alps

    data = work / "data"
    if not (data / GT_CLASSES_FILE).is_file():  # written last: a folder without it is incomplete or older
        print(f"[demo] writing {args.images} synthetic scenes with ground truth to {data} ...")
        write_synthetic_dataset(data, args.images, seed=0, size=(args.size, args.size), n_classes=4)
    out = work / "labelled"
    print(f"[demo] running the ALPS Prefect flow on {data / 'images'} with model '{model['model_type']}'"
          f"{' (STAND-IN, not SAM)' if model['is_stand_in'] else ''} ...")
    rc = alps(["run", str(data / "images"), "--out", str(out), "--model-repository", str(repo),
               "--n-clusters", "4", "--overwrite"])
    if rc != 0:
        return rc
    print("\n[demo] evaluating the pseudo-labels against the synthetic ground truth:")
    rc = alps(["evaluate", str(out), str(data / "gt"), "--gt-classes", str(data / GT_CLASSES_FILE)])
    print(f"\n[demo] done. Labelled dataset: {out}/ (ann_dir/, img_dir/, vis/, instances_*.json, manifest.json, "
          "mmseg_dataset.py)")
    print("[demo] large background masks are dropped by the gate (sigma=0.3): 'coverage' is the labelled share.")
    return rc


if __name__ == "__main__":
    sys.exit(main())
