"""Reading checkpoints safely: ``torch.load(..., weights_only=True)`` and one-line errors.

:func:`read_checkpoint` is the one place a checkpoint file is opened (resume, the predictor,
``uniap-eval --segmenter checkpoint``).  A missing, empty, truncated or foreign file, or one
holding pickled objects other than tensors and plain containers, is a :class:`CheckpointError`
naming the file (a :class:`~uniap_train.config.ConfigError`, so commands exit with status 2).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from .config import ConfigError

if TYPE_CHECKING:
    from .config import TrainConfig

__all__ = ["CheckpointError", "read_checkpoint", "checkpoint_config", "upgrade_schedule_keys", "REQUIRED_KEYS"]

REQUIRED_KEYS = ("step", "recipe", "student", "teacher", "config")
# What a torch.save file starts with: a zip archive (the default since torch 1.6) or a pickle
# of protocol 2 or more (the legacy format).  Anything else is not a checkpoint, and is not
# handed to the unpickler (a text file starting with "c" would read as a pickle's global).
_TORCH_MAGIC = (b"PK\x03\x04", b"\x80")


class CheckpointError(ConfigError):
    """A checkpoint that cannot be used, in one line naming the file."""


def read_checkpoint(path: str | os.PathLike, map_location: str = "cpu") -> dict:
    """The contents of a ``uniap-train`` checkpoint, loaded with ``weights_only=True``.

    Raises
    ------
    CheckpointError
        The file is missing, empty, not a torch file (a text file, say: refused on its first
        bytes), truncated, holds arbitrary pickled objects (refused unread), or lacks the keys
        of a uniap-train checkpoint.
    """
    import pickle
    import zipfile

    import torch

    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"checkpoint not found: {str(p)!r}")
    if p.stat().st_size == 0:
        raise CheckpointError(f"{p}: the checkpoint is empty (0 bytes)")
    with open(p, "rb") as fh:
        head = fh.read(4)
    if not head.startswith(_TORCH_MAGIC):  # a YAML, log or image file given by mistake
        raise CheckpointError(f"{p}: not a checkpoint file (torch.save writes a zip archive or a pickle; "
                              f"this file starts with {head!r})")
    try:
        with warnings.catch_warnings():  # a foreign pickle's protocol: it is refused or read anyway
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            ckpt = torch.load(p, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if "weights_only" in str(err) or "Unsupported global" in str(err) or "Weights only" in str(err):
            raise CheckpointError(f"{p}: refused: the file holds objects other than tensors and plain "
                                  "containers (loaded with weights_only=True)") from None
        raise CheckpointError(f"{p}: not a readable checkpoint ({first})") from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile, KeyError, AttributeError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0].split(". ")[0].rstrip(".")
        raise CheckpointError(f"{p}: not a readable checkpoint, truncated or damaged? ({first})") from None
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{p}: not a uniap-train checkpoint (it holds a {type(ckpt).__name__})")
    missing = [k for k in REQUIRED_KEYS if k not in ckpt]
    if missing:
        raise CheckpointError(f"{p}: not a uniap-train checkpoint (no {', '.join(repr(k) for k in missing)})")
    return ckpt


def checkpoint_config(ckpt: dict) -> "TrainConfig":
    """The :class:`~uniap_train.config.TrainConfig` a checkpoint was trained with.

    A checkpoint written before schedules were counted in steps holds the epoch keys
    ``optim.freeze_last_layer``, ``optim.warmup_epochs`` and ``loss.warmup_teacher_temp_epochs``
    (and ``optim.total_steps: 0`` for "epochs decide"); they are converted to the step keys with
    the checkpoint's own steps per epoch and total steps (as its run computed them), or dropped
    (defaults) where the checkpoint does not say.  Only the schedules change; they do not
    matter for prediction.

    Parameters
    ----------
    ckpt : dict
        A checkpoint's contents (:func:`read_checkpoint`).

    Returns
    -------
    TrainConfig
        The validated configuration, with every schedule in steps.

    Raises
    ------
    ConfigError
        The stored configuration does not load (one line).
    """
    from .config import config_from_dict

    return config_from_dict(upgrade_schedule_keys(ckpt["config"], (ckpt.get("sampler") or {}).get("steps_per_epoch"),
                                                  ckpt.get("total_steps")))


def upgrade_schedule_keys(config: dict, steps_per_epoch: int | None = None, total_steps: int | None = None) -> dict:
    """A stored configuration dict with its epoch-counted schedule keys converted to steps.

    Parameters
    ----------
    config : dict
        A configuration as a checkpoint stores it (:func:`~uniap_train.config.config_to_dict`).
    steps_per_epoch, total_steps : int, optional
        The run's steps per epoch and length, as its checkpoint records them; without them the
        epoch keys are dropped (their step keys keep their defaults).

    Returns
    -------
    dict
        ``config`` itself when it holds no epoch key, else a converted copy: ``optim.total_steps``
        (the run's length, ``optim.epochs`` null) or ``optim.epochs`` (``total_steps`` null),
        ``optim.warmup_steps``, ``optim.freeze_last_layer_steps``, ``loss.warmup_teacher_temp_steps``.
    """
    if not isinstance(config, dict):
        return config
    optim, loss = dict(config.get("optim") or {}), dict(config.get("loss") or {})
    if not any(k in optim for k in ("freeze_last_layer", "warmup_epochs")) and "warmup_teacher_temp_epochs" not in loss:
        return config  # written with schedules in steps
    spe = int(steps_per_epoch) if steps_per_epoch else None

    def steps(epochs):
        return None if spe is None or epochs is None else int(round(float(epochs) * spe))

    # the run's length: total_steps > 0 decided it, else epochs (the run's own total when known)
    if optim.get("total_steps"):
        optim["epochs"] = None
    elif total_steps:
        optim["total_steps"], optim["epochs"] = int(total_steps), None
    elif optim.get("epochs") is not None:
        optim["total_steps"] = None
    else:
        optim.pop("total_steps", None)
    warmup = steps(optim.pop("warmup_epochs", None))
    if not optim.get("warmup_steps"):  # 0 meant "warmup_epochs decide"
        optim.pop("warmup_steps", None)
        if warmup is not None:
            optim["warmup_steps"] = warmup
    for part, old, new in ((optim, "freeze_last_layer", "freeze_last_layer_steps"),
                           (loss, "warmup_teacher_temp_epochs", "warmup_teacher_temp_steps")):
        value = steps(part.pop(old, None))
        if value is not None:
            part[new] = value
    return {**config, "optim": optim, "loss": loss}
