"""K-means over all pseudo feature labels of a dataset, streamed from the shards.

- **CPU (default here)**: scikit-learn ``MiniBatchKMeans.partial_fit`` over mini-batches streamed from the shards
  (a few shards in memory at a time: memory is flat in the number of images), shuffled with the seed, for
  ``n_passes`` passes; initialised by k-means++ on a seeded sample of PFLs. Same seed, same centroids; the
  shard list is sorted by the shards' features first, so neither the order in which images finished nor their
  names matter.
- **GPU**: RAPIDS cuML ``KMeans`` (imported lazily, chosen when a GPU and cuML are present) fitted on a large
  seeded sample from the same k-means++ initialisation (cuML has no ``partial_fit``).
- **Dask**: dask-ml's ``KMeans`` over a Dask array assembled lazily from the shards, for PFL sets larger than
  one machine (scheduler address or a local cluster).

``n_clusters="auto"`` estimates N with a Dirichlet-process Gaussian mixture (variational, scikit-learn's
``BayesianGaussianMixture``, the finite stand-in for DeepDPM's nonparametric prior) on a seeded sample reduced
to ``AUTO_PCA_DIMS`` dimensions by PCA: N is the number of components holding at least ``AUTO_MIN_WEIGHT`` of
the sample.
"""

from __future__ import annotations

import hashlib
import json
import logging
import zipfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from alps_client._imports import lazy_import
from alps_client.config import MAX_CLUSTERS, ClusterConfig
from alps_client.errors import AlpsError
from alps_client.io.items import one_line
from alps_client.io.shards import read_pfl, read_shard_meta

logger = logging.getLogger(__name__)
AUTO_PCA_DIMS = 16
AUTO_MIN_WEIGHT = 0.02
SHARDS_PER_READ = 32


def _sorted(paths: Sequence[str | Path]) -> list[Path]:
    """The shards in an order of their features alone, whatever the images' names.

    The order feeds the k-means++ sample and the mini-batches: sorted by name, an image renamed or moved (its
    shard kept, its features the same) changed the clusters, and so the class ids of images nobody touched. The key
    is the CRC-32 and size the shard's zip directory records for its ``pfl.npy`` (read without the arrays); the name
    only breaks ties, which are shards of equal features unless two CRCs collide.
    """
    return sorted((Path(p) for p in paths), key=lambda path: (*_features_of(path), path.name))


def _features_of(path: Path) -> tuple[int, int]:
    """The CRC-32 and size of a shard's ``pfl.npy``, from its zip directory (its features, unread)."""
    with zipfile.ZipFile(path) as archive:
        entry = archive.getinfo("pfl.npy")
    return entry.CRC, entry.file_size


def clustering_key(shard_paths: Sequence[str | Path], config: ClusterConfig) -> str:
    """A digest of what k-means is given: every shard's features (whatever their names) and the settings of the fit.

    Equal keys give equal centroids, so a rerun that finds the key of the centroids it has may keep them.
    """
    settings = {name: getattr(config, name) for name in
                ("n_clusters", "max_n_clusters", "backend", "batch_size", "n_passes", "init_sample_size", "seed")}
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    for crc, size in sorted(_features_of(Path(p)) for p in shard_paths):
        digest.update(f"{crc}:{size};".encode())
    return digest.hexdigest()


def count_pfls(shard_paths: Sequence[Path]) -> npt.NDArray[np.int64]:
    """Kept masks (PFL rows) per shard, from shard metadata."""
    return np.array([read_shard_meta(p)["n_kept"] for p in shard_paths], dtype=np.int64)


def why_nothing_to_cluster(shard_paths: Sequence[str | Path], min_mask_region_area: int = 0) -> str | None:
    """Why the shards hold no mask to cluster or label, naming the setting to change; None if some mask was kept.

    The two causes need opposite remedies: the mask generator's filters kept nothing (lower its thresholds), or
    every mask it kept covers more than sigma of its image (raise ``--sigma``). A ``min_mask_region_area`` (px)
    at least each image's area fills every mask's holes up to the whole image: that setting is named, not sigma
    (raising sigma then kept one whole-image mask per image).
    """
    found, largest = 0, 0
    for path in shard_paths:
        meta = read_shard_meta(path)
        if meta["n_kept"]:
            return None
        found += meta["n_masks"]
        largest = max(largest, int(meta["image_size"][0]) * int(meta["image_size"][1]))
    images = f"{len(shard_paths)} image(s)"
    if found and 0 < largest <= min_mask_region_area:
        return (f"--min-mask-region-area {min_mask_region_area} is at least the area of every one of the {images} "
                f"(the largest: {largest} px): it fills each mask's holes up to the whole image, so the gate dropped "
                "all of them and there is nothing to label; give an area well under the images' (Meta's example: "
                "100)")
    if found == 0:
        return (f"the mask generator kept no mask in any of the {images}, so there is nothing to label: every "
                "prompt's masks fell below --pred-iou-thresh or --stability-score-thresh, or were emptied by "
                "--mask-threshold or --min-mask-region-area (or the images hold nothing to segment); lower those "
                "settings or check the inputs")
    return (f"all {found} mask(s) found in the {images} cover more than --sigma of their image, so the gate dropped "
            "every one and there is nothing to label; raise --sigma")


def sample_pfls(shard_paths: Sequence[Path], counts: npt.NDArray[np.int64], size: int, seed: int) -> npt.NDArray[np.float32]:
    """A seeded uniform sample (without replacement) of at most ``size`` PFL rows, read shard by shard."""
    total = int(counts.sum())
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(total, size=min(size, total), replace=False))
    starts = np.concatenate([[0], np.cumsum(counts)])
    rows = []
    for i, path in enumerate(shard_paths):
        lo, hi = np.searchsorted(chosen, [starts[i], starts[i + 1]])
        if hi > lo:
            rows.append(read_pfl(path)[chosen[lo:hi] - starts[i]])
    return np.concatenate(rows).astype(np.float32)


def iter_batches(shard_paths: Sequence[Path], batch_size: int, rng: np.random.Generator) -> Iterator[npt.NDArray[np.float32]]:
    """Fixed-size mini-batches of PFLs, shards visited in a seeded random order, a few shards in memory at a time.

    Batches are cut from the concatenated stream, so they do not depend on how many shards are read at once:
    streaming gives exactly the batches (and centroids) of the all-in-memory computation.
    """
    order = rng.permutation(len(shard_paths))
    pending = np.zeros((0, 0), np.float32)
    for start in range(0, len(order), SHARDS_PER_READ):
        parts = [read_pfl(shard_paths[i]) for i in order[start : start + SHARDS_PER_READ]]
        parts = [p for p in parts if len(p)]
        if not parts:
            continue
        rows = np.concatenate([pending, *parts]) if len(pending) else np.concatenate(parts)
        n_full = len(rows) // batch_size * batch_size
        for b in range(0, n_full, batch_size):
            yield rows[b : b + batch_size]
        pending = rows[n_full:]
    if len(pending):
        yield pending


def estimate_n_clusters(sample: npt.NDArray[np.float32], max_n: int, seed: int) -> int:
    """Number of clusters in ``(M, D)`` vectors, by a Dirichlet-process Gaussian mixture (see module docs)."""
    from sklearn.decomposition import PCA
    from sklearn.mixture import BayesianGaussianMixture

    if len(sample) < 2:
        return 1
    dims = min(AUTO_PCA_DIMS, sample.shape[1], len(sample) - 1)
    reduced = PCA(n_components=dims, random_state=seed).fit_transform(sample.astype(np.float64))
    mixture = BayesianGaussianMixture(
        n_components=min(max_n, len(sample)),
        weight_concentration_prior_type="dirichlet_process",
        weight_concentration_prior=1.0 / max_n,
        covariance_type="diag",
        max_iter=500,
        n_init=1,
        init_params="k-means++",
        random_state=seed,
    ).fit(reduced)
    return max(1, int((mixture.weights_ >= AUTO_MIN_WEIGHT).sum()))


def assign_clusters(features: npt.NDArray[np.float32], centroids: npt.NDArray[np.float32]) -> npt.NDArray[np.int64]:
    """Nearest centroid (squared Euclidean; ties to the lower id) of each ``(M, D)`` row."""
    if len(features) == 0:
        return np.zeros((0,), np.int64)
    if features.ndim != 2 or centroids.ndim != 2 or features.shape[1] != centroids.shape[1]:
        raise ValueError(f"features (M, D) and centroids (N, D) must have as many columns, got {features.shape} and "
                         f"{centroids.shape} (centroids of another model family?)")
    f = features.astype(np.float64)
    c = centroids.astype(np.float64)
    d = (f * f).sum(1)[:, None] - 2.0 * f @ c.T + (c * c).sum(1)[None, :]
    return np.argmin(d, axis=1).astype(np.int64)


CENTROIDS_SIDECAR_SUFFIX = ".json"  # centroids.npy -> centroids.json: the model family the PFLs came from


def centroids_sidecar(model_manifest: dict[str, Any]) -> dict[str, Any]:
    """What ``centroids.json`` records beside ``centroids.npy``: the model that made the PFLs.

    Its family, type and checkpoint's sha256 (None without a checkpoint: a stand-in, random weights).
    """
    return {
        "model_family": str(model_manifest.get("model_family", "sam")),
        "model_type": str(model_manifest.get("model_type", "unknown")),
        "checkpoint_sha256": _checkpoint_sha256(model_manifest),
        "feature": "image_embeddings (256 channels) pooled under each mask",
    }


def _checkpoint_sha256(record: dict[str, Any]) -> str | None:
    """The sha256 of the checkpoint a model manifest (or a ``centroids.json``) names; None for none (stand-in)."""
    checkpoint = record.get("checkpoint")
    sha = checkpoint.get("sha256") if isinstance(checkpoint, dict) else record.get("checkpoint_sha256")
    return str(sha) if sha else None


def _checkpoint_recorded(record: dict[str, Any]) -> bool:
    """Whether a model manifest (or a ``centroids.json``) says which checkpoint, if any: an earlier alps's did not."""
    return "checkpoint" in record or "checkpoint_sha256" in record or bool(record.get("random_init"))


def _recorded_beside(path: Path, in_sidecar: tuple[str, ...], in_manifest: tuple[str, ...]) -> Iterator[Any]:
    """What ``centroids.json``, then the dataset's ``manifest.json``, beside a ``centroids.npy`` hold at these keys.

    Each file is read when the caller asks for its value (None where a key is missing); one that cannot be read
    is passed over.
    """
    for record, keys in ((path.with_suffix(CENTROIDS_SIDECAR_SUFFIX), in_sidecar),
                         (path.parent / "manifest.json", in_manifest)):
        try:
            value: Any = json.loads(record.read_text())
        except (OSError, ValueError):
            continue
        for key in keys:
            value = value.get(key) if isinstance(value, dict) else None
        yield value


def centroids_model(path: str | Path) -> dict[str, Any] | None:
    """The record of the model a ``centroids.npy`` was fitted with: :func:`centroids_sidecar`'s fields, or None.

    Read from ``centroids.json`` beside it, else from the dataset's ``manifest.json`` beside it. Centroids with
    neither were written before SAM 2 support (SAM's), or copied without their ``centroids.json``. Where neither
    says which checkpoint (a ``centroids.json`` of an alps before checkpoints were recorded, and no manifest of the
    same model beside it), the record has no ``checkpoint_sha256``: unknown, not random weights (None).
    """
    found: dict[str, Any] | None = None
    for data in _recorded_beside(Path(path), (), ("model",)):
        if not (isinstance(data, dict) and data):
            continue
        # a file handed over with the centroids: its names go into messages, their terminal escapes said, not run
        here = {key: one_line(value) if isinstance(value, str) else value
                for key, value in centroids_sidecar(data).items()}
        if not _checkpoint_recorded(data):
            del here["checkpoint_sha256"]
        if found is None or (_checkpoint_recorded(here) and here["model_type"] == found["model_type"]):
            found = here
        if _checkpoint_recorded(found):
            break
    return found


def centroids_family(path: str | Path) -> tuple[str | None, str]:
    """``(model_family, model_type)`` of a ``centroids.npy``; ``(None, 'unknown')`` when nothing records it."""
    record = centroids_model(path)
    return (record["model_family"], record["model_type"]) if record else (None, "unknown")


def check_centroids_model(path: str | Path, model_manifest: dict[str, Any], warn: Callable[[str], None]) -> None:
    """Refuse centroids fitted with another model of the family; ``warn`` of another checkpoint of the model.

    Random weights (``--random-init``) on one side and a checkpoint on the other are warned of too.

    Another SAM size is another feature space; a fine-tune's features drift from its base's.

    Centroids whose record does not name the model (older runs) pass, as does a checkpoint no record names (an
    earlier alps's ``centroids.json``, an earlier export's manifest). int8 and fp32 exports of one checkpoint share
    a model: their features differ by the quantisation's noise only.

    Raises:
        AlpsError: One line naming both models and the next step.
    """
    theirs, ours = centroids_model(path), centroids_sidecar(model_manifest)
    if theirs is None or "unknown" in (theirs["model_type"], ours["model_type"]):
        return
    if theirs["model_type"] != ours["model_type"]:
        raise AlpsError(
            f"--centroids {path}: fitted on {theirs['model_type']} features, but this model repository holds "
            f"{ours['model_type']}; their feature spaces differ, so every mask would get a meaningless class: drop "
            f"--centroids to cluster anew, or label with a {theirs['model_type']} repository"
        )
    fitted_with, labelling_with = theirs.get("checkpoint_sha256"), ours["checkpoint_sha256"]
    if fitted_with == labelling_with or not (_checkpoint_recorded(theirs) and _checkpoint_recorded(model_manifest)):
        return
    if None in (fitted_with, labelling_with):  # one side exported with --random-init: features unrelated
        said = {None: "RANDOM weights (no checkpoint)"}
        warn(f"--centroids {path} were fitted with {ours['model_type']} of "
             f"{said.get(fitted_with, f'checkpoint sha256 {str(fitted_with)[:12]}')}, this repository holds "
             f"{said.get(labelling_with, f'checkpoint sha256 {str(labelling_with)[:12]}')}: random weights' features "
             "bear no relation to trained ones, so the classes mean nothing; drop --centroids to cluster anew")
        return
    warn(f"--centroids {path} were fitted with another {ours['model_type']} checkpoint (sha256 {fitted_with[:12]}, "
         f"this repository's {labelling_with[:12]}): a fine-tune's features drift from its base's, so check the "
         "classes on the review page")


def check_centroids_family(path: str | Path, model_family: str) -> None:
    """Refuse centroids fitted on another model family's features (a different feature space).

    Raises:
        AlpsError: One line naming both families and the next step.
    """
    family, model_type = centroids_family(path)
    if family is None and model_family != "sam":  # the run warns when it takes such centroids as SAM's
        sidecar = Path(path).with_suffix(CENTROIDS_SIDECAR_SUFFIX).name
        raise AlpsError(
            f"--centroids {path}: nothing beside them says which model's features they were fitted on (no {sidecar}, "
            f"no dataset manifest.json), and this model repository is {model_family}: copy the {sidecar} written "
            "with them beside them, or drop --centroids to cluster anew"
        )
    if family is not None and family != model_family:
        raise AlpsError(
            f"--centroids {path}: fitted on {family} features ({model_type}), but this model repository is "
            f"{model_family}; their feature spaces differ: drop --centroids to cluster anew, or use a {family} repository"
        )


def _recorded_l2_normalized(path: Path) -> bool | None:
    """Whether a ``centroids.npy`` was fitted on L2-normalised PFLs; None where nothing beside it says.

    Read from ``centroids.json``, else from the dataset's ``manifest.json`` beside it (``config.features``).
    """
    for value in _recorded_beside(path, ("l2_normalized",), ("config", "features", "l2_normalize")):
        if isinstance(value, bool):
            return value
    return None


def check_centroids_features(path: str | Path, centroids: npt.NDArray[np.floating[Any]], l2_normalize: bool) -> None:
    """Refuse ``(N, D)`` centroids fitted on PFLs normalised otherwise than this run's (``l2_normalize``).

    The two are other scales of one space: every mask would go to the centre nearest the origin (or farthest from
    it). Read from the record beside them; with none, centroids whose norm exceeds 1 cannot be means of unit vectors.

    Raises:
        AlpsError: One line naming the setting to add.
    """
    fitted_normalised = _recorded_l2_normalized(Path(path))
    if fitted_normalised is None:
        if not l2_normalize or float(np.linalg.norm(centroids, axis=1).max()) <= 1.0 + 1e-3:
            return  # nothing says, and the norms allow both
        fitted_normalised = False
    if fitted_normalised == l2_normalize:
        return
    raise AlpsError(
        f"--centroids {path}: fitted on {'L2-normalised' if fitted_normalised else 'unnormalised'} mask features, but "
        f"this run {'normalises' if l2_normalize else 'does not normalise'} them: every mask would go to one class; "
        f"add {'--l2-normalize' if fitted_normalised else '--no-l2-normalize'} (as they were fitted), or drop "
        "--centroids to cluster anew"
    )


def load_centroids(path: str | Path, dim: int = 256, model_family: str | None = None) -> npt.NDArray[np.float32]:
    """Read ``centroids.npy`` of an earlier run, checking it is ``(N, dim)`` with 1 <= N <= ``MAX_CLUSTERS``.

    When ``model_family`` is given, centroids fitted on another family's features are refused.
    """
    if model_family is not None:
        check_centroids_family(path, model_family)
    try:
        c = np.load(path)
    except (OSError, ValueError) as err:
        raise AlpsError(f"--centroids {path}: not a readable .npy file ({err})") from err
    if c.ndim != 2 or c.shape[1] != dim or not 1 <= c.shape[0] <= MAX_CLUSTERS:
        raise AlpsError(f"--centroids {path}: expected an (N, {dim}) array with 1 <= N <= {MAX_CLUSTERS}, got shape "
                        f"{c.shape}")
    if not (np.issubdtype(c.dtype, np.integer) or np.issubdtype(c.dtype, np.floating)):
        raise AlpsError(f"--centroids {path}: expected real numbers, got {c.dtype} values")
    c = c.astype(np.float32)
    bad = ~np.isfinite(c)
    if bad.any():  # a NaN row wins no argmin, a NaN in every row made every distance NaN: all masks in class 0
        rows = np.flatnonzero(bad.any(axis=1))
        raise AlpsError(f"--centroids {path}: {int(bad.sum())} value(s) are NaN or infinite (in row(s) "
                        f"{', '.join(map(str, rows[:5]))}{' ...' if len(rows) > 5 else ''}); give the centroids.npy "
                        "an `alps run` wrote")
    return c


# What each k-means backend imports, checked before a run labels anything ("auto" falls back to scikit-learn).
BACKEND_MODULES = {"cuml": ("cuml",), "dask": ("dask.array", "distributed", "dask_ml.cluster")}


def same_clusters(new: npt.NDArray[np.floating[Any]], old: npt.NDArray[np.floating[Any]], atol: float = 1e-5) -> bool:
    """Whether ``(N, D)`` centroids ``new`` are ``old``'s in some order, each within ``atol`` in every component.

    k-means over the same masks read in another order (alps' order changed between versions) finds the same
    centres numbered otherwise: every class id of a dataset would move, and its relabel be dropped, for nothing.

        >>> old = np.eye(3, dtype=np.float32)
        >>> same_clusters(old[[2, 0, 1]], old), same_clusters(old[[2, 0, 1]] + 0.01, old)
        (True, False)
    """
    if new.shape != old.shape:
        return False
    nearest = [int(np.argmin(np.abs(old - row).max(axis=1))) for row in new]  # row by row: (N, D) at a time
    return len(set(nearest)) == len(old) and all(
        float(np.abs(row - old[i]).max()) <= atol for row, i in zip(new, nearest, strict=True))


def check_backend_dependencies(config: ClusterConfig) -> None:
    """Raises DependencyNotFoundError (the pip line) if the k-means backend ``config`` names is not installed."""
    if not config.centroids:  # given centroids: no k-means
        for name in BACKEND_MODULES.get(config.backend, ()):
            lazy_import(name)


def fit_centroids(
    shard_paths: Sequence[str | Path], config: ClusterConfig, model_family: str | None = None
) -> npt.NDArray[np.float32]:
    """Cluster every PFL of the shards; returns ``(N, 256) float32`` centroids, deterministic for a seed.

    ``config.centroids`` (``--centroids``) are loaded instead, refused if fitted on another ``model_family``.

    Raises:
        ValueError: If ``shard_paths`` is empty (a caller's mistake: no image was labelled).
        AlpsError: If no shard holds a kept mask (nothing to cluster).
    """
    if config.centroids:
        return load_centroids(config.centroids, model_family=model_family)
    paths = _sorted(shard_paths)
    if not paths:
        raise ValueError("no shard to cluster: give the shards that label_image wrote (one .npz per image)")
    counts = count_pfls(paths)
    total = int(counts.sum())
    if total == 0:
        raise AlpsError(why_nothing_to_cluster(paths) or "no mask to cluster")
    sample = sample_pfls(paths, counts, config.init_sample_size, config.seed)
    n = estimate_n_clusters(sample, config.max_n_clusters, config.seed) if config.n_clusters == "auto" else config.n_clusters
    if n > total:
        logger.warning("only %d masks for %d clusters: using %d clusters", total, n, total)
        n = total
    distinct = len(np.unique(sample, axis=0))
    if n > distinct:  # k-means++ would place centres on one point twice: classes that no mask could ever take
        logger.warning("only %d distinct mask features among the %d drawn (images or masks repeated) for %d clusters: "
                       "using %d clusters", distinct, len(sample), n, distinct)
        n = distinct
    from sklearn.cluster import kmeans_plusplus

    init, _ = kmeans_plusplus(sample.astype(np.float64), n_clusters=n, random_state=config.seed)
    backend = kmeans_backend(config)
    if backend == "cuml":
        return _fit_cuml(paths, counts, init, config)
    if backend == "dask":
        return _fit_dask(paths, counts, init, config)
    return _fit_sklearn(paths, init, config)


def _fit_sklearn(paths: list[Path], init: npt.NDArray[np.float64], config: ClusterConfig) -> npt.NDArray[np.float32]:
    from sklearn.cluster import MiniBatchKMeans

    km = MiniBatchKMeans(
        n_clusters=len(init), init=init, n_init=1, batch_size=config.batch_size, random_state=config.seed,
        reassignment_ratio=0.0,
    )
    rng = np.random.default_rng(config.seed)
    for _ in range(config.n_passes):
        for batch in iter_batches(paths, config.batch_size, rng):
            km.partial_fit(batch.astype(np.float64))
    return km.cluster_centers_.astype(np.float32)


# What each k-means backend runs, as a run's log says it: "auto" resolves per machine, and they are not one algorithm.
KMEANS_BACKENDS = {"sklearn": "scikit-learn MiniBatchKMeans over every mask, on the CPU",
                   "cuml": "cuML KMeans on a sample of the masks, on the GPU",
                   "dask": "dask-ml KMeans over every mask, on the Dask cluster"}


def centroids_from(config: ClusterConfig) -> str:
    """How ``config``'s centroids come about on this machine, as the run's log and the manifest say it.

    ``k-means: scikit-learn MiniBatchKMeans over every mask, on the CPU`` (``auto`` resolved), or
    ``no k-means: the centroids of --centroids PATH``.
    """
    if config.centroids:
        return f"no k-means: the centroids of --centroids {config.centroids}"
    return f"k-means: {KMEANS_BACKENDS[kmeans_backend(config)]}"


def kmeans_backend(config: ClusterConfig) -> str:
    """The k-means backend that fits ``config``'s centroids on this machine: a key of :data:`KMEANS_BACKENDS`.

    ``config.backend``, with ``auto`` resolved: ``cuml`` where a GPU and cuML are present, else ``sklearn``.
    """
    if config.backend != "auto":
        return config.backend
    return "cuml" if _gpu_available() else "sklearn"


def _gpu_available() -> bool:
    try:
        import cupy  # type: ignore[import-not-found]

        return bool(cupy.cuda.runtime.getDeviceCount() > 0) and _has_cuml()
    except Exception:
        return False


def _has_cuml() -> bool:
    try:
        lazy_import("cuml")
        return True
    except AlpsError:
        return False


def _fit_cuml(paths: list[Path], counts: npt.NDArray[np.int64], init: npt.NDArray[np.float64],
              config: ClusterConfig) -> npt.NDArray[np.float32]:
    cuml = lazy_import("cuml")
    sample = sample_pfls(paths, counts, max(config.init_sample_size, 20 * config.batch_size), config.seed + 1)
    km = cuml.KMeans(n_clusters=len(init), init=init.astype(np.float32), n_init=1,
                     max_iter=max(50, 10 * config.n_passes), random_state=config.seed)
    km.fit(sample)
    centres = km.cluster_centers_
    return np.asarray(centres.get() if hasattr(centres, "get") else centres, dtype=np.float32)


def _fit_dask(paths: list[Path], counts: npt.NDArray[np.int64], init: npt.NDArray[np.float64],
              config: ClusterConfig) -> npt.NDArray[np.float32]:
    da = lazy_import("dask.array")
    dask = lazy_import("dask")
    distributed = lazy_import("distributed")
    dask_ml_cluster = lazy_import("dask_ml.cluster")
    parts = [
        da.from_delayed(dask.delayed(read_pfl)(str(p)), shape=(int(c), init.shape[1]), dtype=np.float32)
        for p, c in zip(paths, counts) if c > 0
    ]
    features = da.concatenate(parts).astype(np.float64).rechunk({0: max(config.batch_size, 1024)})
    client = distributed.Client(config.dask_address) if config.dask_address else None
    try:
        km = dask_ml_cluster.KMeans(n_clusters=len(init), init=init, max_iter=max(10, 10 * config.n_passes),
                                    random_state=config.seed)
        km.fit(features)
        return np.asarray(km.cluster_centers_, dtype=np.float32)
    finally:
        if client is not None:
            client.close()
