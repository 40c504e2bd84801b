"""What a run shows: terminal progress bar, Prefect progress artifact, summary/histogram/previews/errors artifacts."""

from __future__ import annotations

import base64
import contextvars
import io
import logging
import re
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Self

from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from tqdm import tqdm

from alps_client.backends.manifest import family_name
from alps_client.labels.classes import in_dropped_clusters, written_class_names

PREVIEWS = 3
# Rows of the rejected-inputs and missing-images tables at most: Prefect stores an artifact's table whole.
TABLE_ROWS = 1000


# How often a run whose console is no terminal (a log file, CI, nohup) prints a progress line, seconds.
LINE_EVERY_S = 30.0


class Progress:
    """Live progress on the console and as a Prefect progress artifact in the UI.

    On a terminal, a tqdm bar; elsewhere a line every :data:`LINE_EVERY_S` (a bar's carriage returns made one
    line of megabytes in a log file). ``terminal``: whether the console is a terminal (None: ask stderr).
    """

    def __init__(self, total: int, bar: bool = True, terminal: bool | None = None,
                 line_every_s: float = LINE_EVERY_S) -> None:
        self.total = max(total, 1)
        self.done = 0
        self.counts: dict[str, int] = defaultdict(int)
        self.lines = bar and not (sys.stderr.isatty() if terminal is None else terminal)
        self.bar = tqdm(total=total, desc="labelling", unit="img", disable=not bar or self.lines, leave=True)
        self.line_every_s = line_every_s
        self.started = self.last_line = time.monotonic()
        self.artifact_id = create_progress_artifact(
            progress=0.0, key="alps-progress",
            description="Images done with: labelled, skipped as done before, rejected or failed (alps-summary and "
                        "alps-missing say which)"
        )
        self._sender = ProgressSender(self.artifact_id)

    def advance(self, status: str) -> None:
        """One more image finished with ``status`` (labelled, skipped, rejected, failed)."""
        self.done += 1
        self.counts[status] += 1
        self.bar.set_postfix({k: v for k, v in self.counts.items()}, refresh=False)  # before the update draws it
        self.bar.update(1)
        if self.lines and (self.done == self.total or time.monotonic() - self.last_line >= self.line_every_s):
            self.last_line = time.monotonic()
            print(self.line(), file=sys.stderr, flush=True)
        if self.done == self.total or self.done % max(1, self.total // 50) == 0:
            self._sender.send(100.0 * self.done / self.total)

    def line(self) -> str:
        """``labelling: 120/3000 images (4 %: labelled 118, skipped 2), 430 images/hour, about 6.7 h left``."""
        hours = (time.monotonic() - self.started) / 3600
        per_hour = self.done / hours if hours > 0 else 0.0
        counts = ", ".join(f"{status} {n}" for status, n in sorted(self.counts.items()))
        left = self.total - self.done
        eta = f", about {_duration(left / per_hour * 3600)} left" if left and per_hour else ""
        return (f"labelling: {self.done}/{self.total} images ({100 * self.done / self.total:.0f} %: {counts}), "
                f"{per_hour:.0f} images/hour{eta}")

    def close(self) -> None:
        """Finish the bar and the artifact (short of 100 % when the run stopped starting images)."""
        self._sender.send(min(100.0, 100.0 * self.done / self.total))
        self._sender.close()
        self.bar.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        """A stop leaving the labelling (Ctrl-C, SIGTERM, an error): the sender's thread ends, not waited for.

        It stayed waiting for an update that never came, one thread per stopped run in a notebook or a process
        that goes on; and the stop is not held by an API that does not answer.
        """
        if kind is not None:
            self._sender.abandon()
            self.bar.close()


class ProgressSender:
    """Sends a progress artifact's updates from a thread of its own, the latest value only.

    The labelling loop sent each update itself: when the Prefect API stopped answering (a user's server stopped
    mid-run), each update waited out Prefect's retries, minutes, and no image was started meanwhile, though
    labelling needs no API. Now the loop only hands the value over; an update that fails is logged once.
    """

    def __init__(self, artifact_id: Any, close_wait_s: float = 10.0) -> None:
        self.artifact_id = artifact_id
        self.close_wait_s = close_wait_s
        self._latest: float | None = None
        self._closing = False
        self._failed = False
        self._wake = threading.Condition()
        # In the caller's context: Prefect's settings there name the run's API (without them, a client in a new
        # thread started an API server of its own)
        self._thread = threading.Thread(target=contextvars.copy_context().run, args=(self._run,),
                                        name="alps-progress-artifact", daemon=True)
        self._thread.start()

    def send(self, progress: float) -> None:
        """Have the artifact show ``progress`` (percent) soon; an earlier value not yet sent is dropped."""
        with self._wake:
            self._latest = progress
            self._wake.notify()

    def close(self) -> None:
        """Send what is left, waiting ``close_wait_s`` at most (an API that does not answer is not waited out)."""
        with self._wake:
            self._closing = True
            self._wake.notify()
        self._thread.join(self.close_wait_s)

    def abandon(self) -> None:
        """End the thread without sending what is left, and without waiting for it."""
        with self._wake:
            self._latest, self._closing = None, True
            self._wake.notify()

    def _run(self) -> None:
        while True:
            with self._wake:
                while self._latest is None and not self._closing:
                    self._wake.wait()
                progress, self._latest = self._latest, None
                if progress is None:  # closing, all sent
                    return
            try:
                update_progress_artifact(artifact_id=self.artifact_id, progress=progress)
            except Exception as err:  # noqa: BLE001 (the API's failure: the run says it at its end)
                if not self._failed:
                    self._failed = True
                    logging.getLogger(__name__).warning("The progress shown in the Prefect UI is not updated: %s",
                                                        err)


def _duration(seconds: float) -> str:
    """``'45 s'``, ``'12 min'``, ``'6.7 h'``."""
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 60:.0f} min" if seconds >= 60 else f"{seconds:.0f} s"


def stage_totals(timings: Iterable[dict[str, float]]) -> dict[str, float]:
    """Seconds per stage summed over the images labelled in this run (one timings dict per image)."""
    totals: dict[str, float] = defaultdict(float)
    for per_image in timings:
        for stage, seconds in per_image.items():
            totals[stage] += seconds
    return dict(totals)


def _thumbnail(path: Path, size: int = 256) -> str:
    from PIL import Image

    with Image.open(path) as im:
        im.thumbnail((size, size))
        buf = io.BytesIO()
        im.convert("RGB").save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _model_caveat(run: dict[str, Any]) -> str:
    """What the summary says after the model's name when its labels mean nothing (the log and report say it too)."""
    if run["stand_in"]:
        return f" (STAND-IN, not {family_name(run.get('model_family'))})"
    if run.get("random_init"):
        return " (RANDOM weights (--random-init), not a trained model: the labels mean nothing)"
    return ""


def publish(run: dict[str, Any], out: str) -> None:
    """Summary table, class histogram, previews and the error list, as Prefect artifacts."""
    s = run["summary"]
    sec = run["seconds"]
    n_labelled = len(run["labelled"])
    rows = [
        {"metric": "model", "value": run["model"] + _model_caveat(run)},
        {"metric": "images", "value": s["n_images"]},
        {"metric": "labelled this run / skipped (already done)", "value": f"{n_labelled} / {len(run['skipped'])}"},
        *([{"metric": "tiles wholly in nodata (left out, in the counts above)", "value": run["n_empty_tiles"]}]
          if run.get("n_empty_tiles") else []),
        {"metric": "rejected inputs", "value": len(run["errors"])},
        {"metric": "missing (not labelled: processing failures)", "value": len(run["missing"])},
        {"metric": "masks kept / gated", "value": f"{s['n_masks_kept']} / {s['n_masks_gated']}{in_dropped_clusters(s)}"},
        {"metric": "classes", "value": s["n_classes"]},
        {"metric": "model ran on (images)", "value": ", ".join(f"{k}: {v}" for k, v in s["labelled_on"].items())},
        {"metric": "labelled pixel fraction", "value": round(s["labelled_pixel_fraction"], 4)},
        {"metric": "seconds: label / cluster / write", "value": f"{sec['label']:.1f} / {sec['cluster']:.1f} / {sec['write']:.1f}"},
    ]
    for stage, seconds in sorted(run["stage_seconds"].items()):
        rows.append({"metric": f"seconds per labelled image: {stage}", "value": round(seconds / max(n_labelled, 1), 3)})
    create_table_artifact(key="alps-summary", table=_table(rows), description=f"ALPS run summary: {out}")

    peak = max(s["pixels_per_class"] or [1]) or 1
    names = written_class_names(out)  # none: the histogram goes without names
    hist = ["| class | name | masks | pixels | |", "|---:|:---|---:|---:|:---|"]
    for k, (m, p) in enumerate(zip(s["masks_per_class"], s["pixels_per_class"])):
        name = _cell(names.get(k, ""))
        hist.append(f"| {k} | {name} | {m} | {p} | {'█' * max(1, round(30 * p / peak)) if p else ''} |")
    create_markdown_artifact(key="alps-class-histogram", markdown="\n".join(hist), description="Pixels and masks per class")

    vis = sorted((Path(out) / "vis").glob("*.png"))[:PREVIEWS]
    if vis:
        md = [f"Palette previews (first {len(vis)} of {s['n_images']}; all in `{Path(out) / 'vis'}`)", ""]
        md += [f"**{_cell(p.stem)}**\n\n![{_cell(p.stem)}](data:image/png;base64,{_thumbnail(p)})\n" for p in vis]
        create_markdown_artifact(key="alps-previews", markdown="\n".join(md), description="Label previews")

    publish_errors(run["errors"], "all in errors.jsonl")
    publish_missing(run["missing"])


def publish_errors(errors: list[dict[str, str]], note: str) -> None:
    """The inputs a run rejected (bad files), each with its reason; also for a run that ends without a dataset.

    ``note``: where all of them are, in the description's parentheses (``all in errors.jsonl``).
    """
    rows = errors or [{"path": "-", "reason": "no rejected inputs"}]
    create_table_artifact(key="alps-errors", table=_table(rows[:TABLE_ROWS]),
                          description=f"Rejected inputs{_first_rows(errors)} ({note})")


# What makes links, images, HTML, code and table cells in Markdown: in a file or class name, `![x](http://host/b.png)`
# or `<img src=...>` was fetched by every browser that opened the run in the Prefect UI, and `[x](javascript:...)`
# became a link. (An underscore inside a word, as in `cluster_0`, is plain text.)
_MARKDOWN = re.compile(r"([\\`*\[\]<>|~])")


def _cell(text: str) -> str:
    """``text`` as the literal text of one Markdown table cell: its lines joined, Markdown and HTML escaped."""
    return _MARKDOWN.sub(r"\\\1", " ".join(text.split()))


def _table(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``rows`` of a table artifact with each text a literal :func:`_cell`: the UI renders cells as Markdown."""
    return [{key: _cell(value) if isinstance(value, str) else value for key, value in row.items()} for row in rows]


def publish_missing(missing: list[dict[str, str]]) -> None:
    """The good images a run could not label (processing failures), apart from rejected inputs.

    Published when none is missing too: a flow run retried from the UI (its Retry button) keeps the artifacts of
    its failed attempt, whose table of images not labelled stood beside a summary saying missing 0.
    """
    rows = missing or [{"path": "-", "stem": "-", "reason": "none missing: every good image is labelled"}]
    create_table_artifact(key="alps-missing", table=_table(rows[:TABLE_ROWS]),
                          description=f"Images not labelled because processing failed (not bad inputs){_first_rows(missing)}"
                                      "; a rerun of the same command labels them")


def _first_rows(rows: list[Any]) -> str:
    """`` (the first 1000 of 3000)`` where a table holds only the first :data:`TABLE_ROWS` of ``rows``, else ``""``."""
    return f" (the first {TABLE_ROWS} of {len(rows)})" if len(rows) > TABLE_ROWS else ""
