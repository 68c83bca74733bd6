"""``uniap-cli``: masks for images, folders, file lists or tar shards, as SAM/COCO JSON or PNG.

The command only turns its arguments into one :func:`uniap.pipeline.run`; the pipeline
(sources, stages, sinks and the engine that composes them) lives in :mod:`uniap.pipeline`.

Exit status: 0 when every image was written (or skipped because its outputs exist), 2 for a
usage error (bad arguments, nothing to read, unsafe outputs, missing weights), 1 when any
image failed (listed in ``failures.jsonl``), 130 / 143 when interrupted by SIGINT / SIGTERM.
"""

from __future__ import annotations

import argparse
import signal
import sys
from typing import Any, Sequence

from .features import EXTRACTORS  # the registry: --features' choices
from .features.regions import REFINES, REGION_LEVELS, superpixel_options
from .core.options import DEFAULT_LEVELS
from .superpixels import DEFAULT_METHOD, DEFAULT_SIZE, METHODS
from .pipeline.runner import NUMBA_PAYS_OFF


class UsageError(Exception):
    """A mistake in the command line: reported in one line, exit status 2."""


def _levels(text: str) -> tuple[float, ...]:
    """``0.8,0.6,0.4`` (commas, spaces or both between numbers) as checked thresholds."""
    from .core.options import check_levels

    try:
        values = [float(v) for v in text.replace(",", " ").split()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--levels takes comma-separated numbers such as 0.8,0.6,0.4; got {text!r}"
        ) from None
    try:
        return check_levels(values)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def parse_shard(text: str) -> tuple[int, int] | str:
    """``--shard``'s argparse type: ``(i, n)`` from ``"i/n"``, or ``"auto"``."""
    if text == "auto":
        return text
    try:
        index, count = (int(v) for v in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shard takes i/n such as 0/4, or auto; got {text!r}") from None
    if count < 1 or not 0 <= index < count:
        raise argparse.ArgumentTypeError(f"--shard i/n needs 0 <= i < n; got {text!r}")
    return index, count


def resolve_shard(shard: tuple[int, int] | str | None, device: str | None) -> tuple[tuple[int, int] | None, str | None]:
    """This process's shard and device: ``"auto"`` read from the scheduler's variables.

    With ``auto`` and a local rank (torchrun, ``srun``), ``device="cuda"`` becomes that
    rank's GPU, ``cuda:<local rank>`` (``docs/scale.md``).  A bad variable is a
    :class:`UsageError`.
    """
    if shard != "auto":
        return shard, device  # type: ignore[return-value]
    from .pipeline.shards import shard_from_environment

    try:
        info = shard_from_environment()
    except ValueError as err:
        raise UsageError(str(err)) from None
    if info.local_rank is not None and device == "cuda":
        device = f"cuda:{info.local_rank}"  # one GPU per process
    return info.shard, device


def add_version(parser: argparse.ArgumentParser) -> None:
    """``--version``: the program's name and uniap's version, then exit 0."""
    from ._version import __version__

    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """``parser.parse_args(argv)``, and a usage error for ``--flag=--``.

    argparse (Python 3.11) takes ``--levels=--`` as an empty list of values without calling
    the flag's type or checking its choices; the run would then fail late, image by image.
    """
    args = parser.parse_args(argv)
    for action in parser._actions:
        if action.option_strings and action.nargs is None and getattr(args, action.dest, None) == [] \
                and action.default != []:
            parser.error(f"argument {'/'.join(action.option_strings)}: expected a value, got '--'")
    return args


def _int_at_least(text: str, least: int, expected: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
    if value < least:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
    return value


def _fraction(text: str) -> float:
    """A number in [0, 1] (argparse type)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not in [0, 1]")
    return value


def positive_int(text: str) -> int:
    return _int_at_least(text, 1, "a positive integer")


def workers_count(text: str) -> int | str:
    """``auto`` or a positive integer (argparse type of ``--workers``)."""
    return "auto" if text.strip().lower() == "auto" else _int_at_least(text, 1, "a positive integer or 'auto'")


def nonnegative_int(text: str) -> int:
    return _int_at_least(text, 0, "an integer >= 0")


def add_input_output_arguments(io: Any, batch_help: str) -> None:
    """The input and output flags that ``uniap-cli`` shares with commands built on
    :func:`uniap.pipeline.run` (``uniap-predict``): inputs, ``--file-list``, ``--out``,
    ``--format``, ``--image-ids``, ``--viz``, ``--viz-style``, ``--overwrite``, ``--shard``, ``--batch-size``,
    ``--max-pixels``, ``--quiet``."""
    io.add_argument("inputs", nargs="*",
                    help="image files, folders (searched recursively), glob patterns or .tar shards")
    io.add_argument("--file-list", action="append", metavar="FILE",
                    help="a file naming one input a line, relative to its folder ('-': standard input); repeatable")
    io.add_argument("--out", required=True,
                    help="a file for one image; a folder (existing, ending in '/', or for several "
                    "images) mirrors each input's path (a/img.jpg -> OUT/a/img.json); "
                    "--format coco: one file; --format png, amg: a folder with one folder per image")
    from . import formats  # the registry: choices and help, one entry per format

    io.add_argument("--format", choices=formats.names(), default="sam",
                    help="; ".join(f"{fmt.name}: {fmt.help}" for fmt in formats.formats()))
    io.add_argument("--polygons", action="store_true",
                    help="--format coco: segmentations as polygons (CVAT, LabelMe imports; holes "
                    "joined to the outline by a zero-width cut) instead of RLE")
    io.add_argument("--image-ids", metavar="COCO_JSON",
                    help="take image ids from this COCO file, matched by file_name (default: stable "
                    "ids from each image's relative path)")
    io.add_argument("--viz", metavar="PNG",
                    help="also draw the image and each level's masks: a file for one image, a folder for many")
    io.add_argument("--viz-style", choices=("levels", "overlay"),
                    help="levels: the image and one panel per level, colours following regions from "
                    "level to level, contour regions on their own rows (default); overlay: all masks "
                    "over the image in one picture, largest first, as SAM's show_anns")
    io.add_argument("--overwrite", action="store_true",
                    help="replace these images' existing outputs (default: skip images done with the "
                    "same settings; refuse outputs made otherwise)")
    io.add_argument("--shard", type=parse_shard, metavar="I/N|auto",
                    help="process only images i, i+n, i+2n, ... of the inputs sorted by path (0 <= i < n); "
                    "auto: from SLURM array or RANK/WORLD_SIZE variables, LOCAL_RANK picking the GPU "
                    "(docs/scale.md)")
    io.add_argument("--batch-size", type=positive_int, default=4, metavar="N", help=batch_help)
    io.add_argument("--max-pixels", type=nonnegative_int, metavar="N",
                    help="refuse (as a failed image) an image of more than N pixels, height x width, "
                    "read from its header before decoding (default 89478485, Pillow's "
                    "decompression-bomb limit: 9459 x 9459; 0: no limit)")
    io.add_argument("--quiet", action="store_true", help="no progress bar or summary")


def check_viz_style(args: argparse.Namespace) -> None:
    """``--viz-style`` draws ``--viz`` pictures: alone it would be silently ignored."""
    if args.viz_style and not args.viz:
        raise UsageError("--viz-style applies with --viz only: name the picture (--viz PNG)")


def check_polygons(args: argparse.Namespace) -> None:
    """``--polygons`` changes COCO segmentations: with another format it would be silently ignored."""
    if args.polygons and args.format != "coco":
        raise UsageError("--polygons applies to --format coco only (--format labelme writes polygons itself)")


def read_image_ids(path: str | None) -> dict[str, int] | None:
    """``--image-ids``: image id by relative path from a COCO file (None without one)."""
    if path is None:
        return None
    from .formats.coco import coco_image_ids

    try:
        return coco_image_ids(path)
    except (OSError, ValueError) as err:
        raise UsageError(f"--image-ids: {err}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="uniap-cli",
        description="Unsupervised multi-granular masks for images with UniAP "
        "(fast universal agglomerative pooling).",
        epilog="Example: uniap-cli photo.jpg --out masks.json --viz masks.png",
    )
    add_version(parser)
    io = parser.add_argument_group("input and output")
    add_input_output_arguments(
        io, batch_help="images per batch: pooled in one call, one ViT batch per image shape (default 4)")
    io.add_argument("--all-levels", action="store_true",
                    help="one record per mask and level (default: each distinct mask once, with the levels it spans)")
    io.add_argument("--workers", type=workers_count, default="auto", metavar="N",
                    help="processes working on different images, this one included (default auto: one "
                    "per core for a folder, the memory allowing; 1 for a single batch, a GPU or a ViT)")
    io.add_argument("--engine", choices=("local", "ray"), default="local",
                    help="local: this machine's processes (default); ray: Ray Data, on a local Ray "
                    "or the cluster at --ray-address (pip install 'uniap[ray]')")
    io.add_argument("--ray-address", metavar="ADDR", help="join this Ray cluster (--engine ray)")
    io.add_argument("--num-gpus", type=float, metavar="G",
                    help="GPUs per Ray actor (default: 1 with --device cuda, else 0)")

    algo = parser.add_argument_group("UniAP settings (defaults: the library's)")
    algo.add_argument("--refine", choices=REFINES, default="superpixels",
                      help="UniAP's nodes: superpixels, each pooling the patch features under it, so masks "
                      "follow the image's edges (default), or none: the feature patches (8 or 16 "
                      "pixel staircases)")
    algo.add_argument("--superpixel-size", type=positive_int, metavar="PIXELS",
                      help=f"mean superpixel area (default {DEFAULT_SIZE}; --refine superpixels)")
    algo.add_argument("--superpixel-method", choices=tuple(METHODS), metavar="|".join(METHODS),
                      help=f"how superpixels are made (default {DEFAULT_METHOD}: a hierarchical watershed "
                      "that follows the image's edges; slic: compact SLIC superpixels)")
    algo.add_argument("--contours", action=argparse.BooleanOptionalAction, default=None,
                      help="also write the contour regions of the watershed superpixels' hierarchy "
                      "(kind \"contour\"; default on with watershed superpixels)")
    algo.add_argument("--levels", type=_levels, metavar="T1,T2,...",
                      help="strictly decreasing cosine thresholds in [-1, 1] (default "
                      f"{','.join(f'{t:g}' for t in REGION_LEVELS)} with superpixels, "
                      f"{','.join(f'{t:g}' for t in DEFAULT_LEVELS)} with --refine none)")
    algo.add_argument("--min-size", type=positive_int, metavar="NODES",
                      help="smallest cluster reported as a mask, in superpixels or patches (default 4)")
    algo.add_argument("--pred-iou-thresh", type=_fraction, default=0.0, metavar="T",
                      help="write only masks whose predicted_iou >= T, as amg.py (default 0: all)")
    algo.add_argument("--stability-score-thresh", type=_fraction, default=0.0, metavar="T",
                      help="write only masks whose stability_score >= T, as amg.py (default 0: all)")
    algo.add_argument("--max-masks", type=nonnegative_int, default=0, metavar="N",
                      help="then write at most N masks an image, those of highest score (default 0: all)")
    algo.add_argument("--preset", choices=("released", "paper"),
                      help="released: the authors' code (default); paper: the paper's wording")
    algo.add_argument("--passes", choices=("until_stable", "single"))
    algo.add_argument("--pooling", choices=("sum", "attention"))
    algo.add_argument("--vote-weight", type=float, metavar="W", help="weight of the paper's voting term")
    algo.add_argument("--connectivity", type=int, choices=(4, 8))
    algo.add_argument("--semantic", action="store_true", default=None,
                      help="also output semantic groups (alike regions anywhere in the image)")
    algo.add_argument("--backend", choices=("auto", "numpy", "numba", "torch", "cupy"),
                      help=f"pooling backend (default: numba; numpy with --refine none below {NUMBA_PAYS_OFF} "
                      "images, where loading Numba would cost more than it saves; torch "
                      "for ViT features on a GPU)")
    algo.add_argument("--upsampling", choices=("nearest", "bilinear"), default="nearest",
                      help="--refine none: patch labels to pixels, nearest (default) or a bilinear "
                      "refinement")

    feats = parser.add_argument_group("features")
    feats.add_argument("--features", choices=tuple(EXTRACTORS), default="default",
                       help="the feature extractor, from the registry uniap.features.EXTRACTORS: "
                       + "; ".join(f"{name}: {extractor_help(name)}" for name in EXTRACTORS))
    feats.add_argument("--model", help="timm model name for --features vit (default: the model --weights "
                       "hold, else vit_small_patch8_224.dino; without --weights its release is "
                       "downloaded once unless HF_HUB_OFFLINE is set)")
    feats.add_argument("--weights", metavar="FILE", help="ViT weights (.pth/.pt/.safetensors, or a "
                       "Hugging Face Dinov2Model folder)")
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


def refine_options(args: argparse.Namespace) -> dict[str, Any]:
    """The superpixel options the user set (:class:`uniap.features.RegionFeatures` keywords)."""
    return superpixel_options(args.superpixel_size, args.superpixel_method, args.contours)


# what --features lists for the built-in extractors (another one: its docstring's first line)
EXTRACTOR_HELP = {"default": "embedded colour/texture features, no weights", "vit": "a timm ViT"}


def extractor_help(name: str) -> str:
    """One line on the registered extractor ``name`` for ``--features``' help."""
    if name in EXTRACTOR_HELP:
        return EXTRACTOR_HELP[name]
    doc = (EXTRACTORS[name].__doc__ or "").strip()
    return doc.splitlines()[0].rstrip(".") if doc else "a registered extractor"


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
    kwargs = {key: getattr(args, attr) for attr, key in names.items() if getattr(args, attr) is not None}
    if args.features != "vit":  # another registered extractor: only the flags its constructor takes
        import inspect

        taken = inspect.signature(EXTRACTORS[args.features]).parameters
        if not any(p.kind is p.VAR_KEYWORD for p in taken.values()):
            for attr, key in names.items():
                if key in kwargs and key not in taken:
                    raise UsageError(f"--{attr.replace('_', '-')} does not apply to --features {args.features}")
    return kwargs


def run(args: argparse.Namespace) -> int:
    """Turn the arguments into one :func:`uniap.pipeline.run` and report what it did."""
    from .pipeline.plan import PlanError
    from .pipeline.runner import run as run_pipeline
    from .pipeline.sources import InputError

    if not args.inputs and not args.file_list:
        raise UsageError("give at least one image, folder, glob, tar shard or --file-list")
    if args.engine != "ray" and (args.ray_address or args.num_gpus is not None):
        raise UsageError("--ray-address and --num-gpus apply to --engine ray only")
    extractor_kwargs = extractor_options(args)
    shard, device = resolve_shard(args.shard, extractor_kwargs.get("device"))
    if device is not None:
        extractor_kwargs["device"] = device
    check_polygons(args)
    image_ids = read_image_ids(args.image_ids)
    check_viz_style(args)
    try:
        summary = run_pipeline(
            args.inputs, args.out, file_lists=args.file_list or (), format=args.format, viz=args.viz,
            overwrite=args.overwrite, shard=shard, workers=args.workers, batch_size=args.batch_size,
            engine=args.engine, ray_address=args.ray_address, num_gpus=args.num_gpus, image_ids=image_ids,
            features=args.features, extractor_options=extractor_kwargs,
            segment_options=segment_options(args), upsampling=args.upsampling, refine=args.refine,
            refine_options=refine_options(args),
            all_levels=bool(args.all_levels), progress=not args.quiet, max_pixels=args.max_pixels,
            pred_iou_thresh=args.pred_iou_thresh, stability_score_thresh=args.stability_score_thresh,
            max_masks=args.max_masks, viz_style=args.viz_style or "levels", polygons=args.polygons,
        )
    except (InputError, PlanError) as err:
        raise UsageError(str(err)) from None
    except (FileNotFoundError, ValueError, ImportError) as err:  # the extractor cannot be built
        raise UsageError(str(err)) from None
    for report in summary.failures:
        print(f"uniap-cli: {report.source}: {report.error}", file=sys.stderr)
    if summary.failures_error:
        print(f"uniap-cli: error: {summary.failures_error}", file=sys.stderr)
    if not args.quiet:
        _summary(summary)
    return 1 if summary.failures else 0


def _summary(summary) -> None:
    parts = [f"{summary.written} written"]
    if summary.skipped:
        parts.append(f"{summary.skipped} skipped (done with the same settings; --overwrite replaces)")
    if summary.failures:
        where = f"listed in {summary.failures_path}" if summary.failures_path else "not listed: see above"
        parts.append(f"{len(summary.failures)} failed ({where})")
    total = summary.written + summary.skipped + len(summary.failures)
    line = f"uniap-cli: {total} image(s): " + ", ".join(parts)
    if summary.written:
        line += " | mean s/image: " + ", ".join(f"{k} {v:.3f}" for k, v in summary.timings.items())
        line += f" | {summary.written / max(summary.wall, 1e-9):.1f} images/s"
    print(line, file=sys.stderr)


def run_command(parser: argparse.ArgumentParser, run: Any, args: argparse.Namespace) -> int:
    """``run(args)`` with the exit statuses of uniap's commands: one line per error, no traceback.

    A :class:`UsageError` prints the usage and returns 2; SIGINT returns 130 and SIGTERM 143
    (both raised in the main thread, so temporaries are removed on the way out); an operating
    system error (a disk full, say) returns 1.
    """
    try:
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
        previous_int = signal.signal(signal.SIGINT, _on_sigint)
    except ValueError:  # not the main thread: leave signals alone
        previous = previous_int = None
    try:
        return run(args)
    except UsageError as err:
        parser.print_usage(sys.stderr)
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted", file=sys.stderr)
        return 130
    except _Terminated:
        print(f"{parser.prog}: terminated", file=sys.stderr)
        return 143
    except OSError as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return 1
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
            signal.signal(signal.SIGINT, previous_int)


class _Terminated(BaseException):
    """SIGTERM, raised in the main thread so that temporaries are removed on the way out."""


def _deferred(signum: int) -> bool:
    """Whether the signal waits: this process is on a chunk of its own (sent again, and
    raised, once it is done: :func:`uniap.pipeline.engine.deferred_signal`)."""
    engine = sys.modules.get("uniap.pipeline.engine")
    return engine is not None and engine.deferred_signal(signum)


def _on_sigterm(signum, frame) -> None:  # noqa: ARG001 - signal handler signature
    if not _deferred(signum):
        raise _Terminated()


def _on_sigint(signum, frame) -> None:  # noqa: ARG001 - signal handler signature
    if not _deferred(signum):  # raised inside a Numba kernel it became that image's failure
        raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    return run_command(parser, run, parse_args(parser, argv))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
