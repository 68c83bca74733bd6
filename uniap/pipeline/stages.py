"""The stages of the pipeline: decode -> segmenter -> records, and UniAP's segmenter.

:class:`Stages` is one worker's: decoding, a :class:`~uniap.pipeline.segmenter.Segmenter`
(UniAP's, :class:`UniapSegmenter`, built from :class:`Settings`, or any other given as it is)
and its records filtered as the settings say.  UniAP's segmenter is composed of plain callables
(:class:`ExtractFeatures`, :class:`Pool`, :func:`encode`) that take and return plain data
(arrays, :class:`~uniap.features.FeatureGrid`, :class:`~uniap.Hierarchy`, records).  Nothing
here knows of processes, threads or queues, so any engine (the local one, Ray) composes the
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
from ..records import RegionRuns, contour_records, filter_records, hierarchy_records, semantic_of_clusters
from .segmenter import Encoded, Pooled, Segmenter
from .sources import Item, decode

__all__ = ["Settings", "Extracted", "Encoded", "decode", "ExtractFeatures", "Pool", "encode", "UniapSegmenter",
           "Stages"]


@dataclass(frozen=True)
class Settings:
    """Everything that decides an image's outputs; plain data, so it travels to workers.

    Attributes
    ----------
    features : str
        The extractor, a name of the registry :data:`uniap.features.EXTRACTORS`
        (:func:`uniap.features.get_extractor`: ``"default"``, ``"vit"``, ...).
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
    max_masks : int
        Then at most this many records an image, the best by ``score`` (0: all).
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
    max_masks: int = 0
    viz_style: str = "levels"
    polygons: bool = False

    def build_segmenter(self, extractor: Any | None = None) -> "UniapSegmenter":
        """UniAP's segmenter of these settings (:meth:`UniapSegmenter.from_settings`)."""
        return UniapSegmenter.from_settings(self, extractor)

    def build_extractor(self) -> Any:
        from ..features import get_extractor, refined

        if self.threads and self.features != "default":
            try:
                import torch
            except ImportError:  # a registered extractor that runs without torch
                torch = None
            if torch is not None:
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
                                                ("stability_score_thresh", self.stability_score_thresh),
                                                ("max_masks", self.max_masks)) if value}

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


def encode(grid: Any, hierarchy: Hierarchy, *, upsampling: str = "nearest", unique: bool = True,
           image: np.ndarray | None = None, graph: bool | None = None) -> Encoded:
    """Stage 4: SAM-style records, the hierarchy's, then the contour regions' of a region graph
    that has them, and pixel label maps (L, H, W).

    With the ``image``, the records' ``score`` weighs each mask's boundary contrast
    (:mod:`uniap.scores`; its edge strength is gathered once for both kinds of records, by
    :meth:`~uniap.features.RegionGraph.boundary_strength`: on the downscaled copy's
    superpixels for an image the watershed downscales), and the superpixel map's runs are
    found once for both (:class:`uniap.records.RegionRuns`).

    A region graph's maps are made one level at a time from its superpixels while records are
    encoded, and as a stack only when asked (:attr:`Encoded.pixel_labels`): at 8000 x 8000
    pixels the 8 levels' stack alone would take 2 GB.

    ``graph`` says whether ``grid`` is a region graph, as the segmenter decided once
    (:attr:`UniapSegmenter.graph`); None: from its type.
    """
    regions = grid.regions if (_is_graph(grid) if graph is None else graph) else None
    semantic = None
    boundary = None
    if regions is not None and image is not None:
        # on the superpixels the watershed made (of a downscaled copy for a large image)
        boundary = grid.boundary_strength(image)
    cuts = grid.contours if regions is not None else None
    instances = hierarchy.level(0).semantic_labels is None
    # the superpixel map's runs, found once for the levels' and the contour regions' records
    runs = None
    if regions is not None and (instances or (cuts is not None and len(cuts))):
        runs = getattr(grid, "runs", None)  # found beside the features, where they were
        if runs is None:
            runs = RegionRuns(regions)
    if regions is not None and instances:
        labels = None
        records = hierarchy_records(hierarchy, regions=regions, unique=unique, boundary=boundary, runs=runs)
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
    if cuts is None or not len(cuts):
        return Encoded(records, labels, semantic, None, regions, node_labels)
    records += contour_records(cuts, regions, grid.contour_thresholds, min_size=hierarchy.min_size,
                               start=len(records), unique=unique, boundary=boundary, exclude=records, runs=runs)
    return Encoded(records, labels, semantic, cuts, regions, node_labels)


def uniap_info(hierarchy: Hierarchy, grid: Any, signature: str | None = None, *, graph: bool | None = None) -> dict:
    """Provenance for output files: version, thresholds, options, grid, features and the
    digest of the run's settings (:func:`uniap.pipeline.plan.signature`) when given.

    ``graph``: whether ``grid`` is a region graph (None: from its type)."""
    from .._version import __version__

    graph = _is_graph(grid) if graph is None else graph
    refine = grid.describe() if graph else {"method": "none"}
    patches = grid.grid if graph else grid  # a region graph's patch grid
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


def _is_graph(grid: Any) -> bool:
    """For callers that did not decide: whether ``grid`` is a region graph, by its type."""
    from ..features.regions import RegionGraph

    return isinstance(grid, RegionGraph)


@dataclass
class ImageSegmentation:
    """What :func:`uniap.segment_image` (one call of :class:`UniapSegmenter`) returns.

    Attributes
    ----------
    hierarchy : Hierarchy
        The UniAP hierarchy on the host: of the superpixel graph (labels per superpixel) or
        of the patch grid.
    records : list of dict
        SAM-style records at the original image's resolution (:mod:`uniap.records`).
    pixel_labels : ndarray of shape (L, H, W), int32
        Instance label maps at image resolution, nested across levels.
    semantic_labels : ndarray of shape (L, H, W), int32, or None
        Semantic groups at image resolution (``semantic=True``).
    contour_labels : ndarray of shape (K, H, W), int32, or None
        The contour regions of watershed superpixels (``contours``), finest cut first.
    grid : RegionGraph or FeatureGrid
        The nodes' features and how they cover the image's pixels.
    image : ndarray of shape (H, W, 3), uint8
    timings : dict
        Seconds spent in ``features``, ``pooling`` (UniAP) and ``records``.
    provenance : dict, optional
        What output files record (:meth:`uniap_info`), as the segmenter that made it says.
    """

    hierarchy: Hierarchy
    records: list[dict]
    pixel_labels: np.ndarray
    semantic_labels: np.ndarray | None
    grid: Any
    image: np.ndarray
    timings: dict[str, float] = field(default_factory=dict)
    contour_labels: np.ndarray | None = None
    provenance: dict | None = None

    def uniap_info(self) -> dict:
        """Provenance for output files: version, thresholds, options, grid and features."""
        return dict(self.provenance) if self.provenance is not None else uniap_info(self.hierarchy, self.grid)


class UniapSegmenter(Segmenter):
    """UniAP as a segmenter: an image in, an :class:`ImageSegmentation` out.

    Everything that does not depend on the image is settled once, here: the extractor and its
    nodes (patch grid or superpixel graph: :func:`uniap.features.refined`; a graph when the
    extractor is a :class:`~uniap.features.RegionFeatures`), the refine rule
    (:func:`uniap.features.regions.check_refine`), the levels (the nodes' defaults when not
    given) and UniAP's options.  :func:`uniap.segment_image` is one call of it,
    ``uniap-eval``'s ``uniap`` segmenter runs one, and the pipeline's middle stage is its
    :meth:`segment_batch` (features batched where the extractor can, a ViT on its device;
    UniAP on a whole batch of patch grids in one call) and :meth:`encode`.

    Parameters
    ----------
    extractor : callable, optional
        A feature extractor (:mod:`uniap.features`); the embedded default when None.
    refine, superpixel_size, superpixel_method, contours, upsampling, unique
        As :func:`uniap.segment_image`.
    flags : bool
        Name options in errors as command-line flags (``uniap-eval``) rather than keywords.
    host_backend : str, optional
        Backend of the batched step for features on the host when ``options`` names none
        (:class:`Settings`).
    **options
        UniAP's options (:func:`uniap.segment`: levels, min_size, preset, semantic, ...).

    Examples
    --------
    >>> import numpy as np
    >>> segmenter = UniapSegmenter(refine="none", levels=(0.5,))
    >>> segmenter(np.zeros((32, 32, 3), np.uint8)).pixel_labels.shape
    (1, 32, 32)
    """

    name = "uniap"
    score, min_area = "contrast", 1  # uniap-eval's ranking defaults (its ``uniap`` segmenter sets its own)

    def __init__(self, extractor: Any | None = None, *, refine: str = "superpixels",
                 superpixel_size: int | None = None, superpixel_method: str | None = None,
                 contours: bool | None = None, upsampling: str = "nearest", unique: bool = True,
                 flags: bool = False, host_backend: str | None = None, **options: Any) -> None:
        from ..features import RegionFeatures, get_extractor, refined
        from ..features.regions import check_refine, default_levels, superpixel_options

        sp_options = superpixel_options(superpixel_size, superpixel_method, contours)
        check_refine(refine, upsampling=upsampling, connectivity=options.get("connectivity"), flags=flags,
                     superpixel_options=[k if k == "contours" else "superpixel_" + k for k in sp_options])
        self.refine, self.upsampling, self.unique = refine, upsampling, unique
        self.extractor = refined(get_extractor("default") if extractor is None else extractor, refine, **sp_options)
        options.setdefault("levels", default_levels(refine))
        self.options = options
        self.host_backend = host_backend
        # the nodes, decided once: superpixels are a graph (segment_graph), patches a grid
        self.graph = isinstance(self.extractor, RegionFeatures)
        self._segment = _segment_graph if self.graph else _segment_grid
        self.features = ExtractFeatures(self.extractor)
        self.pool = Pool(options, host_backend)

    @classmethod
    def from_settings(cls, settings: Settings, extractor: Any | None = None) -> "UniapSegmenter":
        """The segmenter of a pipeline's :class:`Settings` (``extractor``: one built already,
        wrapped for ``settings.refine``)."""
        return cls(extractor if extractor is not None else settings.build_extractor(), refine=settings.refine,
                   upsampling=settings.upsampling, unique=settings.unique, host_backend=settings.host_backend,
                   **settings.segment_options)

    @property
    def on_device(self) -> bool:
        return self.features.on_device

    def level_names(self) -> list[str]:
        return [f"t={t:g}" for t in self.options["levels"]]

    def label_maps(self, image: np.ndarray) -> np.ndarray:
        return self(image).pixel_labels

    def nodes(self, grid: Any) -> Hierarchy:
        """UniAP on one image's nodes, on the host."""
        return self._segment(grid, **self.options)

    def __call__(self, image: Any, max_pixels: int | None = None) -> ImageSegmentation:
        """The segmentation of ``image`` (anything :func:`uniap.features.load_image` reads)."""
        from ..features import load_image

        pixels = load_image(image, max_pixels=max_pixels)
        t0 = time.perf_counter()
        grid = self.extractor(pixels)
        t1 = time.perf_counter()
        h = self.nodes(grid)
        t2 = time.perf_counter()
        pooled = Pooled(h, grid)
        encoded = self.encode(pooled, pixels)
        t3 = time.perf_counter()
        return ImageSegmentation(
            hierarchy=h, records=encoded.records, pixel_labels=encoded.pixel_labels,
            semantic_labels=encoded.semantic_labels, grid=grid,
            image=pixels, timings={"features": t1 - t0, "pooling": t2 - t1, "records": t3 - t2},
            contour_labels=encoded.contour_labels, provenance=self.provenance(pooled),
        )

    # -- the pipeline's middle stage -------------------------------------------------------------
    def segment_batch(self, images: Any) -> list[Pooled | Exception]:
        """Features of ``images`` (one ViT batch where the extractor has a batched path, else
        image by image), then UniAP on all of them in one call: patch grids in one
        :func:`uniap.segment` (on the features' device), superpixel graphs one by one with
        :func:`uniap.segment_graph`.  An image whose features or pooling fail gets its
        exception; the others go on.  ``timings``: ``features`` and ``pooling`` (a batch's
        time shared equally by its images)."""
        extracted = self._extract(images)
        ok = [k for k, e in enumerate(extracted) if not isinstance(e, Exception)]
        out: list[Pooled | Exception] = list(extracted)
        if not ok:
            return out
        start = time.perf_counter()
        try:
            hierarchies = self._pool([extracted[k][0] for k in ok])
        except Exception:  # find the image that fails: the others still get their masks
            for k in ok:
                one = time.perf_counter()
                try:
                    (h,) = self._pool([extracted[k][0]])
                except Exception as err:  # noqa: BLE001 - reported with its image
                    out[k] = err
                    continue
                e, timings = extracted[k]
                out[k] = Pooled(h, e.grid, {**timings, "pooling": time.perf_counter() - one})
            return out
        share = (time.perf_counter() - start) / len(ok)
        for k, h in zip(ok, hierarchies):
            e, timings = extracted[k]
            out[k] = Pooled(h, e.grid, {**timings, "pooling": share})
        return out

    def _extract(self, images: Any) -> list[tuple[Extracted, dict] | Exception]:
        if not self.features.batched:
            return self._extract_one_by_one(images)
        images = list(images)
        if not images:
            return []
        start = time.perf_counter()
        try:
            extracted = self.features(images)
        except Exception:  # find the image that fails: the others still get their masks
            return self._extract_one_by_one(images)
        share = (time.perf_counter() - start) / len(images)
        return [(e, {"features": share}) for e in extracted]

    def _extract_one_by_one(self, images: Any) -> list[tuple[Extracted, dict] | Exception]:
        out: list[tuple[Extracted, dict] | Exception] = []
        for image in images:  # the engine decodes the next image meanwhile
            start = time.perf_counter()
            try:
                (e,) = self.features([image])
            except Exception as err:  # noqa: BLE001 - reported with its image
                out.append(err)
                continue
            out.append((e, {"features": time.perf_counter() - start}))
        return out

    def _pool(self, extracted: list[Extracted]) -> list[Hierarchy]:
        features = [e.features for e in extracted]
        if self.graph:
            return self.pool(features, [e.grid.edges for e in extracted])
        return self.pool(features)

    def encode(self, pooled: Pooled, image: np.ndarray | None = None) -> Encoded:
        """Records and label maps of one image (:func:`encode`)."""
        return encode(pooled.nodes, pooled.hierarchy, upsampling=self.upsampling, unique=self.unique,
                      image=image, graph=self.graph)

    def provenance(self, pooled: Pooled) -> dict:
        return uniap_info(pooled.hierarchy, pooled.nodes, graph=self.graph)


def _segment_graph(grid: Any, **options: Any) -> Hierarchy:
    return segment_graph(grid.features, grid.edges, **options).numpy()


def _segment_grid(grid: Any, **options: Any) -> Hierarchy:
    return segment(grid.features, **options).numpy()


class Stages:
    """Every stage of one worker: decode -> segmenter -> records; built once.

    Parameters
    ----------
    settings : Settings
    extractor : FeatureExtractor, optional
        One built already, for the default segmenter (UniAP, :meth:`UniapSegmenter.from_settings`).
    segmenter : Segmenter, optional
        Any other :class:`~uniap.pipeline.segmenter.Segmenter`, used as it is (engines hand it
        to their worker processes); the run's ``settings`` then describe it only in the
        signature.
    """

    def __init__(self, settings: Settings, extractor: Any | None = None, segmenter: Segmenter | None = None) -> None:
        from .plan import signature

        if extractor is not None and segmenter is not None:
            raise ValueError("give an extractor (for UniAP) or a segmenter, not both")
        self.settings = settings
        self.signature = signature(settings.signature_fields())
        self.given = segmenter  # None: each worker builds UniAP's from the settings
        self.segmenter = segmenter if segmenter is not None else UniapSegmenter.from_settings(settings, extractor)

    def decode(self, item: Item) -> np.ndarray:
        return decode(item, self.settings.max_pixels)

    def records(self, pooled: Pooled, image: np.ndarray | None = None) -> Encoded:
        """The segmenter's records of one image, filtered as the settings say."""
        encoded = self.segmenter.encode(pooled, image)
        if self.settings.filter_fields():
            encoded.records = filter_records(encoded.records, **self.settings.filter_fields())
        return encoded

    def provenance(self, pooled: Pooled) -> dict:
        """The segmenter's provenance of one image, with the settings' signature."""
        return {**self.segmenter.provenance(pooled), "signature": self.signature}

    def encode(self, grid: Any, hierarchy: Hierarchy, image: np.ndarray | None = None) -> Encoded:
        """:meth:`records` of UniAP's ``grid`` and ``hierarchy`` (the earlier form)."""
        return self.records(Pooled(hierarchy, grid), image)

    @property
    def features(self) -> ExtractFeatures:
        """UniAP's features stage (the earlier form; engines call the segmenter)."""
        return self.segmenter.features

    @property
    def pool(self) -> Pool:
        """UniAP's pooling stage (the earlier form; engines call the segmenter)."""
        return self.segmenter.pool


def timed(timings: dict[str, float], name: str, start: float) -> float:
    """Add the seconds since ``start`` to ``timings[name]``; returns now."""
    now = time.perf_counter()
    timings[name] = timings.get(name, 0.0) + now - start
    return now
