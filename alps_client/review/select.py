"""What the review page shows of each cluster, gathered in one pass over the dataset with bounded memory.

For every cluster: how many masks, their total and mean area, the pixels it holds in the (cluster) label maps,
and a fixed number of masks to show, chosen deterministically whatever the order images arrive in:

- the ``N_NEAR`` masks whose PFL lies nearest the centroid (the cluster's most typical members; ties by image
  and mask index);
- ``N_RANDOM`` more drawn uniformly: the masks with the smallest ``sha256(seed, image, mask index)``, which is a
  seeded random sample that does not depend on the order of the shards;
- the ``N_IMAGES`` images where the cluster covers the most pixels.

Memory: a few candidates per cluster, never the masks themselves.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from alps_client.io.shards import ImageShard
from alps_client.labels.painting import IGNORE

N_NEAR = 6
N_RANDOM = 6
N_IMAGES = 3


@dataclass(frozen=True, order=True)
class Pick:
    """One mask chosen for display: ``key`` orders candidates (smaller first)."""

    key: float
    stem: str
    index: int  # row among the image's kept masks


@dataclass
class ClusterStats:
    """What is known of one cluster after the pass."""

    n_masks: int = 0
    area_sum: int = 0
    pixels: int = 0
    near: list[Pick] = field(default_factory=list)
    random: list[Pick] = field(default_factory=list)
    images: list[tuple[int, str]] = field(default_factory=list)  # (-pixels, stem)

    @property
    def mean_area(self) -> float:
        """Mean mask area in pixels."""
        return self.area_sum / self.n_masks if self.n_masks else 0.0

    def shown(self) -> list[tuple[str, Pick]]:
        """The masks to show, ``("near" | "random", pick)``: the nearest first, then the random ones not among them."""
        near = sorted(self.near)[:N_NEAR]
        taken = {(p.stem, p.index) for p in near}
        random = [p for p in sorted(self.random) if (p.stem, p.index) not in taken][:N_RANDOM]
        return [("near", p) for p in near] + [("random", p) for p in random]

    def top_images(self) -> list[str]:
        """Stems of the images where the cluster covers the most pixels."""
        return [stem for _, stem in sorted(self.images)[:N_IMAGES]]


def _sample_key(seed: int, stem: str, index: int) -> float:
    digest = hashlib.sha256(f"{seed}:{stem}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def _keep_smallest(items: list, n: int) -> None:
    """Trim ``items`` in place to its ``n`` smallest, once it is twice as long (amortised sort)."""
    if len(items) > 2 * n:
        items.sort()
        del items[n:]


class ReviewCollector:
    """Fed every image once (any order); then says what to show of each cluster.

    Args:
        centroids: ``(N, D)`` cluster centres.
        seed: seed of the random sample.
    """

    def __init__(self, centroids: npt.NDArray[np.float32], seed: int = 0) -> None:
        self.centroids = np.asarray(centroids, np.float64)
        self.seed = seed
        self.clusters = [ClusterStats() for _ in range(len(centroids))]
        self.mask_pixels = 0  # pixels covered by some kept mask (any cluster)

    def add(self, shard: ImageShard, cluster_ids: npt.NDArray[np.int64], cluster_label: npt.NDArray[np.uint8]) -> None:
        """One image: its shard, the ``(K,)`` cluster of each kept mask and its ``(H, W)`` cluster label map."""
        areas = shard.kept_masks().areas
        counts = np.bincount(cluster_label.ravel(), minlength=256)
        self.mask_pixels += int(counts[:IGNORE].sum())
        if len(cluster_ids):
            distances = ((shard.pfl.astype(np.float64) - self.centroids[cluster_ids]) ** 2).sum(1)
        for i, k in enumerate(np.asarray(cluster_ids, np.int64)):
            stats = self.clusters[k]
            stats.n_masks += 1
            stats.area_sum += int(areas[i])
            stats.near.append(Pick(float(distances[i]), shard.stem, i))
            stats.random.append(Pick(_sample_key(self.seed, shard.stem, i), shard.stem, i))
        for k in np.flatnonzero(counts[: len(self.clusters)]):
            stats = self.clusters[k]
            stats.pixels += int(counts[k])
            stats.images.append((-int(counts[k]), shard.stem))
        for k in set(np.asarray(cluster_ids).tolist()) | set(np.flatnonzero(counts[: len(self.clusters)]).tolist()):
            stats = self.clusters[k]
            _keep_smallest(stats.near, N_NEAR)
            _keep_smallest(stats.random, N_NEAR + N_RANDOM)  # room for the ones that are also among the nearest
            _keep_smallest(stats.images, N_IMAGES)

    def stems_needed(self) -> list[str]:
        """Every image the page shows something of, sorted (the second pass reads only these)."""
        stems = {p.stem for c in self.clusters for _, p in c.shown()}
        stems |= {s for c in self.clusters for s in c.top_images()}
        return sorted(stems)
