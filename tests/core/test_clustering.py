"""Clustering: recovery of separated clusters, determinism, streaming == in-memory, auto N, Dask, centroids."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from alps_client.config import ClusterConfig
from alps_client.errors import AlpsError
from alps_client.io.shards import ImageShard, read_shard, write_shard
from alps_client.labels import clustering
from alps_client.labels.clustering import assign_clusters, estimate_n_clusters, fit_centroids, load_centroids
from alps_client.masks import MaskSet, encode_coco_rle


def blobs(n_clusters: int, per_cluster: int, seed: int, dim: int = 256, spread: float = 0.05):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 1, (n_clusters, dim))
    labels = np.repeat(np.arange(n_clusters), per_cluster)
    x = centres[labels] + rng.normal(0, spread, (len(labels), dim))
    perm = rng.permutation(len(labels))
    return x[perm].astype(np.float32), labels[perm], centres


def write_pfl_shards(root, x, per_shard: int = 37):
    paths = []
    for i, start in enumerate(range(0, len(x), per_shard)):
        pfl = x[start : start + per_shard]
        n = len(pfl)
        masks = MaskSet.from_rles((8, 8), encode_coco_rle(np.ones((n, 8, 8), bool)))
        shard = ImageShard(stem=f"img_{i:04d}", source="synthetic", fingerprint="f", masks=masks,
                           keep=np.ones(n, bool), pfl=pfl)
        path = root / f"img_{i:04d}.npz"
        write_shard(path, shard)
        paths.append(path)
    return paths


def purity(pred, truth):
    total = 0
    for c in np.unique(pred):
        total += np.bincount(truth[pred == c]).max()
    return total / len(truth)


@pytest.fixture(scope="module")
def five_blobs(tmp_path_factory):
    x, labels, _ = blobs(5, 200, seed=0)
    paths = write_pfl_shards(tmp_path_factory.mktemp("shards"), x)
    return x, labels, paths


def test_recovers_separated_clusters_and_is_deterministic(five_blobs):
    x, labels, paths = five_blobs
    cfg = ClusterConfig(n_clusters=5, batch_size=128, n_passes=3, seed=7)
    c1 = fit_centroids(paths, cfg)
    c2 = fit_centroids(list(reversed(paths)), cfg)  # finish order must not matter
    np.testing.assert_array_equal(c1, c2)
    assert c1.shape == (5, 256) and c1.dtype == np.float32
    assert purity(assign_clusters(x, c1), labels) == 1.0
    c3 = fit_centroids(paths, ClusterConfig(n_clusters=5, batch_size=128, n_passes=3, seed=8))
    assert purity(assign_clusters(x, c3), labels) == 1.0
    # every pass is made (--n-passes was held by no test: mutation audit); the centres move on with each
    once = fit_centroids(paths, ClusterConfig(n_clusters=5, batch_size=128, n_passes=1, seed=7))
    assert not np.array_equal(once, c1)


def test_features_repeated_get_no_class_without_a_mask(tmp_path, caplog):
    """Three copies of one image's 13 masks asked for 20 clusters: 7 classes held no mask (k-means++ placed
    centres on one point twice), unsaid."""
    x, _, _ = blobs(13, 1, seed=3)
    paths = write_pfl_shards(tmp_path, np.concatenate([x, x, x]), per_shard=13)
    with caplog.at_level("WARNING", logger="alps_client"):
        centroids = fit_centroids(paths, ClusterConfig(n_clusters=20, batch_size=16, seed=0))
    assert centroids.shape == (13, 256)
    assert set(assign_clusters(x, centroids)) == set(range(13))  # every class holds masks
    assert "only 13 distinct mask features among the 39 drawn" in caplog.text


def test_shards_renamed_give_the_same_centroids(five_blobs, tmp_path):
    """Images renamed or moved keep their shards under new names: k-means took the shards in name order, so the
    clusters (and the class ids of every image) changed."""
    _, _, paths = five_blobs
    cfg = ClusterConfig(n_clusters=5, batch_size=128, n_passes=2, seed=7)
    renamed = []
    for i, path in enumerate(paths):  # as a move rewrites them: each under its new stem
        stem = f"{len(paths) - i:04d}"
        renamed.append(tmp_path / f"{stem}.npz")
        write_shard(renamed[-1], dataclasses.replace(read_shard(path), stem=stem))
    assert sorted(renamed) == renamed[::-1]  # the names in the opposite order
    np.testing.assert_array_equal(fit_centroids(renamed, cfg), fit_centroids(paths, cfg))


def test_streaming_equals_in_memory_for_one_pass(five_blobs, monkeypatch):
    _, _, paths = five_blobs
    cfg = ClusterConfig(n_clusters=5, batch_size=100, n_passes=1, seed=3)
    monkeypatch.setattr(clustering, "SHARDS_PER_READ", 2)
    streamed = fit_centroids(paths, cfg)
    monkeypatch.setattr(clustering, "SHARDS_PER_READ", 10**6)
    in_memory = fit_centroids(paths, cfg)
    np.testing.assert_allclose(streamed, in_memory, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("true_n", [3, 6])
def test_auto_finds_the_true_count(true_n):
    x, _, _ = blobs(true_n, 150, seed=true_n, spread=0.1)
    assert estimate_n_clusters(x, max_n=20, seed=0) == true_n


def test_auto_through_fit(five_blobs):
    _, _, paths = five_blobs
    assert fit_centroids(paths, ClusterConfig(n_clusters="auto", batch_size=128, seed=0)).shape == (5, 256)


def test_dask_backend_on_a_local_cluster(five_blobs):
    distributed = pytest.importorskip("distributed")
    x, labels, paths = five_blobs
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        cfg = ClusterConfig(n_clusters=5, backend="dask", dask_address=cluster.scheduler_address, seed=0, n_passes=1)
        c = fit_centroids(paths, cfg)
    assert c.shape == (5, 256)
    assert purity(assign_clusters(x, c), labels) == 1.0


def test_centroids_fitted_on_features_normalised_otherwise_are_refused(fake_repo, tmp_path):
    """``--centroids`` of a ``--no-l2-normalize`` run given to a run that normalises (or the reverse) was taken: every
    mask fell in the class nearest the origin (3 of 4 classes empty), exit 0."""
    import json

    from alps_client.config import BackendConfig, FeatureConfig, PipelineConfig
    from alps_client.runs.plan import check_request

    data = tmp_path / "data"
    data.mkdir()
    Image.fromarray(np.full((32, 48, 3), 90, np.uint8)).save(data / "a.png")
    rng = np.random.RandomState(0)
    unit = rng.randn(4, 256)
    unit = (unit / np.linalg.norm(unit, axis=1, keepdims=True) * 0.9).astype(np.float32)  # means of unit vectors
    raw = (rng.randn(4, 256) * 0.4).astype(np.float32)  # norms ~6: no mean of unit vectors

    def request(centroids: Path, l2_normalize: bool) -> None:
        check_request(data, PipelineConfig(backend=BackendConfig(model_repository=str(fake_repo)),
                                           features=FeatureConfig(l2_normalize=l2_normalize),
                                           cluster=ClusterConfig(centroids=str(centroids))), tmp_path / "out")

    for folder, values, record in (("sidecar", unit, {"l2_normalized": True}),
                                   ("manifest", unit, None), ("norms", raw, None)):
        (tmp_path / folder).mkdir()
        centroids = tmp_path / folder / "centroids.npy"
        np.save(centroids, values)
        if record is not None:
            (tmp_path / folder / "centroids.json").write_text(json.dumps(record))
        elif folder == "manifest":  # a dataset's centroids.json from before the field: its manifest says
            (tmp_path / folder / "manifest.json").write_text(json.dumps({"config": {"features": {"l2_normalize": True}}}))
        fitted_normalised = folder != "norms"
        with pytest.raises(AlpsError, match=rf"--centroids {centroids}: fitted on "
                                            rf"{'L2-normalised' if fitted_normalised else 'unnormalised'} mask features"
                                            rf".*add {'--l2-normalize' if fitted_normalised else '--no-l2-normalize'}"):
            request(centroids, l2_normalize=not fitted_normalised)
        request(centroids, l2_normalize=fitted_normalised)  # as fitted: taken
    np.save(tmp_path / "unknown.npy", unit)  # nothing says, and the norms allow both: taken either way
    for l2_normalize in (True, False):
        request(tmp_path / "unknown.npy", l2_normalize)


def test_reusing_centroids_keeps_class_ids(five_blobs, tmp_path):
    x, _, paths = five_blobs
    c = fit_centroids(paths, ClusterConfig(n_clusters=5, batch_size=128, seed=0))
    np.save(tmp_path / "centroids.npy", c)
    again = fit_centroids(paths[:3], ClusterConfig(centroids=str(tmp_path / "centroids.npy")))
    np.testing.assert_array_equal(again, c)
    np.save(tmp_path / "bad.npy", np.zeros((3, 7)))
    with pytest.raises(AlpsError, match=r"expected an \(N, 256\) array"):
        load_centroids(tmp_path / "bad.npy")
    # A NaN (a centroid file edited by hand, or a broken fit elsewhere) put every mask in one class, unsaid.
    for value, rows in ((np.nan, "1"), (np.inf, "1")):
        broken = c.copy()
        broken[1, 7] = value
        np.save(tmp_path / "broken.npy", broken)
        with pytest.raises(AlpsError, match=rf"1 value\(s\) are NaN or infinite \(in row\(s\) {rows}\)"):
            load_centroids(tmp_path / "broken.npy")
    np.save(tmp_path / "complex.npy", c.astype(np.complex64))
    with pytest.raises(AlpsError, match="expected real numbers, got complex64"):
        load_centroids(tmp_path / "complex.npy")


def test_nothing_to_cluster_says_whether_the_generator_or_the_gate_left_no_mask(tmp_path):
    def shard(stem: str, n_masks: int):
        masks = MaskSet.from_rles((8, 8), encode_coco_rle(np.ones((n_masks, 8, 8), bool)))
        path = tmp_path / f"{stem}.npz"
        write_shard(path, ImageShard(stem=stem, source="synthetic", fingerprint="f", masks=masks,
                                     keep=np.zeros(n_masks, bool), pfl=np.zeros((0, 256), np.float32)))
        return path

    empty, gated = [shard("a", 0), shard("b", 0)], [shard("c", 0), shard("d", 3)]
    with pytest.raises(AlpsError, match=r"kept no mask in any of the 2 image\(s\).*--pred-iou-thresh"):
        fit_centroids(empty, ClusterConfig())
    with pytest.raises(AlpsError, match=r"all 3 mask\(s\) found in the 2 image\(s\).*raise --sigma"):
        fit_centroids(gated, ClusterConfig())
    assert clustering.why_nothing_to_cluster([*gated, *write_pfl_shards(tmp_path, np.ones((1, 256), np.float32))]) is None


@pytest.mark.gpu
def test_cuml_backend(five_blobs):
    x, labels, paths = five_blobs
    c = fit_centroids(paths, ClusterConfig(n_clusters=5, backend="cuml"))
    assert purity(assign_clusters(x, c), labels) == 1.0
