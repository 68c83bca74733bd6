"""Training data: image lists, multi-crop samples, a resumable distributed sampler.

* :func:`list_images` reads an image folder (recursively, sorted) or a COCO-style JSON list;
  the data sets hold the paths as one :class:`PathArray` (``data.kind: shards`` holds none:
  :mod:`uniap_train.shards` streams tar members into :meth:`MultiCropDataset.sample_image`).
* :class:`MultiCropDataset` turns image ``i`` of epoch ``e`` into 2 global and N local views
  (:class:`uniap_train.crops.MultiCrop`) drawn from ``numpy.random.default_rng([seed, e, i])``:
  a sample depends on nothing else, so workers, processes and resumed runs all see the same
  views.  With a *pipeline extractor* (the embedded default features: NumPy, no weights) the
  data set also computes every view's patch features, so DataLoader workers do that work in
  parallel with training; otherwise it returns the views' pixels and the backbone runs in the
  training loop (a ViT on the GPU).
* :class:`ResumableDistributedSampler` is PyTorch's ``DistributedSampler`` that yields
  ``(epoch, index)`` pairs and can start an epoch at any batch (exact resume).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch.utils.data import Dataset
from torch.utils.data.distributed import DistributedSampler

from .config import ConfigError, expand_path
from .crops import Crop, MultiCrop, color_jitter, crop_feature_grid, sample_crop_box

__all__ = [
    "IMAGE_SUFFIXES",
    "list_images",
    "load_resized",
    "resize_max_side",
    "PathArray",
    "MultiCropDataset",
    "PaperDataset",
    "ResumableDistributedSampler",
    "collate_views",
]

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm"}


def list_images(kind: str, root: str, annotations: str | None = None, max_images: int = 0) -> list[Path]:
    """Image paths of a data set, in a fixed order.

    Parameters
    ----------
    kind : {"folder", "coco"}
        ``folder``: every image file under ``root`` (recursively), sorted by path.
        ``coco``: the ``file_name`` of every entry of ``images`` in the JSON ``annotations``,
        in file order, relative to ``root``.
    max_images : int
        Keep the first N (0 = all).

    Raises
    ------
    ConfigError
        Missing folder or file, unreadable JSON, or no images.
    """
    base = expand_path(root)
    if base is None or not base.is_dir():
        raise ConfigError(f"data.root: image folder not found: {root!r}")
    if kind == "folder":
        paths = sorted(p for p in base.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    elif kind == "coco":
        ann = expand_path(annotations)
        if ann is None or not ann.is_file():
            raise ConfigError(f"data.annotations: COCO file not found: {annotations!r}")
        try:
            entries = json.loads(ann.read_text())["images"]
            paths = [base / e["file_name"] for e in entries]
        except (ValueError, KeyError, TypeError) as err:
            raise ConfigError(f"data.annotations: not a COCO-style list of images ({err})") from None
        missing = [p for p in paths if not p.is_file()]
        if missing:
            raise ConfigError(f"data.annotations: {len(missing)} image(s) missing under {root!r}, e.g. {missing[0]}")
    else:
        raise ConfigError(f"data.kind: expected 'folder' or 'coco', got {kind!r}")
    if max_images:
        paths = paths[:max_images]
    if not paths:
        raise ConfigError(f"data.root: no images found under {root!r}")
    return paths


def load_resized(path: str | Path | Any, max_side: int) -> np.ndarray:
    """An image as (H, W, 3) uint8, downscaled (antialiased) so that max(H, W) <= max_side.

    ``path`` is a file, or a :class:`uniap.pipeline.sources.Item` (a tar member)."""
    from uniap.features import load_image

    if hasattr(path, "read_bytes") and getattr(path, "member", None) is not None:
        from uniap.pipeline.sources import decode

        return resize_max_side(decode(path), max_side)
    return resize_max_side(load_image(path), max_side)


def resize_max_side(image: np.ndarray, max_side: int) -> np.ndarray:
    """``image`` downscaled (bilinear, antialiased) so that its longer side is at most ``max_side``."""
    from PIL import Image

    h, w = image.shape[:2]
    if max(h, w) > max_side:
        s = max_side / max(h, w)
        size = (max(1, round(w * s)), max(1, round(h * s)))
        image = np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR, reducing_gap=None))
    return np.ascontiguousarray(image)


class PathArray:
    """A list of paths held as one NumPy byte array (a few bytes per path, no Python objects).

    A list of a million ``Path`` objects costs about 150 MB per process and, read by forked
    DataLoader workers, is copied into each of them page by page (reference counts are
    written on every access); one array is neither.  Indexing gives a ``Path``.

    >>> PathArray(["a/1.jpg", "b/22.png"])[1]
    PosixPath('b/22.png')
    """

    def __init__(self, paths) -> None:
        if isinstance(paths, PathArray):
            self._data = paths._data
            return
        paths = paths if isinstance(paths, (list, tuple)) else list(paths)
        width = max((len(os.fsencode(p)) for p in paths), default=1)
        # filled in place from a generator: no second list (of bytes) the size of the data set
        self._data = np.fromiter((os.fsencode(p) for p in paths), dtype=f"S{width}", count=len(paths))

    def __len__(self) -> int:
        return int(self._data.shape[0])

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [Path(os.fsdecode(b)) for b in self._data[i]]
        return Path(os.fsdecode(self._data[int(i)]))

    def __iter__(self):
        return (Path(os.fsdecode(b)) for b in self._data)


@dataclass
class Sample:
    """One image's views: pixels (``views``) or features (``features``), and their crops."""

    index: int
    crops: list[Crop]
    views: list[np.ndarray] | None = None
    features: list[np.ndarray] | None = None
    teacher_cells: tuple[int, int] | None = None  # recipe paper: the teacher grid's image part
    pixels: list[np.ndarray] | None = None  # recipe paper: the views' pixels beside their features
    regions: dict | None = None  # recipe paper: the teacher's superpixel nodes (:mod:`uniap_train.regions`)
    stream: tuple[int, int] | None = None  # data.kind shards: (stream, references given out) for resume
    skipped: list | None = None  # data.kind shards: (where, why) of members skipped before this one


class MultiCropDataset(Dataset):
    """Multi-crop samples keyed by ``(epoch, index)``.

    Parameters
    ----------
    paths : list of Path
    crop_cfg : CropConfig
    seed : int
        Global seed; sample ``(e, i)`` uses ``default_rng([seed, e, i])``.
    max_side : int
        Images are downscaled to this longer side before cropping.
    pipeline_extractor : callable, optional
        A zero-argument factory returning a feature extractor (called once per worker); when
        given, samples carry each view's ``(h, w, C)`` float32 features instead of pixels.
    crop_features : bool
        With a pipeline extractor: extract each *image* once (cached in the worker) and cut
        the views out of its feature grid (:func:`uniap_train.crops.crop_feature_grid`)
        instead of extracting every view's pixels.
    patch_size : int
        Patch size of the extractor (view grids are ``size // patch_size`` cells a side).
    """

    def __init__(self, paths: list[Path], crop_cfg, seed: int, max_side: int,
                 pipeline_extractor: Callable[[], Any] | None = None, crop_features: bool = False,
                 patch_size: int = 8) -> None:
        self.paths = PathArray(paths)
        self.cache = True  # keep each image's features / pixels for the next epochs (a stream turns it off)
        self._held: tuple[int, np.ndarray] | None = None
        self.multicrop = MultiCrop(crop_cfg)
        self.seed = int(seed)
        self.max_side = int(max_side)
        self.pipeline_extractor = pipeline_extractor
        self.crop_features = bool(crop_features and pipeline_extractor is not None)
        self.patch_size = int(patch_size)
        self._extractor = None
        self._cache: dict[int, tuple[np.ndarray, tuple[float, float], tuple[int, int]]] = {}

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def num_views(self) -> int:
        return self.multicrop.num_views

    def _get_extractor(self):
        if self._extractor is None:
            self._extractor = self.pipeline_extractor()
        return self._extractor

    def _load(self, index: int) -> np.ndarray:
        """Image ``index`` at ``max_side``: the one :meth:`sample_image` holds, or read from its path."""
        if self._held is not None and self._held[0] == index:
            return self._held[1]
        return load_resized(self.paths[index], self.max_side)

    def _remember(self, cache: dict, index: int, value: Any) -> Any:
        if self.cache:
            cache[index] = value
        return value

    def sample_image(self, image: np.ndarray, epoch: int, index: int) -> Sample:
        """The sample ``(epoch, index)`` of an image already read (a tar member of a stream)."""
        self._held = (int(index), image)
        try:
            return self[(epoch, index)]
        finally:
            self._held = None

    def image_grid(self, index: int) -> tuple[np.ndarray, tuple[float, float], tuple[int, int]]:
        """Features of image ``index`` (cached), cells per pixel (sy, sx), and the image shape."""
        if index in self._cache:
            return self._cache[index]
        image = self._load(index)
        grid = self._get_extractor()(image)
        (hr, wr), (ho, wo) = grid.resized_shape, grid.original_shape
        p = grid.patch_size
        scale = (hr / ho / p, wr / wo / p)
        return self._remember(self._cache, index,
                              (np.ascontiguousarray(grid.features, np.float32), scale, image.shape[:2]))

    def __getitem__(self, key: tuple[int, int] | int) -> Sample:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        index = int(index)
        rng = np.random.default_rng([self.seed, int(epoch), index])
        if self.crop_features:
            feats, scale, shape = self.image_grid(index)
            _, crops = self.multicrop(np.zeros(shape + (3,), np.uint8), rng, render=False)
            views = [crop_feature_grid(feats, c, c.size // self.patch_size, scale) for c in crops]
            return Sample(index, crops, features=views)
        image = self._load(index)
        views, crops = self.multicrop(image, rng)
        if self.pipeline_extractor is None:
            return Sample(index, crops, views=views)
        ex = self._get_extractor()
        feats = [np.ascontiguousarray(ex(v).features, dtype=np.float32) for v in views]
        return Sample(index, crops, features=feats)


def collate_views(samples: list[Sample]) -> dict:
    """Stack a list of samples per view position.

    Returns
    -------
    dict
        ``index`` (B,) int64; ``crops`` list (B) of lists (V) of Crop; and either ``views``, a
        list (V) of uint8 tensors (B, S, S, 3), or ``features``, a list (V) of float32 tensors
        (B, h, w, C).
    """
    out: dict[str, Any] = {
        "index": torch.tensor([s.index for s in samples], dtype=torch.int64),
        "crops": [s.crops for s in samples],
    }
    if samples[0].teacher_cells is not None:
        out["teacher_cells"] = torch.tensor([s.teacher_cells for s in samples], dtype=torch.int64)
    if samples[0].features is not None:
        nv = len(samples[0].features)
        out["features"] = [torch.from_numpy(np.stack([s.features[v] for s in samples])) for v in range(nv)]
    else:
        nv = len(samples[0].views)
        out["views"] = [torch.from_numpy(np.stack([s.views[v] for s in samples])) for v in range(nv)]
    if samples[0].pixels is not None:
        out["pixels"] = [torch.from_numpy(np.stack([s.pixels[v] for s in samples])) for v in range(nv)]
    if samples[0].regions is not None:  # one image's superpixels each: sizes differ, kept as a list
        out["regions"] = [s.regions for s in samples]
    if samples[-1].stream is not None:  # a batch is consecutive samples of one stream: its last count
        out["stream"] = samples[-1].stream
        out["skipped"] = [item for s in samples for item in (s.skipped or [])]
    return out


def teacher_crop(height: int, width: int, size: int) -> Crop:
    """The teacher's whole-image view: the image's longer side resized to ``size``, padded to a
    square at the bottom / right (the crop box is the square ``max(H, W)`` a side)."""
    side = float(max(height, width))
    return Crop((0.0, 0.0, side, side), False, int(size))


def teacher_cells(height: int, width: int, cells: int) -> tuple[int, int]:
    """Rows and columns of a ``cells`` x ``cells`` teacher grid whose centres lie in the image."""
    side = max(height, width)
    rows = int(np.clip(np.ceil(cells * height / side - 0.5), 1, cells))
    cols = int(np.clip(np.ceil(cells * width / side - 0.5), 1, cells))
    return rows, cols


def teacher_view_features(features: np.ndarray, scale: tuple[float, float], shape: tuple[int, int],
                          size: int, patch_size: int) -> tuple[np.ndarray, tuple[int, int]]:
    """The teacher's whole-image view cut from an image's feature grid, zero where padded.

    Parameters
    ----------
    features : ndarray (h, w, C)
        The image's features; ``scale`` cells per pixel (sy, sx), ``shape`` the image's (H, W).
    size, patch_size : int
        The view's side in pixels and the extractor's patch size.

    Returns
    -------
    grid : ndarray (T, T, C), float32
        ``T = size // patch_size``.
    cells : (rows, cols)
        The part of the grid that holds the image (:func:`teacher_cells`).
    """
    cells = size // patch_size
    grid = crop_feature_grid(features, teacher_crop(shape[0], shape[1], size), cells, scale)
    rows, cols = teacher_cells(shape[0], shape[1], cells)
    grid[rows:] = 0
    grid[:, cols:] = 0
    return grid, (rows, cols)


def teacher_view_pixels(image: np.ndarray, size: int) -> np.ndarray:
    """The teacher's whole-image view as pixels: longer side ``size``, zero padding (size, size, 3)."""
    from PIL import Image

    height, width = image.shape[:2]
    r = size / max(height, width)
    resized = np.asarray(Image.fromarray(image).resize(
        (max(1, round(width * r)), max(1, round(height * r))), Image.BILINEAR))
    view = np.zeros((size, size, 3), np.uint8)
    view[: resized.shape[0], : resized.shape[1]] = resized[:size, :size]
    return view


class PaperDataset(MultiCropDataset):
    """Samples of the paper recipe: the whole image for the teacher, local crops for the student.

    View 0 is the teacher's (:func:`teacher_crop`: the image's own aspect, resized so that its
    longer side is ``crop_cfg.teacher_size`` and padded; padded cells are zero), views
    ``1..num_local`` are local crops (scale ``local_scale``, flips and colour jitter as
    :class:`~uniap_train.crops.MultiCrop` draws them) and, with ``crop_cfg.student_whole``, a
    last view is the whole image again for the student (the teacher's box, its own flip and
    colour jitter), so that the student also learns on what it sees at inference.  Sample
    ``(e, i)`` depends only on ``(seed, e, i)``; the whole view's draws come after the local
    crops', so turning it on leaves the other views unchanged.

    Parameters are those of :class:`MultiCropDataset`, and:

    pixels : bool
        Also give every view's pixels (``Sample.pixels``) where the views are features cut
        from the image's grid: a model with a pixel stem reads both.
    regions : dict, optional
        ``{"size": pixels per superpixel, "contours": bool, "target_scale": int}``: compute the
        image's superpixels for the teacher's UniAP (``uniap.nodes: superpixels``,
        :mod:`uniap_train.regions`) and give ``Sample.regions``: ``edges``, ``contours``,
        ``pool`` (:func:`~uniap_train.regions.fine_pooling` on the teacher's fine grid),
        ``sizes`` (pixels per superpixel) and ``ids``, per student view the superpixel under
        each of its target points (``target_scale`` per mask cell and side).
    """

    def __init__(self, paths, crop_cfg, seed: int, max_side: int, pipeline_extractor=None,
                 crop_features: bool = False, patch_size: int = 8, *, pixels: bool = False,
                 regions: dict | None = None) -> None:
        super().__init__(paths, crop_cfg, seed, max_side, pipeline_extractor, crop_features, patch_size)
        self.pixels = bool(pixels)
        self.regions = dict(regions) if regions else None
        self._images: dict[int, np.ndarray] = {}
        self._regions: dict[int, dict] = {}

    @property
    def num_views(self) -> int:
        return 1 + self.multicrop.cfg.num_local + int(self.multicrop.cfg.student_whole)

    def _image(self, index: int) -> np.ndarray:
        if index in self._images:  # cached with the features: both are reused every epoch
            return self._images[index]
        return self._remember(self._images, index, self._load(index))

    def _local_crops(self, rng: np.random.Generator, height: int, width: int,
                     image: np.ndarray | None) -> tuple[list[Crop], list[np.ndarray]]:
        from PIL import Image

        c = self.multicrop.cfg
        pil = Image.fromarray(image) if image is not None else None
        crops, views = [], []
        for _ in range(c.num_local):
            box = sample_crop_box(rng, height, width, c.local_scale, c.ratio)
            flip = bool(rng.random() < c.flip_prob)
            if pil is not None:
                view = np.asarray(pil.resize((c.local_size, c.local_size), Image.BILINEAR, box=box))
                view = view[:, ::-1] if flip else view
                views.append(np.ascontiguousarray(color_jitter(view, rng, **self._jitter())))
            else:
                color_jitter(np.zeros((1, 1, 3), np.uint8), rng, **self._jitter())  # same draws
            crops.append(Crop(tuple(float(t) for t in box), flip, c.local_size))
        return crops, views

    def _jitter(self) -> dict:
        c = self.multicrop.cfg
        return dict(brightness=c.brightness, contrast=c.contrast, saturation=c.saturation,
                    jitter_prob=c.jitter_prob, grayscale_prob=c.grayscale_prob)

    def _whole_view(self, rng: np.random.Generator, height: int, width: int,
                    teacher_pixels: np.ndarray | None) -> tuple[Crop, np.ndarray | None]:
        """The student's whole-image view: the teacher's box, flipped and jittered on its own."""
        c = self.multicrop.cfg
        flip = bool(rng.random() < c.flip_prob)
        view = None
        if teacher_pixels is not None:
            view = teacher_pixels[:, ::-1] if flip else teacher_pixels
            view = np.ascontiguousarray(color_jitter(np.ascontiguousarray(view), rng, **self._jitter()))
        else:
            color_jitter(np.zeros((1, 1, 3), np.uint8), rng, **self._jitter())
        return Crop(teacher_crop(height, width, c.teacher_size).box, flip, c.teacher_size), view

    def _sample_regions(self, index: int, image: np.ndarray, crops: list[Crop]) -> dict:
        from .regions import fine_pooling, image_regions, view_region_ids

        cached = self._regions.get(index)
        if cached is None:
            r = image_regions(image, self.regions["size"], self.regions.get("contours", False))
            fine_cells = 2 * (self.multicrop.cfg.teacher_size // self.patch_size)
            cached = self._remember(self._regions, index, {
                "edges": r.edges, "contours": r.contours, "pool": fine_pooling(r.labels, fine_cells),
                "sizes": np.bincount(r.labels.ravel(), minlength=r.count).astype(np.float32), "labels": r.labels,
            })
        scale = int(self.regions.get("target_scale", 2))
        ids = [view_region_ids(cached["labels"], c, scale * 2 * (c.size // self.patch_size)) for c in crops[1:]]
        return {k: v for k, v in cached.items() if k != "labels"} | {"ids": ids}

    def __getitem__(self, key: tuple[int, int] | int) -> Sample:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        index = int(index)
        rng = np.random.default_rng([self.seed, int(epoch), index])
        c = self.multicrop.cfg
        size, p = c.teacher_size, self.patch_size
        cells = size // p
        if self.crop_features:
            feats, scale, shape = self.image_grid(index)
            image = self._image(index) if (self.pixels or self.regions) else None
            height, width = shape
            tcrop = teacher_crop(height, width, size)
            teacher, (rows, cols) = teacher_view_features(feats, scale, shape, size, p)
            crops, local_pixels = self._local_crops(rng, height, width, image if self.pixels else None)
            views = [teacher] + [crop_feature_grid(feats, k, k.size // p, scale) for k in crops]
            pixels = [teacher_view_pixels(image, size)] + local_pixels if self.pixels else None
            if c.student_whole:
                whole, whole_pixels = self._whole_view(rng, height, width, pixels[0] if self.pixels else None)
                views.append(_zero_outside(crop_feature_grid(feats, whole, cells, scale), whole, shape))
                crops.append(whole)
                if self.pixels:
                    pixels.append(whole_pixels)
            crops = [tcrop] + crops
            regions = self._sample_regions(index, image, crops) if self.regions else None
            return Sample(index, crops, features=views, teacher_cells=(rows, cols), pixels=pixels, regions=regions)
        image = self._image(index)
        height, width = image.shape[:2]
        tcrop = teacher_crop(height, width, size)
        teacher = teacher_view_pixels(image, size)
        crops, views = self._local_crops(rng, height, width, image)
        if c.student_whole:
            whole, whole_pixels = self._whole_view(rng, height, width, teacher)
            crops.append(whole)
            views.append(whole_pixels)
        valid = teacher_cells(height, width, cells)
        views = [teacher] + views
        crops = [tcrop] + crops
        regions = self._sample_regions(index, image, crops) if self.regions else None
        if self.pipeline_extractor is None:
            return Sample(index, crops, views=views, teacher_cells=valid, regions=regions)
        ex = self._get_extractor()
        feats = [np.ascontiguousarray(ex(v).features, dtype=np.float32) for v in views]
        return Sample(index, crops, features=feats, teacher_cells=valid, regions=regions,
                      pixels=views if self.pixels else None)


def _zero_outside(grid: np.ndarray, crop: Crop, shape: tuple[int, int]) -> np.ndarray:
    """A view's feature grid with the cells whose centres lie outside the image set to 0."""
    rows, cols = grid.shape[:2]
    x, _ = crop.to_image((np.arange(cols) + 0.5) / cols, np.zeros(1))
    _, y = crop.to_image(np.zeros(1), (np.arange(rows) + 0.5) / rows)
    grid[y >= shape[0]] = 0
    grid[:, x >= shape[1]] = 0
    return grid


class ResumableDistributedSampler(DistributedSampler):
    """``DistributedSampler`` yielding ``(epoch, index)`` that can start mid-epoch.

    Each epoch is one permutation of the data set shared by all processes (seeded by
    ``seed + epoch``, as PyTorch's sampler); process ``rank`` takes every ``num_replicas``-th
    index.  With ``batch_size`` samples per process per step, step ``k`` of an epoch takes the
    same images in total (over processes) as step ``k`` of a single process with batch
    ``batch_size * num_replicas``: runs on different numbers of processes see the same
    global batches.  :meth:`set_epoch` with ``start_batch`` skips the batches a resumed run
    has already trained on.
    """

    def __init__(self, dataset: Dataset, batch_size: int, *, num_replicas: int = 1, rank: int = 0,
                 shuffle: bool = True, seed: int = 0) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed,
                         drop_last=True)
        self.batch_size = int(batch_size)
        self.start_batch = 0

    @property
    def batches_per_epoch(self) -> int:
        return self.num_samples // self.batch_size

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:  # type: ignore[override]
        super().set_epoch(epoch)
        if not 0 <= start_batch <= self.batches_per_epoch:
            raise ValueError(f"start_batch must be in [0, {self.batches_per_epoch}], got {start_batch}")
        self.start_batch = int(start_batch)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        # PyTorch's order (randperm seeded with seed + epoch, every num_replicas-th from rank),
        # kept as one int64 tensor: its .tolist() would make a Python int per image each epoch
        n = len(self.dataset)
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(self.seed + self.epoch)
            order = torch.randperm(n, generator=g)
        else:
            order = torch.arange(n)
        mine = order[: self.total_size][self.rank: self.total_size: self.num_replicas]
        mine = mine[: self.batches_per_epoch * self.batch_size]
        for i in mine[self.start_batch * self.batch_size:].numpy():
            yield (self.epoch, int(i))

    def __len__(self) -> int:
        return (self.batches_per_epoch - self.start_batch) * self.batch_size
