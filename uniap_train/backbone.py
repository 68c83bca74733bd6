"""The frozen backbone: any :mod:`uniap.features` extractor, seen from the training loop.

Two ways to get a view's patch features, chosen by :attr:`Backbone.crop_features`:

* **Cropped from the image's grid** (default for ``kind: default``).  The embedded default
  features are NumPy code that, unless given shared words (``backbone.vocabulary``), builds
  its colour and texture vocabulary *per image*, so the features of two separately extracted
  views of one image would live in different bases (channel k a different colour word in
  each).  Instead the data pipeline extracts the whole image once (cached per worker: the
  extractor is deterministic and frozen) and cuts every view out of that grid with bilinear
  resampling at the view's cell centres (:func:`uniap_train.crops.crop_feature_grid`), flips
  included.  All views of an image then share one basis; colour jitter does not apply (there
  are no view pixels).  It also makes a CPU run cheap: one extraction per image per worker for
  the whole run.  With shared words the views are still cut this way: extracting every view
  with colour jitter instead was tried on CamVid and scored lower (mIoU 0.219 against 0.260).
* **Extracted per view** (``kind: vit``).  The views' pixels reach the training loop and the
  ViT runs on each view position as one batch on the training device
  (:meth:`Backbone.batch_features`).
"""

from __future__ import annotations

from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .config import BackboneConfig, ConfigError, expand_path
from .data import load_resized

__all__ = ["Backbone", "build_extractor", "vocabulary_state", "vocabulary_from_state"]


def vocabulary_state(vocabulary: Any) -> dict | None:
    """A :class:`uniap.features.Vocabulary` as tensors and numbers (for a weights-only checkpoint)."""
    if vocabulary is None:
        return None
    out: dict[str, Any] = {}
    for name in ("color", "texture"):
        words = getattr(vocabulary, name)
        if words is not None:
            out[name] = torch.tensor(np.asarray(words, np.float64))
    for name in ("color_gap", "texture_gap", "lightness_scale"):
        out[name] = float(getattr(vocabulary, name))
    out["images"] = int(vocabulary.images)
    return out


def vocabulary_from_state(state: dict | None) -> Any:
    """The :class:`uniap.features.Vocabulary` :func:`vocabulary_state` saved (None for none)."""
    if not state:
        return None
    from uniap.features import Vocabulary

    kwargs = {k: (v.cpu().numpy() if isinstance(v, torch.Tensor) else v) for k, v in state.items()}
    return Vocabulary(**kwargs)


def build_extractor(kind: str, model: str, weights: str | None, options: dict, device: str = "cpu") -> Any:
    """The :mod:`uniap.features` extractor a :class:`BackboneConfig` describes.

    Raises
    ------
    ConfigError
        Unknown option, missing weights or an extractor that refuses its parameters (the
        extractor's message is kept).
    """
    from uniap.features import get_extractor

    kwargs = dict(options)
    if kind == "vit":
        kwargs.setdefault("model", model)
        path = expand_path(weights)
        kwargs.setdefault("weights", None if path is None else str(path))
        kwargs.setdefault("device", device)
    try:
        return get_extractor(kind, **kwargs)
    except (TypeError, ValueError, FileNotFoundError) as err:
        raise ConfigError(f"backbone: {' '.join(str(err).split())}") from None


def _same(extractor: Any) -> Any:
    return extractor


class Backbone:
    """A frozen feature extractor and how the pipeline uses it.

    Parameters
    ----------
    cfg : BackboneConfig
    device : torch.device
        Where :meth:`batch_features` runs (the ViT's device).
    """

    def __init__(self, cfg: BackboneConfig, device: torch.device) -> None:
        self.cfg = cfg
        self.kind = cfg.kind
        self.device = device
        where = str(device) if cfg.kind == "vit" else "cpu"
        self.extractor = build_extractor(cfg.kind, cfg.model, cfg.weights, cfg.options, where)
        self.patch_size = int(self.extractor.patch_size)
        self.name = str(getattr(self.extractor, "name", cfg.kind))
        self.crop_features = cfg.kind == "default"

    def share_vocabulary(self, paths: list, max_side: int, output: Path | None = None,
                         progress: bool = False, saved: Path | None = None) -> str:
        """Give the default extractor the words ``cfg.vocabulary`` asks for; returns what was done.

        ``"shared"``: fit them on the first ``cfg.vocabulary_images`` of ``paths`` (each loaded
        as the data pipeline loads it; a deterministic function of the images and the seed, so
        every process of a run gets the same words), or read them from ``saved`` when given
        (a resumed run's words), and write them to ``output``; a path: read them.  Nothing to
        do without ``cfg.vocabulary``.

        Raises
        ------
        ConfigError
            The vocabulary file is missing, unreadable, or does not match the extractor.
        """
        from uniap.features import Vocabulary

        choice = self.cfg.vocabulary
        if choice is None:
            return "per image"
        try:
            if choice == "shared":
                if saved is not None:
                    self.extractor = replace(self.extractor, vocabulary=Vocabulary.load(saved))
                    done = f"shared, read from {saved}"
                else:
                    images = (load_resized(q, max_side) for q in paths[: self.cfg.vocabulary_images])
                    self.extractor = self.extractor.fit(images, progress=progress)
                    done = f"shared, fitted on {self.extractor.vocabulary.images} images"
                if output is not None and (saved is None or Path(saved).resolve() != Path(output).resolve()):
                    self.extractor.vocabulary.save(output)
                return done
            path = expand_path(choice)
            self.extractor = replace(self.extractor, vocabulary=Vocabulary.load(path))
            return f"read from {path}"
        except (ValueError, FileNotFoundError, TypeError) as err:
            raise ConfigError(f"backbone.vocabulary: {' '.join(str(err).split())}") from None

    def factory(self):
        """A picklable zero-argument callable building this extractor (for DataLoader workers)."""
        if self.kind == "default":  # a small frozen dataclass: ship it as it is (with its words)
            return partial(_same, self.extractor)
        return partial(build_extractor, self.cfg.kind, self.cfg.model, self.cfg.weights, dict(self.cfg.options), "cpu")

    def image_features(self, image: np.ndarray):
        """The :class:`uniap.features.FeatureGrid` of a whole image (evaluation, probing)."""
        return self.extractor(image)

    def dim(self, probe: np.ndarray) -> int:
        """C, from one extraction on ``probe`` (an image)."""
        return int(self.image_features(probe).features.shape[-1])

    @torch.no_grad()
    def batch_features(self, views: torch.Tensor) -> torch.Tensor:
        """Features of a batch of same-size views: uint8 (B, S, S, 3) -> float32 (B, h, w, C).

        ViTs run as one batch on :attr:`device` (sides are multiples of the patch size);
        other extractors run image by image.
        """
        ex = self.extractor
        p = self.patch_size
        if self.kind == "vit" and views.shape[1] % p == 0 and views.shape[2] % p == 0:
            return ex.batch_features(views)
        grids = [ex(v.cpu().numpy()).features for v in views]
        return torch.from_numpy(np.stack(grids)).to(self.device)
