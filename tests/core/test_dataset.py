"""Label maps, dataset writer, evaluation, shards/resume and the oracle-mask end-to-end check."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from alps_client.backends.base import Embedding
from alps_client.labels.clustering import fit_centroids
from alps_client.config import AmgConfig, ClusterConfig, GateConfig, PipelineConfig
from alps_client.evaluate import evaluate_dataset, format_table
from alps_client.labels.features import pool_mask_features
from alps_client.labels.gate import gate_keep
from alps_client.amg.generator import MaskGenerationResult
from alps_client.labels.painting import IGNORE, paint_label_map
from alps_client.pipeline import label_image
from alps_client.masks import encode_coco_rle
from alps_client.io.shards import ImageShard, read_shard, shard_fingerprint, shard_status, write_shard
from alps_client.synthetic import make_scene, write_synthetic_dataset
from alps_client.io.writer import split_of, write_dataset


def test_paint_small_masks_on_top_and_255_elsewhere():
    big = np.zeros((1, 10, 10), bool)
    big[0, 1:9, 1:9] = True
    small = np.zeros((1, 10, 10), bool)
    small[0, 3:5, 3:5] = True
    rles = encode_coco_rle(np.concatenate([small, big]))  # small first: area order must still win
    label = paint_label_map((10, 10), rles, [4, 64], [7, 2])
    assert label[0, 0] == IGNORE and label[1, 1] == 2 and label[3, 3] == 7
    assert paint_label_map((4, 5), [], [], []).tolist() == [[IGNORE] * 5] * 4


def test_split_is_stable_and_near_the_fraction():
    stems = [f"img_{i}" for i in range(2000)]
    splits = [split_of(s, 0, 0.3) for s in stems]
    assert splits == [split_of(s, 0, 0.3) for s in stems]
    assert 0.26 < splits.count("val") / len(stems) < 0.34
    assert splits != [split_of(s, 1, 0.3) for s in stems]


def test_evaluate_perfect_and_permuted(tmp_path):
    gt_dir, out = tmp_path / "gt", tmp_path / "out"
    for i in range(3):
        _, gt = make_scene(i, (64, 64))
        gt[:2] = IGNORE
        (gt_dir).mkdir(exist_ok=True)
        Image.fromarray(gt).save(gt_dir / f"s{i}.png")
        perm = np.array([3, 0, 2, 1] + list(range(4, 256)), np.uint8)
        pred = perm[gt]
        (out / "ann_dir" / "train").mkdir(parents=True, exist_ok=True)
        Image.fromarray(gt).save(out / "ann_dir" / "train" / f"s{i}.png")
        (tmp_path / "perm" / "ann_dir" / "val").mkdir(parents=True, exist_ok=True)
        Image.fromarray(pred).save(tmp_path / "perm" / "ann_dir" / "val" / f"s{i}.png")
    for root in (out, tmp_path / "perm"):
        report = evaluate_dataset(root, gt_dir)
        assert report.miou == pytest.approx(1.0) and report.pixel_accuracy == pytest.approx(1.0)
        assert report.n_images == 3 and report.coverage == pytest.approx(1.0)
        assert "mIoU" in format_table(report)
    # A prediction that merges two classes into one cluster loses IoU.
    merged = np.asarray(Image.open(out / "ann_dir" / "train" / "s0.png")).copy()
    merged[merged == 3] = 2
    Image.fromarray(merged).save(out / "ann_dir" / "train" / "s0.png")
    assert evaluate_dataset(out, gt_dir).miou < 1.0


class OracleGenerator:
    """Returns the ground-truth instances as masks and a colour-statistics embedding (no model needed)."""

    def __init__(self, gts):
        self.gts = gts

    def generate_with_embedding(self, image):
        gt = self.gts[image.tobytes()]
        from scipy import ndimage

        masks = []
        for cls in np.unique(gt):
            comps, n = ndimage.label(gt == cls)
            masks += [comps == k for k in range(1, n + 1)]
        h, w = gt.shape
        # Embedding: per 16 px cell of the 1024 frame, the image colour, as 256 channels (3 used).
        scale = 1024 / max(h, w)
        ih, iw = int(h * scale + 0.5), int(w * scale + 0.5)
        feat = np.zeros((256, 64, 64), np.float32)
        small = np.asarray(Image.fromarray(image).resize((max(iw // 16, 1), max(ih // 16, 1)), Image.BILINEAR), np.float32)
        feat[:3, : small.shape[0], : small.shape[1]] = small.transpose(2, 0, 1) / 255.0
        records = [{"segmentation": m, "bbox": [0, 0, 1, 1], "predicted_iou": 1.0, "stability_score": 1.0} for m in masks]
        return MaskGenerationResult(records, Embedding(feat, (ih, iw), (h, w)), {"encoder": 0.0}, 1)


def test_oracle_masks_reach_high_miou(tmp_path):
    root = write_synthetic_dataset(tmp_path / "data", 6, seed=1, size=(128, 128), n_classes=5)
    cfg = PipelineConfig(gate=GateConfig(sigma=1.0), cluster=ClusterConfig(n_clusters=5, seed=0))
    images = {p.stem: np.asarray(Image.open(p).convert("RGB")) for p in sorted((root / "images").glob("*.png"))}
    gts = {images[s].tobytes(): np.asarray(Image.open(root / "gt" / f"{s}.png")) for s in images}
    gen = OracleGenerator(gts)
    shards = [label_image(img, s, s, gen, cfg, tmp_path / "shards" / f"{s}.npz", "oracle").shard_path
              for s, img in images.items()]
    centroids = fit_centroids(shards, cfg.cluster)
    summary = write_dataset(tmp_path / "out", shards, centroids, cfg, {"is_stand_in": False}, [],
                            {s: root / "images" / f"{s}.png" for s in images})
    report = evaluate_dataset(tmp_path / "out", root / "gt")
    assert report.miou >= 0.9, format_table(report)
    assert summary.n_images == 6 and summary.labelled_pixel_fraction == pytest.approx(1.0)


def test_all_gated_image_still_gets_a_label_file(tmp_path):
    big = np.ones((1, 20, 30), bool)
    assert not gate_keep([600], 600, 0.3).any()
    shard = ImageShard("allgated", "x.png", (20, 30), "f", encode_coco_rle(big), np.array([600]), np.zeros((1, 4)),
                       np.ones(1, np.float32), np.ones(1, np.float32), np.array([False]), np.zeros((0, 256), np.float32))
    write_shard(tmp_path / "allgated.npz", shard)
    other = ImageShard("kept", "y.png", (20, 30), "f", encode_coco_rle(big[:, :, :]), np.array([600]), np.zeros((1, 4)),
                       np.ones(1, np.float32), np.ones(1, np.float32), np.array([True]), np.ones((1, 256), np.float32))
    write_shard(tmp_path / "kept.npz", other)
    centroids = np.ones((1, 256), np.float32)
    errors = [{"path": "bad.jpg", "reason": "zero-byte file"}]
    cfg = PipelineConfig(cluster=ClusterConfig(n_clusters=1))
    summary = write_dataset(tmp_path / "out", [tmp_path / "allgated.npz", tmp_path / "kept.npz"], centroids, cfg,
                            {"is_stand_in": True}, errors)
    labels = {p.stem: np.asarray(Image.open(p)) for p in (tmp_path / "out" / "ann_dir").glob("*/*.png")}
    assert (labels["allgated"] == IGNORE).all() and (labels["kept"] == 0).all()
    assert summary.n_masks_gated == 1 and summary.n_masks_kept == 1
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["model_is_stand_in"] and manifest["counts"]["n_images"] == 2
    assert (tmp_path / "out" / "errors.jsonl").read_text().strip() == json.dumps(errors[0], sort_keys=True)
    coco = json.loads((tmp_path / "out" / f"instances_{'train' if split_of('kept', 0, 0.3) == 'train' else 'val'}.json").read_text())
    assert any(a["category_id"] == 1 for a in coco["annotations"])
    assert np.load(tmp_path / "out" / "centroids.npy").shape == (1, 256)


def test_shard_status_detects_stale_and_broken(tmp_path):
    fp_a = shard_fingerprint("model-a", PipelineConfig().labelling_dict())
    fp_b = shard_fingerprint("model-a", PipelineConfig(amg=AmgConfig(points_per_side=8)).labelling_dict())
    assert fp_a != fp_b and fp_a == shard_fingerprint("model-a", PipelineConfig().labelling_dict())
    path = tmp_path / "s.npz"
    assert shard_status(path, fp_a) == "missing"
    shard = ImageShard("s", "s.png", (2, 2), fp_a, [], np.zeros(0, np.int64), np.zeros((0, 4)), np.zeros(0, np.float32),
                       np.zeros(0, np.float32), np.zeros(0, bool), np.zeros((0, 256), np.float32), {"k": 1})
    write_shard(path, shard)
    assert shard_status(path, fp_a) == "current" and shard_status(path, fp_b) == "stale"
    assert read_shard(path).extra == {"k": 1}
    path.write_bytes(b"truncated")
    assert shard_status(path, fp_a) == "missing"


def test_label_image_with_the_stand_in(embedded_backend, tmp_path):
    from alps_client.amg.generator import MaskGenerator

    image, _ = make_scene(3, (128, 160))
    cfg = PipelineConfig(amg=AmgConfig(points_per_side=8))
    valid = np.ones(image.shape[:2], bool)
    valid[:, :20] = False  # e.g. transparent pixels: never labelled, not counted in PI(M)
    summary = label_image(image, "scene", "scene.png", MaskGenerator(embedded_backend, cfg.amg), cfg,
                          tmp_path / "scene.npz", "fp", valid_mask=valid)
    shard = read_shard(tmp_path / "scene.npz")
    assert summary.n_masks == len(shard.rles) == summary.n_kept + summary.n_gated > 0
    assert shard.pfl.shape == (summary.n_kept, 256)
    from alps_client.masks import decode_coco_rle

    assert not decode_coco_rle(shard.rles)[:, :, :20].any()
    assert {"encoder", "decoder", "postprocess", "gate", "features"} <= set(summary.timings)
    assert shard.extra["image_area"] == int(valid.sum())
