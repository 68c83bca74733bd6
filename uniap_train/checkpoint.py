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

from .config import ConfigError

__all__ = ["CheckpointError", "read_checkpoint", "REQUIRED_KEYS"]

REQUIRED_KEYS = ("step", "recipe", "student", "teacher", "config")


class CheckpointError(ConfigError):
    """A checkpoint that cannot be used, in one line naming the file."""


def read_checkpoint(path: str | os.PathLike, map_location: str = "cpu") -> dict:
    """The contents of a ``uniap-train`` checkpoint, loaded with ``weights_only=True``.

    Raises
    ------
    CheckpointError
        The file is missing, empty, truncated, not a torch file, holds arbitrary pickled
        objects (refused unread), or lacks the keys of a uniap-train checkpoint.
    """
    import pickle
    import zipfile

    import torch

    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"checkpoint not found: {str(p)!r}")
    if p.stat().st_size == 0:
        raise CheckpointError(f"{p}: the checkpoint is empty (0 bytes)")
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
