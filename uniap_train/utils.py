"""Small pieces of the trainer: schedules, parameter groups, gradients, processes, RNG, files."""

from __future__ import annotations

import datetime
import os
import random
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = [
    "cosine_scheduler",
    "linear_warmup_then_constant",
    "get_params_groups",
    "clip_gradients",
    "cancel_gradients_last_layer",
    "DistInfo",
    "init_distributed",
    "is_main_process",
    "get_rng_state",
    "set_rng_state",
    "seed_everything",
    "atomic_torch_save",
    "git_sha",
    "library_version",
]


# -- schedules: one value per global step ---------------------------------------------------


# Kept by hand: timm's CosineLRScheduler gives the same values (tests/test_library_oracles.py)
# but sets an optimizer's lr step by step (140x slower for 10k steps); these arrays also drive
# weight decay and the teacher momentum, and are indexed by step for exact resume.
def cosine_scheduler(base_value: float, final_value: float, total_steps: int, warmup_steps: int = 0,
                     start_warmup_value: float = 0.0) -> np.ndarray:
    """DINO's schedule: linear warm-up from ``start_warmup_value`` to ``base_value`` over
    ``warmup_steps``, then a half cosine from ``base_value`` to ``final_value``.

    Returns
    -------
    ndarray of shape (total_steps,), float64
        Entry ``it`` is the value at global step ``it`` (so resume needs only the step).

    Examples
    --------
    >>> cosine_scheduler(1.0, 0.0, 5).round(3).tolist()
    [1.0, 0.854, 0.5, 0.146, 0.0]
    """
    total_steps, warmup_steps = int(total_steps), int(min(warmup_steps, total_steps))
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    warmup = np.linspace(start_warmup_value, base_value, warmup_steps, endpoint=False)
    rest = total_steps - warmup_steps
    if rest == 1:
        cosine = np.array([base_value], np.float64)
    else:
        iters = np.arange(rest)
        cosine = final_value + 0.5 * (base_value - final_value) * (1 + np.cos(np.pi * iters / max(rest - 1, 1)))
    schedule = np.concatenate([warmup, cosine]).astype(np.float64)
    if schedule.shape != (total_steps,):  # pragma: no cover - guarded above
        raise AssertionError("schedule length mismatch")
    return schedule


def linear_warmup_then_constant(start: float, end: float, total_steps: int, warmup_steps: int) -> np.ndarray:
    """``start`` -> ``end`` linearly over ``warmup_steps``, then ``end`` (teacher temperature)."""
    warmup_steps = int(min(warmup_steps, total_steps))
    return np.concatenate([
        np.linspace(start, end, warmup_steps, endpoint=False),
        np.full(int(total_steps) - warmup_steps, end),
    ]).astype(np.float64)


# -- parameters and gradients ---------------------------------------------------------------


def get_params_groups(model: nn.Module, lr_scales: dict[str, float] | None = None) -> list[dict]:
    """AdamW groups: weights with decay; biases and 1-D parameters (norms) without.

    Frozen parameters are left out.  The ``weight_decay`` of the first group is set from the
    schedule every step; the second keeps 0.  With ``lr_scales`` (name prefix -> factor), the
    parameters under each prefix get two groups of their own, marked ``lr_scale`` (the
    learning rate's factor) and ``regularized`` (whether the weight-decay schedule applies).
    """
    prefixes = list(lr_scales or {})
    buckets: dict[tuple[str, bool], list] = {(p, r): [] for p in [""] + prefixes for r in (True, False)}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        prefix = next((p for p in prefixes if name.startswith(p)), "")
        buckets[(prefix, not (name.endswith(".bias") or param.ndim <= 1))].append(param)
    groups = [{"params": buckets[("", True)]}, {"params": buckets[("", False)], "weight_decay": 0.0}]
    for p in prefixes:
        scale = float(lr_scales[p])
        groups.append({"params": buckets[(p, True)], "lr_scale": scale, "regularized": True})
        groups.append({"params": buckets[(p, False)], "weight_decay": 0.0, "lr_scale": scale, "regularized": False})
    return groups


def clip_gradients(model: nn.Module, clip: float) -> list[float]:
    """Clip each parameter's gradient to norm ``clip`` (DINO); returns the norms before."""
    norms = []
    for p in model.parameters():
        if p.grad is not None:
            norm = p.grad.detach().norm(2)
            norms.append(float(norm))
            factor = clip / (norm + 1e-6)
            if factor < 1:
                p.grad.mul_(factor)
    return norms


def cancel_gradients_last_layer(step: int, model: nn.Module, freeze_steps: int) -> None:
    """Drop the gradients of the prototypes (``last_layer``) during the first ``freeze_steps``."""
    if step >= freeze_steps:
        return
    for name, p in model.named_parameters():
        if "last_layer" in name:
            p.grad = None


# -- processes ------------------------------------------------------------------------------


class DistInfo:
    """Rank, world size, local rank and device of this process."""

    def __init__(self, rank: int, world_size: int, local_rank: int, device: torch.device,
                 owns_group: bool = False) -> None:
        self.rank, self.world_size, self.local_rank, self.device = rank, world_size, local_rank, device
        self.owns_group = owns_group  # this process created the group (and destroys it)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return torch.distributed.is_available() and torch.distributed.is_initialized()


def init_distributed(device: str = "auto", backend: str = "auto", timeout_minutes: float = 30.0) -> DistInfo:
    """Join the process group that ``torchrun`` describes (RANK, WORLD_SIZE, LOCAL_RANK, ...).

    Without those variables (or with WORLD_SIZE=1) no group is created.  ``device`` "auto"
    picks ``cuda:LOCAL_RANK`` when CUDA is available, else the CPU; the backend "auto" is NCCL
    on CUDA and Gloo on the CPU.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        device = f"cuda:{local_rank}"
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            from .config import ConfigError

            raise ConfigError(f"device: {device!r} was asked for but CUDA is not available")
        torch.cuda.set_device(dev)
    owns = False
    if world > 1 and not torch.distributed.is_initialized():
        if backend == "auto":
            backend = "nccl" if dev.type == "cuda" else "gloo"
        kwargs = {}
        if backend == "nccl":
            kwargs["device_id"] = dev
        torch.distributed.init_process_group(
            backend=backend, timeout=datetime.timedelta(minutes=timeout_minutes), **kwargs
        )
        owns = True
    return DistInfo(rank, world, local_rank, dev, owns)


def is_main_process() -> bool:
    """True without a process group, else on global rank 0."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return True
    return torch.distributed.get_rank() == 0


# -- random number generators ---------------------------------------------------------------


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def get_rng_state() -> dict:
    """Python, NumPy (legacy global) and torch (CPU and CUDA) generator states, as tensors and
    primitive containers only (loadable with ``torch.load(..., weights_only=True)``)."""
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    state = {
        "python": {"version": version, "state": torch.tensor(internal, dtype=torch.int64), "gauss": gauss},
        "numpy": {
            "name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "cached": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`get_rng_state` saved."""
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()), py["gauss"]))
    npst = state["numpy"]
    np.random.set_state((npst["name"], npst["keys"].cpu().numpy().astype(np.uint32), npst["pos"],
                         npst["has_gauss"], npst["cached"]))
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


# -- files ----------------------------------------------------------------------------------


def atomic_torch_save(obj: Any, path: str | os.PathLike, previous: str | os.PathLike | None = None) -> None:
    """``torch.save`` to a temporary file beside ``path``, flushed, then ``os.replace``.

    A failed or interrupted save removes its temporary file (``path`` is left as it was).  With
    ``previous``, the file ``path`` held is moved there just before the new one takes its place.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        if previous is not None and path.is_file():
            os.replace(path, previous)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def git_sha() -> str:
    """The repository's commit (``+dirty`` with local changes), or "unknown"."""
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                             timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (sha + ("+dirty" if dirty else "")) if sha else "unknown"


def library_version() -> str:
    """The installed ``uniap`` distribution's version (``uniap_train`` ships with it)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("uniap")
    except PackageNotFoundError:  # pragma: no cover - a source tree that was never installed
        import uniap

        return str(getattr(uniap, "__version__", "unknown"))
