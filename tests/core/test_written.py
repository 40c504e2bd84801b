"""The write's key (alps_client/io/written.py): a rerun writes nothing only where every input of the write is the same."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from alps_client.io.written import write_key


def test_the_write_key_changes_with_each_input_it_names_and_only_with_them(tmp_path: Path) -> None:
    """A key blind to one input lets a rerun keep a dataset that input changed (mutation audit: the centroids' values
    and the rejected inputs could drop out of the key with every test passing)."""
    out = tmp_path / "out"
    shard, image = tmp_path / "a.npz", tmp_path / "a.png"
    shard.write_bytes(b"shard")
    image.write_bytes(b"image")
    centroids = np.arange(8, dtype=np.float32).reshape(2, 4)
    inputs = {"config": {"sigma": 0.3}, "errors": [], "extra": {"complete": True}, "splits": {}}

    def key(**changed: object) -> str:
        given = {"out": out, "shards": [shard], "centroids": centroids, "image_sources": {"a": image},
                 "inputs": inputs} | changed
        return write_key(**given)

    first = key()
    assert key() == first == key(centroids=centroids.copy(), inputs=dict(inputs))  # equal inputs, one key
    other_values = centroids.copy()
    other_values[1, 3] += 1e-6  # the same shape and dtype: a k-means run again over other masks
    stat = os.stat(shard)
    changed = {
        "centroids' values": key(centroids=other_values),
        "centroids' dtype": key(centroids=centroids.astype(np.float64)),
        "a rejected input": key(inputs=inputs | {"errors": [{"path": "b.png", "reason": "not an image"}]}),
        "the configuration": key(inputs=inputs | {"config": {"sigma": 0.5}}),
        "OUT's name": key(out=tmp_path / "renamed"),
        "a shard more": key(shards=[shard, tmp_path / "b.npz"]),
        "an image source's path": key(image_sources={"a": tmp_path / "other.png"}),
    }
    os.utime(shard, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    changed["a shard's modification time"] = key()
    assert {name: value for name, value in changed.items() if value == first} == {}
    assert len(set(changed.values())) == len(changed)
