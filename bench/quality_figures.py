"""Side-by-side pictures for docs/quality.md: images x segmenters at each one's ODS level.

    python bench/quality_figures.py RESULT.json [RESULT.json ...] --data ../shared/data/bsds500 \
        --images 101085,106024,12003,16077 --out docs/images/quality_bsds.png

Each RESULT.json is a ``uniap-eval --dataset bsds500`` result: its segmenter is rebuilt from the
recorded parameters and drawn at the level that gave its covering ODS. The last column is the
first human segmentation. The sheet is colour-quantised to keep the PNG small.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def main() -> None:
    from PIL import Image, ImageDraw

    from uniap.evaluation import build_segmenter
    from uniap.features import load_image
    from uniap.io import atomic_path
    from uniap.viz import colour_labels

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+")
    parser.add_argument("--data", required=True, help="the BSDS500 folder")
    parser.add_argument("--images", required=True, help="comma-separated image ids")
    parser.add_argument("--out", required=True)
    parser.add_argument("--side", type=int, default=200, help="longer side of a panel (pixels)")
    args = parser.parse_args()

    columns = []
    for path in args.results:
        r = json.loads(Path(path).read_text())
        seg = build_segmenter(r["segmenter"]["name"], **r["segmenter"]["params"])
        level = r["levels"].index(r["metrics"]["covering_ods_level"])
        columns.append((f"{seg.name} {r['levels'][level]}", seg, level))

    data = Path(args.data)
    rows = []
    for key in args.images.split(","):
        image_path = next(data.glob(f"images/*/{key}.jpg"))
        image = load_image(image_path)
        human = np.array(Image.open(next(data.glob(f"groundTruth/*/{key}_gt1.png"))))
        panels = [(key, image)]
        for title, seg, level in columns:
            labels = seg.label_maps(image)[level]
            panels.append((f"{title}: {np.unique(labels).size}", colour_labels(labels, image)))
        panels.append((f"human 1: {np.unique(human).size}", colour_labels(human - human.min(), image)))
        rows.append(panels)

    # every panel is scaled to the same box (BSDS images are 481x321 or 321x481)
    box = args.side
    caption = 14
    ncol = len(rows[0])
    sheet = Image.new("RGB", (ncol * (box + 4) + 4, len(rows) * (box + caption + 4) + 4), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for r, panels in enumerate(rows):
        for c, (title, pixels) in enumerate(panels):
            tile = Image.fromarray(pixels)
            scale = box / max(tile.size)
            tile = tile.resize((round(tile.size[0] * scale), round(tile.size[1] * scale)),
                               Image.Resampling.BILINEAR if c == 0 else Image.Resampling.NEAREST)
            x0, y0 = 4 + c * (box + 4), 4 + r * (box + caption + 4)
            sheet.paste(tile, (x0 + (box - tile.size[0]) // 2, y0 + caption + (box - tile.size[1]) // 2))
            draw.text((x0 + 1, y0 + 1), title, fill=(0, 0, 0))
    small = sheet.quantize(colors=128, method=Image.Quantize.MEDIANCUT)
    with atomic_path(args.out) as tmp:
        small.save(tmp, format="PNG", optimize=True)
    print(f"{args.out}: {Path(args.out).stat().st_size / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
