"""The flags of ``alps run`` and the :class:`PipelineConfig` they make; messages in the words of those flags.

Flags are named after the configuration fields (``--points-per-side`` <-> ``AmgConfig.points_per_side``);
unset flags are dropped so the dataclass defaults stay the only defaults. Only the command line reads environment
variables (``ALPS_TRITON_URL``, here; Prefect reads its own).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from pathlib import Path
from typing import Any

from alps_client.config import (
    AmgConfig,
    BackendConfig,
    InputConfig,
    PipelineConfig,
    overlay_config,
)
from flows.review_cli import a_path, add_vector_argument

AMG_FLAGS: list[tuple[str, type]] = [
    ("points_per_side", int), ("points_per_batch", int), ("pred_iou_thresh", float),
    ("stability_score_thresh", float), ("stability_score_offset", float), ("mask_threshold", float),
    ("box_nms_thresh", float), ("crop_n_layers", int), ("crop_nms_thresh", float), ("crop_overlap_ratio", float),
    ("crop_n_points_downscale_factor", int), ("min_mask_region_area", int),
]


AMG_HELP = {
    "points_per_side": "prompt grid: this many points along each side of the image, and of each crop with "
                       "--crop-n-layers (divided by --crop-n-points-downscale-factor per layer)",
    "points_per_batch": "prompts sent to the decoder at once; never changes the masks",
    "pred_iou_thresh": "drop masks whose predicted IoU is at or below this (as Meta)",
    "stability_score_thresh": "drop masks whose stability under a shift of the mask threshold is below this",
    "stability_score_offset": "the shift of the mask threshold for the stability score",
    "mask_threshold": "logit threshold that makes a mask binary",
    "box_nms_thresh": "box IoU above which the lower-scored of two masks is dropped",
    "crop_n_layers": "also run on crops: layers of 2^i x 2^i crops",
    "crop_nms_thresh": "box IoU for the non-maximum suppression between crops",
    "crop_overlap_ratio": "overlap of neighbouring crops, a share of the image's short side (halved at each "
                          "layer after the first, as Meta's)",
    "crop_n_points_downscale_factor": "points per side in layer i are points_per_side / factor^i",
    "min_mask_region_area": "remove holes and islands smaller than this many pixels (needs OpenCV); SAM 2.1: of at "
                            "most this many pixels of the 256x256 low-resolution mask, as Meta's SAM 2.1 does",
}
AMG_DEFAULT_TEXT = {"pred_iou_thresh": "0.88 for SAM, 0.8 for SAM 2.1",
                    "points_per_batch": "chosen by the backend", "crop_overlap_ratio": "512/1500"}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _n_clusters(value: str) -> int | str:
    try:
        return value if value == "auto" else int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number or 'auto', got {value!r}") from None


def _seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = float("nan")
    if not 0 < seconds < float("inf"):  # NaN too
        raise argparse.ArgumentTypeError(f"expected a number of seconds > 0, got {value!r}")
    return seconds


def _bands(value: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in value.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 1-based band numbers such as 4,3,2, got {value!r}") from None


class _GivenOnce(argparse.Action):
    """Stores the value; a second one is refused (``--config a.yaml --config b.yaml`` read b alone, unsaid)."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        if getattr(namespace, self.dest, None) is not None:
            parser.error(f"{option_string} given twice ({getattr(namespace, self.dest)} and {values}): settings "
                         "come from one file; merge them into one, or give the others as flags")
        setattr(namespace, self.dest, values)


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    """Flags of ``alps run`` (and ``python flows/alps_flow.py``)."""
    p.add_argument("dataset", type=a_path, help="folder (or file) of images to label")
    p.add_argument("--out", required=True, type=a_path, help="output dataset folder")
    p.add_argument("--config", type=a_path, metavar="FILE", action=_GivenOnce,
                   help="settings from a JSON or YAML file of the Python API's PipelineConfig fields by part "
                        "({\"amg\": {\"points_per_side\": 16}, \"cluster\": {\"batch_size\": 8192}}; those without "
                        "a flag too; paths relative to the file), or from a dataset alps wrote (its folder or "
                        "manifest.json: the settings it was labelled with; its classes need --centroids); the flags "
                        "given override it")
    b = p.add_argument_group("backend")
    b.add_argument("--backend", dest="kind", choices=["embedded", "triton"], help="default: embedded (onnxruntime)")
    b.add_argument("--model-repository", type=a_path, help="exported model repository (default: model_repository)")
    b.add_argument("--triton-url", dest="triton_urls", action="append", metavar="HOST:PORT",
                   help="Triton host:port (repeatable; default $ALPS_TRITON_URL, else 127.0.0.1:8001 for gRPC, "
                        "127.0.0.1:8000 for HTTP)")
    b.add_argument("--protocol", choices=["grpc", "http"], help="Triton protocol (grpc; Triton serves HTTP on 8000)")
    b.add_argument("--shared-memory", action=argparse.BooleanOptionalAction, default=None,
                   help="Triton system shared memory (same host)")
    b.add_argument("--num-threads", type=int, help="onnxruntime threads (embedded)")
    b.add_argument("--timeout-s", type=float, help="per-request timeout of a remote backend, seconds (120)")
    b.add_argument("--retries", type=int, help="tries again per image after a transient failure (5)")
    b.add_argument("--retry-delay-s", type=float, help="wait before the first retry, doubling after (2)")
    b.add_argument("--retry-max-delay-s", type=float, help="longest wait between tries (30)")
    b.add_argument("--stop-after-failures", type=int,
                   help="start no more images once this many in a row failed after their retries: the backend, "
                        "workers or disk is down (10; 0: never)")
    a = p.add_argument_group("automatic mask generation (Meta's names and defaults)")
    amg_defaults = {f.name: f.default for f in dataclasses.fields(AmgConfig)}
    for name, typ in AMG_FLAGS:
        default = AMG_DEFAULT_TEXT.get(name, amg_defaults[name])
        a.add_argument(_flag(name), dest=name, type=typ, help=f"{AMG_HELP[name]} ({default})")
    # SAM 2.1's generator only (a SAM repository refuses them with one line).
    a.add_argument("--use-m2m", dest="use_m2m", action=argparse.BooleanOptionalAction, default=None,
                   help="SAM 2.1: refine each mask by re-prompting with it (Meta's use_m2m)")
    a.add_argument("--multimask-output", dest="multimask_output", action=argparse.BooleanOptionalAction, default=None,
                   help="SAM 2.1: three masks per prompt (default) or one")
    c = p.add_argument_group("ALPS")
    c.add_argument("--sigma", type=float, help="gate: drop masks covering more than sigma of the image (0.3)")
    c.add_argument("--l2-normalize", dest="l2_normalize", action=argparse.BooleanOptionalAction, default=None,
                   help="scale each mask's 256-d feature to unit length before k-means, so that clusters follow "
                        "the direction of SAM's features, not their magnitude (on; the paper's masked mean is "
                        "--no-l2-normalize)")
    c.add_argument("--n-clusters", type=_n_clusters, help="number of pseudo classes, or 'auto' (16)")
    c.add_argument("--max-n-clusters", type=int, help="most classes 'auto' may find (64)")
    c.add_argument("--cluster-backend", choices=["auto", "sklearn", "cuml", "dask"],
                   help="k-means on: auto (cuML when a GPU and cuML are present, else scikit-learn), or the one named "
                        "(cuml needs RAPIDS cuML, dask needs dask-ml; auto)")
    c.add_argument("--centroids", type=a_path, help="centroids.npy of an earlier run: label with its classes")
    c.add_argument("--val-fraction", type=float,
                   help="share of the images put in val, as near as whole scenes allow (a scene's tiles and a "
                        "volume's slices stay together), in [0, 1) (0.3)")
    c.add_argument("--seed", type=int, help="seed of the train/val split and of k-means (0)")
    c.add_argument("--split-group", metavar="REGEX",
                   help="split together the inputs whose paths (relative to DATASET) share this pattern's first "
                        "match (its capture group, if it has one), e.g. 'sub-[^/]+' keeps each subject's sessions "
                        "in one split (default: a scene's tiles and a volume's slices stay together)")
    c.add_argument("--vis", dest="write_vis", action="store_true", default=None,
                   help="write the palette previews OUT/vis/ (the default; over a --config that has none)")
    c.add_argument("--no-vis", dest="write_vis", action="store_false", default=None,
                   help="do not write the palette previews OUT/vis/")
    add_vector_argument(c, "default: none")
    c.add_argument("--report", dest="write_report", action="store_true", default=None,
                   help="write the cluster review page (the default; over a --config that has none)")
    c.add_argument("--no-report", dest="write_report", action="store_false", default=None,
                   help="do not write the cluster review page OUT/report/index.html")
    i = p.add_argument_group("inputs")
    i.add_argument("--bands", type=_bands, help="three 1-based bands of multispectral rasters, e.g. 4,3,2")
    i.add_argument("--tile", type=int, help="cut large images into tiles of this size (iSAID: 896)")
    i.add_argument("--overlap", type=int, help="tile overlap in pixels (default: 3/7 of --tile, iSAID's 384 for 896)")
    i.add_argument("--stitch", action=argparse.BooleanOptionalAction, default=None,
                   help="also write one label map per tiled scene")
    i.add_argument("--slice-axis", type=int, choices=[0, 1, 2], help="axis of NIfTI volumes cut into slices (2)")
    i.add_argument("--intensity-window", type=float, nargs=2, metavar=("LOW", "HIGH"),
                   help="stretch NIfTI volumes and 16-bit or float rasters between these values, in the data's own "
                        "units, for every input alike (CT: -1000 1000 Hounsfield units); values outside clip "
                        "(default: each volume's 0.5-99.5 %% percentiles, each image's 2-98 %%, which move with "
                        "metal or padding)")
    i.add_argument("--write-nifti-labels", action=argparse.BooleanOptionalAction, default=None,
                   help="stack label slices of NIfTI inputs into label volumes")
    r = p.add_argument_group("run")
    r.add_argument("--concurrency", type=int, default=2, help="images in flight (default 2)")
    r.add_argument("--dask-address", help="run the per-image stage on this Dask scheduler (tcp://host:8786); "
                                          "also used by --cluster-backend dask")
    r.add_argument("--dask-workers", type=int, help="run the per-image stage on N local Dask worker processes")
    r.add_argument("--overwrite", action="store_true", help="relabel images labelled with another model/config")
    r.add_argument("--dry-run", action="store_true",
                   help="say what the run would do (images to label, skipped, labelled again, rejected, gone) and "
                        "exit: nothing written, no server started")
    r.add_argument("--allow-partial", action="store_true",
                   help="write the dataset even if some good images could not be labelled (listed as missing)")
    r.add_argument("--prefect-startup-timeout", type=_seconds, default=180.0, metavar="SECONDS",
                   help="how long to wait for the run's temporary Prefect API server (default 180; used when "
                        "PREFECT_API_URL is unset)")
    r.add_argument("--no-progress", dest="progress_bar", action="store_false",
                   help="no progress on the console (a bar on a terminal; elsewhere, a log file or CI, a line every "
                        "30 s)")


def config_part(cls: type, values: dict[str, Any]) -> Any:
    """A ``cls`` (one part of :class:`PipelineConfig`) of the ``values`` that name its fields and are set."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in values.items() if k in names and v is not None})


# Fields of a --config file that name files: relative ones are read from the file's folder.
_PATH_FIELDS = (("backend", "model_repository"), ("cluster", "centroids"))


def settings_in_file(path: str) -> dict[str, Any]:
    """The settings of a ``--config`` file: a partial :class:`PipelineConfig` in plain-dict form, checked.

    The file is JSON (``.json``) or YAML holding any of the config's parts and fields, or a dataset's
    ``manifest.json`` (or the dataset's folder), whose ``config`` is the one its run used. Relative paths in it
    (``backend.model_repository``, ``cluster.centroids``) are taken from the file's folder, not the current one.

    Raises:
        AlpsError: If the file cannot be read or parsed, or names a part or field this alps does not have, or a
            value a field does not accept (each named).
    """
    import json

    import yaml

    from alps_client.errors import AlpsError, shortened
    from alps_client.labels.relabel import unique_json_keys, unique_key_loader
    from flows.run_config import validated_config

    folder = Path(path).is_dir()
    file = Path(path) / "manifest.json" if folder else Path(path)
    try:
        text = file.read_bytes().decode("utf-8-sig")
        data = (json.loads(text, object_pairs_hook=unique_json_keys) if file.suffix.lower() == ".json" else
                yaml.load(text, Loader=unique_key_loader()))
    except FileNotFoundError:
        what = "a folder without a manifest.json (not a dataset alps wrote)" if folder else "no such file"
        raise AlpsError(f"--config {path}: {what}; give a JSON or YAML file of settings, or a dataset's folder or "
                        "manifest.json") from None
    except yaml.YAMLError as err:
        raise AlpsError(f"--config {file}: not valid YAML: {_yaml_problem_said(err, text)}; correct the file and "
                        "run again") from None
    except (OSError, UnicodeDecodeError, ValueError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise AlpsError(f"--config {file}: cannot be read as JSON or YAML settings ({reason})") from None
    dataset = isinstance(data, dict) and str(data.get("format", "")).startswith("alps-dataset/")
    if folder and not dataset:
        raise AlpsError(f"--config {path}: not a dataset alps wrote (its manifest.json is no dataset's); give a "
                        "dataset's folder, or a JSON or YAML file of settings")
    if dataset:
        data = data.get("config")
        if not isinstance(data, dict):
            raise AlpsError(f"--config {file}: this dataset's manifest records no config (an alps older than its "
                            "format?); give a JSON or YAML file of settings")
    if not isinstance(data, dict):
        got = "nothing (an empty file)" if data is None else "a list" if isinstance(data, list) else repr(data)
        raise AlpsError(f"--config {file}: must be a mapping of settings by part, such as {{\"amg\": "
                        f"{{\"points_per_side\": 16}}}}, got {shortened(got, 80)}")
    for part, name in _PATH_FIELDS:
        value = data.get(part, {}).get(name) if isinstance(data.get(part), dict) else None
        if isinstance(value, str) and value and not os.path.isabs(value):
            data = {**data, part: {**data[part], name: os.path.join(os.path.abspath(file.parent), value)}}
    backend = data.get("backend")
    if dataset and isinstance(backend, dict) and backend.get("kind", "embedded") != "triton":
        # An embedded run records the Triton defaults it never used: a --backend triton over them would keep
        # gRPC's port for --protocol http. (A file of settings means those it holds.)
        data = {**data, "backend": {k: v for k, v in backend.items() if k not in TRITON_FLAGS}}
    config = validated_config(data, f"--config {file}", "correct the file and run again")
    as_validated = config.to_dict() if config is not None else {}  # ("3e-1", which YAML reads as text, is 0.3)
    return {part: {name: as_validated[part][name] for name in fields} if isinstance(fields, dict) else fields
            for part, fields in data.items()}


def _yaml_problem_said(err: Exception, text: str) -> str:
    """PyYAML's error in ``text`` in one line (:func:`~alps_client.labels.relabel.yaml_problem`).

    Said otherwise where PyYAML's own words mislead: a second document, a tab.
    """
    from alps_client.labels.relabel import yaml_problem

    problem = yaml_problem(err)
    if "found another document" in problem:  # PyYAML: "but found another document at line 3 column 1"
        return f"a second YAML document ('---') {problem.split('another document ')[-1]}: settings are one mapping"
    mark = getattr(err, "problem_mark", None)
    if "\\t" in problem and mark is not None:
        before = text.splitlines()[mark.line][:mark.column] if mark.line < len(text.splitlines()) else ""
        problem += " (indent with spaces, not tabs)" if not before.strip() else " (YAML takes no tab there: use a space)"
    return problem


def _flag_settings(v: dict[str, Any]) -> dict[str, Any]:
    """The fields the given flags set (``vars(args)``, None where not given), as a partial config's plain dict."""
    seed = v.get("seed")
    values = {"backend": v, "inputs": v, "amg": v, "gate": v, "features": v,
              "cluster": {**v, "n_clusters": v.get("n_clusters"), "backend": v.get("cluster_backend"), "seed": seed},
              "writer": {**v, "seed": seed}}
    parts = {f.name: f.default_factory for f in dataclasses.fields(PipelineConfig)}  # type: ignore[misc]
    return {name: {k: x for k, x in values[name].items() if k in {f.name for f in dataclasses.fields(cls)}
                   and x is not None} for name, cls in parts.items()}


def build_config(args: argparse.Namespace) -> PipelineConfig:
    """One PipelineConfig from parsed flags laid over ``--config``'s settings; what neither sets keeps its default.

    Raises:
        ValueError: If a flag is out of range, or ``--stitch`` / ``--overlap`` come without ``--tile`` (they would
            do nothing).
        AlpsError: If ``--config``'s file cannot be used (:func:`settings_in_file`).
    """
    v = dict(vars(args))
    from_file = settings_in_file(v["config"]) if v.get("config") else {}
    inputs = from_file.get("inputs") or {}
    if v.get("tile") is None and inputs.get("tile") is None:
        for flag in ("stitch", "overlap"):
            if v.get(flag) is not None and v.get(flag) is not False:  # --overlap 0 is given, --no-stitch is not
                raise ValueError(f"--{flag} applies to the tiles of --tile; add --tile (iSAID: --tile 896 --overlap "
                                 f"384), or leave --{flag} out")
        if inputs.get("stitch") and v.get("stitch") is None:
            raise ValueError(f"--config {v['config']} sets inputs.stitch, which applies to the tiles of --tile: add "
                             "--tile (or inputs.tile in the file), or give --no-stitch")
    if v.get("tile") is not None and v.get("overlap") is None and "overlap" in inputs and \
            InputConfig(tile=inputs.get("tile")).overlap == inputs["overlap"]:
        # A dataset's manifest records the overlap its tile was given by default: another --tile takes its own.
        from_file = {**from_file, "inputs": {k: x for k, x in inputs.items() if k != "overlap"}}
    file_backend = from_file.get("backend") or {}
    kind = v.get("kind") or file_backend.get("kind")
    v["triton_urls"], urls_from = triton_urls({**v, "kind": kind})
    defaults = dataclasses.asdict(BackendConfig())
    in_file = [f"backend.{name}" for name in TRITON_FLAGS  # (a whole config's dump holds their defaults: unused)
               if file_backend.get(name) not in (None, False) and _as_json(file_backend[name]) != _as_json(defaults[name])]
    if in_file and kind != "triton" and file_backend.get("kind") == "triton":
        # the file's Triton backend (a served run's dataset), replaced by --backend embedded: its servers go unused
        from_file = {**from_file, "backend": {k: x for k, x in file_backend.items() if k not in TRITON_FLAGS}}
    elif in_file and kind != "triton":
        one = len(in_file) == 1
        raise ValueError(f"--config {v['config']} sets {' and '.join(in_file)}, which appl{'ies' if one else 'y'} to "
                         "the Triton backend, not chosen (the run would label with the embedded onnxruntime backend): "
                         "add --backend triton (or `kind: triton` under backend in the file), or leave "
                         f"{'it' if one else 'them'} out")
    try:
        return PipelineConfig.from_dict(overlay_config(from_file, _flag_settings(v)))
    except ValueError as err:
        given = f" (with the settings of --config {v['config']})" if from_file else ""
        raise ValueError(in_flag_words(str(err)).replace("--triton-url", urls_from) + given) from None


def _as_json(value: Any) -> Any:
    """``value`` as JSON has it (tuples are lists): a file's value compared with a default."""
    import json

    return json.loads(json.dumps(value))


# The Triton flags of `alps run` and `alps serve`: the parsed value's name -> the flag.
TRITON_FLAGS = {"triton_urls": "--triton-url", "protocol": "--protocol", "shared_memory": "--shared-memory"}


def triton_urls(values: dict[str, Any]) -> tuple[tuple[str, ...] | None, str]:
    """The Triton servers of a run, and what a message about them names (the flag or the variable).

    ``--triton-url``'s, else ``ALPS_TRITON_URL``'s for ``--backend triton`` (comma-separated, spaces and empty
    entries dropped). ``values``: the parsed flags (``vars(args)``: ``kind`` and :data:`TRITON_FLAGS`' names, None
    where not given).

    Raises:
        ValueError: If a Triton flag is given without ``--backend triton``: the run would go on the embedded
            backend, unsaid.
    """
    kind = values.get("kind")
    given = [flag for name, flag in TRITON_FLAGS.items()
             if values.get(name) is not None and values.get(name) is not False]  # --no-shared-memory is not
    if given and kind != "triton":
        one = len(given) == 1
        raise ValueError(f"{' and '.join(given)} appl{'ies' if one else 'y'} to --backend triton, which is not given "
                         "(the run would label with the embedded onnxruntime backend): add --backend triton, or "
                         f"leave {'it' if one else 'them'} out")
    if values.get("triton_urls") is not None:
        return tuple(values["triton_urls"]), "--triton-url"
    listed = [url.strip() for url in os.environ.get("ALPS_TRITON_URL", "").split(",") if url.strip()]
    if kind == "triton" and listed:
        return tuple(listed), "ALPS_TRITON_URL (the environment)"
    return None, "--triton-url"


def run_flags() -> dict[str, str]:
    """Each ``dest`` of `alps run`'s flags -> the flag that sets it (``triton_urls`` -> ``--triton-url``)."""
    parser = argparse.ArgumentParser(allow_abbrev=False)
    add_run_arguments(parser)
    return {a.dest: next((o for o in a.option_strings if o.startswith("--") and not o.startswith("--no-")),
                         a.option_strings[-1]) for a in parser._actions if a.option_strings and a.dest != "help"}


def in_flag_words(message: str) -> str:
    """A configuration check's message in the words of `alps run`: ``seed must lie in ...`` names ``--seed``.

    The checks name the configuration's fields, as the Python API and the Prefect UI's parameters do; a field that
    a flag of `alps run` sets (its ``dest``) is named by that flag: the message's subject, any name with an
    underscore (``retry_delay_s``), and one that closes a range (``[0, tile)``). Python's words for a flag's
    values go: ``a tuple of 2 (a finite number, a finite number) or None`` is ``2 finite numbers``.
    """
    import re

    flags = run_flags()
    field, space, rest = message.partition(" ")
    rest = re.sub(r"\b[a-z][a-z0-9]*(?:_[a-z0-9]+)+\b|\b[a-z]+(?=[)\]])",
                  lambda m: flags.get(m.group(), m.group()), rest)
    rest = re.sub(r"a tuple of (\d+) \(a finite number(?:, a finite number)*\)", r"\1 finite numbers", rest)
    rest = rest.replace(" or None, got ", ", got ")
    return f"{flags.get(field, field)}{space}{rest}"


def check_utf8_arguments(args: argparse.Namespace) -> None:
    """Refuse an argument that is not UTF-8 text (a folder named in Latin-1), naming it and the way out.

    Prefect records a run's arguments as UTF-8 (JSON over HTTP): such a path made the run fail with a traceback
    before it started. Files with such names inside the dataset are labelled (docs/inputs.md).

    Raises:
        ValueError: For the first such argument.
    """
    from alps_client.io.items import printable

    for name, value in vars(args).items():
        for text in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(text, str) and printable(text) != text:
                what = "the dataset path" if name == "dataset" else run_flags()[name]
                raise ValueError(f"{what} {printable(text)} is not UTF-8 text, which Prefect needs to record the "
                                 "run; rename it, or give a link to it whose name is (ln -s OLD NEW)")
