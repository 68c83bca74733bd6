"""Patch features for UniAP: an embedded default (no weights) and timm Vision Transformers.

>>> from skimage import data
>>> from uniap.features import extract
>>> grid = extract(data.astronaut())
>>> grid.grid_shape, grid.patch_size, grid.name
((64, 64), 8, 'default')

Every extractor maps an image (a path or an array, see :func:`load_image`) to a
:class:`FeatureGrid`: an (h, w, C) float32 grid plus what is needed to map its cells back to the
image's pixels (:meth:`FeatureGrid.to_image`).  Importing this package loads NumPy only; SciPy
and scikit-image are imported on first use by the default extractor, torch and timm by the ViT.
"""

from __future__ import annotations

from typing import Any

from .base import FeatureExtractor, FeatureGrid, MissingFileError, working_shape
from .default import DefaultFeatures, Vocabulary
from .image import load_image
from .regions import REFINES, RegionFeatures, RegionGraph, pool_grid, refined
from .vit import DEFAULT_MODEL, VitFeatures, load_state_dict

__all__ = [
    "DEFAULT_MODEL",
    "EXTRACTORS",
    "DefaultFeatures",
    "FeatureExtractor",
    "FeatureGrid",
    "MissingFileError",
    "REFINES",
    "RegionFeatures",
    "RegionGraph",
    "VitFeatures",
    "Vocabulary",
    "extract",
    "get_extractor",
    "load_image",
    "load_state_dict",
    "pool_grid",
    "refined",
    "working_shape",
]

EXTRACTORS = {"default": DefaultFeatures, "vit": VitFeatures}


def get_extractor(name: str = "default", **kwargs: Any) -> FeatureExtractor:
    """Build a feature extractor by name.

    Parameters
    ----------
    name : {"default", "vit"}
        ``"default"``: :class:`DefaultFeatures` (colour and texture histograms, no weights).
        ``"vit"``: :class:`VitFeatures` (a timm ViT; needs torch, timm and weights).
    **kwargs
        The extractor's parameters.  ``None`` values are dropped, so callers (the CLI) can
        forward unset options and the extractor's own defaults hold.

    Returns
    -------
    FeatureExtractor
        A callable ``extractor(image) -> FeatureGrid``.

    Raises
    ------
    ValueError
        Unknown ``name``, or a parameter the extractor rejects.
    TypeError
        A parameter the extractor does not have.

    Examples
    --------
    >>> get_extractor("default", patch_size=16).patch_size
    16
    """
    if name not in EXTRACTORS:
        raise ValueError(f"unknown feature extractor {name!r}; choose one of {sorted(EXTRACTORS)}")
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    return EXTRACTORS[name](**kwargs)


def extract(image: Any, extractor: FeatureExtractor | str | None = None) -> FeatureGrid:
    """Feature grid of one image.

    Parameters
    ----------
    image : str, path-like or ndarray
        Anything :func:`load_image` accepts.
    extractor : FeatureExtractor or str, optional
        An extractor, or the name of one (built with its defaults); the default extractor when
        None.

    Returns
    -------
    FeatureGrid
    """
    if extractor is None or isinstance(extractor, str):
        extractor = get_extractor(extractor or "default")
    return extractor(image)
