"""The one way from an image to masks: the :class:`Segmenter` protocol.

An image in, a segmentation out: label maps per level (finest first), optional semantic groups
and contour regions, and scored SAM-style records.  UniAP
(:class:`uniap.pipeline.stages.UniapSegmenter`), its peers (Felzenszwalb, SLIC, higra:
:mod:`uniap.evaluation.segmenters`), saved predictions and a trained model (``uniap_train``'s
``checkpoint``) are all Segmenters.  The engines run any of them (decode -> segmenter ->
sinks: :mod:`uniap.pipeline.engine`), ``uniap-eval`` benchmarks any of them, and
``segment_image`` is one call of UniAP's.

A subclass gives :meth:`~Segmenter.level_names` and :meth:`~Segmenter.label_maps` (an
(L, H, W) stack, finest first); the rest has defaults built on them.  A segmenter that can do
better overrides the pipeline's two steps per image, which an engine may run apart (records
in a thread while the next batch is on the accelerator):

1. :meth:`~Segmenter.segment_batch`: images -> one :class:`Pooled` each (the hierarchy and
   what the records are made from), batched across images where the segmenter can (a ViT's
   batch, one UniAP call for a whole chunk, a model's batch);
2. :meth:`~Segmenter.encode`: one :class:`Pooled` -> :class:`Encoded` (records, label maps),
   and :meth:`~Segmenter.provenance`: what output files record of it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np

from ..core.hierarchy import Hierarchy, Level

__all__ = ["Encoded", "Pooled", "Segmentation", "Segmenter", "label_map_hierarchy"]


@dataclass
class Encoded:
    """One image's records and pixel label maps (what the sinks write)."""

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


@dataclass
class Pooled:
    """One image after a segmenter's batched step, before its records.

    Attributes
    ----------
    hierarchy : Hierarchy
        On the host (the sinks read its thresholds, the pictures its level sizes).
    nodes : object
        What the segmenter makes the records from: UniAP's patch grid or superpixel graph, a
        model's prediction, label maps.  Plain data: it travels between processes.
    timings : dict
        Seconds of this image in the batched step by name (``features``, ``pooling``, ...),
        reported as they are.
    """

    hierarchy: Hierarchy
    nodes: Any
    timings: dict[str, float] = field(default_factory=dict)


@dataclass
class Segmentation:
    """What :meth:`Segmenter.segment` returns for one image (``uniap-eval``'s view)."""

    levels: np.ndarray  # (L, H, W) int32, finest first
    proposals: list[dict] | None = None  # scored masks, best first (with proposals=True)
    timings: dict[str, float] = field(default_factory=dict)
    level_names: list[str] | None = None  # when only the data knows them (saved predictions)
    contours: np.ndarray | None = None  # (K, H, W): further masks to propose (uniap's contour regions)


class Segmenter:
    """Base class: subclasses implement :meth:`level_names` and :meth:`label_maps` at least.

    Parameters
    ----------
    score : str
        How :meth:`segment` ranks proposals (a rule of :mod:`uniap.evaluation.proposals`, or
        ``"record"`` where :attr:`record_scores`).
    min_area : int
        Smallest proposal (pixels).

    Examples
    --------
    >>> class Halves(Segmenter):
    ...     name = "halves"
    ...     def level_names(self):
    ...         return ["halves"]
    ...     def label_maps(self, image):
    ...         return (np.arange(image.shape[1]) >= image.shape[1] // 2)[None, None].repeat(
    ...             image.shape[0], 1).astype(np.int32)
    >>> halves = Halves()
    >>> image = np.zeros((4, 6, 3), np.uint8)
    >>> (pooled,) = halves.segment_batch([image])
    >>> [r["area"] for r in halves.encode(pooled, image).records]
    [12, 12]
    """

    name = "segmenter"
    needs_image = True
    record_scores = False  # whether score="record" means something
    unique = True  # one record per distinct mask (the pipeline's default records)

    def __init__(self, score: str = "contrast", min_area: int = 1):
        from ..evaluation.proposals import SCORES

        allowed = SCORES + (("record",) if self.record_scores else ())
        if score not in allowed:
            raise ValueError(f"--score {score} does not apply to {self.name}; choose one of {list(allowed)}")
        if min_area < 1:
            raise ValueError(f"min_area must be >= 1, got {min_area}")
        self.score = score
        self.min_area = int(min_area)

    # -- what subclasses provide ---------------------------------------------------------------
    def params(self) -> dict[str, Any]:
        return {"score": self.score, "min_area": self.min_area}

    def level_names(self) -> list[str]:
        raise NotImplementedError

    def label_maps(self, image: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def warm_up(self) -> None:
        """Compile or load what the first call would (before worker processes fork)."""

    @property
    def on_device(self) -> bool:
        """Whether the batched step runs on an accelerator (an engine then makes one batch's
        records while the next batch is computed)."""
        return False

    # -- uniap-eval ----------------------------------------------------------------------------
    def segment(self, image: np.ndarray | None, *, key: str = "", shape: Sequence[int] | None = None,
                proposals: bool = False) -> Segmentation:
        from ..evaluation.proposals import proposals_from_levels

        t0 = time.perf_counter()
        levels = self.label_maps(image)
        t1 = time.perf_counter()
        props = proposals_from_levels(levels, self.score, self.min_area, image=image) if proposals else None
        timings = {"segment": t1 - t0}
        if proposals:
            timings["proposals"] = time.perf_counter() - t1
        return Segmentation(levels, props, timings)

    # -- the pipeline --------------------------------------------------------------------------
    def segment_batch(self, images: Iterable[np.ndarray]) -> list[Pooled | Exception]:
        """The batched step: one :class:`Pooled` per image, in order, or the exception of an
        image that failed alone (the others go on).

        ``images`` may be a lazy iterable (an engine decodes the next image while this one is
        worked on).  The default runs :meth:`label_maps` one image at a time.
        """
        out: list[Pooled | Exception] = []
        for image in images:
            start = time.perf_counter()
            try:
                labels = np.asarray(self.label_maps(image))
                h = label_map_hierarchy(labels, options={"segmenter": self.name, **self.params()})
            except Exception as err:  # noqa: BLE001 - one image's failure is reported with it
                out.append(err)
                continue
            out.append(Pooled(h, np.stack([lv.labels for lv in h.levels]), {"segment": time.perf_counter() - start}))
        return out

    def encode(self, pooled: Pooled, image: np.ndarray | None = None) -> Encoded:
        """One image's records (scored against ``image`` when given) and label maps.

        The default: the records of the label maps (:func:`uniap.records.hierarchy_records`),
        one per distinct mask when the levels nest (:attr:`unique`), else one per region and
        level.
        """
        from ..records import hierarchy_records

        h = pooled.hierarchy
        labels = pooled.nodes
        unique = self.unique and _nested(h)
        return Encoded(hierarchy_records(h, pixel_labels=labels, unique=unique, image=image), labels, None)

    def provenance(self, pooled: Pooled) -> dict:
        """What output files record of how ``pooled`` was made (the keys of UniAP's own)."""
        from .._version import __version__

        h = pooled.hierarchy
        return {"version": __version__, "thresholds": list(h.thresholds), "options": h.options,
                "grid": [int(s) for s in h.shape[-2:]], "patch_size": 1, "features": self.name,
                "refine": {"method": "none"}}


def label_map_hierarchy(labels: np.ndarray, thresholds: Sequence[float] | None = None,
                        options: dict | None = None) -> Hierarchy:
    """Label maps (L, H, W), finest first, as a :class:`~uniap.Hierarchy` on the pixel grid.

    Each map is renumbered 0.. in raster order of its regions' first pixels; a region's parent
    is the next map's region at its first pixel (its region when the maps nest).  The levels'
    thresholds are evenly spaced from 1 (finest) to 0 unless given.

    Examples
    --------
    >>> h = label_map_hierarchy(np.array([[[0, 1], [2, 3]], [[5, 5], [7, 7]]]))
    >>> h.thresholds, h.level(1).labels.tolist(), h.level(0).parents.tolist()
    ((1.0, 0.0), [[0, 0], [1, 1]], [0, 0, 1, 1])
    """
    labels = np.asarray(labels)
    if labels.ndim == 2:
        labels = labels[None]
    if labels.ndim != 3 or 0 in labels.shape or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"label maps must be an integer (L, H, W) stack, got {labels.dtype} {labels.shape}")
    count = labels.shape[0]
    if thresholds is None:
        thresholds = np.linspace(1.0, 0.0, count) if count > 1 else [1.0]
    maps, firsts = [], []
    for lab in labels:
        uniq, first, inverse = np.unique(lab.ravel(), return_index=True, return_inverse=True)
        rank = np.empty(uniq.size, np.int64)
        rank[np.argsort(first)] = np.arange(uniq.size)
        maps.append(rank[inverse].reshape(lab.shape).astype(np.int32))
        firsts.append(np.sort(first))
    levels = []
    for i, lab in enumerate(maps):
        parents = maps[i + 1].ravel()[firsts[i]].astype(np.int64) if i + 1 < count else np.full(len(firsts[i]), -1)
        levels.append(Level(float(thresholds[i]), lab, np.bincount(lab.ravel()).astype(np.int64), parents))
    return Hierarchy(levels, min_size=1, options=dict(options or {}))


def _nested(h: Hierarchy) -> bool:
    """Whether every level's regions lie inside one region of the next."""
    return all(np.array_equal(np.asarray(h.level(i + 1).labels),
                              np.asarray(h.level(i).parents)[np.asarray(h.level(i).labels)])
               for i in range(len(h) - 1))
