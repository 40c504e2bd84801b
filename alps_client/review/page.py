"""The review page's HTML: static, self-contained (inline CSS, thumbnails as relative files), opens from file://.

Every class has a ``<section data-class-id="<id>">`` (dropped clusters: ``data-class-id="255"``) holding one
``<div data-cluster-id="<k>">`` per cluster. A few lines of script mark thumbnails that failed to load
(``class="broken"``, ``data-broken-images`` on ``<body>``), for the reader and for tests.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from html import escape
from typing import Any

from alps_client.io.items import counted

CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:0 24px 48px;color:#222;background:#fafafa}
h1{margin:16px 0 4px}h2{margin:0 0 6px;font-size:20px}h3{margin:8px 0 4px;font-size:15px}
.warn{background:#fff3cd;border:1px solid #e0c060;padding:6px 10px;border-radius:4px}
table{border-collapse:collapse}td,th{padding:2px 10px 2px 0;text-align:left;vertical-align:top}
td.n{text-align:right}.bar{display:inline-block;height:12px;background:#4a7}
.swatch{display:inline-block;width:14px;height:14px;border:1px solid #0006;margin-right:6px;vertical-align:-2px}
section.class{background:#fff;border:1px solid #ddd;border-radius:6px;padding:12px 16px;margin:16px 0}
section.dropped{background:#f3f3f3}.cluster{border-top:1px solid #eee;padding-top:6px;margin-top:6px}
.mosaic{display:flex;flex-wrap:wrap;gap:4px;align-items:flex-end}.mosaic img{border:1px solid #ccc}
.mosaic img.random{border-style:dashed}.images{display:flex;flex-wrap:wrap;gap:6px;margin-top:6px}
img.broken{outline:3px solid red}pre{background:#f0f0f0;padding:8px;overflow:auto}.muted{color:#666}
"""

SCRIPT = """
window.addEventListener("load", function () {
  var broken = 0;
  Array.prototype.forEach.call(document.images, function (img) {
    if (!(img.complete && img.naturalWidth > 0)) { img.classList.add("broken"); broken += 1; }
  });
  document.body.setAttribute("data-broken-images", String(broken));
});
"""


@dataclass
class ClusterView:
    """One cluster's block: figures and thumbnails (paths relative to the page)."""

    id: int
    n_masks: int
    share: float  # of labelled pixels, as its class's share (of all masked pixels for a dropped cluster)
    mean_area: float
    crops: list[tuple[str, str, int, int]] = field(default_factory=list)  # (src, kind, width, height)
    images: list[tuple[str, str, int, int]] = field(default_factory=list)  # (src, stem, width, height)


@dataclass
class ClassView:
    """One class's section (``id`` 255 gathers the dropped clusters)."""

    id: int
    name: str
    colour: tuple[int, int, int]
    n_masks: int
    n_pixels: int
    share: float  # of labelled pixels
    clusters: list[ClusterView] = field(default_factory=list)


def _img(src: str, alt: str, width: int, height: int, css: str = "") -> str:
    return (f'<img src="{escape(src)}" alt="{escape(alt)}" title="{escape(alt)}" width="{width}" height="{height}" '
            f'loading="eager"{f" class={css!r}" if css else ""}>')


def _cluster(c: ClusterView, dropped: bool) -> str:
    of = "masked pixels (no label now)" if dropped else "labelled pixels"
    crops = "".join(_img(src, f"cluster {c.id}: {kind} mask", w, h, kind) for src, kind, w, h in c.crops)
    images = "".join(_img(src, f"{stem}: cluster {c.id} lit", w, h) for src, stem, w, h in c.images)
    return (f'<div class="cluster" data-cluster-id="{c.id}"><h3>cluster {c.id}</h3>'
            f'<p>{counted(c.n_masks, "mask")} &middot; {100 * c.share:.1f}% of {of} &middot; mean area '
            f'{c.mean_area:.0f} px</p><div class="mosaic">{crops or "<span class=muted>no masks</span>"}</div>'
            f'<div class="images">{images}</div></div>')


def _section(v: ClassView) -> str:
    dropped = v.id == 255
    swatch = "" if dropped else f'<span class="swatch" style="background:rgb{v.colour}"></span>'
    title = "dropped clusters (painted 255, no label)" if dropped else f"{escape(v.name)} <span class=muted>(class {v.id})</span>"
    members = ", ".join(str(c.id) for c in v.clusters)
    figures = "" if dropped else (f"{counted(v.n_masks, 'mask')} &middot; {100 * v.share:.1f}% of labelled pixels "
                                  f"&middot; clusters {members}")
    return (f'<section class="class{" dropped" if dropped else ""}" data-class-id="{v.id}" id="class-{v.id}">'
            f"<h2>{swatch}{title}</h2><p>{figures}</p>{''.join(_cluster(c, dropped) for c in v.clusters)}</section>")


def _histogram(classes: list[ClassView]) -> str:
    peak = max((v.n_pixels for v in classes), default=0) or 1
    rows = "".join(
        f'<tr><td><a href="#class-{v.id}"><span class="swatch" style="background:rgb{v.colour}"></span>'
        f"{escape(v.name)}</a></td><td class=n>{v.n_masks}</td><td class=n>{v.n_pixels}</td>"
        f"<td class=n>{100 * v.share:.1f}%</td><td><span class=bar style=\"width:{300 * v.n_pixels / peak:.0f}px\">"
        "</span></td></tr>" for v in classes if v.id != 255)
    return ("<table><tr><th>class</th><th>masks</th><th>pixels</th><th>share</th><th></th></tr>"
            f"{rows}</table>")


def _inputs_section(section_id: str, heading: str, shown: list[dict[str, str]], n_all: int, where: str) -> str:
    """A table of input files with their reasons (``shown``: the first of ``n_all``; the rest are in ``where``)."""
    rows = "".join(f"<tr><td>{escape(e.get('path', ''))}</td><td>{escape(e.get('reason', ''))}</td></tr>"
                   for e in shown)
    more = f"<p class=muted>{n_all - len(shown)} more in {escape(where)}</p>" if n_all > len(shown) else ""
    body = f"<table>{rows}</table>{more}" if n_all else "<p>none</p>"
    return f'<section id="{section_id}"><h2>{escape(heading)} ({n_all})</h2>{body}</section>'


def render_page(title: str, facts: list[tuple[str, Any]], classes: list[ClassView], errors: list[dict[str, str]],
                n_errors: int, template: str, warnings: list[str] | None = None,
                missing: list[dict[str, str]] | None = None, n_missing: int = 0) -> str:
    """The whole page.

    Args:
        title: the dataset's name.
        facts: ``(label, value)`` rows of the summary table.
        classes: one view per class (and one for the dropped clusters, id 255, if any).
        errors: rejected inputs shown (the first ones).
        n_errors: all rejected inputs.
        template: the classes file that reproduces the current classes (to copy and edit).
        warnings: lines shown on top (the model is the stand-in; images are missing).
        missing: good images the run could not label (``--allow-partial``) shown (the first ones).
        n_missing: all of them; their section is shown only when there are some.
    """
    rows = "".join(f"<tr><th>{escape(str(k))}</th><td>{escape(str(v))}</td></tr>" for k, v in facts)
    return "".join([
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">',
        f"<title>ALPS review: {escape(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>ALPS cluster review: {escape(title)}</h1>",
        "".join(f'<p class="warn">{escape(line)}</p>' for line in warnings or ()),
        f'<section id="summary"><table>{rows}</table></section>',
        f'<section id="histogram"><h2>Classes</h2>{_histogram(classes)}</section>',
        ('<section id="rename"><h2>Name, merge, drop</h2><p>Copy <code>report/classes.yaml</code> (below), edit it, '
         "then run <code>alps relabel OUT --classes classes.yaml</code>: the dataset is rewritten from the shards "
         "(no SAM, no re-clustering). Each crop is a mask (outlined) in its image; solid borders are the masks "
         f"nearest the cluster's centre, dashed ones a random sample.</p><pre>{escape(template)}</pre></section>"),
        "".join(_section(v) for v in classes),
        _inputs_section("missing", "Images not labelled", missing or [], n_missing, "manifest.json (missing)")
        if n_missing else "",
        _inputs_section("errors", "Rejected inputs", errors, n_errors, "errors.jsonl"),
        f"<script>{SCRIPT}</script></body></html>\n",
    ])
