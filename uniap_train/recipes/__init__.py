"""Training recipes: what is trained and how one step's loss is computed.

A recipe provides ``name``, ``uniap_options``, ``view_sizes()``, ``build_dataset(paths, backbone,
pipeline_extractor)``, ``build_student()``, ``build_loss()``,
``loss(batch, grids, student, teacher, loss_fn, teacher_temp, world_size, autocast)`` returning
a :class:`~uniap_train.recipes.released.StepOutput`, and ``embedder(teacher, kind)`` for
evaluation.  The engine (:mod:`uniap_train.trainer`) does the rest, so a new recipe (the paper's
mask decoder, :mod:`~uniap_train.recipes.paper`) reuses the schedules, EMA, DDP, checkpoints and
logs unchanged.
"""

from __future__ import annotations

from .paper import PaperRecipe
from .released import ReleasedRecipe, StepOutput

RECIPES = {"released": ReleasedRecipe, "paper": PaperRecipe}

__all__ = ["RECIPES", "PaperRecipe", "ReleasedRecipe", "StepOutput", "get_recipe"]


def get_recipe(name: str):
    """The recipe class called ``name``; ``ValueError`` naming the known ones otherwise."""
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; choose one of {sorted(RECIPES)}")
    return RECIPES[name]
