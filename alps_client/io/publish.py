"""Replacing a dataset as a whole: outputs are written to a staging folder, then swapped into place.

A run (or ``alps relabel``) writes every dataset output under ``OUT/.alps/staging/``. Only when all of them are
written does :func:`publish` move the previous outputs aside and the new ones in, so ``OUT`` never mixes two runs
(a rerun with another seed or split leaves no file of the old split behind) and an interrupted write leaves the
previous dataset intact. The swap itself is a handful of renames guarded by a journal
(``OUT/.alps/publish.json``): if it is interrupted, :func:`recover` (called before every write) finishes it.
Files in ``OUT`` that are not dataset outputs (yours) are never touched, and a run refuses an ``OUT`` that is not an
alps output yet but holds files named like them (:func:`foreign_entries`): the swap would delete them.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from alps_client.errors import AlpsError
from alps_client.io import atomic
from alps_client.io.layout import WORK_DIR, work_dir
from alps_client.io.written import forget_written

# Everything a run writes at the top of OUT; `evaluation.json` (from `alps evaluate`) is stale after a rewrite.
DATASET_ENTRIES = (
    "img_dir", "ann_dir", "vis", "instances_train.json", "instances_val.json", "instances_test.json",
    "centroids.npy", "centroids.json", "classes.json", "manifest.json", "errors.jsonl", "geo", "stitched", "volumes", "vectors",
    "report", "evaluation.json", "mmseg_dataset.py",
)


# The format recorded in the dataset's ``manifest.json``; any version of it marks an alps output.
DATASET_FORMAT = "alps-dataset/2"


def foreign_entries(out: str | Path) -> list[str]:
    """Entries of ``out`` named like dataset outputs that alps did not write, which a run would replace.

    ``out`` is an alps output when it holds a work folder (``.alps``), or an alps ``manifest.json`` (a dataset
    whose work folder was deleted to save space). Elsewhere (a user's own MMSegmentation dataset, a project
    folder) an ``ann_dir/``, ``report/`` or ``manifest.json`` is the user's, and a run's swap would delete it.
    Folders holding only empty folders are left out: replacing them loses nothing.

    Returns:
        Their names, folders with a trailing ``/``, in :data:`DATASET_ENTRIES` order; ``[]`` for an alps output
        or a folder that does not exist.
    """
    out = Path(out)
    if not out.is_dir() or is_alps_output(out):
        return []
    found = []
    for name in DATASET_ENTRIES:
        entry = out / name
        if entry.is_dir() and not entry.is_symlink():
            if any(p.is_symlink() or not p.is_dir() for p in entry.rglob("*")):
                found.append(f"{name}/")
        elif entry.exists() or entry.is_symlink():
            found.append(name)
    return found


def is_alps_output(folder: str | Path) -> bool:
    """Whether ``folder`` is an alps output.

    It is when it holds a work folder (``.alps``), or an alps ``manifest.json`` (a dataset whose work folder was
    deleted to save space).
    """
    folder = Path(folder)
    return os.path.lexists(work_dir(folder)) or _is_alps_manifest(folder / "manifest.json")  # unreadable: not one


def _is_alps_manifest(path: Path) -> bool:
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    any_version = DATASET_FORMAT.rpartition("/")[0] + "/"
    return isinstance(manifest, dict) and str(manifest.get("format", "")).startswith(any_version)


# Why an output of the earlier dataset may be missing from the new one, for the line that says so.
_WHY_NOT_WRITTEN = {
    "evaluation.json": "it scored the earlier labels: run `alps evaluate` again",
    "vectors": "not asked for this time: --vector",
    "report": "not asked for this time: --no-report",
    "vis": "not asked for this time: --no-vis",
    "stitched": "not asked for this time: --stitch",
    "volumes": "not asked for this time: --write-nifti-labels",
}


def not_written_again(out: str | Path, staging: str | Path) -> str | None:
    """The line saying which outputs of the dataset in ``out`` the staged one lacks (the swap deletes them).

    Returns:
        e.g. ``"evaluation.json (it scored the earlier labels: run `alps evaluate` again), vectors/ (...) of the
        earlier dataset are not in the new one"``; None when nothing is lost or ``out`` holds no dataset yet.
    """
    out, staging = Path(out), Path(staging)
    gone = [name for name in DATASET_ENTRIES
            if (out / name).exists() and not ((staging / name).exists() or (staging / name).is_symlink())]
    if not gone:
        return None
    return f"{outputs_named(out, gone)} of the earlier dataset {'is' if len(gone) == 1 else 'are'} not in the " \
           "new one (a rewrite replaces the dataset whole)"


def outputs_named(out: str | Path, names: list[str]) -> str:
    """Outputs of the dataset in ``out`` by name, folders with a trailing ``/``, each with why a rewrite lacks it.

    Example: ``"evaluation.json (it scored the earlier labels: run `alps evaluate` again), report/ (...)"``.
    """
    return ", ".join(f"{name}{'/' if (Path(out) / name).is_dir() else ''}"
                     f"{f' ({_WHY_NOT_WRITTEN[name]})' if name in _WHY_NOT_WRITTEN else ''}" for name in names)


def staging_dir(out: str | Path) -> Path:
    """A fresh, empty ``OUT/.alps/staging`` (what an interrupted write left there is discarded)."""
    out = Path(out)
    recover(out)
    staging = work_dir(out) / "staging"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    return staging


def _journal(out: Path) -> Path:
    return work_dir(out) / "publish.json"


# Added to a stop (Ctrl-C, SIGTERM) that came during a swap: the swap was finished first.
SWAPPED_WHOLE = "the stop came as the new dataset was swapped in: the swap was finished first, and OUT holds it whole"


def publish(out: str | Path, staging: str | Path) -> None:
    """Swap the staged outputs into ``out``, replacing every previous dataset output.

    A stop that comes during the swap (renames) is delivered once it is done (:func:`atomic.stops_held`), with
    :data:`SWAPPED_WHOLE` in its notes.
    """
    out, staging = Path(out), Path(staging)
    shutil.rmtree(work_dir(out) / "previous", ignore_errors=True)  # left by a clean-up that did not finish
    forget_written(out)  # whoever swaps a dataset in records what it was written from, once it lies in OUT
    staged = [name for name in DATASET_ENTRIES if os.path.lexists(staging / name)]
    # Relative to OUT: an OUT moved after an interrupted swap finishes it from its new place. The entries staged:
    # one swapped in before a kill is the new dataset's, not a leftover of the previous one.
    _swap_whole(out, staging, set(staged), {"staging": os.path.relpath(staging, out),
                                            "entries": list(DATASET_ENTRIES), "staged": staged})


# `alps report` swaps OUT/report alone: the new page is written here, the old one moved aside here meanwhile.
REPORT_STAGING = Path(WORK_DIR) / "report-staging"
REPORT_OLD = Path(WORK_DIR) / "report-old"


def recover(out: str | Path) -> bool:
    """Finish a swap that was interrupted (a journal is present); returns True if there was one.

    What an interrupted `alps report` left goes too: its page written in part, or the previous page moved aside
    (put back when no page took its place).
    """
    out = Path(out)
    old_report = out / REPORT_OLD
    if old_report.is_dir() and not (out / "report").exists():
        old_report.rename(out / "report")
    for leftover in (old_report, out / REPORT_STAGING):
        shutil.rmtree(leftover, ignore_errors=True)
    journal = _journal(out)
    if not journal.is_file():
        return False
    # Where every write stages, whatever the journal says: a journal in an OUT handed over (its path ../victim or
    # absolute) had the swap move that folder's entries into OUT, then deleted the folder.
    staging = work_dir(out) / "staging"
    for folder in (staging, work_dir(out) / "previous"):
        if folder.is_symlink():
            raise AlpsError(f"{folder} is a symbolic link (to {os.readlink(folder)}), which alps never makes: "
                            "finishing the interrupted write would move files out of or into that folder; remove "
                            f"the link and {journal}, and run `alps run` again to write the dataset")
    if not staging.is_dir():  # nothing to finish with: what is in place stays (never moved aside and deleted)
        journal.unlink()
        return False
    try:
        staged = json.loads(journal.read_text()).get("staged")
    except (OSError, ValueError, AttributeError):
        staged = None
    _swap_whole(out, staging, set(staged) if isinstance(staged, list) else None)
    return True


def remove_write_leftovers(out: str | Path) -> list[str]:
    """Remove what a dataset write killed before or after its swap left in ``OUT/.alps``; returns what went.

    A kill after the swap, before its clean-up, left the whole previous dataset in ``OUT/.alps/previous``; one
    before the swap, the dataset it staged in ``OUT/.alps/staging``. Only the next write removed them, and a rerun
    with nothing new writes nothing (:mod:`alps_client.io.written`). Nothing goes while a swap's journal is
    there (:func:`recover` finishes it) nor through a symbolic link. Call it holding OUT's lock.
    """
    out = Path(out)
    if swap_pending(out):
        return []
    removed = []
    for folder in (work_dir(out) / "previous", work_dir(out) / "staging"):
        if folder.is_dir() and not folder.is_symlink():
            shutil.rmtree(folder, ignore_errors=True)
            if not folder.exists():
                removed.append(str(folder.relative_to(out)))
    return removed


def swap_pending(out: str | Path) -> bool:
    """Whether a write's swap into ``out`` began and did not end (its journal is there): OUT holds some of each."""
    return _journal(Path(out)).is_file()


def finish_killed_swap(out: str | Path, who: str) -> None:
    """Finish, under OUT's lock, what a write killed in its last step left (:func:`recover`), before ``who`` reads.

    Nothing is locked or written when nothing is left to finish. A writer holding OUT while its swap is under way
    is refused (``OutputBusyError``): OUT holds some of each dataset until it ends. A writer that has not come to
    its swap (a run labelling images) leaves the dataset as it is, to be read; so does a read-only OUT that no
    kill left half swapped.

    Raises:
        OutputBusyError: If another process holds OUT's lock and its swap is under way.
        AlpsError: If OUT is half swapped and cannot be written to finish it (a read-only mount).
    """
    from alps_client.errors import OutputBusyError
    from alps_client.io.out_lock import out_lock

    out = Path(out)
    if not (swap_pending(out) or (out / REPORT_OLD).is_dir() or (out / REPORT_STAGING).is_dir()):
        return
    try:
        with out_lock(out, who, create=False):
            recover(out)
    except OutputBusyError:
        if swap_pending(out):
            raise
    except (AlpsError, OSError) as err:  # read-only: read as it is, unless half of it is another dataset's
        if swap_pending(out):
            cause = err.__cause__ if isinstance(err.__cause__, OSError) else err
            why = cause.strerror if isinstance(cause, OSError) and cause.strerror else str(cause)
            raise AlpsError(f"{out} holds a dataset write that was killed while it swapped its files in (some of "
                            f"each dataset), and {who} cannot finish it ({why}): make OUT writable, or copy it to "
                            "a disk you can write to, and run it on that") from err


def dataset_version(out: str | Path) -> tuple[int, int, int] | None:
    """What changes when a write swaps a new dataset into ``out``: its manifest's inode, time and size."""
    try:
        stat = (Path(out) / "manifest.json").stat()
    except OSError:
        return None
    return stat.st_ino, stat.st_mtime_ns, stat.st_size


def _swap_whole(out: Path, staging: Path, new_entries: set[str] | None, journal: dict[str, object] | None = None
                ) -> None:
    """:func:`_swap` with stops held until it ends (``journal``, given, written first), then the clean-up.

    The clean-up comes before a stop held through the swap goes on (raised as the block ends), not after a swap
    that failed part way: its journal finishes it.
    """
    try:
        with atomic.stops_held(SWAPPED_WHOLE):
            if journal is not None:
                atomic.write_json(_journal(out), journal)
            _swap(out, staging, new_entries)
    finally:
        if not _journal(out).exists():
            _clean_up(out, staging)


def _swap(out: Path, staging: Path, new_entries: set[str] | None) -> None:
    """Move the previous outputs aside into ``OUT/.alps/previous`` and the staged ones in; end the journal.

    ``new_entries``: the entries the new dataset has (the journal's ``staged``); None for a journal of an older
    alps, which did not record them.
    """
    previous = work_dir(out) / "previous"
    previous.mkdir(parents=True, exist_ok=True)
    for name in DATASET_ENTRIES:
        current, staged, old = out / name, staging / name, previous / name
        if staged.exists() or staged.is_symlink():
            if current.exists() and not old.exists():
                os.replace(current, old)
            elif current.exists():  # an earlier interrupted swap already parked a copy: this one is stale
                _remove(current)
            os.replace(staged, current)
        elif new_entries is not None and name in new_entries:
            continue  # swapped in before the swap was killed: it was taken for the previous dataset's, and deleted
        elif (current.exists() or current.is_symlink()) and not old.exists():
            os.replace(current, old)  # not written by this run: it must not survive from the last one
    _journal(out).unlink(missing_ok=True)


def _clean_up(out: Path, staging: Path) -> None:
    """Delete the previous outputs (a whole dataset: may take long) and the emptied staging folder."""
    shutil.rmtree(work_dir(out) / "previous", ignore_errors=True)
    shutil.rmtree(staging, ignore_errors=True)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()
