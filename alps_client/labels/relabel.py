"""The classes file of ``alps relabel``: name clusters, merge several into one class, drop clusters.

The file (YAML, or the same structure in JSON)::

    classes:              # new class ids 0, 1, ... in this order
      - {name: building, clusters: [0, 3]}
      - {name: water, clusters: [1]}
    drop: [4]             # these clusters become 255 (no label)

The template ``alps run`` writes (``OUT/report/classes.yaml``) also says which clusters it names
(``centroids: <key>``, :func:`clusters_key`): a file written for another dataset's clusters (another k-means run:
its cluster 3 is not this one's) is refused instead of putting its names on the wrong clusters. A file without
that line is taken as it is.

Clusters the file does not mention keep a class of their own, named ``cluster_<k>`` and numbered after the
listed classes in cluster order. :func:`parse_classes` checks everything before anything is written and reports
every problem it finds, one line each (unknown cluster ids, a cluster in two classes, a class without clusters, a
cluster both named and dropped, ...), so a user fixes the file in one go.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from alps_client.errors import AlpsError
from alps_client.labels.classes import ClassMap
from alps_client.labels.painting import IGNORE

_UNQUOTED_COLOUR = re.compile(r"[:\[,]\s*#[0-9a-fA-F]{6}")
EXAMPLE = "{classes: [{name: building, clusters: [0, 3]}, {name: water, clusters: [1]}], drop: [4]}"


class ClassesFileError(AlpsError):
    """A classes file that cannot be used; ``problems`` holds one line per problem."""

    def __init__(self, source: str, problems: list[str]) -> None:
        super().__init__("\n".join(f"{source}: {p}" for p in problems))
        self.problems = problems


def read_bytes(path: Path, example: str) -> bytes:
    """The bytes of a classes file, read once: a pipe (bash's ``--classes <(...)``) is read as a file is.

    Raises:
        ClassesFileError: If the path is a folder or does not exist (``example`` says what to write).
    """
    if path.is_dir():
        problem = ("a folder, not a classes file; give the file (a copy of OUT/report/classes.yaml, or one like "
                   f"{example})")
        raise ClassesFileError(str(path), [problem])
    if not path.exists():
        raise ClassesFileError(str(path), [f"no such file; write one like {example}"])
    return path.read_bytes()


def read_text(path: Path, example: str, raw: bytes | None = None) -> str:
    """The text of a classes file (UTF-8, a byte-order mark of Windows editors dropped); ``raw``: its bytes, if read.

    Raises:
        ClassesFileError: If the file is missing (``example`` says what to write) or not UTF-8.
    """
    try:
        return (read_bytes(path, example) if raw is None else raw).decode("utf-8-sig")
    except UnicodeDecodeError as err:
        byte = f"byte {err.object[err.start]:#04x} at offset {err.start}"
        raise ClassesFileError(str(path), [f"not UTF-8 text ({byte}); save it as UTF-8"]) from err


def yaml_problem(err: Exception) -> str:
    """PyYAML's error in one line, with where it lies: ``... at line 2 column 1``."""
    mark = getattr(err, "problem_mark", None)
    where = f" at line {mark.line + 1} column {mark.column + 1}" if mark else ""
    return f"{getattr(err, 'problem', None) or str(err).splitlines()[0]}{where}"


def unique_json_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``json.loads``' ``object_pairs_hook`` refusing a key given twice in one object (its loader keeps the last).

    Raises:
        ValueError: Naming the key.
    """
    keys = [key for key, _ in pairs]
    twice = next((key for key in keys if keys.count(key) > 1), None)
    if twice is not None:
        raise ValueError(f"key {twice!r} given twice in one object (only the last would count)")
    return dict(pairs)


def read_classes_file(path: str | Path, example: str = EXAMPLE, raw: bytes | None = None) -> dict[str, Any]:
    """The parsed content of a YAML or JSON classes file.

    ``example``: what errors show to write instead; ``raw``: the file's bytes, if read already.

    Raises:
        ClassesFileError: If the file is missing or is not valid YAML / JSON (one line with the position).
    """
    import yaml

    path = Path(path)
    text = read_text(path, example, raw)
    try:
        data = (json.loads(text, object_pairs_hook=unique_json_keys) if path.suffix.lower() == ".json" else
                yaml.load(text, Loader=unique_key_loader()))  # a SafeLoader
    except json.JSONDecodeError as err:
        raise ClassesFileError(str(path), [f"not valid JSON: {err.msg} at line {err.lineno} column {err.colno}"]) from err
    except ValueError as err:  # a key given twice
        raise ClassesFileError(str(path), [f"not valid JSON: {err}"]) from err
    except yaml.YAMLError as err:
        unquoted = " (quote colours, '#rrggbb': YAML reads # as a comment)" if _UNQUOTED_COLOUR.search(text) else ""
        raise ClassesFileError(str(path), [f"not valid YAML: {yaml_problem(err)}{unquoted}"]) from err
    if not isinstance(data, dict):
        raise ClassesFileError(str(path), [f"must be a mapping with 'classes', like {example}"])
    return data


# A classes file of 10,000 classes with their clusters has ~100,000 entries. Aliases share what they repeat, so a
# file of 469 bytes (&a0 [0, ...] ten times over, nine levels) loads small, but expands to 10^9 entries wherever
# it is written out: in the line that names a wrong entry, 9.5 GB and rising.
MAX_EXPANDED_ENTRIES = 1_000_000


def expanded_entries(root: Any) -> int:
    """Entries (scalars, lists, mappings) of the YAML node ``root`` with every alias expanded.

    Counted without expanding them: each node's count is kept.
    """
    import yaml

    counts: dict[int, int] = {}

    def count(node: Any) -> int:
        if id(node) not in counts:
            counts[id(node)] = 1  # a node that holds itself (&a [*a]) counts once
            if isinstance(node, yaml.SequenceNode):
                counts[id(node)] = 1 + sum(count(item) for item in node.value)
            elif isinstance(node, yaml.MappingNode):
                counts[id(node)] = 1 + sum(count(key) + count(value) for key, value in node.value)
        return counts[id(node)]

    return count(root)


def unique_key_loader() -> type:
    """PyYAML's SafeLoader, refusing a key given twice in one mapping.

    SafeLoader kept the last: a class, or a whole ``classes:`` block, was dropped unsaid.
    """
    import yaml

    class UniqueKeyLoader(yaml.SafeLoader):
        def get_single_node(self) -> Any:
            node = super().get_single_node()
            if node is not None and expanded_entries(node) > MAX_EXPANDED_ENTRIES:
                raise yaml.constructor.ConstructorError(
                    None, None, f"its aliases (*name) repeat its anchors (&name) into more than "
                    f"{MAX_EXPANDED_ENTRIES:,} entries, which no classes file needs", node.start_mark)
            return node

        def construct_mapping(self, node: Any, deep: bool = False) -> dict[Any, Any]:
            first: dict[Any, Any] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base`: keys given after it override its
                    continue
                key = self.construct_object(key_node, deep=deep)
                try:
                    earlier = first.setdefault(key, key_node)
                except TypeError:  # an unhashable key: SafeLoader says so
                    continue
                if earlier is not key_node:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"key {key!r} given twice (first at line {earlier.start_mark.line + 1}; only the "
                        "last would count)", key_node.start_mark)
            return super().construct_mapping(node, deep)

    def construct_located_map(loader: UniqueKeyLoader, node: Any) -> Any:
        data = LocatedDict()
        data.line = node.start_mark.line + 1
        yield data
        data.update(loader.construct_mapping(node))
        for key_node, _ in node.value:
            if isinstance(key_node.value, str):
                data.key_lines.setdefault(key_node.value, key_node.start_mark.line + 1)

    def construct_located_seq(loader: UniqueKeyLoader, node: Any) -> Any:
        data = LocatedList()
        data.line = node.start_mark.line + 1
        yield data
        data.extend(loader.construct_sequence(node))
        data.item_lines = [item.start_mark.line + 1 for item in node.value]

    UniqueKeyLoader.add_constructor("tag:yaml.org,2002:map", construct_located_map)
    UniqueKeyLoader.add_constructor("tag:yaml.org,2002:seq", construct_located_seq)
    return UniqueKeyLoader


class LocatedDict(dict):
    """A YAML mapping that knows its line in the file, so that a problem with a class can name where it is.

    ``key_lines``: the line of each of its keys (``drop: 3`` is a problem on the line of ``drop``).
    """

    line: int | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.key_lines: dict[str, int] = {}


class LocatedList(list):
    """A YAML list that knows its line in the file, as :class:`LocatedDict`.

    ``item_lines``: the line of each entry (the bad id of a long ``drop:`` list).
    """

    line: int | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.item_lines: list[int] = []


def _at(entry: Any) -> str:
    """`` (line N)`` for a class entry or the drop list read from YAML; empty for JSON and records."""
    line = getattr(entry, "line", None)
    return f" (line {line})" if line else ""


def name_problem(name: Any, what: str) -> str | None:
    """Why ``name`` cannot name a class (one line, about ``what``: ``class #2``), or None when it can."""
    if not isinstance(name, str) or not name.strip():
        quote = " (quote it: YAML reads yes, no, on, off and numbers as other types)" \
            if isinstance(name, (bool, int, float)) else ""
        return f"{what} needs a non-empty 'name', got {name!r}{quote}"
    if any(unicodedata.category(c) in ("Cc", "Zl", "Zp") for c in name.strip()):  # would split logs and tables
        return f"{what} name {name.strip()!r} holds a control character (a line break, a tab)"
    # Invisible: a zero-width space makes two names that look alike, a right-to-left override reverses the rest of
    # a line in a terminal. The joiners (U+200C, U+200D) are kept: Persian and Indic names and emoji need them.
    hidden = [c for c in name.strip() if unicodedata.category(c) == "Cf" and c not in "\u200c\u200d"]
    if hidden:
        return f"{what} name {name.strip()!r} holds an invisible character (U+{ord(hidden[0]):04X})"
    # No text: a noncharacter (U+FFFF) or a lone surrogate (JSON's "\ud800") passes JSON, and then the YAML template
    # (report/classes.yaml) that holds it cannot be read back, nor the name written as UTF-8
    no_text = [c for c in name if 0xFDD0 <= ord(c) <= 0xFDEF or ord(c) & 0xFFFE == 0xFFFE
               or unicodedata.category(c) == "Cs"]
    if no_text:
        return f"{what} name {name.strip()!r} holds U+{ord(no_text[0]):04X}, which is no character of text"
    return None


def look_of(name: str) -> str:
    """What ``name`` looks like: two names of one look (``a b`` and ``a\u00a0b``, a no-break space) read as one."""
    return " ".join(unicodedata.normalize("NFKC", name).split())


def _cluster_ids(value: Any, what: str, n_clusters: int, problems: list[str], at: bool = False) -> dict[int, str]:
    """The integer cluster ids of a list, and a problem line for each bad entry.

    Each id maps to `` (line N)`` of its entry when ``at`` (empty otherwise, and for JSON).
    """
    if not isinstance(value, list):
        problems.append(f"{what} must be a list of cluster ids, got {value!r}")
        return {}
    lines = getattr(value, "item_lines", []) if at else []
    ids: dict[int, str] = {}
    for j, v in enumerate(value):
        where = f" (line {lines[j]})" if j < len(lines) else ""
        if isinstance(v, bool) or not isinstance(v, int):
            problems.append(f"{what}{where}: {v!r} is not a cluster id (an integer)")
        elif not 0 <= v < n_clusters:
            problems.append(f"{what}{where}: cluster {v} does not exist (this dataset has clusters "
                            f"0..{n_clusters - 1})")
        else:
            ids.setdefault(v, where)
    return ids


def class_map_from_spec(spec: Mapping[str, Any], n_clusters: int, source: str = "classes file") -> ClassMap:
    """Validate a parsed classes file against a dataset with ``n_clusters`` clusters and build its :class:`ClassMap`.

    Raises:
        ClassesFileError: With one line per problem.
    """
    problems: list[str] = []
    unknown = sorted(set(spec) - {"classes", "drop", "centroids"}, key=repr)  # YAML keys may be 1, true and text
    if unknown:
        problems.append(f"unknown key(s) {unknown}: only 'classes', 'drop' and 'centroids' are read")
    classes = spec.get("classes", [])
    classes = [] if classes is None else classes  # `classes:` with nothing after it
    if not isinstance(classes, list):
        problems.append(f"'classes' must be a list of {{name, clusters}} entries, got {classes!r}")
        classes = []
    drop_ids = spec.get("drop", [])
    key_line = getattr(spec, "key_lines", {}).get("drop")
    drop = _cluster_ids([] if drop_ids is None else drop_ids, "drop" if isinstance(drop_ids, list) or not key_line
                        else f"drop (line {key_line})", n_clusters, problems, at=True)
    owner: dict[int, str] = {}
    names: list[str] = []
    where: dict[str, str] = {}  # name -> " (line N)" of its entry
    members: list[list[int]] = []
    for i, entry in enumerate(classes):
        if not isinstance(entry, dict) or set(entry) - {"name", "clusters"}:
            problems.append(f"class #{i + 1}{_at(entry)} must be {{name: ..., clusters: [...]}}, got {entry!r}")
            continue
        name = entry.get("name")
        problem = name_problem(name, f"class #{i + 1}{_at(entry)}")
        if problem:
            problems.append(problem)
            continue
        name = unicodedata.normalize("NFC", name.strip())  # "café" typed two ways is one name, not two alike
        label = f"class '{name}'{_at(entry)}"
        alike = next((other for other in names if other != name and look_of(other) == look_of(name)), None)
        if name in names:
            problems.append(f"{label} is listed twice; list all its clusters in one entry to merge them")
        elif alike is not None:
            problems.append(f"{label} looks like class '{alike}'{where[alike]} ({name!a} and {alike!a}: "
                            "they differ in a space or the form of a character); give both one name to merge them, "
                            "or tell them apart")
        value = entry.get("clusters")
        if value is None or value == []:
            problems.append(f"{label} lists no clusters; give it at least one, e.g. clusters: [0]")
        ids = [] if value is None else _cluster_ids(value, f"{label} clusters", n_clusters, problems)
        for k in ids:
            if k in drop:
                problems.append(f"cluster {k} is both in {label} and in drop{drop[k]}; keep it in one of them")
            elif k in owner and owner[k] != name:
                problems.append(f"cluster {k} is in two classes, '{owner[k]}' and '{name}'{_at(entry)}; keep it in one")
            owner.setdefault(k, name)
        names.append(name)
        where.setdefault(name, _at(entry))
        members.append(ids)
    rest = [k for k in range(n_clusters) if k not in owner and k not in drop]
    for k in rest:
        if f"cluster_{k}" in names:
            problems.append(f"the name 'cluster_{k}'{where[f'cluster_{k}']} is taken by unlisted cluster {k}; choose "
                            "another name")
    if not problems and not names and not rest:
        problems.append("every cluster is dropped: the dataset would have no class left")
    if len(names) + len(rest) > IGNORE:
        problems.append(f"{len(names) + len(rest)} classes: at most {IGNORE} fit in a uint8 label map (255 = no label)")
    if problems:
        raise ClassesFileError(source, problems)
    cluster_to_class = [IGNORE] * n_clusters
    for c, ids in enumerate(members):
        for k in ids:
            cluster_to_class[k] = c
    for j, k in enumerate(rest):
        cluster_to_class[k] = len(names) + j
    return ClassMap(tuple(names) + tuple(f"cluster_{k}" for k in rest), tuple(cluster_to_class))


def clusters_key(centroids: npt.NDArray[np.floating]) -> str:
    """What names one set of clusters: the first 12 hex digits of the sha256 of its ``(N, D)`` float32 centres."""
    return hashlib.sha256(np.ascontiguousarray(centroids, dtype=np.float32).tobytes()).hexdigest()[:12]


def parse_classes(path: str | Path, centroids: npt.NDArray[np.floating]) -> tuple[ClassMap, dict[str, Any]]:
    """Read, validate and map a classes file for a dataset of ``(N, D)`` ``centroids``.

    Returns:
        The class map and what the manifest records of the file.

    Raises:
        ClassesFileError: With one line per problem (a file whose ``centroids`` line names other clusters: one).
    """
    raw = read_bytes(Path(path), EXAMPLE)
    spec = read_classes_file(path, raw=raw)
    written_for, ours = spec.get("centroids"), clusters_key(centroids)
    if written_for is not None and str(written_for) != ours:
        problem = (f"written for other clusters (centroids: {written_for}; this dataset's are {ours}): the cluster "
                   "ids of two k-means runs do not correspond, so its names would land on other clusters; edit this "
                   "dataset's report/classes.yaml instead, or delete the 'centroids:' line to apply the file anyway")
        raise ClassesFileError(str(path), [problem])
    class_map = class_map_from_spec(spec, len(centroids), str(path))
    record = {"classes_file_sha256": hashlib.sha256(raw).hexdigest(),
              "spec": {"classes": spec.get("classes") or [], "drop": spec.get("drop") or []}}
    return class_map, record


_PLAIN = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")
_YAML_WORDS = {"true", "false", "yes", "no", "on", "off", "y", "n", "null"}  # would not read back as strings


def classes_yaml(class_map: ClassMap, header: str = "", centroids: npt.NDArray[np.floating] | None = None) -> str:
    """A classes file that reproduces ``class_map``: the template a reviewer edits.

    With ``centroids``, its ``centroids:`` line names the clusters it was written for (:func:`clusters_key`).
    """
    lines = [f"# {line}" for line in header.splitlines()]
    if centroids is not None:
        lines.append(f"centroids: {json.dumps(clusters_key(centroids))}   # the clusters these ids are; "
                     "another dataset's file is refused")
    lines.append("classes:              # new class ids 0, 1, ... in this order")
    for c, name in enumerate(class_map.names):
        plain = _PLAIN.match(name) and name.lower() not in _YAML_WORDS
        shown = name if plain else json.dumps(name, ensure_ascii=False)  # 水 as 水, not as \u6c34
        lines.append(f"  - {{name: {shown}, clusters: {class_map.clusters_of(c)}}}")
    lines.append(f"drop: {class_map.dropped}             # these clusters become 255 (no label)")
    return "\n".join(lines) + "\n"
