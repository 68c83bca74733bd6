"""Unsupervised semantic segmentation during and after training.

Protocol (as STEGO / PiCIE): every image of an image + label-map set is turned into per-cell
vectors, the vectors of the whole set are clustered by k-means into k groups (k = number of
classes unless told), the cluster maps are mapped to image pixels, and the class x cluster
confusion matrix summed over the set is matched once with the Hungarian algorithm
(:class:`uniap.metrics.semantic.HungarianMIoU`): mIoU and pixel accuracy.

* **Baseline**: k-means on the frozen backbone's own features (the same features the model
  starts from), raw and L2-normalised.
* **Model**: k-means on the trained per-pixel vectors (the recipe's ``embed``: for the
  released recipe, attention over the image's UniAP queries x the teacher head).

The backbone is frozen, so each image's features and UniAP queries are computed once and
cached; an evaluation then costs one head pass and one k-means.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from .config import ConfigError, EvalConfig, expand_path
from .data import IMAGE_SUFFIXES, load_resized
from .pooling import pooled_queries

__all__ = ["EvalItem", "SemanticEvaluator", "kmeans", "list_pairs"]


def list_pairs(images: str, labels: str, max_images: int = 0) -> list[tuple[Path, Path]]:
    """(image, label map) pairs matched by file stem, sorted; the label maps are PNGs."""
    img_dir, lab_dir = expand_path(images), expand_path(labels)
    if img_dir is None or not img_dir.is_dir():
        raise ConfigError(f"eval.images: folder not found: {images!r}")
    if lab_dir is None or not lab_dir.is_dir():
        raise ConfigError(f"eval.labels: folder not found: {labels!r}")
    label_of = {p.stem: p for p in lab_dir.rglob("*.png")}
    pairs = sorted(
        (p, label_of[p.stem]) for p in img_dir.rglob("*")
        if p.suffix.lower() in IMAGE_SUFFIXES and p.stem in label_of
    )
    if max_images:
        pairs = pairs[:max_images]
    if not pairs:
        raise ConfigError(f"eval: no image in {images!r} has a label map of the same name in {labels!r}")
    return pairs


def kmeans(x: torch.Tensor, k: int, iters: int = 100, seed: int = 0, max_fit: int = 100_000) -> torch.Tensor:
    """Lloyd's k-means with k-means++ seeding; the centres (k, D).

    Deterministic for a given ``seed``; fitted on at most ``max_fit`` rows drawn evenly.
    """
    x = x.float()
    if x.shape[0] > max_fit:
        x = x[torch.linspace(0, x.shape[0] - 1, max_fit).long()]
    g = torch.Generator().manual_seed(int(seed))
    n = x.shape[0]
    k = min(k, n)
    centres = x[torch.randint(n, (1,), generator=g)]
    closest = torch.cdist(x, centres).squeeze(1) ** 2
    for _ in range(1, k):
        total = closest.sum()
        i = torch.multinomial(closest / total, 1, generator=g) if total > 0 else torch.randint(n, (1,), generator=g)
        centres = torch.cat([centres, x[i]])
        closest = torch.minimum(closest, (torch.cdist(x, x[i]).squeeze(1)) ** 2)
    for _ in range(iters):
        assign = torch.cdist(x, centres).argmin(1)
        sums = torch.zeros_like(centres).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=k).to(x.dtype)
        new = torch.where(counts[:, None] > 0, sums / counts.clamp(min=1)[:, None], centres)
        if torch.equal(new, centres):
            break
        centres = new
    return centres


def grid_pixels(image: np.ndarray, grid: Any) -> np.ndarray:
    """The pixels under a feature grid's cells: ``image`` as the extractor resized it, padded with
    zeros (or cut) to (h p, w p, 3) for an (h, w) grid of ``p``-pixel patches."""
    from PIL import Image

    h, w = grid.features.shape[:2]
    p = int(grid.patch_size)
    hr, wr = (int(v) for v in grid.resized_shape)
    if (hr, wr) != tuple(image.shape[:2]):
        image = np.asarray(Image.fromarray(image).resize((wr, hr), Image.BILINEAR))
    out = np.zeros((h * p, w * p, 3), np.uint8)
    rows, cols = min(hr, h * p), min(wr, w * p)
    out[:rows, :cols] = image[:rows, :cols]
    return out


@dataclass
class EvalItem:
    """One evaluation image: cached features, queries, labels and the grid's cell mapping."""

    name: str
    features: torch.Tensor  # (h, w, C)
    queries: torch.Tensor  # (Q, C)
    grid: Any  # uniap.features.FeatureGrid (cell -> pixel mapping)
    labels: np.ndarray  # (H, W) at the evaluated image's resolution
    pixels: torch.Tensor | None = None  # uint8 (h p, w p, 3): the pixels under the cells (a pixel stem's input)


class SemanticEvaluator:
    """Hungarian mIoU of k-means clusters of per-pixel vectors over an image + label set.

    Parameters
    ----------
    cfg : EvalConfig
    backbone : uniap_train.backbone.Backbone
    uniap_options : dict
        :func:`uniap.segment` options (as in training).
    device : torch.device
    """

    def __init__(self, cfg: EvalConfig, backbone, uniap_options: dict, device: torch.device) -> None:
        from PIL import Image

        from uniap.features.image import open_image

        self.cfg = cfg
        self.device = device
        self.k = cfg.num_clusters or cfg.num_classes
        self.items: list[EvalItem] = []
        for image_path, label_path in list_pairs(cfg.images, cfg.labels, cfg.max_images):
            image = load_resized(image_path, cfg.max_side)
            try:  # the label map's size checked on its header before decoding, as images are
                with open_image(label_path, str(label_path)) as label_image:
                    labels = np.asarray(label_image)
            except ValueError as err:
                raise ConfigError(f"eval.labels: {err}") from None
            if labels.ndim != 2:
                raise ConfigError(f"eval.labels: {label_path} is not a single-channel label map")
            if labels.shape != image.shape[:2]:
                pil = Image.fromarray(labels.astype(np.int32))
                labels = np.asarray(pil.resize(image.shape[1::-1], Image.NEAREST))
            grid = backbone.image_features(image)
            feats = torch.from_numpy(np.ascontiguousarray(grid.features, np.float32)).to(device)
            pixels = torch.from_numpy(grid_pixels(image, grid)).to(device)
            self.items.append(EvalItem(image_path.stem, feats, feats.new_zeros((0, feats.shape[-1])),
                                       grid, labels.astype(np.int64), pixels))
        # UniAP on every evaluation image in one pass: the queries are fixed.
        queries, mask, counts = pooled_queries([it.features for it in self.items], uniap_options)
        for it, q, n in zip(self.items, queries, counts):
            it.queries = q[:n]

    def _score(self, maps: list[np.ndarray]) -> dict:
        from uniap.metrics.semantic import HungarianMIoU

        acc = HungarianMIoU(self.cfg.num_classes, num_clusters=self.k, ignore_index=self.cfg.ignore_index)
        for it, m in zip(self.items, maps):
            pred = it.grid.to_image(m)
            gt = it.labels
            valid = gt if self.cfg.ignore_index is None else np.where(gt == self.cfg.ignore_index, 0, gt)
            if valid.max(initial=0) >= self.cfg.num_classes:
                raise ConfigError(
                    f"eval.num_classes: {it.name} has class {int(valid.max())} >= {self.cfg.num_classes} "
                    "(set eval.ignore_index for void labels)"
                )
            acc.update(pred, gt)
        r = acc.compute()
        return {"miou": float(r["miou"]), "pixel_accuracy": float(r["pixel_accuracy"])}

    def cluster(self, vectors: list[torch.Tensor], normalize: bool = True) -> dict:
        """k-means over every item's (h, w, D) vectors, then Hungarian mIoU / pixel accuracy."""
        flat = [v.reshape(-1, v.shape[-1]).float().cpu() for v in vectors]
        x = torch.cat(flat)
        if normalize:
            x = torch.nn.functional.normalize(x, dim=-1)
        centres = kmeans(x, self.k, self.cfg.kmeans_iters, self.cfg.seed)
        assign = torch.cdist(x, centres).argmin(1).numpy()
        maps, off = [], 0
        for v in vectors:
            n = v.shape[0] * v.shape[1]
            maps.append(assign[off:off + n].reshape(v.shape[0], v.shape[1]))
            off += n
        return self._score(maps)

    def baseline(self) -> dict:
        """k-means on the backbone features: ``kmeans_raw_*`` and ``kmeans_l2_*`` (L2-normalised)."""
        feats = [it.features for it in self.items]
        raw = self.cluster(feats, normalize=False)
        l2 = self.cluster(feats, normalize=True)
        return {
            "kmeans_raw_miou": raw["miou"], "kmeans_raw_pixel_accuracy": raw["pixel_accuracy"],
            "kmeans_l2_miou": l2["miou"], "kmeans_l2_pixel_accuracy": l2["pixel_accuracy"],
        }

    @torch.no_grad()
    def evaluate(self, embed: Callable[..., torch.Tensor]) -> dict:
        """Score the model: ``embed(features (h, w, C), queries (Q, C), pixels (h p, w p, 3)) -> (h, w, D)``
        per image (the pixels for a model with a pixel stem)."""
        vectors = [embed(it.features, it.queries, it.pixels) for it in self.items]
        return self.cluster(vectors, normalize=True)
