"""Training recipes: what is trained and how one step's loss is computed.

A recipe is a :class:`~uniap_train.recipes.base.Recipe` (the protocol and its defaults:
:mod:`uniap_train.recipes.base`): ``name``, ``uniap_options``, ``view_sizes()``,
``build_dataset(paths, backbone, pipeline_extractor)``, ``build_student()``, ``build_loss()``,
``loss(batch, grids, student, teacher, loss_fn, teacher_temp, world_size, autocast)`` returning
a :class:`~uniap_train.recipes.base.StepOutput`, and ``embedder(teacher, kind)`` for
evaluation; each recipe's model and loss sit in its folder (``released/``, ``paper/``).  The trainer (:mod:`uniap_train.trainer`) does the rest, so a new recipe (the paper's
mask decoder, :mod:`~uniap_train.recipes.paper`) reuses the schedules, EMA, DDP, checkpoints and
logs unchanged.
"""

from __future__ import annotations

from .base import Recipe, StepOutput
from .paper import PaperRecipe
from .released import ReleasedRecipe

RECIPES = {"released": ReleasedRecipe, "paper": PaperRecipe}

__all__ = ["RECIPES", "PaperRecipe", "Recipe", "ReleasedRecipe", "StepOutput", "get_recipe"]


def get_recipe(name: str):
    """The recipe class called ``name``; ``ValueError`` naming the known ones otherwise."""
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; choose one of {sorted(RECIPES)}")
    return RECIPES[name]
