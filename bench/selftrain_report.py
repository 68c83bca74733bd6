"""Figures of a self-training run for docs/training.md: training curves and student vs teacher.

    python bench/selftrain_report.py runs/selftrain --data ../shared/data/coco \
        --curves docs/images/selftrain_curves.png --pairs docs/images/selftrain_pairs.png

* ``--curves``: a 2 x 2 sheet over the steps of ``RUN/metrics.csv``: the loss and its terms,
  the matched masks' Dice with the teacher (on every student view and on the whole image
  alone), the teacher's entropy monitors, and a held-out metric: class-agnostic COCO AP50 and
  AR@100 of every kept checkpoint (``checkpoint.keep_every``) on ``--data``, images the run
  never trained on, scored as ``uniap-eval --dataset coco --segmenter checkpoint`` scores them
  (the numbers are cached in ``RUN/heldout.csv``; ``--limit`` evaluates the first N images).
* ``--pairs``: for ``--images`` images of ``--data``, the image, UniAP on the trained teacher's
  own fine map (``uniap-eval --segmenter teacher``, at the level ``--teacher-level``), the
  student's 20 best instance masks, and its finest level (the panoptic parts).

matplotlib draws the curves (``pip install matplotlib``; the pairs need only Pillow).
"""

from __future__ import annotations

import argparse
import csv
import re
from pathlib import Path

import numpy as np


def heldout_rows(run: Path, data: str, limit: int | None, workers: int) -> list[dict]:
    """COCO AP50 / AR@100 of every kept checkpoint of ``run``, cached in ``run/heldout.csv``."""
    from uniap.evaluation.benchmarks import CocoBenchmark
    from uniap.evaluation.datasets import open_dataset
    from uniap.evaluation.scoring import evaluate
    from uniap_train.segmenter import CheckpointSegmenter

    cache = run / "heldout.csv"
    rows = {int(r["step"]): r for r in csv.DictReader(cache.open())} if cache.is_file() else {}
    dataset = open_dataset("coco", data, limit=limit)
    kept = sorted(run.glob("checkpoint_[0-9]*.pt"), key=lambda p: int(re.findall(r"\d+", p.stem)[0]))
    for path in kept:
        step = int(re.findall(r"\d+", path.stem)[0])
        if step in rows:
            continue
        result = evaluate(dataset, CheckpointSegmenter(str(path), device="cpu"), CocoBenchmark(dataset),
                          workers=workers, progress=False)
        m = result["metrics"]
        rows[step] = {"step": step, "AP": m["AP"], "AP50": m["AP50"], "AR@100": m["AR@100"]}
        print(f"step {step}: AP {m['AP']:.4f}, AP50 {m['AP50']:.4f}, AR@100 {m['AR@100']:.4f}", flush=True)
        with cache.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, ["step", "AP", "AP50", "AR@100"])
            writer.writeheader()
            writer.writerows(rows[k] for k in sorted(rows))
    return [rows[k] for k in sorted(rows)]


def curves(run: Path, heldout: list[dict], out: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(csv.DictReader((run / "metrics.csv").open()))

    def col(name: str) -> np.ndarray:
        return np.array([float(r[name]) if r.get(name) not in (None, "") else np.nan for r in rows])

    step = col("step")
    fig, axes = plt.subplots(2, 2, figsize=(10, 6.5))
    ax = axes[0, 0]
    ax.plot(step, col("loss"), label="loss")
    for name, weight in (("loss_dice", "dice"), ("loss_bce", "bce"), ("loss_querysd", "querysd"),
                         ("loss_score", "score")):
        ax.plot(step, col(name), label=weight, lw=1)
    ax.set_title("loss (sum) and its terms (unweighted)")
    ax.legend(fontsize=7)
    ax = axes[0, 1]
    ax.plot(step, col("match_dice"), label="every student view")
    ax.plot(step, col("match_dice_whole"), label="whole image view")
    ax.set_title("matched masks' soft Dice with the teacher")
    ax.legend(fontsize=7)
    ax = axes[1, 0]
    ax.plot(step, col("teacher_entropy"), label="per mask (low: confident)")
    ax.plot(step, col("teacher_batch_entropy"), label="of the batch mean (high: every prototype used)")
    ax.set_title("teacher entropy (nats)")
    ax.legend(fontsize=7)
    ax = axes[1, 1]
    if heldout:
        hs = [float(r["step"]) for r in heldout]
        ax.plot(hs, [float(r["AP50"]) for r in heldout], "o-", label="AP50")
        ax.plot(hs, [float(r["AR@100"]) for r in heldout], "s-", label="AR@100")
        ax.legend(fontsize=7)
    ax.set_title("held out: COCO class-agnostic, kept checkpoints")
    for a in axes.flat:
        a.set_xlabel("step")
        a.grid(alpha=0.3)
    fig.tight_layout()
    _save(fig, out)


def _save(fig, out: str) -> None:
    from uniap.io import atomic_path

    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    print(f"{out}: {Path(out).stat().st_size / 1024:.0f} KiB")


def pairs(run: Path, data: str, names: list[str], out: str, teacher_level: int, side: int) -> None:
    from PIL import Image, ImageDraw

    from uniap.features import load_image
    from uniap.io import atomic_path
    from uniap.viz import colour_labels
    from uniap_train.predict import Predictor

    predictor = Predictor.from_checkpoint(run / "checkpoint_last.pt", device="cpu")
    folder = Path(data) / "images" if (Path(data) / "images").is_dir() else Path(data)
    rows = []
    for name in names:
        path = next(p for p in sorted(folder.rglob("*")) if p.stem == name)
        image = load_image(path)
        pred = predictor(image)
        teacher = predictor.teacher_levels(image)[teacher_level]
        best = np.full(image.shape[:2], -1, np.int64)
        for k in range(min(20, len(pred.masks)) - 1, -1, -1):  # the best mask drawn last, on top
            best[pred.masks[k]] = k
        rows.append([
            (name, image),
            (f"teacher level {teacher_level}: {np.unique(teacher).size}", colour_labels(teacher, image)),
            (f"student: best {min(20, len(pred.masks))} masks", colour_labels(best + 1, image)),
            (f"student parts: {np.unique(pred.levels[0]).size}", colour_labels(pred.levels[0], image)),
        ])
    caption = 14
    sheet = Image.new("RGB", (len(rows[0]) * (side + 4) + 4, len(rows) * (side + caption + 4) + 4), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for r, panels in enumerate(rows):
        for c, (title, pixels) in enumerate(panels):
            tile = Image.fromarray(pixels)
            scale = side / max(tile.size)
            tile = tile.resize((round(tile.size[0] * scale), round(tile.size[1] * scale)), Image.Resampling.BILINEAR)
            x0, y0 = 4 + c * (side + 4), 4 + r * (side + caption + 4)
            sheet.paste(tile, (x0 + (side - tile.size[0]) // 2, y0 + caption + (side - tile.size[1]) // 2))
            draw.text((x0 + 1, y0 + 1), title, fill=(0, 0, 0))
    small = sheet.quantize(colors=128, method=Image.Quantize.MEDIANCUT)
    with atomic_path(out) as tmp:
        small.save(tmp, format="PNG", optimize=True)
    print(f"{out}: {Path(out).stat().st_size / 1024:.0f} KiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="the run's output_dir")
    parser.add_argument("--data", required=True, help="a COCO-style folder the run never trained on")
    parser.add_argument("--curves", help="write the training curves here (PNG)")
    parser.add_argument("--pairs", help="write the student vs teacher sheet here (PNG)")
    parser.add_argument("--images", default="000000000034,000000000138,000000000370,000000000626",
                        help="comma-separated image names (stems) for --pairs")
    parser.add_argument("--teacher-level", type=int, default=1, help="the teacher level drawn (0: finest)")
    parser.add_argument("--limit", type=int, help="held-out metric on the first N images only")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--side", type=int, default=220, help="longer side of a panel (pixels)")
    args = parser.parse_args()
    run = Path(args.run)
    if args.curves:
        curves(run, heldout_rows(run, args.data, args.limit, args.workers), args.curves)
    if args.pairs:
        pairs(run, args.data, args.images.split(","), args.pairs, args.teacher_level, args.side)


if __name__ == "__main__":
    main()
