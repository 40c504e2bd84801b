"""What mmsegmentation loads from a dataset alps wrote, by its own rules (mmsegmentation is not installed here)."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image


def mmseg_listing(out: Path) -> list[tuple[Path, Path]]:
    """``(image, label map)`` of every sample mmsegmentation 1.x loads through ``OUT/mmseg_dataset.py`` (each once,
    whichever of its train, val and test loaders loads it).

    mmengine puts the file's folder for ``{{ fileDirname }}``; BaseSegDataset.load_data_list lists the files of
    ``img_path`` ending in ``img_suffix`` and finds each one's label map under ``seg_map_path`` by
    ``img.replace(img_suffix, seg_map_suffix)``, which replaces the suffix wherever the name holds it (``a.jpg.jpg``
    -> ``a.png.png``; mmsegmentation is not installed here: its rule, restated). Listing
    a folder that does not exist raises there (FileNotFoundError), and an empty loader fails too (training samples
    nothing; IoUMetric computes over no result): each loader must list a sample.
    """
    cfg = mmseg_config(out)
    classes = json.loads((out / "classes.json").read_text())["classes"]
    assert cfg["metainfo"] == {"classes": tuple(c["name"] for c in classes), "palette": [c["color"] for c in classes]}
    samples: dict[tuple[Path, Path], None] = {}
    for loader in ("train_dataloader", "val_dataloader", "test_dataloader"):
        ds = cfg[loader]["dataset"]
        assert ds["type"] == "BaseSegDataset" and not ds["reduce_zero_label"] and ds["ignore_index"] == 255
        images = Path(ds["data_root"], ds["data_prefix"]["img_path"])
        assert images.is_dir(), f"{loader}: {images} does not exist"
        listed = sorted(p for p in images.iterdir() if p.name.endswith(ds["img_suffix"]))
        assert listed, f"{loader}: no {ds['img_suffix']} image in {images}"
        for image in listed:
            label = Path(ds["data_root"], ds["data_prefix"]["seg_map_path"],
                         image.name.replace(ds["img_suffix"], ds["seg_map_suffix"]))
            assert label.is_file() and Image.open(label).size == Image.open(image).size
            samples[(image, label)] = None
    return list(samples)


def mmseg_config(out: Path) -> dict:
    """``OUT/mmseg_dataset.py`` run as mmengine runs a config (``{{ fileDirname }}`` is its folder): its names."""
    text = (out / "mmseg_dataset.py").read_text().replace("{{ fileDirname }}", str(out))
    cfg: dict = {}
    exec(compile(text, "mmseg_dataset.py", "exec"), cfg)  # noqa: S102 (a config file alps wrote, as mmengine runs it)
    return cfg


def loader_splits(out: Path) -> dict[str, str]:
    """``{"train": ..., "val": ..., "test": ...}``: the ``img_dir`` split folder each loader of the config reads."""
    cfg = mmseg_config(out)
    return {loader: Path(cfg[f"{loader}_dataloader"]["dataset"]["data_prefix"]["img_path"]).name
            for loader in ("train", "val", "test")}
