"""``uniap-cli``: masks for images, files or folders, as SAM/COCO JSON or PNG label maps.

Exit status: 0 when every image was written (or skipped because its output exists), 2 for a
usage error (bad arguments, nothing to read, missing weights), 1 when any image failed.
"""

from __future__ import annotations

import argparse
import glob
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

# Below this many images per process the NumPy backend finishes before Numba has loaded.
NUMBA_PAYS_OFF = 64
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


class UsageError(Exception):
    """A mistake in the command line: reported in one line, exit status 2."""


def _levels(text: str) -> tuple[float, ...]:
    from .options import check_levels

    try:
        values = [float(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--levels takes comma-separated numbers such as 0.8,0.6,0.4; got {text!r}"
        ) from None
    try:
        return check_levels(values)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _shard(text: str) -> tuple[int, int]:
    try:
        index, count = (int(v) for v in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shard takes i/n such as 0/4; got {text!r}") from None
    if count < 1 or not 0 <= index < count:
        raise argparse.ArgumentTypeError(f"--shard i/n needs 0 <= i < n; got {text!r}")
    return index, count


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="uniap-cli",
        description="Unsupervised multi-granular masks for images with UniAP "
        "(fast universal agglomerative pooling).",
        epilog="Example: uniap-cli photo.jpg --out masks.json --viz masks.png",
    )
    io = parser.add_argument_group("input and output")
    io.add_argument("inputs", nargs="+", help="image files, folders (searched recursively) or glob patterns")
    io.add_argument("--out", required=True,
                    help="output file for one image (a folder with --format png); a folder for "
                    "many (one <stem>.json or <stem>/ each); with --format coco always one file")
    io.add_argument("--format", choices=("sam", "coco", "png"), default="sam",
                    help="sam: one SA-1B-like JSON per image (default); coco: one COCO data set; "
                    "png: 16-bit label maps per level plus metadata.csv")
    io.add_argument("--viz", metavar="PNG",
                    help="also draw the image and each level's masks: a file for one image, a folder for many")
    io.add_argument("--overwrite", action="store_true", help="replace existing outputs (default: keep them)")
    io.add_argument("--shard", type=_shard, metavar="I/N",
                    help="process only images i, i+n, i+2n, ... of the sorted inputs (0 <= i < n)")
    io.add_argument("--workers", type=positive_int, default=1, metavar="N",
                    help="images processed in parallel by N processes (default 1)")
    io.add_argument("--quiet", action="store_true", help="no progress bar or summary")

    algo = parser.add_argument_group("UniAP settings (defaults: the library's)")
    algo.add_argument("--levels", type=_levels, metavar="T1,T2,...",
                      help="strictly decreasing cosine thresholds, e.g. 0.8,0.7,0.6,0.5,0.4")
    algo.add_argument("--min-size", type=positive_int, metavar="CELLS",
                      help="smallest cluster (in patches) reported as a mask (default 4)")
    algo.add_argument("--preset", choices=("released", "paper"),
                      help="released: the authors' code (default); paper: the paper's wording")
    algo.add_argument("--passes", choices=("until_stable", "single"))
    algo.add_argument("--pooling", choices=("sum", "attention"))
    algo.add_argument("--vote-weight", type=float, metavar="W", help="weight of the paper's voting term")
    algo.add_argument("--connectivity", type=int, choices=(4, 8))
    algo.add_argument("--semantic", action="store_true", default=None,
                      help="also output semantic groups (alike regions anywhere in the image)")
    algo.add_argument("--backend", choices=("auto", "numpy", "numba", "torch", "cupy"),
                      help=f"pooling backend (default: numpy below {NUMBA_PAYS_OFF} images, "
                      "where loading Numba would cost more than it saves; numba above)")
    algo.add_argument("--upsampling", choices=("nearest", "bilinear"), default="nearest",
                      help="patch labels to pixels: nearest (default) or a bilinear refinement")

    feats = parser.add_argument_group("features")
    feats.add_argument("--features", choices=("default", "vit"), default="default",
                       help="default: embedded colour/texture features, no weights; vit: a timm ViT")
    feats.add_argument("--model", help="timm model name for --features vit (default vit_small_patch8_224.dino)")
    feats.add_argument("--weights", metavar="FILE", help="ViT weights (.pth/.pt/.safetensors)")
    feats.add_argument("--layer", choices=("tokens", "keys"),
                       help="ViT output: last-block patch tokens or attention keys")
    feats.add_argument("--vocabulary", metavar="FILE",
                       help="colour/texture words shared by all images (.npz from "
                       "DefaultFeatures.fit(...).vocabulary.save or uniap-train); default: words per image")
    feats.add_argument("--max-side", type=positive_int, metavar="PIXELS",
                       help="shrink images whose longer side exceeds this before extracting features")
    feats.add_argument("--device", help="device for the ViT, e.g. cpu or cuda:0")
    return parser


def segment_options(args: argparse.Namespace) -> dict[str, Any]:
    """The UniAP options the user set; the library supplies every other default."""
    names = {
        "levels": "levels", "min_size": "min_size", "preset": "preset", "passes": "passes",
        "pooling": "pooling", "vote_weight": "vote_weight", "connectivity": "connectivity",
        "semantic": "semantic", "backend": "backend",
    }
    return {key: getattr(args, attr) for attr, key in names.items() if getattr(args, attr) is not None}


def extractor_options(args: argparse.Namespace) -> dict[str, Any]:
    if args.features == "default":
        for flag in ("model", "weights", "layer", "device"):
            if getattr(args, flag) is not None:
                raise UsageError(f"--{flag} applies to --features vit only")
        kwargs: dict[str, Any] = {"max_side": args.max_side} if args.max_side else {}
        if args.vocabulary is not None:
            from .features import Vocabulary

            try:
                kwargs["vocabulary"] = Vocabulary.load(args.vocabulary)
            except (FileNotFoundError, ValueError) as err:
                raise UsageError(f"--vocabulary: {err}") from None
        return kwargs
    if args.vocabulary is not None:
        raise UsageError("--vocabulary applies to --features default only")
    names = {"model": "model", "weights": "weights", "layer": "layer_output", "device": "device",
             "max_side": "max_side"}
    return {key: getattr(args, attr) for attr, key in names.items() if getattr(args, attr) is not None}


def expand_inputs(inputs: Sequence[str]) -> list[Path]:
    """Files, folders (recursively) and globs, as one sorted list without duplicates."""
    found: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found += [p for p in sorted(path.rglob("*")) if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
        elif path.is_file():
            found.append(path)
        elif glob.has_magic(item):
            matches = [Path(p) for p in sorted(glob.glob(item, recursive=True)) if Path(p).is_file()]
            if not matches:
                raise UsageError(f"no file matches {item!r}")
            found += matches
        else:
            raise UsageError(f"no such file or folder: {item}")
    unique = sorted(dict.fromkeys(p.resolve() for p in found))
    if not unique:
        raise UsageError("no images found in " + ", ".join(inputs))
    return unique


@dataclass
class Job:
    """Where one image's outputs go."""

    image: Path
    out: Path | None  # None with --format coco (one file for all)
    viz: Path | None


def plan_jobs(images: list[Path], args: argparse.Namespace, single: bool) -> list[Job]:
    """Outputs of each image; ``single``: one input image, so --out names a file."""
    out = Path(args.out)
    if args.format == "coco":
        if out.is_dir():
            raise UsageError(f"--format coco writes one file, but --out {out} is a folder")
        outs: list[Path | None] = [None] * len(images)
    elif single:
        outs = [out]
    else:
        stems = [p.stem for p in images]
        clash = sorted({s for s in stems if stems.count(s) > 1})
        if clash:
            raise UsageError(f"several inputs share the name {clash[0]!r}; outputs are named by stem")
        if out.exists() and not out.is_dir():
            raise UsageError(f"--out {out} is a file, but {len(images)} images need a folder")
        suffix = ".json" if args.format == "sam" else ""
        outs = [out / f"{p.stem}{suffix}" for p in images]
    vizs: list[Path | None] = [None] * len(images)
    if args.viz:
        viz = Path(args.viz)
        vizs = [viz] if single else [viz / f"{p.stem}.png" for p in images]
    return [Job(p, o, v) for p, o, v in zip(images, outs, vizs)]


def check_writable(folder: Path) -> None:
    if not folder.is_dir():
        raise UsageError(f"cannot write to {folder}: no such folder")
    if not os.access(folder, os.W_OK):
        raise UsageError(f"cannot write to {folder}: permission denied")


# -- one image ---------------------------------------------------------------------------

_STATE: dict[str, Any] = {}


def _init_worker(features: str, extractor_kwargs: dict, options: dict, args_dict: dict) -> None:
    from .features import get_extractor

    _STATE["extractor"] = get_extractor(features, **extractor_kwargs)
    _STATE["options"] = options
    _STATE["args"] = args_dict


def _process(job: Job) -> dict:
    """Segment one image and write its outputs; returns a small report (never raises)."""
    from . import io, viz
    from .pipeline import segment_image

    args = _STATE["args"]
    report: dict[str, Any] = {"image": str(job.image), "status": "ok"}
    try:
        result = segment_image(job.image, _STATE["extractor"], upsampling=args["upsampling"], **_STATE["options"])
        written = time.perf_counter()
        height, width = result.pixel_labels.shape[1:]
        info = {"file_name": job.image.name, "height": int(height), "width": int(width)}
        if args["format"] == "sam":
            io.write_json(job.out, io.sam_document(info, result.uniap_info(), result.records))
        elif args["format"] == "png":
            io.write_png(job.out, result.pixel_labels, result.records, result.semantic_labels)
        else:
            report["coco"] = (info, result.records, result.uniap_info())
        if job.viz is not None:
            titles = [job.image.name] + [
                f"t={lv.threshold:g}: {int((lv.sizes >= result.hierarchy.min_size).sum())} masks"
                for lv in result.hierarchy.levels
            ]
            viz.save_panels(job.viz, viz.hierarchy_panels(result.image, result.pixel_labels, titles))
        report["timings"] = dict(result.timings, writing=time.perf_counter() - written)
        report["masks"] = len(result.records)
    except Exception as err:  # one bad image must not stop a folder run
        report.update(status="failed", error=f"{type(err).__name__}: {err}")
    return report


def _exists(job: Job) -> bool:
    return job.out is not None and job.out.exists()


def run(args: argparse.Namespace) -> int:
    images = expand_inputs(args.inputs)
    # Whether --out names a file or a folder depends on the inputs, not on the shard, so
    # that every shard of a data set writes into the same folder.
    single = len(images) == 1
    if args.shard:
        index, count = args.shard
        images = images[index::count]
        if not images:
            if not args.quiet:
                print(f"uniap-cli: shard {index}/{count} holds no image", file=sys.stderr)
            return 0
    jobs = plan_jobs(images, args, single)
    out = Path(args.out)
    many = not single and args.format != "coco"
    if args.format == "coco" and out.exists() and not args.overwrite:
        raise UsageError(f"{out} exists; pass --overwrite to replace it")
    if single and _exists(jobs[0]) and not args.overwrite:
        raise UsageError(f"{jobs[0].out} exists; pass --overwrite to replace it")
    if many:
        out.mkdir(parents=True, exist_ok=True)
    check_writable(out if many else (out.parent if str(out.parent) else Path(".")))
    if args.viz:
        viz = Path(args.viz)
        if not single:
            viz.mkdir(parents=True, exist_ok=True)
        check_writable(viz if not single else (viz.parent if str(viz.parent) else Path(".")))

    skipped = [j for j in jobs if _exists(j) and not args.overwrite] if many else []
    todo = [j for j in jobs if j not in skipped]
    options = segment_options(args)
    if "backend" not in options and len(todo) < NUMBA_PAYS_OFF:
        # Loading Numba and its compiled kernels costs about 1 s per process, more than the
        # NumPy reference spends on a few dozen images; both give the same partitions.
        options["backend"] = "numpy"
    extractor_kwargs = extractor_options(args)
    args_dict = {"format": args.format, "upsampling": args.upsampling}
    # Build the extractor once here: a missing weights file or unknown model is a usage error.
    try:
        _init_worker(args.features, extractor_kwargs, options, args_dict)
    except (FileNotFoundError, ValueError, ImportError) as err:
        raise UsageError(str(err)) from None

    reports = _run_jobs(todo, args, extractor_kwargs, options, args_dict)
    failed = [r for r in reports if r["status"] != "ok"]
    for r in failed:
        print(f"uniap-cli: {r['image']}: {r['error']}", file=sys.stderr)
    if args.format == "coco":
        from .io import coco_dataset, write_json

        done = [r["coco"] for r in reports if r["status"] == "ok"]
        if done:
            write_json(out, coco_dataset([(info, recs) for info, recs, _ in done], done[0][2]))
    if not args.quiet:
        _summary(reports, skipped, failed)
    return 1 if failed else 0


def _run_jobs(todo: list[Job], args, extractor_kwargs, options, args_dict) -> list[dict]:
    progress = None
    if len(todo) > 1 and not args.quiet:
        from tqdm.auto import tqdm

        progress = tqdm(total=len(todo), unit="image", desc="uniap", file=sys.stderr)
    reports = []
    try:
        if args.workers > 1 and len(todo) > 1:
            import multiprocessing as mp
            from concurrent.futures import ProcessPoolExecutor

            ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
            with ProcessPoolExecutor(
                max_workers=args.workers, mp_context=ctx, initializer=_init_worker,
                initargs=(args.features, extractor_kwargs, options, args_dict),
            ) as pool:
                for report in pool.map(_process, todo, chunksize=1):
                    reports.append(report)
                    if progress:
                        progress.update()
        else:
            for job in todo:
                reports.append(_process(job))
                if progress:
                    progress.update()
    finally:
        if progress:
            progress.close()
    return reports


def _summary(reports: list[dict], skipped: list[Job], failed: list[dict]) -> None:
    ok = [r for r in reports if r["status"] == "ok"]
    parts = [f"{len(ok)} written"]
    if skipped:
        parts.append(f"{len(skipped)} skipped (output exists; --overwrite replaces)")
    if failed:
        parts.append(f"{len(failed)} failed")
    line = f"uniap-cli: {len(reports) + len(skipped)} image(s): " + ", ".join(parts)
    if ok:
        per = {k: sum(r["timings"][k] for r in ok) / len(ok) for k in ok[0]["timings"]}
        line += " | mean s/image: " + ", ".join(f"{k} {v:.3f}" for k, v in per.items())
    print(line, file=sys.stderr)


def run_command(parser: argparse.ArgumentParser, run: Any, args: argparse.Namespace) -> int:
    """``run(args)`` with the exit statuses of uniap's commands: one line per error, no traceback.

    A :class:`UsageError` prints the usage and returns 2; an interruption or an operating
    system error (a disk full, say) returns 1.
    """
    try:
        return run(args)
    except UsageError as err:
        parser.print_usage(sys.stderr)
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted", file=sys.stderr)
        return 1
    except OSError as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    return run_command(parser, run, parser.parse_args(argv))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
