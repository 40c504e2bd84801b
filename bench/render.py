"""Markdown for each kind of entry in ``bench/results.json`` (called by :func:`bench.results.render`)."""

from __future__ import annotations

from typing import Any


def _f(value: float | None, digits: int = 3) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def _share(part: int, whole: int) -> str:
    return f"{part} ({100 * part / whole:.1f} %)" if whole else str(part)


def _left_out(images: dict[str, Any]) -> str:
    """``, N input(s) left out (the first: why)`` for inputs of ``--images`` alps could not label; else nothing."""
    left_out = images.get("left_out") or []
    if not left_out:
        return ""
    first = left_out[0]
    return f"; {len(left_out)} input(s) left out, e.g. {first['path']}: {first['reason']}"


def _context(entry: dict[str, Any]) -> str:
    m = entry.get("machine", {})
    load = entry.get("load")
    load_text = f"; load average {load[0]:.1f}-{load[1]:.1f}" if load else ""
    where = f"; {m['cpu']}, {m['cores']} cores" if m else ""
    return f"commit `{entry.get('commit', 'unknown')}`{load_text}{where}"


def _pipeline(name: str, r: dict[str, Any]) -> list[str]:
    sides = r["sides"]
    ours = [s for s in r["order"] if s != "reference"]
    ref = sides["reference"]
    models = "; ".join(f"{s}: {r['variants'][s]}" for s in ours)
    note = r.get("note") or ""
    share = r.get("pred_iou_pass_share")
    if share is not None:
        note += (f" pred_iou_thresh was set so that {share:.0%} of the first image's candidate masks pass it (the "
                 "model's predicted IoUs carry no information).")
    lines = [f"## {name}", "", *([note.strip(), ""] if note.strip() else []),
             (f"Models: {models}; {r['images']['count']} images "
             f"({r['images']['source']}{_left_out(r['images'])}); AMG {r['amg']}, gate sigma {r['sigma']}; {r['threads']} threads; ours labels "
             f"{r.get('concurrency', 1)} images at a time (the flow's default); "
             f"sides run in the order {', '.join(r['order'])}; {_context(r)}."), ""]
    header = "| stage (s/image) | reference | " + " | ".join(f"{s} | {s} / reference" for s in ours) + " |"
    lines += [header, "|---|---:|" + "---:|---:|" * len(ours)]
    stages = sorted(set().union(*(sides[s]["per_image"] for s in r["order"])))
    for stage in stages:
        f = ref["per_image"].get(stage)
        cells = []
        for s in ours:
            o = sides[s]["per_image"].get(stage)
            cells += [_f(o), f"{o / f:.2f}" if o is not None and f else ""]
        lines.append(f"| {stage} | {_f(f)} | " + " | ".join(cells) + " |")
    total = [f"**{sides[s]['seconds_per_image']:.2f}** | {sides[s]['seconds_per_image'] / ref['seconds_per_image']:.3f}"
             for s in ours]
    lines += [f"| **end to end** | **{ref['seconds_per_image']:.2f}** | " + " | ".join(total) + " |", ""]
    lines.append("- images/hour: reference " + f"{ref['images_per_hour']:.0f}; " + "; ".join(
        f"{s} {sides[s]['images_per_hour']:.0f} (**x{r['speedup'][s]:.2f}**)" for s in ours))
    if "cpu_seconds" in ref:
        lines.append("- CPU seconds per image, all threads (spin-waiting included; less sensitive to other load than "
                     f"wall time): reference {ref['cpu_seconds'] / ref['n_images']:.1f}; " + "; ".join(
                         f"{s} {sides[s]['cpu_seconds'] / sides[s]['n_images']:.1f} "
                         f"(x{ref['cpu_seconds'] / ref['n_images'] / (sides[s]['cpu_seconds'] / sides[s]['n_images']):.2f})"
                         for s in ours))
    lines.append(f"- peak RSS: reference {ref['peak_rss_mib']:.0f} MiB; "
                 + "; ".join(f"{s} {sides[s]['peak_rss_mib']:.0f} MiB" for s in ours))
    if r.get("concurrency", 1) > 1:
        lines.append(f"- ours labels {r['concurrency']} images at a time, so its stage times overlap and add up to more "
                     "than its end-to-end time")
    for s in ours:
        a = r["agreement"][s]
        if not a["ours_masks"] and not a["reference_masks"]:
            lines.append(f"- {s} vs reference: no mask left on either side (nothing to match or label)")
            continue
        lines.append(
            f"- {s} vs reference: masks {a['ours_masks']} vs {a['reference_masks']}; reference masks matched one-to-one "
            f"at IoU >= 0.99: {_f(a['reference_matched_share'])}; {s} masks matched: {_f(a['ours_matched_share'])}; "
            f"kept by the gate {a['ours_kept']} vs {a['reference_kept']}; label mIoU vs the reference's labels "
            f"{_f(a['label_miou'])} over {a['label_classes']} reference classes")
    fun = r.get("funnel")
    if fun:
        c = fun["candidates"]
        lines.append(
            f"- funnel (reference, Meta's generator, all images): {fun['prompts']} prompts, {c} candidate masks; "
            f"predicted IoU > {r['amg']['pred_iou_thresh']}: {_share(fun['after_iou'], c)}; stability >= "
            f"{r['amg']['stability_score_thresh']}: {_share(fun['after_stability'], c)}; off crop edges: "
            f"{_share(fun['after_edge'], c)}; after box NMS: {_share(fun['after_nms'], c)}; "
            f"kept by the gate: {r['agreement'][ours[0]]['reference_kept']}")
    for s in ours:
        u = sides[s].get("upscaled")
        if u:
            lines.append(f"- {s} decoder: prompts upscaled {_share(u['prompts_upscaled'], u['prompts'])} (the others' "
                         f"three predicted IoUs were all <= pred_iou_thresh: not upscaled)")
    return [*lines, ""]


def _ort_options(r: dict[str, Any]) -> list[str]:
    lines = [f"## onnxruntime settings ({r['model']}, one change at a time)", "",
             (f"`bench/bench_ort_options.py`; encoder: one 512x512 image; decoder: {r['prompts']} prompts on a random "
             f"embedding; {_context(r)}."), "",
             "| model | setting | encoder s/image | decoder ms/prompt | prompts upscaled | peak RSS MiB |",
             "|---|---|---:|---:|---:|---:|"]
    for row in r["rows"]:
        enc, dec, up = row.get("seconds_per_image"), row.get("ms_per_prompt"), row.get("upscaled_share")
        lines.append(f"| {row['model']} | {row['setting']} | {_f(enc, 2)} | {_f(dec, 1)} | "
                     f"{'' if up is None else f'{100 * up:.0f} %'} | {row['peak_rss_mib']:.0f} |")
    a = r.get("int8_agreement")
    if a:
        lines += ["", (f"int8 vs fp32, prompt by prompt ({a['prompts']} prompts x 3 masks on the exporter's parity "
                  f"image, low-res masks): IoU mean {a['mask_iou_mean']:.3f}, min {a['mask_iou_min']:.3f}, "
                  f"{100 * a['masks_iou_at_least_0.9']:.1f} % of masks at IoU >= 0.9; predicted IoU max abs "
                  f"difference {a['iou_prediction_max_abs_diff']:.4f}; embedding max relative difference "
                  f"{a['encoder_max_rel_diff']:.3f}.")]
    return [*lines, ""]


def _in_flight(row: dict[str, Any]) -> str:
    """The provider, and the images in flight where the row says (entries before it ran 2)."""
    return f"{row['provider']}, {row['images_in_flight']} in flight" if "images_in_flight" in row else row["provider"]


def _gpu(name: str, r: dict[str, Any]) -> list[str]:
    lines = [f"## {name}", "", r["note"], "", f"{r['device']}; {_context(r)}.", "",
             ("| model | provider | encoder s/img | decoder s/img | postprocess s/img | end to end s/img | images/hour |"
             " peak RSS MiB |"), "|---|---|---:|---:|---:|---:|---:|---:|"]
    for row in r["rows"]:
        p = row["per_image"]
        lines.append(f"| {row['model']} | {_in_flight(row)} | {_f(p.get('encoder'))} | {_f(p.get('decoder'))} | "
                     f"{_f(p.get('postprocess'))} | {row['seconds_per_image']:.3f} | {row['images_per_hour']:.0f} | "
                     f"{row['peak_rss_mib']:.0f} |")
    for err in r.get("errors", []):
        lines.append(f"| {err['model']} | {_in_flight(err)} | failed: {err['error']} | | | | | |")
    k = r.get("kmeans")
    if k and "error" in k:
        lines += ["", f"k-means: not run: {k['error']}"]
    elif k:
        lines += ["", f"k-means ({k['library']}): {k['points']} PFLs x 256, {k['clusters']} clusters: {k['seconds']:.2f} s"]
    return [*lines, ""]


def _families(r: dict[str, Any]) -> list[str]:
    lines = ["## SAM 2.1 (Hiera) vs SAM (ViT): speed and memory", "",
             (f"`bench/bench_families.py` at commit {r['commit']}; {r['note']}; one {r['image'][0]}x{r['image'][1]} "
              f"image, {r['prompts']} decoder prompts, AMG {r['points_per_side']}x{r['points_per_side']} grid, "
              f"{r['threads']} threads, {r['machine']['cpu']}."), "",
             "| model | family | encoder s/image | decoder ms/prompt | AMG s/image | peak RSS MiB |",
             "|---|---|---:|---:|---:|---:|"]
    lines += [f"| {k} | {v['family']} | {v['encoder_s_per_image']:.2f} | {v['decoder_ms_per_prompt']:.1f} | "
              f"{v['amg_s_per_image']:.1f} | {v['peak_rss_mib']:.0f} |" for k, v in r["rows"].items()]
    return [*lines, ""]


def _dense(r: dict[str, Any]) -> list[str]:
    lines = ["## Dense scenes: masks per image vs time and peak RSS", "",
             (f"`bench/bench_dense.py` at commit {r['commit']}; {r['image'][0]}x{r['image'][1]} images; "
              f"{r['note']}. A dense `(N, H, W) bool` array of the masks alone would take N MiB."), "",
             "| stage | masks | kept | seconds | peak RSS MiB |", "|---|---:|---:|---:|---:|"]
    lines += [f"| per-image stage, {g['cells']} cells (fake) | {g['masks']} | {g['kept']} | {g['seconds']:.1f} | "
              f"{g['peak_rss_mib']:.0f} |" for g in r["generator"]]
    lines += [f"| after masks (gate, features, shard, writer) | {a['masks']} | {a['kept']} | "
              f"{a['label_seconds'] + a['write_seconds']:.1f} | {a['peak_rss_mib']:.0f} |" for a in r["after_masks"]]
    return [*lines, ""]


def _long_run(r: dict[str, Any]) -> list[str]:
    lines = ["## Long run: resident memory of `alps run` over the images", "",
             (f"`bench/bench_long_run.py`: `{r['command']}`; {r['model']}; {r['images']} synthetic {r['size']}-px "
              f"scenes, {r['points_per_side']}x{r['points_per_side']} grid; sampled every {r['interval_s']:g} s; "
              f"{_context(r)}."), ""]
    arms = [(f"malloc: {r.get('malloc', 'unrecorded')}", r)]
    if "glibc_malloc" in r:  # the same run just after, with glibc's malloc as it is
        arms.append((f"malloc: {r['glibc_malloc']['malloc']}, the same run just after", r["glibc_malloc"]))
    for title, arm in arms:
        lines += _long_run_arm(title, arm)
    return lines


def _long_run_arm(title: str, r: dict[str, Any]) -> list[str]:
    slope = r["slope_mib_per_1000_images"]
    peak, sec = r["peak_rss_mib"], r["seconds"]

    def _s(value: float | None) -> str:
        return "n/a" if value is None else f"{value:+.1f}"

    lines = [f"**{title}**", "",
             "| labelling phase | images done | seconds | run RSS MiB | run USS MiB | children RSS MiB |",
             "|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {k} | {v['images']} | {v['seconds']:.0f} | {v['rss_mib']:.0f} | {v['uss_mib']:.0f} | "
              f"{v['children_rss_mib']:.0f} |" for k, v in r["at"].items()]
    lines += ["", (f"- growth, MiB per 1,000 images (least squares on images done): run RSS {_s(slope['rss_after_20%'])} "
                   f"after the first 20 % ({_s(slope['rss_second_half'])} over the second half), run USS "
                   f"{_s(slope['uss_after_20%'])} ({_s(slope['uss_second_half'])}), children RSS "
                   f"{_s(slope['children_rss_after_20%'])}"),
              (f"- peak RSS: run {peak['run']:.0f} MiB (VmHWM), Prefect API server {peak['api_server']:.0f} MiB; after "
               f"the last shard (clustering, writing): run {_f(peak['after_last_shard'], 0)} MiB, children "
               f"{_f(peak['children_after_last_shard'], 0)} MiB"),
              (f"- seconds: {sec['to_first_shard']:.0f} to the first shard, {sec['labelling']:.0f} labelling, "
               f"{sec['after_last_shard']:.0f} after the last shard, {sec['total']:.0f} in all ({r['samples']} samples)")]
    return [*lines, ""]


def render_entry(name: str, r: dict[str, Any]) -> list[str]:
    """Markdown lines for one entry of ``results.json``."""
    kind = r.get("kind")
    if kind == "pipeline":
        return _pipeline(name, r)
    if kind == "gpu":
        return _gpu(name, r)
    if name == "ort_options":
        return _ort_options(r)
    if name == "model_families":
        return _families(r)
    if name == "dense":
        return _dense(r)
    if name == "long-run":
        return _long_run(r)
    if name == "overlap":
        lines = ["## Images in flight: overlapping one image's encoder and decoder with another's post-processing", "",
                 (f"`bench/bench_overlap.py`: {r['model']}; {r['images']} synthetic {r['size']}-px scenes, AMG "
                  f"{r['amg']}; best of {r['rounds']} alternating rounds; {_context(r)}."), "",
                 "| our side | s/image | CPU s/image | peak RSS MiB |", "|---|---:|---:|---:|"]
        lines += [f"| {k} | {v['seconds_per_image']:.2f} | {v['cpu_seconds_per_image']:.2f} | {v['peak_rss_mib']:.0f} |"
                  for k, v in r["rows"].items()]
        return [*lines, ""]
    if name == "dask":
        lines = ["## Per-image stage: threads vs Dask workers", "",
                 f"{r['note']}; {r['images']} images, {r['cores']} cores; {_context(r)}.", "",
                 "| runner | labelling s | images/hour |", "|---|---:|---:|"]
        lines += [f"| {k} | {v['label_seconds']:.1f} | {v['images_per_hour']:.0f} |" for k, v in r["rows"].items()]
        return [*lines, ""]
    if name == "triton":
        lines = ["## Triton vs embedded (AMG, stand-in, CPU)", "", f"{r['note']}; {_context(r)}.", "",
                 "| backend | images/s | encoder s/img | decoder s/img | postprocess s/img |", "|---|---:|---:|---:|---:|"]
        lines += [f"| {k} | {v['images_per_second']:.3f} | {v['encoder_s_per_image']:.3f} | "
                  f"{v['decoder_s_per_image']:.3f} | {v['postprocess_s_per_image']:.3f} |" for k, v in r["rows"].items()]
        return [*lines, ""]
    if name == "scaling":
        lines = ["## Scaling of clustering + writing (synthetic PFLs)", "", f"{_context(r)}.", "",
                 "| images | PFLs | seconds | peak RSS MiB |", "|---:|---:|---:|---:|"]
        lines += [f"| {p['images']} | {p['pfls']} | {p['seconds']:.2f} | {p['peak_rss_mib']:.0f} |" for p in r["points"]]
        return [*lines, "", "![scaling](scaling.png)", ""]
    return [f"## {name}", "", "(no renderer for this entry)", ""]
