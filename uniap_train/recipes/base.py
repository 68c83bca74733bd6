"""What a training recipe is: the methods the trainer calls, with defaults for the optional ones.

A recipe decides what is trained and how one step's loss is computed; the trainer
(:mod:`uniap_train.trainer`) supplies the schedules, EMA teacher, DDP, checkpoints and logs.
A new recipe is a folder ``uniap_train/recipes/<name>/`` (its ``__init__.py`` holding the
:class:`Recipe` subclass, beside its ``model.py`` and ``loss.py``) and one entry in
:data:`uniap_train.recipes.RECIPES` (``docs/architecture.md``).

Every recipe provides
    ``name``; ``uniap_options`` (the keywords of :func:`uniap.segment` its teacher uses);
    ``view_sizes()``; ``build_dataset(paths, backbone, pipeline_extractor)``;
    ``build_student()``; ``build_loss()``; ``loss(batch, grids, student, teacher, loss_fn,
    teacher_temp, world_size, autocast)`` returning a :class:`StepOutput`; and
    ``embedder(teacher, kind)`` for the evaluation of the semantic embedding.

and may override (the defaults below hold otherwise)
    ``trains_backbone`` (False: the backbone stays frozen); ``metric_columns`` (further
    columns of the training log); ``param_groups(model)`` (the optimizer's groups:
    :func:`uniap_train.utils.get_params_groups`); ``serves_predictor`` with
    ``predictor_model(in_dim, cfg, vit)`` (the model ``uniap-predict`` and ``uniap-eval
    --segmenter checkpoint`` load a checkpoint of this recipe into; only a recipe that gives
    masks can: the paper's mask decoder).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn


@dataclass
class StepOutput:
    """What a recipe's :meth:`loss` returns to the trainer."""

    loss: torch.Tensor  # local loss to back-propagate (already scaled for DDP averaging)
    stats: dict = field(default_factory=dict)  # floats for the logs
    after_step: Callable[[], None] | None = None  # run after the optimizer step (centre update)


class Recipe:
    """Base class of the recipes: the protocol (module docstring) with its defaults."""

    name: str = "recipe"
    uniap_options: dict
    trains_backbone: bool = False
    metric_columns: tuple[str, ...] = ()
    serves_predictor: bool = False

    def view_sizes(self) -> dict[str, int]:
        """View sides (pixels) that must be multiples of the patch size, by config key."""
        raise NotImplementedError

    def build_dataset(self, paths, backbone, pipeline_extractor):
        raise NotImplementedError

    def build_student(self) -> nn.Module:
        """A fresh student (the teacher is a copy)."""
        raise NotImplementedError

    def build_loss(self) -> nn.Module:
        raise NotImplementedError

    def loss(self, batch: dict, grids: list, student: nn.Module, teacher: nn.Module, loss_fn: nn.Module,
             teacher_temp: float, world_size: int, autocast: Any) -> StepOutput:
        raise NotImplementedError

    def embedder(self, teacher: nn.Module, kind: str):
        raise NotImplementedError

    def param_groups(self, model: nn.Module) -> list[dict]:
        """The optimizer's parameter groups: no weight decay on biases and norms."""
        from ..utils import get_params_groups

        return get_params_groups(model)

    @classmethod
    def predictor_model(cls, in_dim: int, cfg: Any, vit: nn.Module | None) -> nn.Module:
        """The model a checkpoint of this recipe loads into for prediction (``serves_predictor``)."""
        raise NotImplementedError(f"recipe {cls.name!r} gives no masks to predict")
