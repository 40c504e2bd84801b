"""Classes of a labelled dataset: which cluster becomes which named class, and which clusters are dropped.

k-means gives anonymous clusters ``0..N-1``. A :class:`ClassMap` turns them into the dataset's classes: by
default one class per cluster (``cluster_<k>``); after review, some clusters named, merged or dropped
(``alps relabel``). Dropped clusters are painted 255 (no label) and leave the COCO files.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from alps_client.labels.painting import IGNORE


@dataclass(frozen=True)
class ClassMap:
    """Cluster -> class mapping.

    Attributes:
        names: ``names[c]`` is the name of class id ``c`` (ids ``0..len(names)-1``).
        cluster_to_class: ``cluster_to_class[k]`` is the class id of cluster ``k``, or 255 when dropped.
    """

    names: tuple[str, ...]
    cluster_to_class: tuple[int, ...]

    def __post_init__(self) -> None:
        if not 1 <= len(self.names) <= IGNORE:
            raise ValueError(f"a dataset needs 1..{IGNORE} classes, got {len(self.names)}")
        bad = [c for c in self.cluster_to_class if c != IGNORE and not 0 <= c < len(self.names)]
        if bad:
            raise ValueError(f"class ids {bad} do not name one of the {len(self.names)} classes")

    @classmethod
    def identity(cls, n_clusters: int) -> ClassMap:
        """One class per cluster, named ``cluster_<k>``."""
        return cls(tuple(f"cluster_{k}" for k in range(n_clusters)), tuple(range(n_clusters)))

    @property
    def n_classes(self) -> int:
        """Number of classes."""
        return len(self.names)

    @property
    def n_clusters(self) -> int:
        """Number of clusters it maps."""
        return len(self.cluster_to_class)

    def classes_of(self, cluster_ids: npt.ArrayLike) -> npt.NDArray[np.int64]:
        """Class ids (255 = dropped) of ``(M,)`` cluster ids."""
        lut = np.asarray(self.cluster_to_class, np.int64)
        return lut[np.asarray(cluster_ids, np.int64)]

    def label_lut(self) -> npt.NDArray[np.uint8]:
        """``(256,) uint8`` lookup from a cluster label map to the class label map (255 stays 255)."""
        lut = np.full(256, IGNORE, np.uint8)
        lut[: self.n_clusters] = self.cluster_to_class
        return lut

    def clusters_of(self, class_id: int) -> list[int]:
        """The clusters merged into one class."""
        return [k for k, c in enumerate(self.cluster_to_class) if c == class_id]

    @property
    def dropped(self) -> list[int]:
        """Clusters painted 255."""
        return [k for k, c in enumerate(self.cluster_to_class) if c == IGNORE]

    def to_json(self) -> dict[str, Any]:
        """JSON form recorded in the dataset manifest."""
        return {"names": list(self.names), "cluster_to_class": list(self.cluster_to_class)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ClassMap:
        """Inverse of :meth:`to_json`."""
        return cls(tuple(str(n) for n in data["names"]), tuple(int(c) for c in data["cluster_to_class"]))


def in_dropped_clusters(counts: dict[str, Any]) -> str:
    """`` (6 in dropped clusters)`` after a count of kept masks when `alps relabel` drops some of them, else "".

    Those masks are painted 255 and left out of COCO: a count of kept masks beside classes that hold fewer would
    not add up.

    ``counts``: a dataset summary's fields (``n_masks_in_dropped_clusters``, absent in older datasets).
    """
    n = int(counts.get("n_masks_in_dropped_clusters") or 0)
    return f" ({n} in dropped clusters)" if n else ""


def written_class_names(out: str | Path) -> dict[int, str]:
    r"""``{id: name}`` of the classes the dataset in ``out`` was written with; empty when it has none to say.

    From ``OUT/classes.json``: ``alps relabel``'s names, or ``cluster_<k>``. A name with a control character, which
    alps never writes (an OUT handed over), has it as ``\xNN``: the names go into console tables, where a terminal
    escape cleared the screen and printed a result of its own.
    """
    from alps_client.io.items import one_line

    try:
        classes = json.loads((Path(out) / "classes.json").read_text())["classes"]
        return {int(c["id"]): one_line(str(c["name"])) for c in classes}
    except (OSError, ValueError, KeyError, TypeError):
        return {}
