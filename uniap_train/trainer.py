"""The trainer: a student / momentum-teacher training loop, from one CPU to many GPUs.

:func:`train` reads top to bottom like DINO's ``train_dino``: processes and seeds, data,
backbone, student and teacher, loss, optimizer, schedules, resume, evaluation set, the loop,
the end.  :func:`train_one_step` is one iteration.  What is trained and how the loss is
computed is the *recipe*'s business (:mod:`uniap_train.recipes`); everything else (schedules,
EMA, clipping, last-layer freezing, AMP, DDP, checkpoints, logs, evaluation) lives here.
"""

from __future__ import annotations

import copy
import math
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from .backbone import Backbone, vocabulary_state
from .checkpoint import CheckpointError, read_checkpoint
from .config import MAX_STEPS, ConfigError, TrainConfig, config_to_dict, save_config
from .data import PathArray, ResumableDistributedSampler, collate_views, list_images, load_resized
from .model import ema_update
from .recipes import get_recipe
from .runlog import METRIC_COLUMNS, RunLogger
from .utils import (
    DistInfo,
    atomic_torch_save,
    cancel_gradients_last_layer,
    clip_gradients,
    cosine_scheduler,
    get_rng_state,
    git_sha,
    library_version,
    init_distributed,
    linear_warmup_then_constant,
    seed_everything,
    set_rng_state,
)

__all__ = ["train", "train_one_step", "NonFiniteLossError", "Schedules", "save_checkpoint", "load_checkpoint"]

# Where optim.amp turns on float16 autocast and a gradient scaler.  CPUs gain nothing from
# float16 here, but the tests add "cpu" to run the mixed-precision path on machines without a GPU.
AMP_DEVICE_TYPES = ("cuda",)


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; training stopped at ``step``.

    Parameters
    ----------
    step : int
        The global step whose loss was not finite.
    value : float
        That loss (NaN or inf).
    """

    def __init__(self, step: int, value: float) -> None:
        super().__init__(f"loss is {value} at step {step}; stopping (lower optim.lr, raise loss temperatures, "
                         "or check the data)")
        self.step = step
        self.value = value


def run_length(cfg: TrainConfig, steps_per_epoch: int) -> int:
    """The run's length in steps: ``optim.total_steps``, or ``optim.epochs`` converted once,
    ceil(epochs x steps per epoch) (at least 1)."""
    o = cfg.optim
    if o.total_steps is not None:
        steps = int(o.total_steps)
    else:
        steps = max(1, math.ceil(o.epochs * steps_per_epoch))
    if steps > MAX_STEPS:  # before any schedule (one float64 per step each) is allocated
        raise ConfigError(f"optim.epochs {o.epochs:g} x {steps_per_epoch} steps per epoch = {steps} steps, "
                          f"more than the limit of {MAX_STEPS} (uniap_train.config.MAX_STEPS)"
                          if o.total_steps is None else
                          f"optim.total_steps {steps} is more than the limit of {MAX_STEPS}")
    return steps


@dataclass
class Schedules:
    """Per-step values, indexed by the global step (so a resumed run needs only the step).

    Every schedule is counted in steps; warm-ups and the prototypes' freeze are clamped to
    the run's length (``total_steps``).
    """

    lr: np.ndarray
    weight_decay: np.ndarray
    momentum: np.ndarray
    teacher_temp: np.ndarray
    freeze_last_layer_steps: int
    steps_per_epoch: int
    warmup_steps: int = 0  # lr warm-up, clamped
    warmup_teacher_temp_steps: int = 0  # teacher temperature warm-up, clamped

    @property
    def total_steps(self) -> int:
        return int(self.lr.shape[0])

    @classmethod
    def build(cls, cfg: TrainConfig, steps_per_epoch: int) -> "Schedules":
        o, lo = cfg.optim, cfg.loss
        total = run_length(cfg, steps_per_epoch)
        warmup = min(o.warmup_steps, total)
        temp_warmup = min(lo.warmup_teacher_temp_steps, total)
        return cls(
            lr=cosine_scheduler(o.lr * cfg.data.batch_size / 256.0, o.min_lr, total, warmup),
            weight_decay=cosine_scheduler(o.weight_decay, o.weight_decay_end, total),
            momentum=cosine_scheduler(o.momentum_teacher, 1.0, total),
            teacher_temp=linear_warmup_then_constant(lo.warmup_teacher_temp, lo.teacher_temp, total, temp_warmup),
            freeze_last_layer_steps=min(o.freeze_last_layer_steps, total),
            steps_per_epoch=steps_per_epoch,
            warmup_steps=warmup,
            warmup_teacher_temp_steps=temp_warmup,
        )

    def describe(self, cfg: TrainConfig) -> str:
        """One log line: the run's length (and its conversion from epochs) and every schedule in steps."""
        if cfg.optim.epochs is not None:
            length = (f"optim.epochs {cfg.optim.epochs:g} x {self.steps_per_epoch} steps per epoch = "
                      f"{self.total_steps} steps (every schedule counts steps from here on)")
        else:
            length = f"{self.total_steps} steps ({self.total_steps / self.steps_per_epoch:.4g} epochs)"
        return (f"schedules: {length}; lr warm-up {self.warmup_steps} steps, teacher temperature warm-up "
                f"{self.warmup_teacher_temp_steps} steps, prototypes frozen for {self.freeze_last_layer_steps} steps")


@dataclass
class TrainState:
    """Everything the loop mutates or reads, passed to :func:`train_one_step`."""

    cfg: TrainConfig
    dist: DistInfo
    recipe: Any
    backbone: Backbone
    student: nn.Module  # maybe DDP-wrapped
    student_module: nn.Module  # the bare student
    teacher: nn.Module
    loss_fn: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: Any
    schedules: Schedules
    autocast: Any
    # data.kind shards: what a checkpoint needs to resume the streams exactly (the stream
    # layout and, per process, the references each of its streams has given out)
    data_state: dict | None = None


def _log(msg: str, dist: DistInfo) -> None:
    if dist.is_main:
        print(msg, flush=True)


def _reduce_mean(value: torch.Tensor, dist: DistInfo) -> float:
    v = value.detach().float().reshape(1).clone()
    if dist.distributed:
        torch.distributed.all_reduce(v)
        v /= dist.world_size
    return float(v.item())


# =============================================================================================
# one iteration
# =============================================================================================


def train_one_step(state: TrainState, batch: dict, step: int) -> dict:
    """One optimisation step at global step ``step`` (0-based); returns floats for the logs.

    lr / weight decay / momentum / teacher temperature from the schedules; frozen features;
    the recipe's loss under autocast; stop on a non-finite loss; backward; clip; drop the
    prototypes' gradients while they are frozen; optimizer step; EMA teacher; centre update.

    Raises
    ------
    NonFiniteLossError
        When the (process-averaged) loss is NaN or infinite; nothing is updated.
    """
    s, dev = state.schedules, state.dist.device
    for i, group in enumerate(state.optimizer.param_groups):
        group["lr"] = float(s.lr[step]) * group.get("lr_scale", 1.0)
        if group.get("regularized", i == 0):  # biases and norms keep no weight decay
            group["weight_decay"] = float(s.weight_decay[step])

    # ---- frozen features of every view position (pixels when the student trains the backbone) ----
    if "features" in batch:
        grids = [f.to(dev, non_blocking=True) for f in batch["features"]]
    elif getattr(state.recipe, "trains_backbone", False):
        grids = [v.to(dev, non_blocking=True) for v in batch["views"]]
    else:
        grids = [state.backbone.batch_features(v) for v in batch["views"]]

    # ---- loss ----
    out = state.recipe.loss(batch, grids, state.student, state.teacher, state.loss_fn,
                            float(s.teacher_temp[step]), state.dist.world_size, state.autocast)
    loss_value = _reduce_mean(out.loss, state.dist)
    if not math.isfinite(loss_value):
        raise NonFiniteLossError(step + 1, loss_value)

    # ---- student update ----
    state.optimizer.zero_grad(set_to_none=True)
    state.scaler.scale(out.loss).backward()
    grad_norm = float("nan")
    if state.cfg.optim.clip_grad:
        state.scaler.unscale_(state.optimizer)
        norms = clip_gradients(state.student_module, state.cfg.optim.clip_grad)
        grad_norm = float(np.sqrt(np.sum(np.square(norms)))) if norms else 0.0
    cancel_gradients_last_layer(step, state.student_module, s.freeze_last_layer_steps)
    state.scaler.step(state.optimizer)
    state.scaler.update()

    # ---- teacher EMA and the recipe's own bookkeeping (centre) ----
    ema_update(state.teacher, state.student_module, float(s.momentum[step]))
    if out.after_step is not None:
        out.after_step()

    stats = {
        "loss": loss_value, "lr": float(s.lr[step]), "weight_decay": float(s.weight_decay[step]),
        "momentum": float(s.momentum[step]), "teacher_temp": float(s.teacher_temp[step]),
        "grad_norm": grad_norm, **out.stats,
    }
    if dev.type == "cuda":
        stats["gpu_memory_mb"] = torch.cuda.max_memory_allocated(dev) / 2**20  # peak so far
    return stats


# =============================================================================================
# checkpoints
# =============================================================================================


def save_checkpoint(path: Path, state: TrainState, step: int, previous: Path | None = None) -> None:
    """Everything exact resume needs, as tensors and primitive containers (atomic write).

    With ``previous``, the checkpoint ``path`` held so far is kept there (``resume: auto``
    falls back to it when ``path`` is damaged).
    """
    spe = state.schedules.steps_per_epoch
    atomic_torch_save({
        "step": int(step),
        "epoch": int(step // spe),
        "sampler": {"epoch": int(step // spe), "batch": int(step % spe), "steps_per_epoch": int(spe)},
        "total_steps": state.schedules.total_steps,
        "world_size": state.dist.world_size,
        "recipe": state.recipe.name,
        "student": state.student_module.state_dict(),
        "teacher": state.teacher.state_dict(),
        "loss": state.loss_fn.state_dict(),
        "optimizer": state.optimizer.state_dict(),
        "scaler": state.scaler.state_dict(),
        **({"stream": state.data_state} if state.data_state is not None else {}),
        "rng": get_rng_state(),
        "config": config_to_dict(state.cfg),
        "in_dim": int(state.recipe.in_dim),
        "vocabulary": vocabulary_state(getattr(state.backbone.extractor, "vocabulary", None)),
        "version": library_version(),
        "git": git_sha(),
    }, path, previous=previous)


def load_checkpoint(path: Path, state: TrainState, ckpt: dict | None = None) -> int:
    """Restore a checkpoint into ``state`` by name; returns the global step to continue from.

    Missing or unexpected entries are reported, not fatal (as DINO's ``restart_from_checkpoint``);
    ``ckpt`` is the file's contents when read already (:func:`uniap_train.checkpoint.read_checkpoint`).

    Raises
    ------
    CheckpointError
        The file cannot be read, is of another recipe, or holds weights of other shapes than
        this run's model (changed model sizes): one line naming the file.
    """
    # Loaded to the CPU: load_state_dict copies onto the parameters' device, and the RNG
    # states must stay CPU byte tensors (mapped to CUDA, torch.set_rng_state refuses them).
    if ckpt is None:
        ckpt = read_checkpoint(path)
    _check_recipe(path, ckpt, state.cfg)
    for name, obj in (("student", state.student_module), ("teacher", state.teacher), ("loss", state.loss_fn)):
        if name not in ckpt:
            _log(f"resume: {path} has no '{name}'; it starts fresh", state.dist)
            continue
        try:
            result = obj.load_state_dict(ckpt[name], strict=False)
        except RuntimeError as err:
            raise CheckpointError(f"{path}: its {name} does not fit this run's model ({_first_mismatch(err)}); "
                                  "resume with the model sizes it was trained with") from None
        if result.missing_keys or result.unexpected_keys:
            _log(f"resume: {name}: missing {result.missing_keys}, unexpected {result.unexpected_keys}", state.dist)
    for name, obj in (("optimizer", state.optimizer), ("scaler", state.scaler)):
        if ckpt.get(name):
            try:
                obj.load_state_dict(ckpt[name])
            except (ValueError, KeyError, RuntimeError) as err:
                raise CheckpointError(f"{path}: its {name} state does not fit this run "
                                      f"({' '.join(str(err).split())})") from None
        else:
            _log(f"resume: {path} has no '{name}' state; it starts fresh", state.dist)
    if "rng" in ckpt:
        set_rng_state(ckpt["rng"])
    if ckpt.get("total_steps") not in (None, state.schedules.total_steps):
        _log(f"resume: the checkpoint's run had {ckpt['total_steps']} steps, this one has "
             f"{state.schedules.total_steps}: schedules differ from the original run", state.dist)
    return int(ckpt.get("step", 0))


def _first_mismatch(err: Exception) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return next((line for line in lines if line.startswith("size mismatch")), lines[0] if lines else str(err))


def _check_recipe(path: Path, ckpt: dict, cfg: TrainConfig) -> None:
    if ckpt.get("recipe") != cfg.recipe:
        raise CheckpointError(f"{path}: a checkpoint of recipe {ckpt.get('recipe')!r}, this run is recipe "
                              f"{cfg.recipe!r}")


def resume_candidates(out: Path) -> list[Path]:
    """Where ``resume: auto`` looks, in order: the last checkpoint, the one it replaced, then the
    kept ``checkpoint_<step>.pt`` newest first."""
    kept = sorted(out.glob("checkpoint_[0-9]*.pt"), reverse=True)
    return [out / "checkpoint_last.pt", out / "checkpoint_prev.pt", *kept]


def _resume(cfg: TrainConfig, out: Path, dist: DistInfo) -> tuple[Path | None, dict | None]:
    """The checkpoint to resume from and its contents (None, None: start fresh).

    ``resume: auto`` takes the first readable checkpoint of :func:`resume_candidates`, saying
    which damaged ones it passed over; a named checkpoint must be readable.
    """
    if cfg.resume is None:
        return None, None
    if cfg.resume != "auto":
        path = Path(cfg.resume)
        if not path.is_file():
            raise ConfigError(f"resume: checkpoint not found: {cfg.resume!r}")
        ckpt = read_checkpoint(path)
        _check_recipe(path, ckpt, cfg)
        return path, ckpt
    damaged = []
    for path in resume_candidates(out):
        if not path.is_file():
            continue
        try:
            ckpt = read_checkpoint(path)
        except CheckpointError as err:
            damaged.append(str(err))
            continue
        for reason in damaged:
            _log(f"resume: skipping a damaged checkpoint: {reason}", dist)
        if damaged:
            _log(f"resume: falling back to {path} (step {ckpt['step']})", dist)
        _check_recipe(path, ckpt, cfg)
        return path, ckpt
    if damaged:
        raise CheckpointError(f"resume: auto: no readable checkpoint in {out} ({damaged[0]})")
    return None, None


# =============================================================================================
# the driver
# =============================================================================================


def train(cfg: TrainConfig) -> dict:
    """Train as ``cfg`` says; returns a summary (steps, last loss, final evaluation).

    Run it with one process (``uniap-train config.yaml``) or under ``torchrun`` (one process
    per device; the process group comes from the environment).

    Parameters
    ----------
    cfg : TrainConfig
        The run's configuration (:func:`load_config`).

    Returns
    -------
    dict
        A summary of the run: steps done, the last loss, the final evaluation.

    Raises
    ------
    ConfigError
        A problem with the configuration found while setting up (missing data, bad sizes).
    NonFiniteLossError
        The loss became NaN or infinite.
    """
    # ============ processes, device, seeds, output folder ... ============
    dist = init_distributed(cfg.device, cfg.dist.backend, cfg.dist.timeout_minutes)
    try:
        return _train(cfg, dist)
    finally:
        if dist.owns_group and dist.distributed:
            torch.distributed.destroy_process_group()


def _train(cfg: TrainConfig, dist: DistInfo) -> dict:
    seed_everything(cfg.seed)  # same on every process: identical initial heads
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = Path(cfg.output_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output_dir: {str(out)!r} is a file, not a folder")
    if dist.is_main:
        try:
            out.mkdir(parents=True, exist_ok=True)
            save_config(cfg, out / "config.yaml")
        except OSError as err:
            raise ConfigError(f"output_dir: cannot write to {str(out)!r} ({(err.strerror or str(err)).lower()})") \
                from None
    _log(f"uniap_train | git {git_sha()} | {dist.world_size} process(es) | device {dist.device}", dist)
    _log(f"config: {config_to_dict(cfg)}", dist)
    if cfg.data.batch_size % dist.world_size:
        raise ConfigError(f"data.batch_size: {cfg.data.batch_size} is not divisible by the "
                          f"{dist.world_size} processes")
    batch_per_process = cfg.data.batch_size // dist.world_size

    # ============ backbone (frozen) ... ============
    backbone = Backbone(cfg.backbone, dist.device)
    p = backbone.patch_size
    recipe_cls = get_recipe(cfg.recipe)

    # ============ data ... ============
    shards: list[str] | None = None
    if cfg.data.kind == "shards":
        from .shards import count_images, expand_shards, first_items

        shards = expand_shards(cfg.data.root)
        # the first images stand for the data where a few are needed (shared words, feature size)
        paths = first_items(shards, max(1, cfg.backbone.vocabulary_images))
        damaged: list = []
        n_images = (cfg.data.shard_images * len(shards) if cfg.data.shard_images
                    else count_images(shards, progress=dist.is_main and cfg.log.progress, problems=damaged))
        for where, why in damaged:  # the streams skip the same, and report it when they get there
            _log(f"data: shard {where}: {why}", dist)
    else:
        # one byte array, not a million Path objects (that forked workers would copy page by page)
        paths = PathArray(list_images(cfg.data.kind, cfg.data.root, cfg.data.annotations, cfg.data.max_images))
    resume, resume_ckpt = _resume(cfg, out, dist)
    # A resumed run keeps the words its checkpoint was trained with, even if the images changed.
    trained_words = None if resume is None else resume.parent / "vocabulary.npz"
    words = backbone.share_vocabulary(paths, cfg.data.max_side, out / "vocabulary.npz" if dist.is_main else None,
                                      progress=dist.is_main and cfg.log.progress,
                                      saved=trained_words if trained_words and trained_words.is_file() else None)
    words = f", words {words}" if backbone.kind == "default" else ""
    in_dim = backbone.dim(load_resized(paths[0], cfg.data.max_side))
    recipe = recipe_cls(cfg, in_dim, backbone=backbone)
    for key, size in recipe.view_sizes().items():
        if size % p:
            raise ConfigError(f"crops.{key}: {size} is not a multiple of the backbone's patch size {p}")
    dataset = recipe.build_dataset([] if shards is not None else paths, backbone,
                                   backbone.factory() if backbone.crop_features else None)
    stream = sampler = None
    if shards is not None:
        steps_per_epoch = n_images // cfg.data.batch_size
        if steps_per_epoch == 0:
            raise ConfigError(f"data.batch_size: {cfg.data.batch_size} is larger than the {n_images} images")
        stream = _shard_stream(cfg, shards, dataset, dist, resume_ckpt)
        # streams never end (pass after pass): the loader's iterator lives for the whole run
        loader = DataLoader(stream, batch_size=batch_per_process, num_workers=cfg.data.num_workers,
                            collate_fn=collate_views, pin_memory=dist.device.type == "cuda")
        _log(f"data: {len(shards)} shards, {n_images} images, {steps_per_epoch} steps per epoch, "
             f"{stream.num_streams} streams, {batch_per_process} images per process per step, "
             f"{dataset.num_views} views each", dist)
    else:
        sampler = ResumableDistributedSampler(dataset, batch_per_process, num_replicas=dist.world_size,
                                              rank=dist.rank, seed=cfg.seed)
        steps_per_epoch = sampler.batches_per_epoch
        if sampler.batches_per_epoch == 0:
            raise ConfigError(f"data.batch_size: {cfg.data.batch_size} is larger than the {len(dataset)} images")
        loader = DataLoader(
            dataset, batch_size=batch_per_process, sampler=sampler, num_workers=cfg.data.num_workers,
            collate_fn=collate_views, drop_last=True, persistent_workers=cfg.data.num_workers > 0,
            pin_memory=dist.device.type == "cuda",
        )
        _log(f"data: {len(dataset)} images, {sampler.batches_per_epoch} steps per epoch, "
             f"{batch_per_process} images per process per step, {dataset.num_views} views each", dist)

    # ============ student and teacher ... ============
    student_module = recipe.build_student().to(dist.device)
    teacher = copy.deepcopy(student_module)
    teacher.requires_grad_(False)
    if cfg.backbone.checkpointing:
        _checkpoint_backbone(student_module, dist)
    if cfg.optim.compile:  # in place: the state dict keeps its keys, checkpoints stay portable
        student_module.compile()
    student: nn.Module = student_module
    if dist.distributed:
        ids = [dist.device.index] if dist.device.type == "cuda" else None
        # a trainable ViT giving attention keys leaves its last block's tail without gradients
        student = nn.parallel.DistributedDataParallel(student_module, device_ids=ids,
                                                      find_unused_parameters=recipe.trains_backbone)
    n_params = sum(q.numel() for q in student_module.parameters() if q.requires_grad)
    trained = "trainable" if recipe.trains_backbone else "frozen"
    _log(f"model: recipe {recipe.name}, backbone {backbone.name} (C={in_dim}, {trained}{words}), "
         f"{n_params / 1e6:.2f}M trainable parameters", dist)

    # ============ loss ... ============
    loss_fn = recipe.build_loss().to(dist.device)

    # ============ optimizer, mixed precision, schedules ... ============
    groups = recipe.param_groups(student_module)
    optimizer = torch.optim.AdamW(groups, lr=0.0, betas=tuple(cfg.optim.betas))
    use_amp = cfg.optim.amp and dist.device.type in AMP_DEVICE_TYPES
    amp_dtype = torch.bfloat16 if cfg.optim.amp_dtype == "bfloat16" else torch.float16
    # bfloat16 has float32's exponent range: its gradients need no loss scaling
    scaler = torch.amp.GradScaler(dist.device.type, enabled=use_amp and amp_dtype == torch.float16)
    autocast = partial(torch.autocast, device_type=dist.device.type, dtype=amp_dtype) if use_amp else nullcontext
    schedules = Schedules.build(cfg, steps_per_epoch)
    _log(schedules.describe(cfg), dist)
    end_step = min(schedules.total_steps, cfg.optim.max_steps or schedules.total_steps)

    state = TrainState(cfg, dist, recipe, backbone, student, student_module, teacher, loss_fn, optimizer,
                       scaler, schedules, autocast)
    positions = list(stream.positions) if stream is not None else None
    skipped = 0

    # ============ optionally resume ... ============
    step = 0
    if resume is not None:
        step = load_checkpoint(resume, state, resume_ckpt)
        del resume_ckpt
        _log(f"resume: {resume} at step {step}", dist)
    logger = RunLogger(out, dist.is_main, cfg.log.tensorboard, start_step=step,
                       columns=METRIC_COLUMNS + list(recipe.metric_columns))
    logger.text({"kind": "start", "step": step, "git": git_sha(), "world_size": dist.world_size,
                 "total_steps": schedules.total_steps, "end_step": end_step})

    # ============ evaluation set (features and UniAP queries cached) ... ============
    evaluator = None
    if cfg.eval.images is not None and dist.is_main:
        from .evaluate import SemanticEvaluator

        evaluator = SemanticEvaluator(cfg.eval, backbone, recipe.uniap_options, dist.device)
        _log(f"eval: {len(evaluator.items)} images, k = {evaluator.k}", dist)

    def evaluate(at: int, with_baseline: bool = False) -> dict:
        result: dict = {}
        if evaluator is not None:
            if with_baseline:
                base = evaluator.baseline()
                for what in ("kmeans_raw", "kmeans_l2"):
                    logger.evaluation({"step": at, "what": what, "miou": base[f"{what}_miou"],
                                       "pixel_accuracy": base[f"{what}_pixel_accuracy"]})
                result.update(base)
            r = evaluator.evaluate(recipe.embedder(teacher, cfg.eval.embedding))
            logger.evaluation({"step": at, "what": "model", **r})
            result.update({"model_miou": r["miou"], "model_pixel_accuracy": r["pixel_accuracy"]})
            _log(f"eval at step {at}: " + ", ".join(f"{k} {v:.4f}" for k, v in result.items()), dist)
        if dist.distributed:
            torch.distributed.barrier()
        return result

    if cfg.eval.at_start and step == 0:
        evaluate(0, with_baseline=True)

    # ============ training ... ============
    from uniap._progress import progress_bar

    # a bar on a terminal, a plain line every 30 s in a batch job's log
    progress = progress_bar(end_step, "train", unit="step", initial=step,
                            disable=not (dist.is_main and cfg.log.progress))
    window: list[dict] = []
    tick = time.perf_counter()
    student.train()
    batches = iter(loader) if stream is not None else None
    while step < end_step:
        if sampler is not None:
            epoch, batch_in_epoch = divmod(step, schedules.steps_per_epoch)
            sampler.set_epoch(epoch, batch_in_epoch)
            batches = iter(loader)
        for batch in batches:
            if "stream" in batch:
                positions[batch["stream"][0]] = int(batch["stream"][1])
                for where, why in batch["skipped"]:
                    skipped += 1
                    print(f"uniap-train: skipping {where}: {why}", file=sys.stderr, flush=True)
                    logger.text({"kind": "skipped", "step": step + 1, "rank": dist.rank, "item": where,
                                 "reason": why})
            metrics = train_one_step(state, batch, step)
            step += 1
            window.append(metrics)
            progress.update(1)
            progress.set_postfix(loss=f"{metrics['loss']:.4f}", lr=f"{metrics['lr']:.2e}")
            if step % cfg.log.every_steps == 0 or step == end_step:
                now = time.perf_counter()
                row = {k: float(np.mean([m[k] for m in window])) for k in window[0]}
                row.update(step=step, epoch=step / schedules.steps_per_epoch,
                           seconds_per_step=(now - tick) / len(window))
                logger.metrics(row)
                window, tick = [], now
            saving = step % cfg.checkpoint.every_steps == 0 or step == end_step or bool(
                cfg.checkpoint.keep_every and step % cfg.checkpoint.keep_every == 0)
            if stream is not None and saving:  # every process's stream positions, for rank 0 to save
                state.data_state = _stream_state(stream, positions, dist)
            if dist.is_main and (step % cfg.checkpoint.every_steps == 0 or step == end_step):
                save_checkpoint(out / "checkpoint_last.pt", state, step, previous=out / "checkpoint_prev.pt")
            if dist.is_main and cfg.checkpoint.keep_every and step % cfg.checkpoint.keep_every == 0:
                save_checkpoint(out / f"checkpoint_{step:07d}.pt", state, step)
            if cfg.eval.every_steps and step % cfg.eval.every_steps == 0 and step != end_step:
                evaluate(step)
            if step >= end_step:
                break
    progress.close()

    # ============ the end: final evaluation and summary ... ============
    last_eval = evaluate(step, with_baseline=not (cfg.eval.at_start and resume is None)) \
        if cfg.eval.images is not None else {}
    summary = {"step": step, "total_steps": schedules.total_steps, "eval": last_eval}
    if stream is not None:
        summary["skipped_images"] = skipped  # this process's
    logger.text({"kind": "end", **summary})
    logger.close()
    if dist.distributed:
        torch.distributed.barrier()
    _log(f"done: {step} steps; checkpoint {out / 'checkpoint_last.pt'}", dist)
    return summary


# =============================================================================================
# helpers of the driver
# =============================================================================================


def _stream_layout(cfg: TrainConfig, n_shards: int, dist: DistInfo) -> dict:
    """What fixes the streams' order: a checkpoint's streams resume exactly only under the same."""
    return {"world_size": dist.world_size, "num_workers": max(1, cfg.data.num_workers),
            "batch_per_process": cfg.data.batch_size // dist.world_size, "shards": n_shards,
            "shuffle_buffer": cfg.data.shuffle_buffer, "seed": cfg.seed}


def _shard_stream(cfg: TrainConfig, shards: list[str], dataset: Any, dist: DistInfo, ckpt: dict | None):
    """This process's :class:`~uniap_train.shards.ShardStream`, continued where a checkpoint left it."""
    from .shards import ShardStream

    layout = _stream_layout(cfg, len(shards), dist)
    start, positions = 0, None
    if ckpt is not None:
        start = int(ckpt.get("step", 0))
        saved = ckpt.get("stream")
        if saved is not None and {k: saved.get(k) for k in layout} == layout:
            positions = [int(p) for p in saved["positions"][dist.rank]]
        else:
            was = {k: saved.get(k) for k in layout} if saved else "no stream state"
            _log(f"resume: the checkpoint's streams ({was}) differ from this run's ({layout}): the "
                 "streams start their passes afresh, so the sample order differs from the original run's", dist)
            start = 0
    stream = ShardStream(shards, dataset, seed=cfg.seed, rank=dist.rank, world_size=dist.world_size,
                         num_workers=cfg.data.num_workers, shuffle_buffer=cfg.data.shuffle_buffer,
                         max_side=cfg.data.max_side, start_step=start, positions=positions)
    stream.layout = layout
    return stream


def _stream_state(stream: Any, positions: list[int], dist: DistInfo) -> dict:
    """The stream layout and every process's stream positions (a collective: all ranks call it)."""
    mine = torch.tensor(positions, dtype=torch.int64, device=dist.device)
    if dist.distributed:
        every = [torch.zeros_like(mine) for _ in range(dist.world_size)]
        torch.distributed.all_gather(every, mine)
    else:
        every = [mine]
    return {**stream.layout, "positions": [t.cpu().tolist() for t in every]}


def _checkpoint_backbone(student: nn.Module, dist: DistInfo) -> None:
    """Gradient (activation) checkpointing for the student's trainable ViT blocks."""
    from .backbone import TrainableVit

    vits = [m for m in student.modules() if isinstance(m, TrainableVit)]
    for vit in vits:
        vit.net.set_grad_checkpointing(True)
    if not vits:
        _log("backbone.checkpointing: the student has no trainable backbone (backbone.trainable: false "
             "or recipe released): nothing to checkpoint", dist)
