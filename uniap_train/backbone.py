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


class TrainableVit(torch.nn.Module):
    """A timm ViT that trains with the neck (``backbone.trainable: true``, recipe paper).

    ``forward(views)`` maps uint8 pixel views (B, H, W, 3), sides multiples of the patch size,
    to patch features (B, H / p, W / p, C) with gradients: the same normalisation and output
    (last-block patch tokens or attention keys) as :class:`uniap.features.VitFeatures`, whose
    network it starts from (:meth:`from_extractor`) or which it rebuilds without weights for
    a checkpoint to fill (:meth:`from_config`).
    """

    def __init__(self, net: torch.nn.Module, layer_output: str, mean, std) -> None:
        super().__init__()
        self.net = net.float()
        self.net.requires_grad_(True)
        self.layer_output = layer_output
        p = net.patch_embed.patch_size
        self.patch_size = int(p[0]) if isinstance(p, (tuple, list)) else int(p)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    @classmethod
    def from_extractor(cls, extractor: Any) -> "TrainableVit":
        import copy

        return cls(copy.deepcopy(extractor.model).train(), extractor.layer_output, extractor.mean, extractor.std)

    @classmethod
    def from_config(cls, cfg: BackboneConfig) -> "TrainableVit":
        """The architecture ``cfg`` names, randomly initialised (a checkpoint's weights follow)."""
        import timm

        options = {k: v for k, v in cfg.options.items() if k not in ("layer_output", "dtype", "max_side", "device")}
        try:
            net = timm.create_model(cfg.model, pretrained=False, num_classes=0, dynamic_img_size=True, **options)
        except (TypeError, ValueError, RuntimeError) as err:
            raise ConfigError(f"backbone: cannot build timm model {cfg.model!r}: {err}") from None
        data = timm.data.resolve_model_data_config(net)
        return cls(net, cfg.options.get("layer_output", "tokens"), data["mean"], data["std"])

    def forward(self, views: torch.Tensor) -> torch.Tensor:
        b, height, width = views.shape[:3]
        p = self.patch_size
        x = (views.permute(0, 3, 1, 2).float() / 255.0 - self.mean) / self.std
        net = self.net
        captured: dict = {}
        handle = None
        attn = net.blocks[-1].attn
        if self.layer_output == "keys":
            handle = attn.qkv.register_forward_hook(lambda module, inputs, output: captured.update(out=output))
        try:
            tokens = net.forward_features(x)
        finally:
            if handle is not None:
                handle.remove()
        prefix = int(getattr(net, "num_prefix_tokens", 0))
        if self.layer_output == "tokens":
            feats = tokens[:, prefix:]
        else:
            out = captured["out"]
            n = out.shape[1]
            k = out.reshape(b, n, 3, int(attn.num_heads), -1)[:, :, 1]
            k_norm = getattr(attn, "k_norm", None)
            if k_norm is not None:
                k = k_norm(k.transpose(1, 2)).transpose(1, 2)
            feats = k.reshape(b, n, -1)[:, prefix:]
        return feats.reshape(b, height // p, width // p, -1)
