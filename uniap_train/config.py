"""Typed training configuration: dataclasses loaded from YAML, validated, overridable.

A run is described by one :class:`TrainConfig`.  :func:`load_config` reads a YAML file, applies
``--set a.b=value`` overrides (:func:`apply_overrides`) and checks every key, type and value;
anything wrong raises :class:`ConfigError` with a one-line message naming the key, e.g.::

    optim.lr: expected a number, got 'fast'
    unknown key 'optim.lrr' (did you mean 'optim.lr'?)

:func:`save_config` writes the resolved configuration beside the run (``output_dir/config.yaml``),
so every run can be repeated from its own folder.  ``docs/training.md`` documents every key.

Relative paths are relative to the working directory of the run (the repository root for the
example configs); ``$VAR`` and ``${VAR}`` in paths are expanded from the environment.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

__all__ = [
    "ConfigError",
    "TrainConfig",
    "DataConfig",
    "CropConfig",
    "BackboneConfig",
    "UniAPConfig",
    "ModelConfig",
    "LossConfig",
    "OptimConfig",
    "LogConfig",
    "CheckpointConfig",
    "EvalConfig",
    "DistConfig",
    "load_config",
    "config_from_dict",
    "config_to_dict",
    "apply_overrides",
    "save_config",
]


class ConfigError(ValueError):
    """A configuration problem, reported in one line (the CLI exits with status 2)."""


# ---------------------------------------------------------------------------------------------
# The schema.  Every field's comment is its documentation (docs/training.md repeats it).
# ---------------------------------------------------------------------------------------------


@dataclass
class DataConfig:
    # image folder (searched recursively), COCO list, or tar shards streamed in place (SA-1B,
    # WebDataset: every image member is a sample; no list of images is made)
    kind: Literal["folder", "coco", "shards"] = "folder"
    # folder of images (folder), the folder holding file_name entries (coco), or the shards
    # (shards): a .tar, a folder of .tar, a glob or a brace list (sa_{000000..000999}.tar)
    root: str = ""
    annotations: Optional[str] = None  # COCO-style JSON with an "images" list (kind=coco)
    max_images: int = 0  # use only the first N images in sorted order (0 = all)
    batch_size: int = 8  # GLOBAL batch (images per step over all processes)
    num_workers: int = 0  # DataLoader worker processes per training process
    max_side: int = 512  # images are downscaled so that their longer side is at most this
    # kind shards: member references mixed at a time by each stream's shuffle buffer (0 = shard order)
    shuffle_buffer: int = 1000
    # kind shards: images per shard, for epoch arithmetic (0 = count the shards' headers at the
    # start; SA-1B: about 11,000, saving a pass over 1,000 shards' headers)
    shard_images: int = 0


@dataclass
class CropConfig:
    global_size: int = 224  # side of the 2 global views (pixels, a multiple of the patch size)
    local_size: int = 96  # side of the local views
    num_local: int = 6  # local views per image
    global_scale: tuple[float, float] = (0.4, 1.0)  # area fraction of the image per global crop
    local_scale: tuple[float, float] = (0.05, 0.4)  # area fraction per local crop
    ratio: tuple[float, float] = (0.75, 1.3333333)  # aspect ratio range of crops (w / h)
    # recipe paper: the teacher sees the whole image, its longer side resized to this many
    # pixels and padded to a square (a multiple of the patch size); the global crops are unused
    teacher_size: int = 224
    # recipe paper: the student also sees the whole image (the teacher's view with its own flip
    # and colour jitter), as it does at inference, besides the local crops
    student_whole: bool = True
    flip_prob: float = 0.5  # probability of a horizontal flip per view
    jitter_prob: float = 0.8  # probability of colour jitter per view
    brightness: float = 0.4  # jitter strengths (factor drawn in [1 - s, 1 + s])
    contrast: float = 0.4
    saturation: float = 0.2
    grayscale_prob: float = 0.2  # probability of converting a view to grey


@dataclass
class BackboneConfig:
    kind: Literal["default", "vit"] = "default"  # uniap.features extractor; frozen
    model: str = "vit_small_patch8_224.dino"  # timm model name (kind=vit)
    weights: Optional[str] = None  # local weights file (kind=vit)
    options: dict = field(default_factory=dict)  # extra keyword arguments for the extractor
    # kind=default: colour/texture words per image (null), fitted once on the training images
    # ("shared", saved as OUTPUT_DIR/vocabulary.npz), or read from a saved .npz file (a path)
    vocabulary: Optional[str] = None
    vocabulary_images: int = 500  # most training images the shared words are fitted on
    # recipe paper, kind vit: fine-tune the ViT with the neck, decoder and heads (student and
    # EMA teacher each own a copy); false: the backbone stays frozen
    trainable: bool = False
    lr_scale: float = 0.1  # learning rate of a trainable backbone relative to the rest (Mask2Former's 0.1)
    # a trainable ViT recomputes its blocks' activations in the backward pass instead of keeping
    # them (timm's gradient checkpointing): less GPU memory for about a third more backbone time
    checkpointing: bool = False


@dataclass
class UniAPConfig:
    levels: tuple[float, ...] = (0.8, 0.7, 0.6, 0.5, 0.4)  # thresholds, strictly decreasing
    min_size: int = 2  # clusters with fewer cells give no query
    preset: Literal["released", "paper"] = "released"
    connectivity: Literal[4, 8] = 4
    # recipe paper: the teacher's UniAP nodes: the fine map's cells (fine), or the working
    # image's watershed superpixels pooling the fine map (superpixels: pixel-accurate masks)
    nodes: Literal["fine", "superpixels"] = "superpixels"
    # recipe paper: per image, level k's threshold is the similarity that this share of the
    # node graph's edges exceed (thresholds calibrated from the features; null: uniap.levels)
    edge_fractions: Optional[tuple[float, ...]] = None
    superpixel_size: int = 150  # pixels (of the image at data.max_side) per superpixel
    contours: bool = False  # superpixels: the watershed's contour regions are teacher masks too


@dataclass
class ModelConfig:
    hidden_dim: int = 2048  # DINO head: 3-layer MLP hidden width
    bottleneck_dim: int = 256  # DINO head: bottleneck width (L2-normalised)
    out_dim: int = 512  # K, number of prototypes (weight-normed last layer)
    norm_last_layer: bool = True  # fix the prototypes' norms to 1 (DINO's default)
    attention_temp: float = 0.1  # T of the per-pixel attention softmax(cos(pixel, query) / T)
    # recipe paper: the neck and the Mask2Former-style decoder
    dim: int = 256  # width of the neck's projections and of the decoder's queries
    decoder_layers: int = 6  # L decoder layers (masked cross-attention, self-attention, FFN)
    num_heads: int = 8  # attention heads of the decoder (dim must be divisible by it)
    ffn_dim: int = 1024  # hidden width of the decoder's feed-forward layers
    num_semantic_queries: int = 50  # learnable [SEM] queries
    num_instance_queries: int = 150  # learnable [INS] queries
    # fpn: a feature pyramid (torchvision) over the coarse, patch and fine scales; simple: the
    # ViTDet-style simple pyramid of per-scale projections (the first version of this model)
    pixel_decoder: Literal["fpn", "simple"] = "fpn"
    pixel_stem: int = 32  # channels of a convolution stem on the views' pixels (fpn; 0 = none)
    deep_supervision: bool = True  # mask and score losses on every decoder layer's prediction


@dataclass
class LossConfig:
    student_temp: float = 0.1
    teacher_temp: float = 0.07  # final teacher temperature
    warmup_teacher_temp: float = 0.04  # teacher temperature at step 0
    # steps of the linear teacher temperature warm-up (1000: 1% of the default 100k-step run, as
    # the old default of 1 epoch in 100; clamped to the run's length; 0 = teacher_temp from step 0)
    warmup_teacher_temp_steps: int = 1000
    center_momentum: float = 0.9  # EMA of the centre (averaged over the global batch)
    centering: Literal["ema", "sinkhorn"] = "ema"  # teacher centring: DINO's EMA centre or Sinkhorn-Knopp
    region_size: int = 7  # points per side sampled in the common region of two views
    # recipe paper: weights of the loss terms and Mask2Former's point sampling
    querysd_weight: float = 1.0  # QuerySD cross-entropy of matched queries
    dice_weight: float = 5.0  # Dice loss of matched masks
    bce_weight: float = 5.0  # binary cross-entropy of matched masks
    num_points: int = 12544  # points sampled per mask for the mask losses (Mask2Former: 112 * 112)
    oversample_ratio: float = 3.0  # candidate points per sampled point
    importance_ratio: float = 0.75  # share of points taken where the student is most uncertain
    min_mask_area: float = 0.02  # a cropped teacher mask covering less of the view is dropped
    score_weight: float = 2.0  # BCE of every query's score against its mask's IoU with its match (0 if none)
    # what a matched query's score learns: "iou" (its binarised mask's IoU with its match, SAM's
    # predicted IoU: large masks match the teacher's coarse levels at a high IoU and rank first)
    # or "matched" (1 whatever the IoU, Mask2Former's object / no-object class: no size bias)
    score_target: str = "iou"
    # which teacher masks the [SEM] queries are matched to: "levels" (every level's semantic
    # groups, each distinct group once: up to ~160 overlapping groups for 16 queries) or
    # "partition" (one level's groups, a partition of the image: per image the finest level with
    # at most num_semantic_queries groups covering min_mask_area of it, else the coarsest)
    semantic_targets: str = "levels"


# The longest run, in steps: every schedule is an array with one float64 per step (lr, weight
# decay, teacher momentum, teacher temperature), built before step 1, so 10 million steps cost
# 320 MB and an unbounded optim.epochs (1e30, 2e8 x steps per epoch) would exhaust memory.
# 10 million steps at batch 64 are 640 million images, 50 epochs of SA-1B's 11 million.
MAX_STEPS = 10_000_000


@dataclass
class OptimConfig:
    # The run's length, given one way only: total_steps (the default way) or epochs (then
    # total_steps is null). Every schedule is counted in steps; epochs are converted to
    # ceil(epochs x steps per epoch) steps once, when training starts, and that is logged.
    total_steps: Optional[int] = 100000  # run length in steps (DINO's 100 ImageNet epochs at batch 1024: 125k)
    epochs: Optional[float] = None  # run length in epochs (fractional allowed) instead of total_steps
    max_steps: int = 0  # stop after this many steps (0 = at the run's length); schedules keep their length
    # linear learning-rate warm-up in steps (1000: 1% of the default run, as the old default of
    # 1 epoch in 100; clamped to the run's length; 0 = none)
    warmup_steps: int = 1000
    lr: float = 5e-4  # base learning rate for a global batch of 256 (scaled by batch / 256)
    min_lr: float = 1e-6  # final learning rate of the cosine
    weight_decay: float = 0.04  # start of the weight-decay cosine (biases and norms: none)
    weight_decay_end: float = 0.4  # end of the weight-decay cosine
    momentum_teacher: float = 0.996  # start of the teacher EMA momentum cosine (ends at 1)
    clip_grad: float = 3.0  # per-parameter gradient norm clip (0 = off)
    # steps during which the DINO head's prototypes (last layer) get no update (1000: 1% of the
    # default run; DINO: 1 epoch of ImageNet at batch 1024, 1251 steps); clamped to the run's length
    freeze_last_layer_steps: int = 1000
    betas: tuple[float, float] = (0.9, 0.999)
    amp: bool = True  # mixed precision on CUDA (ignored on CPU)
    # autocast's type with optim.amp: float16 (with a gradient scaler) or bfloat16 (no scaler:
    # float32's range; A100, H100 and later)
    amp_dtype: Literal["float16", "bfloat16"] = "float16"
    compile: bool = False  # torch.compile the student (the first steps compile; CUDA mostly)


@dataclass
class LogConfig:
    every_steps: int = 10  # metrics.csv / TensorBoard row every N steps (and the last step)
    tensorboard: bool = True  # write TensorBoard events when tensorboard is installed
    progress: bool = True  # progress on rank 0: a bar on a terminal, a line every 30 s in a log


@dataclass
class CheckpointConfig:
    every_steps: int = 1000  # write checkpoint_last.pt every N steps (and at the end)
    keep_every: int = 0  # also keep checkpoint_<step>.pt every N steps (0 = never)


@dataclass
class EvalConfig:
    images: Optional[str] = None  # folder of images (None = no evaluation)
    labels: Optional[str] = None  # folder of label maps, matched to images by file stem
    num_classes: int = 0  # classes in the label maps (ids 0..C-1)
    ignore_index: Optional[int] = None  # void label (CamVid: 11)
    num_clusters: int = 0  # k of k-means (0 = num_classes)
    max_images: int = 0  # evaluate on the first N pairs (0 = all)
    max_side: int = 480  # images are downscaled so that their longer side is at most this
    every_steps: int = 0  # evaluate every N steps during training (0 = only at the end)
    at_start: bool = True  # also evaluate before the first step (and the k-means baseline)
    embedding: Literal["logits", "bottleneck"] = "logits"  # per-pixel vector clustered by k-means
    kmeans_iters: int = 100
    seed: int = 0


@dataclass
class DistConfig:
    backend: Literal["auto", "gloo", "nccl"] = "auto"  # auto: nccl on CUDA, gloo on CPU
    timeout_minutes: float = 30.0


@dataclass
class TrainConfig:
    """The whole configuration of a training run: one YAML file (``docs/training.md``).

    Build it with :func:`load_config` (a file plus ``--set`` overrides, validated), not
    directly; every key and its default is described in ``docs/training.md``.

    Attributes
    ----------
    output_dir : str
        Checkpoints, logs and the resolved config go here.
    seed : int
        Seeds every random generator (data order, crops, initialisation).
    device : str
        "auto" (CUDA when available), "cpu", "cuda" or "cuda:N".
    threads : int
        torch CPU threads per process (0: torch's default).
    resume : str or None
        A checkpoint to resume from, or "auto" (``output_dir/checkpoint_last.pt`` if any).
    recipe : {"released", "paper"}
        The released code's recipe (DINO heads on UniAP queries) or the paper's (a mask
        decoder with semantic and instance queries, Dice-matched to the teacher's masks).
    data, crops, backbone, uniap, model, loss, optim, log, checkpoint, eval, dist
        The sections of the file (:class:`DataConfig`, :class:`CropConfig`, ...).

    Examples
    --------
    >>> from uniap_train import load_config
    >>> load_config(None, ["data.root=images", "recipe=paper"]).recipe
    'paper'
    """

    output_dir: str = "runs/uniap_train"
    seed: int = 0
    device: str = "auto"  # auto (CUDA when available), cpu, cuda, cuda:N
    threads: int = 0  # torch CPU threads per process (0 = torch's default)
    resume: Optional[str] = None  # checkpoint path, or "auto" = output_dir/checkpoint_last.pt if any
    # training recipe: the released code's (DINO heads on UniAP queries) or the paper's (a mask
    # decoder with semantic and instance queries, Dice-matched to the teacher's UniAP masks)
    recipe: Literal["released", "paper"] = "released"
    data: DataConfig = field(default_factory=DataConfig)
    crops: CropConfig = field(default_factory=CropConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    uniap: UniAPConfig = field(default_factory=UniAPConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    log: LogConfig = field(default_factory=LogConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    dist: DistConfig = field(default_factory=DistConfig)

    def validate(self) -> "TrainConfig":
        """Check values (types were checked on loading); raise :class:`ConfigError`."""
        _validate(self)
        return self


# ---------------------------------------------------------------------------------------------
# Value checks
# ---------------------------------------------------------------------------------------------


def _need(cond: bool, key: str, message: str, value: Any) -> None:
    if not cond:
        raise ConfigError(f"{key}: {message}, got {value!r}")


def _finite(obj: Any, prefix: str) -> None:
    """Every number of the configuration is finite (``optim.lr=.inf`` would pass ``> 0``)."""
    for f in dataclasses.fields(obj):
        value, key = getattr(obj, f.name), f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            _finite(value, key + ".")
        elif isinstance(value, float) or (isinstance(value, tuple) and value and isinstance(value[0], float)):
            values = value if isinstance(value, tuple) else (value,)
            _need(all(math.isfinite(v) for v in values), key, "must be finite", value)


def _validate(c: TrainConfig) -> None:
    _finite(c, "")
    _need(bool(c.output_dir), "output_dir", "must be a non-empty path", c.output_dir)
    _need(
        c.device in ("auto", "cpu", "cuda") or c.device.startswith("cuda:"),
        "device", "must be auto, cpu, cuda or cuda:N", c.device,
    )
    _need(0 <= c.seed < 2**63, "seed", "must be an integer in [0, 2**63)", c.seed)
    _need(c.threads >= 0, "threads", "must be >= 0 (0 = torch's default)", c.threads)
    d = c.data
    _need(bool(d.root), "data.root", "must name a folder of images", d.root)
    if d.kind == "coco":
        _need(bool(d.annotations), "data.annotations", "is required when data.kind is coco", d.annotations)
    _need(d.max_images >= 0, "data.max_images", "must be >= 0", d.max_images)
    _need(d.batch_size >= 1, "data.batch_size", "must be >= 1", d.batch_size)
    _need(d.num_workers >= 0, "data.num_workers", "must be >= 0", d.num_workers)
    _need(d.max_side >= 16, "data.max_side", "must be >= 16", d.max_side)
    _need(d.shuffle_buffer >= 0, "data.shuffle_buffer", "must be >= 0 (0 = no shuffle buffer)", d.shuffle_buffer)
    _need(d.shard_images >= 0, "data.shard_images", "must be >= 0 (0 = count)", d.shard_images)
    _need(d.kind == "shards" or d.shard_images == 0, "data.shard_images", "is for data.kind: shards",
          d.shard_images)
    _need(d.kind != "shards" or d.max_images == 0, "data.max_images",
          "is not for data.kind: shards (name fewer shards instead)", d.max_images)
    k = c.crops
    _need(k.global_size >= 8, "crops.global_size", "must be >= 8", k.global_size)
    _need(k.local_size >= 8, "crops.local_size", "must be >= 8", k.local_size)
    _need(k.num_local >= 0, "crops.num_local", "must be >= 0", k.num_local)
    _need(k.teacher_size >= 8, "crops.teacher_size", "must be >= 8", k.teacher_size)
    if c.recipe == "paper":
        _need(k.num_local >= 1, "crops.num_local", "must be >= 1 for recipe paper (the student sees local crops)",
              k.num_local)
    for name in ("global_scale", "local_scale"):
        lo, hi = getattr(k, name)
        _need(0 < lo <= hi <= 1, f"crops.{name}", "must be [lo, hi] with 0 < lo <= hi <= 1", [lo, hi])
    _need(0 < k.ratio[0] <= k.ratio[1], "crops.ratio", "must be [lo, hi] with 0 < lo <= hi", list(k.ratio))
    for name in ("flip_prob", "jitter_prob", "grayscale_prob"):
        v = getattr(k, name)
        _need(0 <= v <= 1, f"crops.{name}", "must be a probability in [0, 1]", v)
    for name in ("brightness", "contrast", "saturation"):
        v = getattr(k, name)
        _need(0 <= v < 1, f"crops.{name}", "must be in [0, 1)", v)
    b = c.backbone
    if b.vocabulary is not None:
        _need(b.kind == "default", "backbone.vocabulary", "applies to kind default only", b.vocabulary)
        _need(bool(b.vocabulary), "backbone.vocabulary", "must be null, shared or a .npz path", b.vocabulary)
    _need(b.vocabulary_images >= 1, "backbone.vocabulary_images", "must be >= 1", b.vocabulary_images)
    if b.trainable:
        _need(c.recipe == "paper" and b.kind == "vit", "backbone.trainable",
              "true needs recipe paper and backbone.kind vit", b.trainable)
        _need(c.eval.images is None, "eval.images",
              "is not supported with backbone.trainable (evaluate the checkpoint with uniap-eval)", c.eval.images)
    _need(b.lr_scale > 0, "backbone.lr_scale", "must be > 0", b.lr_scale)
    u = c.uniap
    _need(len(u.levels) >= 1, "uniap.levels", "must hold at least one threshold", list(u.levels))
    _need(all(-1 <= t <= 1 for t in u.levels), "uniap.levels", "must lie in [-1, 1]", list(u.levels))
    _need(
        all(a > b for a, b in zip(u.levels, u.levels[1:])),
        "uniap.levels", "must be strictly decreasing", list(u.levels),
    )
    _need(u.min_size >= 1, "uniap.min_size", "must be >= 1", u.min_size)
    _need(u.superpixel_size >= 1, "uniap.superpixel_size", "must be >= 1", u.superpixel_size)
    if u.edge_fractions is not None:
        f = list(u.edge_fractions)
        _need(len(f) >= 1 and all(0 < a < 1 for a in f) and all(a < b for a, b in zip(f, f[1:])),
              "uniap.edge_fractions", "must be strictly increasing shares in (0, 1)", f)
    _need(not u.contours or u.nodes == "superpixels", "uniap.contours", "needs uniap.nodes: superpixels",
          u.contours)
    m = c.model
    for name in ("hidden_dim", "bottleneck_dim", "out_dim"):
        _need(getattr(m, name) >= 1, f"model.{name}", "must be >= 1", getattr(m, name))
    _need(m.attention_temp > 0, "model.attention_temp", "must be > 0", m.attention_temp)
    for name in ("dim", "decoder_layers", "num_heads", "ffn_dim", "num_semantic_queries", "num_instance_queries"):
        _need(getattr(m, name) >= 1, f"model.{name}", "must be >= 1", getattr(m, name))
    _need(m.dim % m.num_heads == 0, "model.dim", f"must be divisible by model.num_heads ({m.num_heads})", m.dim)
    _need(m.pixel_stem >= 0, "model.pixel_stem", "must be >= 0 (0 = no stem)", m.pixel_stem)
    _need(m.pixel_stem == 0 or m.pixel_decoder == "fpn", "model.pixel_stem", "needs model.pixel_decoder: fpn",
          m.pixel_stem)
    lo = c.loss
    for name in ("student_temp", "teacher_temp", "warmup_teacher_temp"):
        _need(getattr(lo, name) > 0, f"loss.{name}", "must be > 0", getattr(lo, name))
    _need(lo.warmup_teacher_temp_steps >= 0, "loss.warmup_teacher_temp_steps", "must be >= 0",
          lo.warmup_teacher_temp_steps)
    _need(0 <= lo.center_momentum < 1, "loss.center_momentum", "must be in [0, 1)", lo.center_momentum)
    _need(lo.region_size >= 1, "loss.region_size", "must be >= 1", lo.region_size)
    for name in ("querysd_weight", "dice_weight", "bce_weight", "score_weight"):
        _need(math.isfinite(getattr(lo, name)) and getattr(lo, name) >= 0, f"loss.{name}",
              "must be a finite number >= 0", getattr(lo, name))
    _need(lo.score_target in ("iou", "matched"), "loss.score_target", "must be 'iou' or 'matched'",
          lo.score_target)
    _need(lo.semantic_targets in ("levels", "partition"), "loss.semantic_targets",
          "must be 'levels' or 'partition'", lo.semantic_targets)
    _need(lo.num_points >= 0, "loss.num_points", "must be >= 0 (0 = every target point)", lo.num_points)
    _need(lo.oversample_ratio >= 1, "loss.oversample_ratio", "must be >= 1", lo.oversample_ratio)
    _need(0 <= lo.importance_ratio <= 1, "loss.importance_ratio", "must be in [0, 1]", lo.importance_ratio)
    _need(0 <= lo.min_mask_area < 1, "loss.min_mask_area", "must be in [0, 1)", lo.min_mask_area)
    o = c.optim
    _need(o.total_steps is None or o.total_steps >= 1, "optim.total_steps",
          "must be >= 1, or null when optim.epochs gives the run's length", o.total_steps)
    _need(o.total_steps is None or o.total_steps <= MAX_STEPS, "optim.total_steps",
          f"must be at most {MAX_STEPS} (uniap_train.config.MAX_STEPS: the per-step schedules are "
          "built before step 1)", o.total_steps)
    _need(o.epochs is None or o.epochs > 0, "optim.epochs", "must be > 0 (or null)", o.epochs)
    _need(o.epochs is None or o.epochs <= MAX_STEPS, "optim.epochs",
          f"gives more than {MAX_STEPS} steps (uniap_train.config.MAX_STEPS) at any data size", o.epochs)
    if o.total_steps is not None and o.epochs is not None:
        raise ConfigError(f"optim.total_steps ({o.total_steps}) and optim.epochs ({o.epochs:g}) both give the "
                          "run's length: set one of them and the other to null")
    if o.total_steps is None and o.epochs is None:
        raise ConfigError("optim.total_steps and optim.epochs are both null: give the run's length in one of them")
    _need(o.max_steps >= 0, "optim.max_steps", "must be >= 0", o.max_steps)
    _need(o.lr > 0, "optim.lr", "must be > 0", o.lr)
    _need(o.warmup_steps >= 0, "optim.warmup_steps", "must be >= 0 (0 = no warm-up)", o.warmup_steps)
    _need(0 <= o.min_lr, "optim.min_lr", "must be >= 0", o.min_lr)
    _need(o.weight_decay >= 0, "optim.weight_decay", "must be >= 0", o.weight_decay)
    _need(o.weight_decay_end >= 0, "optim.weight_decay_end", "must be >= 0", o.weight_decay_end)
    _need(0 <= o.momentum_teacher <= 1, "optim.momentum_teacher", "must be in [0, 1]", o.momentum_teacher)
    _need(o.clip_grad >= 0, "optim.clip_grad", "must be >= 0 (0 = off)", o.clip_grad)
    _need(o.freeze_last_layer_steps >= 0, "optim.freeze_last_layer_steps", "must be >= 0",
          o.freeze_last_layer_steps)
    _need(all(0 <= b < 1 for b in o.betas), "optim.betas", "must lie in [0, 1)", list(o.betas))
    _need(c.log.every_steps >= 1, "log.every_steps", "must be >= 1", c.log.every_steps)
    _need(c.checkpoint.every_steps >= 1, "checkpoint.every_steps", "must be >= 1", c.checkpoint.every_steps)
    _need(c.checkpoint.keep_every >= 0, "checkpoint.keep_every", "must be >= 0", c.checkpoint.keep_every)
    e = c.eval
    if e.images is not None:
        _need(e.labels is not None, "eval.labels", "is required when eval.images is set", e.labels)
        _need(e.num_classes >= 1, "eval.num_classes", "must be >= 1 when eval.images is set", e.num_classes)
    _need(e.num_clusters >= 0, "eval.num_clusters", "must be >= 0", e.num_clusters)
    _need(e.max_images >= 0, "eval.max_images", "must be >= 0", e.max_images)
    _need(e.max_side >= 16, "eval.max_side", "must be >= 16", e.max_side)
    _need(e.every_steps >= 0, "eval.every_steps", "must be >= 0", e.every_steps)
    _need(e.kmeans_iters >= 1, "eval.kmeans_iters", "must be >= 1", e.kmeans_iters)
    _need(c.dist.timeout_minutes > 0, "dist.timeout_minutes", "must be > 0", c.dist.timeout_minutes)


# ---------------------------------------------------------------------------------------------
# Loading: dict -> dataclasses with type checks
# ---------------------------------------------------------------------------------------------


# Kept by hand (issue 25): OmegaConf 2.4's structured configs would replace only this loader
# (~260 of 705 lines; the dataclasses and _validate stay), with multi-line errors and no "did you mean".
def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if tp is bool:
        return "true or false"
    if tp is int:
        return "an integer"
    if tp is float:
        return "a number"
    if tp is str:
        return "a string"
    if tp is dict or origin is dict:
        return "a mapping"
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {_describe(args[0]).removeprefix('a ').removeprefix('an ')}s"
        return f"a list of {len(args)} {_describe(args[0]).removeprefix('a ').removeprefix('an ')}s"
    if origin in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _describe(a) for a in typing.get_args(tp))
    return str(tp)


def _convert(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    bad = ConfigError(f"{key}: expected {_describe(tp)}, got {value!r}")
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return _convert(value, a, key)
            except ConfigError:
                pass
        raise bad
    if origin is Literal:
        choices = typing.get_args(tp)
        if value in choices and not (isinstance(value, bool) and not any(isinstance(c, bool) for c in choices)):
            return value
        raise ConfigError(f"{key}: expected one of {', '.join(repr(a) for a in choices)}, got {value!r}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise bad
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise bad
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # PyYAML reads 1e-4 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                raise bad from None
        raise bad
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise bad
    if tp is dict or origin is dict:
        if isinstance(value, dict):
            return dict(value)
        raise bad
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise bad
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise bad
        return tuple(_convert(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key)
    raise ConfigError(f"{key}: unsupported type {tp}")  # pragma: no cover - schema bug


def _build(cls: type, data: Any, prefix: str) -> Any:
    where = prefix or "the configuration"
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping of keys, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        full = f"{prefix}.{key}" if prefix else str(key)
        if full in REMOVED_KEYS:
            raise ConfigError(f"{full} was counted in epochs; use {REMOVED_KEYS[full]} (schedules are counted "
                              "in steps: docs/training.md)")
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean '{prefix + '.' if prefix else ''}{close[0]}'?)" if close else ""
            valid = ", ".join(names)
            raise ConfigError(f"unknown key '{full}'{hint}; valid keys{' of ' + prefix if prefix else ''}: {valid}")
        kwargs[key] = _convert(value, hints[key], full)
    return cls(**kwargs)


# Keys counted in epochs that schedules in steps replaced: old key -> the key to use.  A
# checkpoint's stored configuration with them is converted by uniap_train.checkpoint.checkpoint_config.
REMOVED_KEYS: dict[str, str] = {
    "optim.freeze_last_layer": "optim.freeze_last_layer_steps",
    "optim.warmup_epochs": "optim.warmup_steps",
    "loss.warmup_teacher_temp_epochs": "loss.warmup_teacher_temp_steps",
}

# Defaults that differ by recipe: (section, key) -> value, used where the config leaves them out.
RECIPE_DEFAULTS: dict[str, dict[tuple[str, str], Any]] = {
    "paper": {("crops", "num_local"): 2},  # the paper's two local crops (the released code: 6)
}


def config_from_dict(data: dict | None) -> TrainConfig:
    """Build and validate a :class:`TrainConfig` from a (YAML-like) dict.

    Keys the dict leaves out take their defaults, which for a few keys depend on the recipe
    (``RECIPE_DEFAULTS``: ``crops.num_local`` is 2 for ``recipe: paper``, 6 otherwise).  A
    dict giving ``optim.epochs`` but no ``optim.total_steps`` leaves ``total_steps`` null (the
    epochs give the run's length); giving both is a :class:`ConfigError`.
    """
    optim = data.get("optim") if isinstance(data, dict) else None
    if isinstance(optim, dict) and optim.get("epochs") is not None and "total_steps" not in optim:
        data = {**data, "optim": {**optim, "total_steps": None}}
    if isinstance(data, dict) and isinstance(data.get("recipe"), str):
        for (section, key), value in RECIPE_DEFAULTS.get(data["recipe"], {}).items():
            part = data.get(section)
            if part is None or (isinstance(part, dict) and key not in part):
                data = {**data, section: {**(part or {}), key: value}}
    return _build(TrainConfig, data, "").validate()


def config_to_dict(config: Any) -> dict:
    """Plain dict (lists instead of tuples) of a config, ready for YAML or a checkpoint."""

    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {str(k): plain(x) for k, x in v.items()}
        return v

    return plain(config)


def _parse_value(text: str) -> Any:
    import yaml

    try:
        return yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        return text


def apply_overrides(data: dict, overrides: list[str] | tuple[str, ...]) -> dict:
    """Apply ``a.b=value`` overrides to a config dict (values parsed as YAML: 3, 1e-4, [1, 2], null).

    Raises
    ------
    ConfigError
        An override without ``=`` or with an empty key, or a path through a non-mapping.
    """
    data = dict(data or {})
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        key, text = item.split("=", 1)
        parts = key.strip().split(".")
        if not all(parts):
            raise ConfigError(f"--set expects key=value with a dotted key such as optim.lr, got {item!r}")
        node = data
        for i, p in enumerate(parts[:-1]):
            child = node.get(p)
            if child is None:
                child = {}
            elif not isinstance(child, dict):
                raise ConfigError(f"--set {key}: '{'.'.join(parts[: i + 1])}' is not a section")
            node[p] = child = dict(child)
            node = child
        node[parts[-1]] = _parse_value(text)
    return data


def load_config(path: str | os.PathLike | None, overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """Read a YAML config, apply ``--set`` overrides and validate.

    Parameters
    ----------
    path : path-like or None
        A YAML file whose top level is a mapping (None: start from the defaults).
    overrides : list of str
        ``key.sub=value`` strings, applied in order.

    Returns
    -------
    TrainConfig
        The validated configuration.

    Raises
    ------
    ConfigError
        Missing or unreadable file, invalid YAML, unknown key, wrong type or bad value.
    """
    import yaml

    data: Any = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {str(p)!r}")
        try:
            data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except UnicodeDecodeError as err:
            raise ConfigError(f"{p}: not a YAML text file (not UTF-8: byte {err.object[err.start]:#04x} "
                              f"at offset {err.start})") from None
        except OSError as err:
            raise ConfigError(f"{p}: cannot read the config: {err.strerror or err}") from None
        except yaml.YAMLError as err:
            first = " ".join(str(err).split())
            raise ConfigError(f"{p}: invalid YAML: {first}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{p}: the top level must be a mapping of keys, got {type(data).__name__}")
    data = apply_overrides(data, list(overrides))
    return config_from_dict(data)


def save_config(config: TrainConfig, path: str | os.PathLike) -> None:
    """Write the resolved config as YAML (atomically).

    Parameters
    ----------
    config : TrainConfig
        The configuration.
    path : path-like
        The YAML file to write; :func:`load_config` reads it back to an equal config.
    """
    import yaml

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(yaml.safe_dump(config_to_dict(config), sort_keys=False))
    os.replace(tmp, path)


def expand_path(path: str | None) -> Path | None:
    """``$VAR`` / ``~`` expanded path (relative paths stay relative to the working directory)."""
    if path is None:
        return None
    return Path(os.path.expanduser(os.path.expandvars(path)))
