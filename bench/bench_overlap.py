"""Does overlapping images pay? Our side of ``bench_pipeline.py`` with 1 and with 2 images in flight, alternating.

With 2 in flight (``alps run --concurrency 2``, the flow's default) one image's encoder and decoder run while
another's single-threaded post-processing does: the lever "encode the next image while this one is decoded".

    .venv/bin/python bench/bench_overlap.py --model-repository bench/out/vit_b-random-init/repo-fp32 --images 2

Each round runs every concurrency once, in its own process (its own peak RSS), in alternation, so the machine's
other load hits all alike; the best round counts. Results go to ``bench/results.json`` under ``overlap``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-repository", required=True)
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--pred-iou-thresh", type=float, default=0.88)
    parser.add_argument("--stability-score-thresh", type=float, default=0.95)
    parser.add_argument("--workdir", default=str(ROOT / "bench" / "out" / "overlap"))
    parser.add_argument("--results-dir", default=str(ROOT / "bench"))
    args = parser.parse_args()
    from alps_client.synthetic import write_synthetic_dataset
    from bench.results import load_average, machine, model_label, record

    work = Path(args.workdir)
    data = write_synthetic_dataset(work / "data", args.images, seed=0, size=(args.size, args.size), n_classes=4)
    image_list = work / "images.json"
    image_list.write_text(json.dumps([str(p.resolve()) for p in sorted((data / "images").glob("*.png"))]))
    best: dict[str, dict[str, float]] = {}
    load = [load_average()]
    for _ in range(args.rounds):
        for concurrency in (1, 2):
            out = work / f"concurrency-{concurrency}"
            subprocess.run([sys.executable, str(ROOT / "bench" / "bench_pipeline.py"), "--name", "overlap", "--side",
                            "ours", "--concurrency", str(concurrency), "--pred-iou-thresh", str(args.pred_iou_thresh),
                            "--stability-score-thresh", str(args.stability_score_thresh), "--side-repository",
                            args.model_repository, "--image-list", str(image_list), "--work", str(out),
                            "--result", str(out / "result.json")], check=True)
            r = json.loads((out / "result.json").read_text())
            row = {"seconds_per_image": r["total_seconds"] / r["n_images"],
                   "cpu_seconds_per_image": r["cpu_seconds"] / r["n_images"], "peak_rss_mib": r["peak_rss_mib"]}
            name = f"{concurrency} image{'s' if concurrency > 1 else ''} in flight"
            print(name, row, flush=True)
            if name not in best or row["seconds_per_image"] < best[name]["seconds_per_image"]:
                best[name] = row
    load.append(load_average())
    manifest = json.loads((Path(args.model_repository) / "manifest.json").read_text())
    record("overlap", {"model": model_label(manifest), "images": args.images, "size": args.size,
                       "amg": {"pred_iou_thresh": args.pred_iou_thresh,
                               "stability_score_thresh": args.stability_score_thresh},
                       "rows": best, "rounds": args.rounds, "load": load, "machine": machine()},
           Path(args.results_dir))


if __name__ == "__main__":
    main()
