"""The ground-truth classes file of ``alps evaluate --gt-classes``: every class of the ground truth, named.

The file (YAML, or the same structure in JSON) takes one of three forms::

    classes: [background, building, road]                      # class ids 0, 1, 2, in this order
    classes: [{name: building, id: 2}, {name: road, id: 7}]    # the ids the label maps hold
    classes: [{name: urban, colour: '#00ffff'}, {name: water, colour: [0, 0, 255]}]   # colour-coded maps

A text file (``.txt``) of one name per line gives ids 0, 1, ... in order. A colour lookup table of medical
imaging names the classes of label volumes as it is: FreeSurfer's
``FreeSurferColorLUT.txt`` (``17  Left-Hippocampus  220 216 20 0``), 3D Slicer's colour tables (``.ctbl``, ``.txt``)
and ITK-SNAP's label descriptions (``1 255 0 0 1 1 1 "Liver"``): one class per line, its id first and its name
the quoted text or else the second field (``#`` starts a comment).

Declaring the classes makes an evaluation both readable and strict: each class is named in the table and in
``evaluation.json``; a ground-truth id or colour the file does not declare is refused, naming the file that holds
it (a typo, another dataset's ground truth, compression noise in colour masks), instead of being scored as one
more class; a declared class with no ground-truth pixel is listed; colour-coded classes keep the file's ids
whichever images are evaluated. A value that names no class (LoveDA's 0) may be declared and ignored with
``--ignore-index``; declaring 255 makes it a class (a binary mask's foreground).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alps_client.labels.relabel import ClassesFileError, name_problem, read_classes_file, read_text

EXAMPLE = ("{classes: [background, building, road]}, {classes: [{name: building, id: 2}]} or "
           "{classes: [{name: urban, colour: '#00ffff'}]}")


@dataclass(frozen=True)
class GroundTruthClasses:
    """The classes a ground truth holds, as a ``--gt-classes`` file declares them.

    Attributes:
        names: class id -> name, in the file's order.
        colours: class id -> colour as ``0xRRGGBB`` for colour-coded ground truth; empty for maps of class ids.
        source: the file, for messages.
    """

    names: dict[int, str]
    colours: dict[int, int] = field(default_factory=dict)
    source: str = "--gt-classes"

    def describe(self, class_id: int) -> str:
        """``'building' (2)`` or ``'urban' (#00ffff)``: a class as messages name it."""
        return f"'{self.names[class_id]}' ({hex_colour(self.colours[class_id]) if self.colours else class_id})"


def hex_colour(colour: int) -> str:
    """``0xRRGGBB`` as ``#rrggbb``."""
    return f"#{colour:06x}"


def _colour(value: Any) -> int | None:
    """A colour given as ``'#rrggbb'`` or ``[r, g, b]`` (0..255 each) as ``0xRRGGBB``; None if it is neither."""
    if isinstance(value, str):
        text = value.strip()
        if len(text) == 7 and text[0] == "#":
            try:
                return int(text[1:], 16)
            except ValueError:
                return None
        return None
    if (isinstance(value, list) and len(value) == 3
            and all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255 for v in value)):
        return (value[0] << 16) | (value[1] << 8) | value[2]
    return None


LOOKUP_TABLE_EXTENSIONS = (".txt", ".ctbl", ".lut")


def parse_ground_truth_classes(path: str | Path) -> GroundTruthClasses:
    """Read and check a ground-truth classes file (see the module docs).

    Raises:
        ClassesFileError: With one line per problem (all of them, so the file is fixed in one go).
    """
    source = str(path)
    if Path(path).suffix.lower() in LOOKUP_TABLE_EXTENSIONS:
        return _parse_lookup_table(Path(path))
    spec = read_classes_file(path, EXAMPLE)
    problems: list[str] = []
    unknown = sorted(set(spec) - {"classes"})
    if unknown:
        problems.append(f"unknown key(s) {unknown}: only 'classes' is read")
    entries = spec.get("classes")
    if not isinstance(entries, list) or not entries:
        raise ClassesFileError(source, [*problems, f"'classes' must be a non-empty list, like {EXAMPLE}"])
    return _from_entries(entries, source, problems)


def _from_entries(entries: list[Any], source: str, problems: list[str]) -> GroundTruthClasses:
    """The classes of a file's entries (plain names, ``{name, id}`` or ``{name, colour}``), every problem listed.

    Raises:
        ClassesFileError: With ``problems`` (found before) and one line per problem of the entries.
    """
    forms = {"names" if not isinstance(e, dict) else "colours" if {"colour", "color"} & set(e)
             else "ids" for e in entries}
    if len(forms) > 1:
        raise ClassesFileError(source, [*problems, ("mixes plain names, {name, id} and {name, colour} entries: "
                                                    f"give every class the same way, like {EXAMPLE}")])
    form = forms.pop()
    names: dict[int, str] = {}
    colours: dict[int, int] = {}
    owner: dict[Any, str] = {}  # an id or a colour -> the class that has it
    for i, entry in enumerate(entries):
        what = f"class #{i + 1}"
        if form == "names":
            name, key = entry, i
        elif not isinstance(entry, dict) or set(entry) - {"name", "id", "colour", "color"}:
            problems.append(f"{what} must be {{name: ..., {'colour: ...' if form == 'colours' else 'id: ...'}}}, "
                            f"got {entry!r}")
            continue
        else:
            name = entry.get("name")
            raw = entry.get("id") if form == "ids" else entry.get("colour", entry.get("color"))
            key = _colour(raw) if form == "colours" else raw
            if form == "ids" and (isinstance(key, bool) or not isinstance(key, int)):
                problems.append(f"{what} needs an integer 'id' (the value its label maps hold), got {raw!r}")
                continue
            if key is None:
                problems.append(f"{what} needs a 'colour' as '#rrggbb' (quoted: YAML reads # as a comment) or "
                                f"[r, g, b] of 0..255, got {raw!r}")
                continue
        problem = name_problem(name, what)
        if problem:
            problems.append(problem)
            continue
        name = name.strip()
        if name in names.values():
            problems.append(f"class '{name}' is declared twice; give each class one entry")
        if key in owner:
            shown = hex_colour(key) if form == "colours" else f"id {key}"
            problems.append(f"{shown} is given to both '{owner[key]}' and '{name}'")
            continue
        owner[key] = name
        class_id = len(names) if form == "colours" else key
        names[class_id] = name
        if form == "colours":
            colours[class_id] = key
    if form == "colours" and len(entries) > 255:
        problems.append(f"{len(entries)} colours: at most 255 classes are scored")
    if problems:
        raise ClassesFileError(source, problems)
    return GroundTruthClasses(names, colours, source)


def _parse_lookup_table(path: Path) -> GroundTruthClasses:
    """Classes of a colour lookup table (FreeSurfer, 3D Slicer, ITK-SNAP): ``id name ...`` or ``id ... "name"``."""
    import shlex

    text = read_text(path, "FreeSurfer's FreeSurferColorLUT.txt: '17  Left-Hippocampus  220 216 20 0'")
    lines = [(number, ln.strip()) for number, ln in enumerate(text.splitlines(), 1)
             if ln.strip() and not ln.lstrip().startswith("#")]
    if lines and not any(_is_integer(ln.split()[0]) for _, ln in lines):  # a plain list of names, one per line
        return _from_entries([ln for _, ln in lines], str(path), [])
    problems: list[str] = []
    entries: list[Any] = []
    for number, line in lines:
        try:
            fields = shlex.split(line, comments=True)
        except ValueError as err:  # an unclosed quote
            problems.append(f"line {number}: {err}")
            continue
        quoted = [f for f in fields[1:] if not _is_number(f)] if '"' in line else []
        name = quoted[-1] if quoted else (fields[1] if len(fields) > 1 else "")
        if not fields or not _is_integer(fields[0]) or not name:
            problems.append(f"line {number}: expected a class id then its name (FreeSurfer, 3D Slicer, ITK-SNAP "
                            f"lookup tables), got {line.strip()[:60]!r}")
            continue
        problem = name_problem(name, f"line {number}: class")
        if problem:  # a terminal escape or a line break in a name printed in the table
            problems.append(problem)
            continue
        entries.append({"name": name, "id": int(fields[0])})
    if problems:
        raise ClassesFileError(str(path), problems)
    if not entries:
        raise ClassesFileError(str(path), ["holds no class: one 'id name' line per class"])
    names: dict[int, str] = {}
    for entry in entries:
        if entry["id"] in names:
            problems.append(f"id {entry['id']} is given to both '{names[entry['id']]}' and '{entry['name']}'")
        names.setdefault(entry["id"], entry["name"])
    if problems:
        raise ClassesFileError(str(path), problems)
    return GroundTruthClasses(names, {}, str(path))


def _is_integer(text: str) -> bool:
    return text.lstrip("+-").isdigit()


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
