"""``uniap-eval``: measure mask quality of a segmenter (or of saved masks) on a data set.

Exit status: 0 when every image was evaluated, 2 for a usage error (bad arguments, a data
folder that is missing or not of the named layout, missing predictions), 1 when an image
failed (the others are still summarised and written) or nothing could be evaluated.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, Sequence

from ..cli import UsageError, add_version, parse_args, positive_int, run_command

__all__ = ["build_parser", "main"]


def _numbers(kind):
    def parse(text: str):
        try:
            values = [kind(v) for v in text.replace(" ", "").split(",") if v]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
        if not values:
            raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}")
        return values

    return parse


def _splits(text: str) -> list[str]:
    values = [v for v in text.replace(" ", "").split(",") if v]
    if not values:
        raise argparse.ArgumentTypeError("--split needs a name such as val or val,test")
    return values


# flag (argparse dest) -> the segmenters it applies to, and the parameter name there
SEGMENTER_FLAGS: dict[str, dict[str, str]] = {
    "levels": {"uniap": "levels"},
    "min_size": {"uniap": "min_size", "felzenszwalb": "min_size"},
    "preset": {"uniap": "preset"},
    "connectivity": {"uniap": "connectivity"},
    "backend": {"uniap": "backend"},
    "upsampling": {"uniap": "upsampling"},
    "refine": {"uniap": "refine", "checkpoint": "refine"},
    "superpixel_size": {"uniap": "superpixel_size"},
    "superpixel_method": {"uniap": "superpixel_method"},
    "contours": {"uniap": "contours"},
    "features": {"uniap": "features"},
    "scales": {"felzenszwalb": "scales"},
    "thresholds": {"slic_rag": "thresholds"},
    "n_segments": {"slic_rag": "n_segments"},
    "compactness": {"slic_rag": "compactness"},
    "regions": {"higra_watershed": "regions"},
    "attribute": {"higra_watershed": "attribute"},
    "sigma": {"felzenszwalb": "sigma", "slic_rag": "sigma", "higra_watershed": "sigma"},
    "checkpoint": {"checkpoint": "checkpoint", "teacher": "checkpoint"},
    "nms": {"checkpoint": "nms"},
    "nms_threshold": {"checkpoint": "nms_threshold"},
    "max_masks": {"checkpoint": "max_masks"},
    "ranking": {"checkpoint": "ranking"},
    "hierarchy": {"checkpoint": "hierarchy"},
}
FEATURE_FLAGS = {"model": "model", "weights": "weights", "layer": "layer_output", "max_side": "max_side",
                 "device": "device"}


def build_parser() -> argparse.ArgumentParser:
    from .segmenters import segmenter_names

    parser = argparse.ArgumentParser(
        prog="uniap-eval",
        description="Measure mask quality: run a segmenter (or read saved masks) over a data set "
        "with ground truth, print a table and write the numbers as JSON.",
        epilog="Example: uniap-eval --dataset bsds500 --data BSDS500 --out bsds.json",
    )
    add_version(parser)
    data = parser.add_argument_group("data and output")
    data.add_argument("--dataset", required=True, choices=("bsds500", "coco", "labelmaps"),
                      help="bsds500: covering, PRI, VI, boundary F; coco: class-agnostic mask AP/AR; "
                      "labelmaps: Hungarian mIoU per level (images/ + labels/, e.g. CamVid)")
    data.add_argument("--data", required=True, metavar="DIR", help="the data set folder")
    data.add_argument("--split", type=_splits, metavar="S[,S]",
                      help="split folders to use (default: all; bsds500 dev: val,test); "
                      "coco: val2017 reads annotations/instances_val2017.json and val2017/")
    data.add_argument("--limit", type=positive_int, metavar="N", help="only the first N images (sorted)")
    data.add_argument("--out", required=True, metavar="JSON", help="results file (written atomically)")
    data.add_argument("--overwrite", action="store_true",
                      help="replace an existing --out file (default: refuse, as uniap-cli does)")
    data.add_argument("--workers", type=positive_int, metavar="N",
                      help="processes working on different images (default: every CPU available)")
    data.add_argument("--quiet", action="store_true", help="no progress bar and no table")
    data.add_argument("--no-boundary", action="store_true",
                      help="bsds500: skip the boundary benchmark (the region benchmarks are much faster)")
    data.add_argument("--num-classes", type=positive_int, metavar="C",
                      help="labelmaps: number of classes (default: manifest.json classes)")
    data.add_argument("--ignore-index", type=int, metavar="V",
                      help="labelmaps: void label (default: manifest.json void_id, else none)")

    what = parser.add_argument_group("what is evaluated")
    what.add_argument("--segmenter", choices=segmenter_names(),
                      help="the segmenter to run (default uniap; checkpoint: a uniap-train model, teacher: "
                      "UniAP on its own fine map, both with --checkpoint)")
    what.add_argument("--checkpoint", metavar="FILE",
                      help="--segmenter checkpoint (the trained model) or teacher (UniAP on its own fine "
                      "map): a uniap-train checkpoint of recipe paper")
    what.add_argument("--predictions", metavar="DIR",
                      help="evaluate saved masks instead: DIR/<image stem>.json from uniap-cli --format sam")
    what.add_argument("--score", choices=("contrast", "stability", "persistence", "area", "level", "random", "record"),
                      help="coco: how each image's masks are ranked (default contrast; for uniap "
                      "contrast is the written records' own score, as is record, so the numbers are "
                      "those of COCOeval on uniap-cli's file; record with --predictions: the saved score)")
    what.add_argument("--min-area", type=positive_int, metavar="PIXELS",
                      help="coco: smallest mask proposed (default 1)")

    u = parser.add_argument_group("uniap")
    u.add_argument("--refine", choices=("superpixels", "none"),
                   help="UniAP's nodes: superpixels (default; pixel-accurate masks) or none: the patches")
    u.add_argument("--superpixel-size", type=positive_int, metavar="PIXELS",
                   help="mean superpixel area (default 150)")
    u.add_argument("--superpixel-method", choices=("watershed", "slic"),
                   help="how superpixels are made (default watershed; slic: compact SLIC superpixels)")
    u.add_argument("--contours", action=argparse.BooleanOptionalAction, default=None,
                   help="coco: propose the contour regions of the watershed superpixels' hierarchy "
                   "too (default on with watershed superpixels)")
    u.add_argument("--levels", type=_numbers(float), metavar="T1,T2,...",
                   help="strictly decreasing thresholds (default 0.9,0.8,...,0.2 with superpixels, "
                   "0.8,0.7,0.6,0.5,0.4 with --refine none)")
    u.add_argument("--min-size", type=positive_int, metavar="N",
                   help="uniap: smallest cluster in patches reported as a mask (default 4); "
                   "felzenszwalb: smallest component in pixels (default 20)")
    u.add_argument("--preset", choices=("released", "paper"))
    u.add_argument("--connectivity", type=int, choices=(4, 8))
    u.add_argument("--backend", choices=("auto", "numpy", "numba", "torch", "cupy"))
    u.add_argument("--upsampling", choices=("nearest", "bilinear"))
    u.add_argument("--features", help="feature extractor (default: the embedded default; vit: a timm ViT)")
    u.add_argument("--model", help="timm model for --features vit")
    u.add_argument("--weights", metavar="FILE", help="ViT weights")
    u.add_argument("--layer", choices=("tokens", "keys"), help="ViT output")
    u.add_argument("--max-side", type=positive_int, metavar="PIXELS", help="shrink large images first")
    u.add_argument("--device", help="device for the ViT")

    t = parser.add_argument_group("a trained model (--segmenter checkpoint)")
    t.add_argument("--nms", choices=("matrix", "hard", "none"),
                   help="overlapping instance masks: matrix (decay their scores, default), hard, or none")
    t.add_argument("--nms-threshold", type=float, metavar="IOU", help="--nms hard: IoU above which a mask is dropped")
    t.add_argument("--max-masks", type=positive_int, metavar="N", help="most instance masks per image (default 100)")
    t.add_argument("--ranking", choices=("learned", "mask", "contrast"),
                   help="rank instance masks by learned (their predicted IoU, default), mask (Mask2Former's mask "
                   "score) or contrast (predicted IoU x stability x boundary contrast)")
    t.add_argument("--hierarchy", choices=("pooled", "semantic"),
                   help="label maps above the parts: pooled (UniAP on the superpixels' [SEM] logits at the run's "
                   "levels, default) or semantic (the semantic map's connected regions, then the map)")

    p = parser.add_argument_group("peers")
    p.add_argument("--scales", type=_numbers(float), metavar="S1,S2,...",
                   help="felzenszwalb: increasing scales (default 50,100,200,400,800,1600)")
    p.add_argument("--thresholds", type=_numbers(float), metavar="T1,T2,...",
                   help="slic_rag: increasing CIELab merge thresholds (default 0,5,8,12,16,22,30)")
    p.add_argument("--n-segments", type=positive_int, metavar="N", help="slic_rag: superpixels (default 600)")
    p.add_argument("--compactness", type=float, help="slic_rag: SLIC compactness (default 10)")
    p.add_argument("--regions", type=_numbers(int), metavar="N1,N2,...",
                   help="higra_watershed: decreasing region counts (default 1000,300,100,30,10,3)")
    p.add_argument("--attribute", choices=("area", "volume", "dynamics"),
                   help="higra_watershed: watershed attribute (default area)")
    p.add_argument("--sigma", type=float, help="felzenszwalb / slic_rag / higra_watershed: smoothing (pixels)")
    return parser


def _segmenter(args: argparse.Namespace):
    from .segmenters import Predictions, build_segmenter

    given = {dest for dest in SEGMENTER_FLAGS if getattr(args, dest) is not None}
    given |= {dest for dest in FEATURE_FLAGS if getattr(args, dest) is not None}
    common = {"score": args.score, "min_area": args.min_area}
    common = {k: v for k, v in common.items() if v is not None}
    if args.predictions is not None:
        if args.segmenter is not None:
            raise UsageError("--predictions evaluates saved masks; leave out --segmenter")
        if given:
            raise UsageError(f"--{sorted(given)[0].replace('_', '-')} does not apply to --predictions")
        folder = Path(args.predictions)
        if not folder.is_dir():
            raise UsageError(f"no such predictions folder: {folder}")
        try:
            return Predictions(folder, **common)
        except ValueError as err:
            raise UsageError(str(err)) from None
    name = args.segmenter or "uniap"
    params: dict[str, Any] = {}
    for dest in sorted(given & set(SEGMENTER_FLAGS)):
        target = SEGMENTER_FLAGS[dest].get(name)
        if target is None:
            raise UsageError(f"--{dest.replace('_', '-')} does not apply to --segmenter {name}")
        params[target] = getattr(args, dest)
    feature_options = {FEATURE_FLAGS[d]: getattr(args, d) for d in sorted(given & set(FEATURE_FLAGS))}
    if feature_options:
        if name != "uniap":
            raise UsageError(f"--{sorted(given & set(FEATURE_FLAGS))[0].replace('_', '-')} applies to "
                             "--segmenter uniap only")
        params["feature_options"] = feature_options
    try:
        segmenter = build_segmenter(name, **params, **common)
        segmenter.warm_up()  # an unusable backend or option fails here, before any work
    except (ValueError, TypeError, ImportError, FileNotFoundError, RuntimeError) as err:
        raise UsageError(str(err)) from None
    return segmenter


def _check_predictions(segmenter, dataset) -> None:
    missing = [s.key for s in dataset.samples if not segmenter.path(s.key).is_file()]
    if missing:
        raise UsageError(f"{len(missing)} of {len(dataset.samples)} images have no predictions in "
                         f"{segmenter.folder}, e.g. {missing[0]}.json")


def _check_out(out: Path, overwrite: bool = False) -> None:
    if out.is_dir():
        raise UsageError(f"--out {out} is a folder; give a file name such as results.json")
    if out.exists() and not overwrite:
        raise UsageError(f"{out} exists; pass --overwrite to replace it")
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise UsageError(f"cannot write {out}: no such folder {parent}")
    if not os.access(parent, os.W_OK):
        raise UsageError(f"cannot write {out}: permission denied")


def run(args: argparse.Namespace) -> int:
    from ..formats.files import write_json
    from .benchmarks import BENCHMARKS
    from .datasets import DataError, open_dataset
    from .scoring import EvaluationError, default_workers, evaluate, format_table

    out = Path(args.out)
    _check_out(out, args.overwrite)
    segmenter = _segmenter(args)
    extra: dict[str, Any] = {}
    if args.dataset == "labelmaps":
        extra = {"num_classes": args.num_classes, "ignore_index": args.ignore_index}
    else:
        for flag in ("num_classes", "ignore_index"):
            if getattr(args, flag) is not None:
                raise UsageError(f"--{flag.replace('_', '-')} applies to --dataset labelmaps only")
    if args.no_boundary and args.dataset != "bsds500":
        raise UsageError("--no-boundary applies to --dataset bsds500 only")
    if args.dataset != "coco" and (args.score is not None or args.min_area is not None):
        raise UsageError("--score and --min-area rank masks for --dataset coco only")
    try:
        dataset = open_dataset(args.dataset, args.data, args.split, args.limit, **extra)
    except DataError as err:
        raise UsageError(str(err)) from None
    if args.predictions is not None:
        _check_predictions(segmenter, dataset)
    bench = BENCHMARKS[args.dataset]
    benchmark = bench(dataset, boundary=not args.no_boundary) if args.dataset == "bsds500" else bench(dataset)
    workers = args.workers or default_workers()
    try:
        result = evaluate(dataset, segmenter, benchmark, workers=workers, progress=not args.quiet)
    except EvaluationError as err:
        print(f"uniap-eval: error: {err}", file=sys.stderr)
        return 1
    result["command"] = ["uniap-eval"] + list(args.argv)
    write_json(out, result)
    if not args.quiet:
        print(format_table(result, benchmark))
    for f in result["failed"]:
        print(f"uniap-eval: {f['image']}: {f['error']}", file=sys.stderr)
    return 1 if result["failed"] else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(parser, argv)
    args.argv = argv
    return run_command(parser, run, args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
