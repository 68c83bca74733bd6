"""Segment one image with the embedded default features and print what UniAP found.

    python examples/segment_image.py                                  # skimage's astronaut
    python examples/segment_image.py path/to/image.jpg --out masks.json --viz masks.png
"""

from __future__ import annotations

import argparse
import sys

import uniap
from uniap import io, viz


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("image", nargs="?", help="an image file (default: skimage.data.astronaut())")
    parser.add_argument("--out", help="write SAM-style masks JSON here")
    parser.add_argument("--viz", help="write a picture of every level here (PNG)")
    args = parser.parse_args()

    if args.image is None:
        import skimage.data

        image, name = skimage.data.astronaut(), "astronaut.png"
    else:
        image, name = args.image, args.image
    try:
        result = uniap.segment_image(image)
    except (OSError, ValueError) as err:
        print(f"segment_image: {err}", file=sys.stderr)
        return 1

    h, nodes = result.hierarchy, result.grid
    patches = getattr(nodes, "grid", nodes)  # superpixels (the default) sit on a patch grid
    print(f"{name}: {patches.grid_shape[0]}x{patches.grid_shape[1]} patches of {patches.patch_size} px, "
          f"{nodes.features.shape[-1]} features each ({nodes.name})"
          + (f"; UniAP on {nodes.features.shape[0]} superpixels" if nodes is not patches else ""))
    for i, lv in enumerate(h.levels):
        print(f"  level {i}  t={lv.threshold:.2f}  {lv.num_clusters:5d} clusters, "
              f"{int((lv.sizes >= h.min_size).sum()):4d} masks")
    print("  seconds: " + ", ".join(f"{k} {v:.3f}" for k, v in result.timings.items()))
    if args.out:
        height, width = result.pixel_labels.shape[1:]
        info = {"file_name": str(name), "height": int(height), "width": int(width)}
        io.write_json(args.out, io.sam_document(info, result.uniap_info(), result.records))
        print(f"wrote {len(result.records)} masks to {args.out}")
    if args.viz:
        cuts = result.contour_labels
        titles = ["image"] + [f"t={t:g}" for t in h.thresholds] + [f"contours {k}" for k in range(len(cuts or ()))]
        viz.save_panels(args.viz, viz.hierarchy_panels(result.image, result.pixel_labels, titles, contour_labels=cuts))
        print(f"wrote {args.viz}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
