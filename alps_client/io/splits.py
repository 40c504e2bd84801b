"""Train/val(/test) splits of a labelled dataset: kept from the input's folders, else a seeded hash split.

- An input laid out as ``DATASET/{train,val,test}/...`` keeps its split (``validation``/``valid`` count as val).
- Otherwise images are split by *group*: the tiles of one scene and the slices of one volume stay together, so
  overlapping tiles never straddle train and val. Groups are ranked by a stable hash of the seed and the group
  name and taken in that order, each into val while that brings val's count of images closer to ``val_fraction``
  of them: the realised fraction is as close to the requested one as whole groups allow (the old per-image coin
  flip gave 11/1 instead of 8/4 on 12 images; counting groups, not images, put a 12-tile scene in val beside one
  small image in train), and the split depends only on the set of groups, never on the order in which images
  were labelled. With one image per group this is the first ``floor(val_fraction * n + 0.5)`` of the ranking (a half
  rounds up). One group
  at least stays in train when no input folder gives train images: rounding put a two-scene dataset's both
  scenes, or a one-scene dataset's only one, in val at ``--val-fraction 0.5``, leaving nothing to train on.
- A rerun with the same seed and fraction keeps the split the dataset gave each group before: images added later
  are split so that the whole comes as close to the fraction as the kept groups allow, and no image of the
  earlier validation set moves into train (ranking all groups again moved some whenever images were added).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable, Mapping

SPLIT_ALIASES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
                 "test": "test", "testing": "test"}


def split_folder(name: str) -> str | None:
    """The split a top-level dataset folder names (``train``, ``val``, ``test``), or None."""
    return SPLIT_ALIASES.get(name.lower())


def _rank(seed: int, group: str) -> bytes:
    return hashlib.sha256(f"{seed}:{group}".encode()).digest()


def assign_splits(images: Iterable[tuple[str, str, str | None]], seed: int, val_fraction: float,
                  earlier: Mapping[str, str] | None = None) -> dict[str, str]:
    """Split of every image.

    Args:
        images: ``(stem, group, given_split)`` per image; ``given_split`` from the input's folders, or None.
        seed: seed of the hash split.
        val_fraction: share of the images without a given split that go to val (whole groups), in [0, 1).
        earlier: ``group -> split`` an earlier run with this seed and fraction gave (``train`` or ``val``): kept,
            unless that would leave nothing to train on.

    Returns:
        ``stem -> split``.
    """
    images = list(images)
    size = Counter(group for _, group, given in images if given is None)  # images per group
    free_groups = sorted(size, key=lambda g: (_rank(seed, g), g))
    target = val_fraction * sum(size.values())
    train_given = any(given == "train" for _, _, given in images)
    kept = {g: earlier[g] for g in free_groups if (earlier or {}).get(g) in ("train", "val")}
    new_groups = [g for g in free_groups if g not in kept]
    kept_val = {g for g, split in kept.items() if split == "val"}
    most = None if train_given else len(free_groups) - 1 - len(kept_val)
    val_groups = kept_val | set(_fill(new_groups, size, target, sum(size[g] for g in kept_val), most))
    if not train_given and free_groups and val_groups >= set(free_groups):  # the earlier train images are gone
        val_groups = set(_fill(free_groups, size, target, 0, len(free_groups) - 1))
    return {stem: given or ("val" if group in val_groups else "train") for stem, group, given in images}


def split_shortfall(images: Iterable[tuple[str, str, str | None]], splits: Mapping[str, str],
                    val_fraction: float, split_group: str | None = None) -> str | None:
    """A line for the user when whole groups leave val empty or far from ``val_fraction``, else None.

    Args:
        images: ``(stem, group, given_split)`` per image, as for :func:`assign_splits`.
        splits: what :func:`assign_splits` returned for them.
        val_fraction: the share asked for.
        split_group: ``--split-group``'s pattern, which made the groups of the paths it matched.

    Only images without a split folder count: a layout the user gave is theirs. Far: off by at least one image and
    by half of what was asked (12 tiles of one scene, 20 %: none in val; two scenes of 6 tiles: none either).
    """
    free = [(stem, group) for stem, group, given in images if given is None]
    if not free or val_fraction <= 0:
        return None
    target = val_fraction * len(free)
    n_val = sum(splits[stem] == "val" for stem, _ in free)
    if not (n_val == 0 and len(free) > 1) and abs(n_val - target) < max(1.0, target / 2):
        return None
    groups = len({group for _, group in free})
    together = (f"the inputs of each --split-group {split_group!r} match" if split_group else
                "the tiles of a scene and the slices of a volume")
    return (f"val holds {n_val} of the {len(free)} images ({n_val / len(free):.0%}; --val-fraction {val_fraction:g}): "
            f"the split keeps {together} together ({groups} group(s) here), so it cannot come nearer; to choose, put "
            "the inputs in train/ and val/ folders"
            + ("; without val images mmseg_dataset.py validates on test, else on the images trained on (scores not "
               "held out)" if n_val == 0 else ""))


def images_outside_split_folders(images: Iterable[tuple[str, str, str | None]], splits: Mapping[str, str],
                                 val_fraction: float) -> str | None:
    """A line for the user when a dataset with split folders also holds images outside them, else None.

    Those are split as a dataset without folders is (by ``val_fraction``, whole groups): they went to train or
    val unsaid, beside a layout that looked like the user's whole choice.
    """
    images = list(images)
    loose = sorted(stem for stem, _, given in images if given is None)
    if not loose or len(loose) == len(images):
        return None
    n_val = sum(splits[stem] == "val" for stem in loose)
    return (f"{len(loose)} image(s) lie outside the dataset's train/val/test folders (e.g. {loose[0]}): split by "
            f"--val-fraction {val_fraction:g} as a dataset without those folders is, {n_val} to val and "
            f"{len(loose) - n_val} to train; move them into a folder to choose")


def _fill(ranked: list[str], size: Mapping[str, int], target: float, start: int, most: int | None) -> list[str]:
    """The groups of ``ranked`` taken into val in turn, each while it brings val no farther from ``target`` images.

    ``start`` counts the images val holds already; at most ``most`` groups are taken (None: no limit).
    """
    chosen: list[str] = []
    for group in ranked:
        if most is not None and len(chosen) >= most:
            break
        if start + size[group] / 2 <= target:
            chosen.append(group)
            start += size[group]
    return chosen


def describe_split_counts(counts: Mapping[str, int]) -> str:
    """The images of each split, as said to the user: ``"6 train / 2 val"``, and ``" / 1 test"`` when there is one.

    Args:
        counts: a dataset summary's ``n_train``, ``n_val`` and (optional) ``n_test``.
    """
    test = f" / {counts['n_test']} test" if counts.get("n_test") else ""
    return f"{counts['n_train']} train / {counts['n_val']} val{test}"
