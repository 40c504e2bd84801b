"""The reference ALPS pipeline, rebuilt as its public code does it, for side-by-side benchmarks only.

Faithful to the reference's structure (and its known defects, which our pipeline does not copy):
1. Meta's ``SamAutomaticMaskGenerator`` in PyTorch on each image.
2. Every mask written as its own PNG file.
3. A second encoder pass for features, on the image as OpenCV reads it (BGR), resized to 1024x1024 without
   SAM's normalisation; the 64x64 feature map bilinearly upsampled to 256x256.
4. Per mask: the PNG read back, resized to 256x256 (nearest), the masked sum divided by the non-zero count,
   saved as one ``.npy`` file per mask (masks covering more than sigma of the image skipped).
5. scikit-learn ``MiniBatchKMeans.partial_fit`` over the ``.npy`` files in file order (first batch initialises).
6. Label painting by glob order, cluster id + 1 painted, 0 where no mask (cluster 0 and "no mask" collide in
   the reference; we keep its layout but record the ids so agreement can be measured).
"""

from __future__ import annotations

import glob
import os
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from sklearn.cluster import MiniBatchKMeans


def run_reference(sam: Any, images: dict[str, np.ndarray], work: Path, amg_kwargs: dict[str, Any], sigma: float,
                  n_clusters: int, seed: int = 0, batch_size: int = 256) -> dict[str, Any]:
    """Run the reference pipeline; returns per-stage seconds and the painted label maps (uint8, 0 = no mask)."""
    from segment_anything import SamAutomaticMaskGenerator

    t: dict[str, float] = {"amg": 0.0, "write_masks": 0.0, "features": 0.0, "clustering": 0.0, "painting": 0.0}
    generator = SamAutomaticMaskGenerator(sam, **amg_kwargs)
    mask_dir, feat_dir, label_dir = work / "masks", work / "features", work / "labels"
    for d in (mask_dir, feat_dir, label_dir):
        d.mkdir(parents=True, exist_ok=True)
    for stem, rgb in images.items():
        start = time.perf_counter()
        records = generator.generate(rgb)
        t["amg"] += time.perf_counter() - start
        start = time.perf_counter()
        for i, r in enumerate(records):
            cv2.imwrite(str(mask_dir / f"{stem}_{i}.png"), r["segmentation"].astype(np.uint8) * 255)
        t["write_masks"] += time.perf_counter() - start
        start = time.perf_counter()
        bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)  # the reference reads images with cv2.imread
        x = torch.as_tensor(cv2.resize(bgr, (1024, 1024))).permute(2, 0, 1)[None].float()
        with torch.no_grad():
            feats = sam.image_encoder(x)  # second encoder pass, no SAM normalisation
        feats = F.interpolate(feats, (256, 256), mode="bilinear", align_corners=False)[0]
        h, w = rgb.shape[:2]
        for path in sorted(glob.glob(_pattern(mask_dir, stem, ".png"))):
            mask = cv2.imread(path, cv2.IMREAD_GRAYSCALE) > 0
            if mask.sum() / (h * w) > sigma:
                continue
            m = torch.as_tensor(cv2.resize(mask.astype(np.uint8), (256, 256), interpolation=cv2.INTER_NEAREST)).float()
            pooled = (feats * m).sum(dim=(1, 2)) / max(float((m != 0).sum()), 1.0)
            np.save(feat_dir / (Path(path).stem + ".npy"), pooled.numpy())
        t["features"] += time.perf_counter() - start
    start = time.perf_counter()
    files = sorted(glob.glob(_pattern(feat_dir, "", ".npy")))
    n_clusters = max(1, min(n_clusters, len(files)))  # as ours does when there are fewer masks than clusters
    km = MiniBatchKMeans(n_clusters=n_clusters, random_state=seed, batch_size=batch_size, n_init=1)
    for b in range(0, len(files), batch_size):
        batch = np.stack([np.load(f) for f in files[b : b + batch_size]])
        if len(batch) >= n_clusters:
            km.partial_fit(batch)
    t["clustering"] += time.perf_counter() - start
    start = time.perf_counter()
    painted = {}
    for stem, rgb in images.items():
        label = np.zeros(rgb.shape[:2], np.uint8)
        for f in sorted(glob.glob(_pattern(feat_dir, stem, ".npy"))):
            cls = int(km.predict(np.load(f)[None])[0])
            mask = cv2.imread(str(mask_dir / (Path(f).stem + ".png")), cv2.IMREAD_GRAYSCALE) > 0
            label[mask] = cls + 1
        cv2.imwrite(str(label_dir / f"{stem}.png"), label)
        painted[stem] = label
    t["painting"] += time.perf_counter() - start
    n_masks = len(os.listdir(mask_dir))
    return {"seconds": t, "labels": painted, "n_masks": n_masks, "n_features": len(files)}


def _pattern(folder: Path, stem: str, suffix: str) -> str:
    """The glob pattern of ``stem``'s files in ``folder`` (every file there for ``stem`` ""), the folder's and the
    stem's own ``[``, ``*`` and ``?`` taken literally."""
    return str(Path(glob.escape(str(folder))) / (f"{glob.escape(stem)}_*{suffix}" if stem else f"*{suffix}"))
