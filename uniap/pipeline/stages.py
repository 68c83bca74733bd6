"""The stages of the pipeline: decode -> features -> pool -> encode, as plain callables.

Each stage takes and returns plain data (arrays, :class:`~uniap.features.FeatureGrid`,
:class:`~uniap.Hierarchy`, records), knows nothing of processes, threads or queues, and is
built once per worker from :class:`Settings`, so any engine (the local one, Ray) composes the
same pieces and writes the same files.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from ..core.api import segment, segment_graph
from ..core.hierarchy import Hierarchy
from ..pixels import pixel_labels as to_pixel_labels
from ..records import contour_records, filter_records, hierarchy_records, semantic_of_clusters
from .sources import Item, decode

__all__ = ["Settings", "Extracted", "Encoded", "decode", "ExtractFeatures", "Pool", "encode"]


@dataclass(frozen=True)
class Settings:
    """Everything that decides an image's outputs; plain data, so it travels to workers.

    Attributes
    ----------
    features : {"default", "vit"}
        The extractor (:func:`uniap.features.get_extractor`).
    extractor_options : dict
        Its keyword arguments (``vocabulary`` may be a :class:`~uniap.features.Vocabulary`).
    segment_options : dict
        Keyword arguments of :func:`uniap.segment` (levels, min_size, ...; library defaults
        for the rest).
    host_backend : str, optional
        Backend for features on the host when ``segment_options`` names none (the CLI picks
        NumPy for short runs, where loading Numba costs more than it saves; same partitions).
    upsampling : {"nearest", "bilinear"}
        Patch labels to pixels (:func:`uniap.pixels.pixel_labels`).
    unique : bool
        One record per distinct mask (default) or one per level (``--all-levels``).
    refine : {"superpixels", "none"}
        UniAP's nodes: superpixels, pixel-accurate levels (default,
        :class:`uniap.features.RegionFeatures`) or the patch grid itself.
    refine_options : dict
        Keyword arguments of :class:`~uniap.features.RegionFeatures` (``size``, ``method``,
        ``compactness``, ``contours``).
    threads : int, optional
        BLAS, OpenMP and torch threads of a worker (several workers share the cores).
    max_pixels : int, optional
        The most pixels an image may have, checked on its header before decoding (default
        :data:`uniap.features.image.DEFAULT_MAX_PIXELS`; 0: no limit).  It refuses images and
        changes no output, so it is not part of the signature.
    pred_iou_thresh, stability_score_thresh : float
        Records below either are not written (:func:`uniap.records.filter_records`; 0: all).
    viz_style : {"levels", "overlay"}
        How ``--viz`` pictures are drawn (recorded in the pictures' signature only:
        :func:`uniap.pipeline.plan.viz_signature`).
    polygons : bool
        Collected records (``--format coco``) carry COCO polygons instead of RLE, made by the
        worker that made the records (:func:`uniap.formats.polygons.polygon_record`).  Only the
        collected data set changes, which is rewritten whole every run, so it is not part of
        the signature either.
    """

    features: str = "default"
    extractor_options: dict = field(default_factory=dict)
    segment_options: dict = field(default_factory=dict)
    host_backend: str | None = None
    upsampling: str = "nearest"
    unique: bool = True
    refine: str = "superpixels"
    refine_options: dict = field(default_factory=dict)
    threads: int | None = None
    max_pixels: int | None = None
    pred_iou_thresh: float = 0.0
    stability_score_thresh: float = 0.0
    viz_style: str = "levels"
    polygons: bool = False

    def build_extractor(self) -> Any:
        from ..features import get_extractor, refined

        if self.threads and self.features != "default":
            import torch

            torch.set_num_threads(self.threads)
        return refined(get_extractor(self.features, **self.extractor_options), self.refine,
                       **self.refine_options)

    def pool_options(self) -> dict[str, Any]:
        """``segment_options`` with the default levels of the nodes ``refine`` makes."""
        from ..features.regions import default_levels

        return {"levels": default_levels(self.refine), **self.segment_options}

    def signature_fields(self) -> dict[str, Any]:
        """What an output records so that a rerun can tell whether it is still valid."""
        from ..core.options import resolve_options

        options = {k: v for k, v in self.pool_options().items() if k != "backend"}
        resolved = resolve_options(**{k: v for k, v in options.items() if k in _RESOLVED})
        extractor = {k: _describe(v) for k, v in sorted(self.extractor_options.items()) if v is not None}
        extractor.pop("device", None)  # where the model runs does not change what it computes
        return {"features": self.features, "extractor": extractor,
                "options": {**resolved.as_dict(), **{k: v for k, v in options.items() if k not in _RESOLVED}},
                "upsampling": self.upsampling, "unique": self.unique,
                "refine": self.refine_fields(), **self.filter_fields()}

    def filter_fields(self) -> dict[str, float]:
        """The record filters that are set (none by default: the signatures of earlier runs hold)."""
        return {name: value for name, value in (("pred_iou_thresh", self.pred_iou_thresh),
                                                ("stability_score_thresh", self.stability_score_thresh)) if value}

    def refine_fields(self) -> dict[str, Any]:
        """The refinement with its defaults filled in, so that naming a default changes nothing
        and a changed default (SLIC before watershed superpixels) changes the signature."""
        if self.refine != "superpixels":
            return {"method": self.refine, **self.refine_options}
        from ..superpixels import DEFAULT_COMPACTNESS, DEFAULT_METHOD, DEFAULT_SIZE

        fields = {"size": DEFAULT_SIZE, "method": DEFAULT_METHOD, **self.refine_options}
        if fields["method"] == "slic":
            fields.setdefault("compactness", DEFAULT_COMPACTNESS)
        else:
            fields.pop("compactness", None)
        fields["contours"] = bool(fields.get("contours", fields["method"] == "watershed"))
        return {"method": "superpixels", "superpixels": fields.pop("method"), **fields}


_RESOLVED = {"levels", "preset", "passes", "pooling", "vote_weight", "temperature", "semantic", "min_size"}


def _describe(value: Any) -> Any:
    """A JSON-able stand-in for an option value (a vocabulary by the digest of its words)."""
    from ..features import Vocabulary

    if isinstance(value, Vocabulary):
        digest = hashlib.sha1()
        for words in (value.color, value.texture):
            if words is not None:
                digest.update(np.ascontiguousarray(words).tobytes())
        digest.update(repr((value.color_gap, value.texture_gap, value.lightness_scale)).encode())
        return "vocabulary:" + digest.hexdigest()[:16]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


@dataclass
class Extracted:
    """Features of one image: ``grid`` on the host, ``features`` wherever they were computed
    (a device tensor for a ViT on a GPU, else ``grid.features``).  ``grid`` is a
    :class:`~uniap.features.RegionGraph` when UniAP's nodes are superpixels."""

    grid: Any
    features: Any


class ExtractFeatures:
    """Stage 2: images -> feature grids, in batches where the extractor has a batched path.

    A ViT (:meth:`uniap.features.VitFeatures.batch_grids`) runs images of equal working shape
    as one batch on its device; other extractors run image by image.
    """

    def __init__(self, extractor: Any) -> None:
        self.extractor = extractor
        self.batched = hasattr(extractor, "batch_grids")

    @property
    def on_device(self) -> bool:
        """Whether the features stay on an accelerator (pooling then runs there too)."""
        device = getattr(self.extractor, "device", None)
        return device is not None and getattr(device, "type", "cpu") != "cpu"

    def __call__(self, images: Sequence[np.ndarray]) -> list[Extracted]:
        if self.batched:
            device = self.on_device
            return [Extracted(grid, feats if device else grid.features)
                    for grid, feats in self.extractor.batch_grids(images)]
        return [Extracted(grid, grid.features) for grid in map(self.extractor, images)]


class Pool:
    """Stage 3: UniAP on a whole batch of grids in one :func:`uniap.segment` call.

    Features on a GPU are pooled there by the torch backend, with ``exact=True`` so the
    partitions equal the CPU reference's; hierarchies come back on the host.  Region graphs
    (:class:`~uniap.features.RegionGraph`, given as ``edges``) are pooled one by one with
    :func:`uniap.segment_graph`.
    """

    def __init__(self, options: dict[str, Any], host_backend: str | None = None) -> None:
        self.options = dict(options)
        self.host_backend = host_backend

    def __call__(self, features: Sequence[Any], edges: Sequence[Any] | None = None) -> list[Hierarchy]:
        if edges is not None and any(e is not None for e in edges):
            options = {"backend": self.host_backend, **self.options} if self.host_backend else self.options
            return [segment_graph(x, e, **options).numpy() for x, e in zip(features, edges)]
        options = dict(self.options)
        on_host = all(isinstance(f, np.ndarray) for f in features)
        if on_host and "backend" not in options and self.host_backend:
            options["backend"] = self.host_backend
        if not on_host:
            options.setdefault("exact", True)
        return [h.numpy() for h in segment(list(features), **options)]


@dataclass
class Encoded:
    """Stage 4's result for one image: pixel label maps and records."""

    records: list[dict]
    stack: np.ndarray | None  # (L, H, W) pixel label maps, or None: made from node_labels when asked
    semantic_labels: np.ndarray | None
    contour_cuts: np.ndarray | None = None  # (K, N): a region graph's contour regions per superpixel
    regions: np.ndarray | None = None  # (H, W): a region graph's superpixel of every pixel
    node_labels: np.ndarray | None = None  # (L, N): a region graph's level labels per superpixel

    @property
    def pixel_labels(self) -> np.ndarray:
        """Instance label maps at the pixels, (L, H, W) int32 (of a region graph: made when
        asked, L full maps that the records never need at once)."""
        return self.stack if self.stack is not None else np.take(self.node_labels, self.regions, axis=-1)

    @property
    def contour_labels(self) -> np.ndarray | None:
        """The contour regions at the pixels, (K, H, W) int32 (made when asked: K full maps)."""
        return None if self.contour_cuts is None else np.take(self.contour_cuts, self.regions, axis=-1)


def encode(grid: Any, hierarchy: Hierarchy, *, upsampling: str = "nearest", unique: bool = True,
           image: np.ndarray | None = None) -> Encoded:
    """Stage 4: SAM-style records, the hierarchy's, then the contour regions' of a region graph
    that has them, and pixel label maps (L, H, W).

    With the ``image``, the records' ``score`` weighs each mask's boundary contrast
    (:mod:`uniap.scores`; its edge strength is gathered once for both kinds of records).

    A region graph's maps are made one level at a time from its superpixels while records are
    encoded, and as a stack only when asked (:attr:`Encoded.pixel_labels`): at 8000 x 8000
    pixels the 8 levels' stack alone would take 2 GB.
    """
    regions = getattr(grid, "regions", None)
    semantic = None
    boundary = None
    if regions is not None and image is not None:
        from ..scores import BoundaryStrength

        boundary = BoundaryStrength(regions, image, pairs=getattr(grid, "edges", None),
                                    strength=getattr(grid, "edge_strength", None))
    if regions is not None and hierarchy.level(0).semantic_labels is None:
        labels = None
        records = hierarchy_records(hierarchy, regions=regions, unique=unique, boundary=boundary)
    else:
        labels = to_pixel_labels(hierarchy, grid, upsampling)
        if hierarchy.level(0).semantic_labels is not None:
            semantic = np.empty_like(labels)
            for i, lv in enumerate(hierarchy.levels):
                semantic[i] = semantic_of_clusters(lv)[labels[i]]
        # the nodes are then the pixel maps' own (their common refinement): the image, not
        # the superpixels' boundary strength
        cells = None
        if regions is None and upsampling == "nearest" and image is not None:  # scores on the patches
            cells = grid.to_image(np.arange(int(np.prod(grid.grid_shape)), dtype=np.int32).reshape(grid.grid_shape))
        records = hierarchy_records(hierarchy, pixel_labels=labels, unique=unique, image=image, cells=cells)
    if regions is None:
        return Encoded(records, labels, semantic)
    node_labels = np.asarray(hierarchy.labels)
    cuts = grid.contours
    if cuts is None or not len(cuts):
        return Encoded(records, labels, semantic, None, regions, node_labels)
    records += contour_records(cuts, regions, grid.contour_thresholds, min_size=hierarchy.min_size,
                               start=len(records), unique=unique, boundary=boundary, exclude=records)
    return Encoded(records, labels, semantic, cuts, regions, node_labels)


def uniap_info(hierarchy: Hierarchy, grid: Any, signature: str | None = None) -> dict:
    """Provenance for output files: version, thresholds, options, grid, features and the
    digest of the run's settings (:func:`uniap.pipeline.plan.signature`) when given."""
    from .._version import __version__

    refine = grid.describe() if hasattr(grid, "describe") else {"method": "none"}
    patches = getattr(grid, "grid", grid)  # a region graph's patch grid
    info = {
        "version": __version__,
        "thresholds": list(hierarchy.thresholds),
        "options": hierarchy.options,
        "grid": list(patches.grid_shape),
        "patch_size": int(patches.patch_size),
        "features": grid.name,
        "refine": refine,
    }
    if signature is not None:
        info["signature"] = signature
    return info


class Stages:
    """Every stage of one worker, built once from :class:`Settings`."""

    def __init__(self, settings: Settings, extractor: Any | None = None) -> None:
        from .plan import signature

        self.settings = settings
        self.signature = signature(settings.signature_fields())
        self.features = ExtractFeatures(extractor if extractor is not None else settings.build_extractor())
        self.pool = Pool(settings.pool_options(), settings.host_backend)

    def decode(self, item: Item) -> np.ndarray:
        return decode(item, self.settings.max_pixels)

    def encode(self, grid: Any, hierarchy: Hierarchy, image: np.ndarray | None = None) -> Encoded:
        encoded = encode(grid, hierarchy, upsampling=self.settings.upsampling, unique=self.settings.unique,
                         image=image)
        if self.settings.filter_fields():
            encoded.records = filter_records(encoded.records, **self.settings.filter_fields())
        return encoded


def timed(timings: dict[str, float], name: str, start: float) -> float:
    """Add the seconds since ``start`` to ``timings[name]``; returns now."""
    now = time.perf_counter()
    timings[name] = timings.get(name, 0.0) + now - start
    return now
