"""CT volumes through the flow (numpy fake SAM): a fixed intensity window, padding slices, evaluation by affine."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from alps_client.config import (
    AmgConfig,
    BackendConfig,
    ClusterConfig,
    GateConfig,
    InputConfig,
    PipelineConfig,
)
from alps_client.evaluate import evaluate_dataset
from alps_client.review import build_report
from flows.alps_flow import alps_flow
from tests.runs import run_log


def ct(implant: bool) -> np.ndarray:
    """``(48, 48, 5) float32`` HU: slices 0 and 4 all padding (-1024), a body of soft tissue and bone between."""
    vol = np.full((48, 48, 5), -1024.0, np.float32)
    vol[8:40, 8:40, 1:4] = 40.0
    vol[18:30, 18:30, 1:4] = 700.0
    if implant:
        vol[20:28, 20:28, 1:4] = 3000.0
    return vol


def test_volumes_get_one_window_recorded_padding_slices_none_and_ground_truth_by_affine(fake_repo, tmp_path):
    """The window each volume got was in its hidden shards only, and each its own; padding slices got labels; a
    ground truth stored LPS was scored index by index against a RAS scan."""
    nibabel = pytest.importorskip("nibabel")
    from nibabel.orientations import axcodes2ornt, io_orientation, ornt_transform

    data, out = tmp_path / "data", tmp_path / "out"
    data.mkdir()
    affine = np.diag([0.8, 0.8, 2.5, 1.0])
    for name, implant in (("plain", False), ("implant", True)):
        nibabel.save(nibabel.Nifti1Image(ct(implant), affine), str(data / f"{name}.nii.gz"))
    config = PipelineConfig(backend=BackendConfig(model_repository=str(fake_repo), retry_delay_s=0.05),
                            inputs=InputConfig(intensity_window=(-1000.0, 1000.0), write_nifti_labels=True),
                            amg=AmgConfig(points_per_side=8), gate=GateConfig(sigma=1.0),  # few large regions
                            cluster=ClusterConfig(n_clusters=3))
    with run_log("prefect.task_runs") as logged:
        alps_flow(str(data), str(out), config, progress_bar=False)
    assert not [line for line in logged if "--intensity-window" in line]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["stretch"] == {"implant": [-1000.0, 1000.0], "plain": [-1000.0, 1000.0]}
    assert manifest["config"]["inputs"]["intensity_window"] == [-1000.0, 1000.0]
    said = ("2 inputs (volumes, rasters of more than 8 bits) mapped to 0..255 over one window, -1000..1000 "
            "(--intensity-window)")
    assert said in (out / "report" / "index.html").read_text()  # the reviewer sees how the greys were made
    build_report(out)  # `alps report`, from the manifest
    assert said in (out / "report" / "index.html").read_text()
    assert sorted(p.stem for p in out.glob("ann_dir/*/*.png")) == [
        f"{name}__z{z:04d}" for name in ("implant", "plain") for z in (1, 2, 3)]  # not the padding slices
    greys = {p.stem: np.asarray(Image.open(p))[12, 12, 0] for p in out.glob("img_dir/*/*__z0002.*")}
    assert greys == {"implant__z0002": 133, "plain__z0002": 133}  # 40 HU: one grey in both scans
    labels = np.asarray(nibabel.load(str(out / "volumes" / "plain.nii.gz")).dataobj)
    assert (labels[..., 0] == 255).all() and (labels[..., 4] == 255).all() and (labels[..., 2] != 255).any()
    (tmp_path / "gt").mkdir()
    truth = nibabel.Nifti1Image(labels, affine)  # the pseudo-labels as truth: every labelled voxel right
    stored = truth.as_reoriented(ornt_transform(io_orientation(affine), axcodes2ornt(("L", "P", "S"))))
    nibabel.save(stored, str(tmp_path / "gt" / "plain.nii.gz"))
    shutil.rmtree(out / "volumes")  # the scan's affine is then read from the input its shards name
    report = evaluate_dataset(out, tmp_path / "gt", ignore_index=255)
    assert report.miou == 1.0 and "LPS, the volume RAS" in report.warnings[0]


def test_a_window_no_input_can_take_is_said(fake_repo, tmp_path):
    """--intensity-window on 8-bit images (a CT window given to a folder of PNG exports) changed nothing, unsaid."""
    from alps_client.synthetic import write_synthetic_dataset

    images = write_synthetic_dataset(tmp_path / "data", 2, seed=1, size=(64, 64)) / "images"
    config = PipelineConfig(backend=BackendConfig(model_repository=str(fake_repo)),
                            inputs=InputConfig(intensity_window=(-1000.0, 1000.0)), amg=AmgConfig(points_per_side=4),
                            cluster=ClusterConfig(n_clusters=2))
    with run_log("prefect.task_runs") as logged:
        alps_flow(str(images), str(tmp_path / "out"), config, progress_bar=False)
    said = ("--intensity-window -1000 1000 was applied to no image: every input labelled is 8-bit, read as it is "
            "(the window is for NIfTI volumes and 16-bit or float rasters)")
    assert [line for line in logged if "--intensity-window" in line] == [said]
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["stretch"] == {}


def test_slices_of_far_from_square_pixels_are_said(fake_repo, tmp_path):
    """0.8 x 0.8 x 3 mm voxels cut along axis 0 gave slices of 0.8 x 3 mm pixels, which SAM sees square (anatomy
    squeezed 3.75:1), without a word (medical-imaging audit). Cut along axis 2 they are square: nothing said."""
    nibabel = pytest.importorskip("nibabel")
    data = tmp_path / "data"
    data.mkdir()
    nibabel.save(nibabel.Nifti1Image(ct(False)[:, :, :4].repeat(4, axis=2), np.diag([0.8, 0.8, 3.0, 1.0])),
                 str(data / "thick.nii.gz"))
    said = {}
    for axis in (0, 2):
        config = PipelineConfig(backend=BackendConfig(model_repository=str(fake_repo)),
                                inputs=InputConfig(slice_axis=axis), amg=AmgConfig(points_per_side=4),
                                gate=GateConfig(sigma=1.0),
                                cluster=ClusterConfig(n_clusters=2))
        with run_log() as logged:
            alps_flow(str(data), str(tmp_path / f"out{axis}"), config, progress_bar=False)
        said[axis] = [line for line in logged if "far from square pixels" in line]
    assert said[2] == []
    (line,) = said[0]
    assert line.startswith(f"1 volume(s) are cut into slices of far from square pixels (e.g. {data / 'thick.nii.gz'}: "
                           "0.8 x 3 along --slice-axis 0, 3.75:1)"), line
