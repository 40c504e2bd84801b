"""SAM 2 in the ALPS core: PFLs pool the whole 1024 frame, centroids remember their model family."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from alps_client.backends.manifest import load_manifest
from alps_client.config import FeatureConfig
from alps_client.errors import AlpsError
from alps_client.labels.clustering import (
    centroids_family,
    centroids_sidecar,
    check_centroids_family,
    check_centroids_model,
    load_centroids,
)
from alps_client.labels.features import pool_mask_features
from alps_client.masks import encode_coco_rle
from tests.shapes import make_shapes_scene


def test_sam2_embedding_pools_the_whole_frame(sam2_stand_in_repo):
    """A SAM 2 embedding's valid region is the whole 1024 frame: PFLs are the paper's computation on all of F."""
    from alps_client.backends.embedded import EmbeddedBackend
    from alps_client.config import BackendConfig

    backend = EmbeddedBackend(BackendConfig(model_repository=str(sam2_stand_in_repo), num_threads=2))
    image, shapes = make_shapes_scene(seed=0, size=(96, 160))
    (emb,) = backend.encode([image])
    assert emb.input_size == (1024, 1024) and emb.original_size == (96, 160)
    assert emb.high_res_features[0].shape == (32, 256, 256) and emb.high_res_features[1].shape == (64, 128, 128)
    size = 32
    ours = pool_mask_features(emb, encode_coco_rle(shapes), FeatureConfig(feature_size=size, l2_normalize=False))
    # Reference: F upsampled over the whole frame by PyTorch, masks area-resized (exact: 96 and 160 divide by 32).
    up = F.interpolate(torch.as_tensor(emb.features)[None], size=(size, size), mode="bilinear",
                       align_corners=False)[0].numpy()
    for k, mask in enumerate(shapes):
        cover = mask.reshape(size, 96 // size, size, 160 // size).mean(axis=(1, 3))
        expected = (up * cover).sum(axis=(1, 2)) / cover.sum()
        np.testing.assert_allclose(ours[k], expected, rtol=1e-4, atol=1e-5)


def test_manifest_without_family_loads_as_sam(stand_in_repo, tmp_path):
    import shutil

    copy = tmp_path / "repo"
    shutil.copytree(stand_in_repo, copy)
    data = json.loads((copy / "manifest.json").read_text())
    data.pop("model_family")
    (copy / "manifest.json").write_text(json.dumps(data))
    assert load_manifest(copy).model_family == "sam"
    data["model_family"] = "sam3"
    (copy / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(Exception, match="model_family 'sam3' is not one this client reads"):
        load_manifest(copy)


def test_centroids_of_another_family_are_refused(tmp_path):
    centroids = np.random.RandomState(0).randn(4, 256).astype(np.float32)
    sam2_run, old_run, sam_run = tmp_path / "sam2_run", tmp_path / "old_run", tmp_path / "sam_run"
    for folder in (sam2_run, old_run, sam_run):
        folder.mkdir()
        np.save(folder / "centroids.npy", centroids)
    (sam2_run / "centroids.json").write_text(json.dumps(centroids_sidecar(
        {"model_family": "sam2", "model_type": "sam2.1_hiera_t"})))
    (sam_run / "manifest.json").write_text(json.dumps({"model": {"model_type": "vit_h"}}))  # pre-SAM 2 dataset
    assert centroids_family(sam2_run / "centroids.npy") == ("sam2", "sam2.1_hiera_t")
    assert centroids_family(sam_run / "centroids.npy") == ("sam", "vit_h")
    assert centroids_family(old_run / "centroids.npy") == (None, "unknown")
    with pytest.raises(AlpsError, match=r"fitted on sam2 features \(sam2.1_hiera_t\), but this model repository is "
                                        r"sam; .* drop --centroids"):
        load_centroids(sam2_run / "centroids.npy", model_family="sam")
    # Nothing says (written before SAM 2.1 support, or copied without centroids.json): taken as SAM's (the run
    # warns), refused for SAM 2.1 without claiming they are SAM's (found by a helper's SAM 2.1 audit)
    with pytest.raises(AlpsError, match=r"nothing beside them says which model's features they were fitted on \(no "
                                        r"centroids.json, no dataset manifest.json\), and this model repository is "
                                        r"sam2: copy the centroids.json written with them"):
        check_centroids_family(old_run / "centroids.npy", "sam2")
    np.testing.assert_array_equal(load_centroids(old_run / "centroids.npy", model_family="sam"), centroids)
    np.testing.assert_array_equal(load_centroids(sam2_run / "centroids.npy", model_family="sam2"), centroids)
    np.testing.assert_array_equal(load_centroids(sam_run / "centroids.npy", model_family="sam"), centroids)


def test_centroids_of_another_sam_size_are_refused_and_of_another_checkpoint_warned_of(fake_repo, tmp_path):
    """Centroids were checked by family only: tiny-test's were taken by a vit_b run, vit_b's would be by vit_h's,
    without a word (another feature space: every class meaningless); a fine-tune's features drift from its base's."""
    from alps_client.config import BackendConfig, PipelineConfig
    from alps_client.runs.plan import check_request

    def checkpoint(sha):
        return {"path": "/ckpt/sam.pth", "sha256": sha}

    np.save(tmp_path / "centroids.npy", np.random.RandomState(0).randn(4, 256).astype(np.float32))
    (tmp_path / "manifest.json").write_text(json.dumps({"model": {"model_type": "vit_b", "checkpoint": checkpoint("b" * 64)}}))
    fitted = tmp_path / "centroids.npy"  # a dataset's, its model recorded in its manifest.json
    said: list[str] = []
    with pytest.raises(AlpsError, match=r"--centroids .*centroids.npy: fitted on vit_b features, but this model "
                                        r"repository holds vit_h; their feature spaces differ, .* label with a vit_b "
                                        r"repository$"):
        check_centroids_model(fitted, {"model_type": "vit_h", "checkpoint": checkpoint("h" * 64)}, said.append)
    check_centroids_model(fitted, {"model_type": "vit_b", "checkpoint": checkpoint("b" * 64)}, said.append)
    assert said == []  # the same checkpoint (its int8 export too)
    check_centroids_model(fitted, {"model_type": "vit_b", "checkpoint": checkpoint("f" * 64)}, said.append)
    assert said == [(f"--centroids {fitted} were fitted with another vit_b checkpoint (sha256 bbbbbbbbbbbb, this "
                     "repository's ffffffffffff): a fine-tune's features drift from its base's, so check the classes "
                     "on the review page")]
    # Random weights (--random-init: no checkpoint) on one side, a checkpoint on the other: taken unsaid before
    del said[:]
    check_centroids_model(fitted, {"model_type": "vit_b", "random_init": True}, said.append)
    assert said == [(f"--centroids {fitted} were fitted with vit_b of checkpoint sha256 bbbbbbbbbbbb, this repository "
                     "holds RANDOM weights (no checkpoint): random weights' features bear no relation to trained ones, "
                     "so the classes mean nothing; drop --centroids to cluster anew")]
    (tmp_path / "centroids.json").write_text(json.dumps(centroids_sidecar({"model_type": "vit_b", "random_init": True})))
    check_centroids_model(fitted, {"model_type": "vit_b", "checkpoint": checkpoint("b" * 64)}, said.append)
    assert said[-1].startswith(f"--centroids {fitted} were fitted with vit_b of RANDOM weights (no checkpoint), this "
                               "repository holds checkpoint sha256 bbbbbbbbbbbb: ")
    del said[:]
    check_centroids_model(fitted, {"model_type": "vit_b", "random_init": True}, said.append)
    assert said == []  # random weights on both sides: shape and speed work, nothing to warn of
    # A centroids.json of an alps before checkpoints were recorded was taken for random weights: the dataset's
    # manifest.json beside it says which checkpoint, and without it nothing is known, so nothing is said.
    (tmp_path / "centroids.json").write_text(json.dumps({"model_family": "sam", "model_type": "vit_b"}))
    check_centroids_model(fitted, {"model_type": "vit_b", "checkpoint": checkpoint("b" * 64)}, said.append)
    assert said == []
    check_centroids_model(fitted, {"model_type": "vit_b", "checkpoint": checkpoint("f" * 64)}, said.append)
    assert len(said) == 1 and "another vit_b checkpoint (sha256 bbbbbbbbbbbb, " in said[0]
    manifest = (tmp_path / "manifest.json").read_bytes()
    (tmp_path / "manifest.json").unlink()
    check_centroids_model(fitted, {"model_type": "vit_b", "checkpoint": checkpoint("f" * 64)}, said.append)
    check_centroids_model(fitted, {"model_type": "vit_b"}, said.append)  # an export that did not record it either
    assert len(said) == 1
    from alps_client.io.rewrite import _set_aside

    kept = _set_aside(tmp_path, "replaced", np.load(fitted))  # kept aside by a rerun: the checkpoint stays unknown
    assert json.loads((kept / "centroids.json").read_text()) == {"model_family": "sam", "model_type": "vit_b",
                                                                 "feature": centroids_sidecar({})["feature"]}
    (tmp_path / "manifest.json").write_bytes(manifest)
    (tmp_path / "centroids.json").write_text(json.dumps(centroids_sidecar({"model_type": "unknown"})))  # says nothing
    check_centroids_model(fitted, {"model_type": "vit_h"}, said.append)
    (tmp_path / "centroids.json").write_text(json.dumps(centroids_sidecar(
        {"model_type": "vit_b", "checkpoint": checkpoint("b" * 64)})))
    assert json.loads((tmp_path / "centroids.json").read_text())["checkpoint_sha256"] == "b" * 64
    config = PipelineConfig(backend=BackendConfig(model_repository=str(fake_repo)))  # refused before it starts
    config = dataclasses.replace(config, cluster=dataclasses.replace(config.cluster, centroids=str(fitted)))
    from PIL import Image

    (tmp_path / "images").mkdir()
    Image.fromarray(make_shapes_scene(seed=0, size=(64, 80))[0]).save(tmp_path / "images" / "a.png")
    with pytest.raises(AlpsError, match=r"fitted on vit_b features, but this model repository holds fake"):
        check_request(tmp_path / "images", config)
    # Handed over with the centroids, a sidecar's names go into that line: their terminal escapes are said, not run
    (tmp_path / "centroids.json").write_text(json.dumps(centroids_sidecar({"model_type": "vit_h\x1b[2J"})))
    with pytest.raises(AlpsError, match=r"fitted on vit_h\\x1b\[2J features, but this model repository holds fake"):
        check_request(tmp_path / "images", config)
