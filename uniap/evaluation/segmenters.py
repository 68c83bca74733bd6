"""Segmenters behind one interface: an image in, a hierarchy of label maps out (finest first).

Every segmenter returns a :class:`Segmentation`: ``levels`` (L, H, W) int32 label maps at the
image's resolution, fine to coarse and the same L for every image (the BSDS benchmark compares
level k across images), and, when asked, ``proposals``: scored masks for class-agnostic COCO
AP / AR (see :mod:`uniap.evaluation.proposals` for the ranking rules).

========================  =================================================================
``uniap``                 UniAP on patch features (the embedded default features unless
                          another extractor is named), one level per threshold; its
                          proposals add the contour regions of watershed superpixels
                          (``Segmentation.contours``).
``felzenszwalb``          :func:`skimage.segmentation.felzenszwalb` at several ``scales``
                          (one level each; the levels are not nested).
``slic_rag``              SLIC superpixels, their region adjacency graph with mean-colour
                          (CIELab) distances, greedily merged with
                          :func:`skimage.graph.merge_hierarchical`; one level per merge
                          ``threshold`` (nested).
``higra_watershed``       A hierarchical watershed (higra) on the 4-adjacency graph of the
                          smoothed CIELab image (edge weight: L2 colour difference), cut
                          where it has ``regions`` regions (nested).
``predictions``           Masks saved by ``uniap-cli --format sam`` (or any SAM-style list
                          of records), one ``<stem>.json`` per image.
plugins                   Entry points of the ``uniap.segmenters`` group, e.g.
                          ``checkpoint`` (``uniap_train``: a trained model, ``--checkpoint``).
========================  =================================================================
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

# the one protocol, with its defaults (uniap.pipeline.segmenter): the pipeline runs these too
from ..pipeline.segmenter import Pooled, Segmentation, Segmenter
from .proposals import proposals_from_levels

__all__ = [
    "PLUGIN_GROUP",
    "SEGMENTERS",
    "Felzenszwalb",
    "HigraWatershed",
    "Predictions",
    "Segmentation",
    "Segmenter",
    "SlicRag",
    "Uniap",
    "build_segmenter",
    "levels_from_records",
    "plugin_segmenters",
    "segmenter_names",
]


def _floats(values: Sequence[float], name: str, decreasing: bool = False) -> tuple[float, ...]:
    values = tuple(float(v) for v in values)
    if not values:
        raise ValueError(f"{name} needs at least one value")
    diffs = np.diff(values)
    if (decreasing and np.any(diffs >= 0)) or (not decreasing and np.any(diffs <= 0)):
        raise ValueError(f"{name} must be strictly {'de' if decreasing else 'in'}creasing, got {list(values)}")
    return values


# ------------------------------------------------------------------------------------- uniap


class Uniap(Segmenter):
    """UniAP (``uniap.segment``) on patch features, upsampled to pixels.

    Parameters
    ----------
    levels : thresholds, strictly decreasing (the library's default when None)
    features : extractor name for :func:`uniap.features.get_extractor` (``"default"``)
    feature_options : dict passed to the extractor
    refine : ``"superpixels"`` (default: UniAP on the image's superpixels,
        :class:`uniap.features.RegionFeatures`) or ``"none"`` (on the patch grid)
    superpixel_size : mean superpixel area in pixels (default 150)
    superpixel_method : ``"watershed"`` (default) or ``"slic"`` (:func:`uniap.superpixels.superpixels`)
    contours : also propose the contour regions of watershed superpixels (default: True with
        them; :func:`uniap.superpixels.superpixel_hierarchy`); the levels are unchanged
    upsampling : ``"nearest"`` or ``"bilinear"`` (:func:`uniap.pixels.pixel_labels`;
        ``refine="none"`` only)
    score : ``"contrast"`` (default) or its synonym ``"record"``: the masks are the records
        ``uniap-cli`` writes (clusters of at least ``min_size`` nodes, contour regions not
        already a cluster's mask) ranked by their ``score``, which is the contrast rule of
        :mod:`uniap.evaluation.proposals` (:mod:`uniap.scores`); another rule of that module
        ranks every region of the label maps instead
    **options : passed to :func:`uniap.segment` (``min_size``, ``preset``, ``connectivity``, ...)
    """

    name = "uniap"
    record_scores = True

    def __init__(self, levels: Sequence[float] | None = None, *, features: str = "default",
                 feature_options: dict | None = None, refine: str = "superpixels",
                 superpixel_size: int | None = None, superpixel_method: str | None = None,
                 contours: bool | None = None, upsampling: str = "nearest",
                 score: str = "contrast", min_area: int = 1, **options: Any):
        super().__init__(score, min_area)
        from ..core.options import check_levels
        from ..features import REFINES, get_extractor
        from ..features.regions import default_levels
        from ..pipeline.image import UniapSegmenter
        from ..pixels import UPSAMPLING

        if refine not in REFINES:
            raise ValueError(f"refine must be one of {list(REFINES)}, got {refine!r}")
        if upsampling not in UPSAMPLING:
            raise ValueError(f"upsampling must be one of {list(UPSAMPLING)}, got {upsampling!r}")
        levels = check_levels(default_levels(refine) if levels is None else levels)
        options = {k: v for k, v in options.items() if v is not None}
        feature_options = {k: v for k, v in (feature_options or {}).items() if v is not None}
        # the refine rule, the nodes and the extractor, settled once (uniap.pipeline.image)
        self.segmenter = UniapSegmenter(get_extractor(features, **feature_options), refine=refine,
                                        superpixel_size=superpixel_size, superpixel_method=superpixel_method,
                                        contours=contours, upsampling=upsampling, flags=True, levels=levels,
                                        **options)
        self.levels = levels
        self.refine = refine
        self.superpixel_size = superpixel_size
        self.superpixel_method = superpixel_method
        self.contours = contours
        self.upsampling = upsampling
        self.features = features
        self.feature_options = feature_options
        self.options = options
        self.extractor = self.segmenter.extractor

    def params(self) -> dict[str, Any]:
        return {"levels": list(self.levels), "features": self.features,
                "feature_options": dict(self.feature_options), "refine": self.refine,
                "superpixel_size": self.superpixel_size, "superpixel_method": self.superpixel_method,
                "contours": self.contours, "upsampling": self.upsampling,
                **self.options, **super().params()}

    def level_names(self) -> list[str]:
        return [f"t={t:g}" for t in self.levels]

    def warm_up(self) -> None:
        from ..core.api import segment

        segment(np.random.default_rng(0).normal(size=(8, 8, 4)).astype(np.float32), levels=self.levels,
                **self.options)

    # the pipeline's steps are UniAP's own (uniap.pipeline.stages.UniapSegmenter)
    @property
    def on_device(self) -> bool:
        return self.segmenter.on_device

    def segment_batch(self, images):
        return self.segmenter.segment_batch(images)

    def encode(self, pooled, image=None):
        return self.segmenter.encode(pooled, image)

    def provenance(self, pooled) -> dict:
        return self.segmenter.provenance(pooled)

    def _run(self, image: np.ndarray):
        from ..pixels import pixel_labels

        t0 = time.perf_counter()
        grid = self.extractor(image)
        t1 = time.perf_counter()
        h = self.segmenter.nodes(grid)
        labels = pixel_labels(h, grid, self.upsampling)
        return grid, h, labels, {"features": t1 - t0, "pooling": time.perf_counter() - t1}

    def label_maps(self, image: np.ndarray) -> np.ndarray:
        return self._run(image)[2]

    def segment(self, image, *, key="", shape=None, proposals=False) -> Segmentation:
        grid, h, labels, timings = self._run(image)
        out = Segmentation(labels, None, timings)
        if not proposals:  # the level benchmarks (BSDS500, label maps) read the levels only
            return out
        t = time.perf_counter()
        if self.score not in RECORD_RULES:  # the other rules rank every region of the label maps
            out.contours = grid.contour_maps() if self.segmenter.graph else None
            out.proposals = proposals_from_levels(labels, self.score, self.min_area, image=image,
                                                  contours=out.contours)
        else:  # the records uniap-cli writes, in the order of their score (the contrast rule)
            records = self.segmenter.encode(Pooled(h, grid), image).records
            out.proposals = records_to_proposals(records, self.min_area)
        timings["proposals"] = time.perf_counter() - t
        return out


PROPOSED_KINDS = ("instance", "contour")  # records that are masks of objects (not semantic groups)
# uniap's rules that rank its records, the masks uniap-cli writes: "contrast" is the records'
# ``score`` (uniap.scores), so COCOeval on a written file gives uniap-eval's numbers
RECORD_RULES = ("contrast", "record")


def records_to_proposals(records: Sequence[dict], min_area: int = 1) -> list[dict]:
    """Instance and contour records as proposals ranked by their ``score``; a mask repeated
    (at a coarser level, or as both kinds) is kept once (its first record)."""
    seen: set = set()
    out = []
    for rec in records:
        if rec.get("kind", "instance") not in PROPOSED_KINDS or rec.get("area", min_area) < min_area:
            continue
        seg = rec["segmentation"]
        counts = seg["counts"] if isinstance(seg, dict) else None
        ident = (tuple(seg["size"]), counts) if isinstance(counts, (str, bytes)) else None
        if ident is not None:
            if ident in seen:
                continue
            seen.add(ident)
        score = rec.get("score", rec.get("predicted_iou", 1.0))
        out.append({"segmentation": seg, "score": float(score), "area": rec.get("area"),
                    "level": int(rec.get("level", 0))})
    out.sort(key=lambda p: -p["score"])
    return out


# ------------------------------------------------------------------------------ scikit-image


class Felzenszwalb(Segmenter):
    """:func:`skimage.segmentation.felzenszwalb` at several scales, smallest (finest) first.

    Parameters
    ----------
    scales : increasing ``scale`` values (larger: bigger regions); one level each
    sigma : Gaussian pre-smoothing
    min_size : smallest component (pixels), enforced by post-merging
    """

    name = "felzenszwalb"

    def __init__(self, scales: Sequence[float] = (50, 100, 200, 400, 800, 1600), *, sigma: float = 0.8,
                 min_size: int = 20, score: str = "contrast", min_area: int = 1):
        super().__init__(score, min_area)
        self.scales = _floats(scales, "scales")
        self.sigma = float(sigma)
        self.min_size = int(min_size)

    def params(self) -> dict[str, Any]:
        return {"scales": list(self.scales), "sigma": self.sigma, "min_size": self.min_size, **super().params()}

    def level_names(self) -> list[str]:
        return [f"scale={s:g}" for s in self.scales]

    def label_maps(self, image: np.ndarray) -> np.ndarray:
        from skimage.segmentation import felzenszwalb

        return np.stack([felzenszwalb(image, scale=s, sigma=self.sigma, min_size=self.min_size)
                         for s in self.scales]).astype(np.int32)


def mean_colour_rag(image: np.ndarray, labels: np.ndarray):
    """The graph of :func:`skimage.graph.rag_mean_color` (``connectivity=2``, ``mode="distance"``),
    built with NumPy instead of a per-pixel Python loop (same nodes, edges, attributes)."""
    from skimage.graph import RAG

    labels = np.asarray(labels)
    k = int(labels.max()) + 1
    flat = labels.ravel()
    count = np.bincount(flat, minlength=k).astype(np.float64)
    total = np.stack([np.bincount(flat, weights=image[..., c].ravel(), minlength=k)
                      for c in range(image.shape[-1])], axis=1)
    # 8-neighbourhood: right, down, and both diagonals
    pairs = [(labels[:, :-1], labels[:, 1:]), (labels[:-1, :], labels[1:, :]),
             (labels[:-1, :-1], labels[1:, 1:]), (labels[:-1, 1:], labels[1:, :-1])]
    a = np.concatenate([p.ravel() for p, _ in pairs])
    b = np.concatenate([q.ravel() for _, q in pairs])
    diff = a != b
    lo, hi = np.minimum(a[diff], b[diff]), np.maximum(a[diff], b[diff])
    edges = np.unique(lo.astype(np.int64) * k + hi)
    rag = RAG()
    present = np.flatnonzero(count)
    for n in present.tolist():
        rag.add_node(n, labels=[n], **{"pixel count": count[n], "total color": total[n].copy(),
                                       "mean color": total[n] / count[n]})
    mean = total / np.maximum(count, 1)[:, None]
    u, v = edges // k, edges % k
    weights = np.linalg.norm(mean[u] - mean[v], axis=1)
    for x, y, w in zip(u.tolist(), v.tolist(), weights.tolist()):
        rag.add_edge(x, y, weight=w)
    rag.max_id = int(present.max()) if present.size else 0
    return rag


class SlicRag(Segmenter):
    """SLIC superpixels merged greedily on their mean-colour region adjacency graph.

    :func:`skimage.segmentation.slic` makes about ``n_segments`` superpixels (it rescales the
    RGB image to [0, 1] and works in CIELab); their RAG on the image's CIELab colours
    (:func:`mean_colour_rag`, the graph of :func:`skimage.graph.rag_mean_color`) is merged by
    :func:`skimage.graph.merge_hierarchical`, which repeatedly joins the two adjacent regions
    of most similar mean colour and updates the mean. The sequence of merges is recorded once
    (at the largest threshold); level ``t`` applies the merges made before the first merge whose
    colour distance reached ``t``, which is what ``merge_hierarchical(thresh=t)`` returns
    (except in the rare case that a later merge has a smaller distance than an earlier one).
    Levels are therefore nested. Threshold 0 gives the superpixels themselves.

    Parameters
    ----------
    thresholds : increasing CIELab distances
    n_segments, compactness, sigma : :func:`skimage.segmentation.slic` parameters
    """

    name = "slic_rag"

    def __init__(self, thresholds: Sequence[float] = (0, 5, 8, 12, 16, 22, 30), *, n_segments: int = 600,
                 compactness: float = 10.0, sigma: float = 1.0, score: str = "contrast", min_area: int = 1):
        super().__init__(score, min_area)
        self.thresholds = _floats(thresholds, "thresholds")
        self.n_segments = int(n_segments)
        self.compactness = float(compactness)
        self.sigma = float(sigma)

    def params(self) -> dict[str, Any]:
        return {"thresholds": list(self.thresholds), "n_segments": self.n_segments,
                "compactness": self.compactness, "sigma": self.sigma, **super().params()}

    def level_names(self) -> list[str]:
        return [f"thr={t:g}" for t in self.thresholds]

    def label_maps(self, image: np.ndarray) -> np.ndarray:
        from skimage.color import rgb2lab
        from skimage.graph import merge_hierarchical
        from skimage.segmentation import slic

        # slic rescales its input to [0, 1] and converts it to CIELab itself
        sp = slic(image, n_segments=self.n_segments, compactness=self.compactness, sigma=self.sigma,
                  start_label=0, channel_axis=-1)
        rag = mean_colour_rag(rgb2lab(image), sp)
        merges: list[tuple[int, int, float]] = []

        def merge(graph, src, dst):
            merges.append((src, dst, graph[src][dst]["weight"]))
            node, other = graph.nodes[dst], graph.nodes[src]
            node["total color"] = node["total color"] + other["total color"]
            node["pixel count"] += other["pixel count"]
            node["mean color"] = node["total color"] / node["pixel count"]

        def weight(graph, src, dst, n):
            return {"weight": float(np.linalg.norm(graph.nodes[dst]["mean color"] - graph.nodes[n]["mean color"]))}

        merge_hierarchical(sp, rag, thresh=max(self.thresholds) + 1e-9, rag_copy=False, in_place_merge=True,
                           merge_func=merge, weight_func=weight)
        # replay with a union-find, snapshotting at each threshold
        parent = np.arange(int(sp.max()) + 1)

        def find(x):
            while parent[x] != x:
                parent[x] = parent[parent[x]]
                x = parent[x]
            return x

        out = np.empty((len(self.thresholds),) + sp.shape, np.int32)
        reached = 0.0  # largest merge distance so far
        i = 0
        for level, t in enumerate(self.thresholds):
            while i < len(merges) and max(reached, merges[i][2]) < t:
                src, dst, w = merges[i]
                reached = max(reached, w)
                parent[find(src)] = find(dst)
                i += 1
            roots = np.array([find(x) for x in range(len(parent))])
            out[level] = roots[sp]
        return out


# ------------------------------------------------------------------------------------- higra


class HigraWatershed(Segmenter):
    """A hierarchical watershed (Najman & Schmitt 1996; Cousty et al. 2018) computed by higra.

    The image is converted to CIELab and smoothed (Gaussian, ``sigma`` pixels); the edge
    weights of the pixels' 4-adjacency graph are the L2 colour differences; the watershed
    hierarchy by ``attribute`` (``area``, ``volume`` or ``dynamics``) is cut horizontally where
    it has ``regions`` regions (one level per number, largest number first).
    """

    name = "higra_watershed"
    ATTRIBUTES = ("area", "volume", "dynamics")

    def __init__(self, regions: Sequence[int] = (1000, 300, 100, 30, 10, 3), *, attribute: str = "area",
                 sigma: float = 1.0, score: str = "contrast", min_area: int = 1):
        super().__init__(score, min_area)
        regions = tuple(int(r) for r in regions)
        if not regions or any(r < 1 for r in regions) or any(np.diff(regions) >= 0):
            raise ValueError(f"regions must be strictly decreasing positive counts, got {list(regions)}")
        if attribute not in self.ATTRIBUTES:
            raise ValueError(f"attribute must be one of {list(self.ATTRIBUTES)}, got {attribute!r}")
        self.regions = regions
        self.attribute = attribute
        self.sigma = float(sigma)

    def params(self) -> dict[str, Any]:
        return {"regions": list(self.regions), "attribute": self.attribute, "sigma": self.sigma,
                **super().params()}

    def level_names(self) -> list[str]:
        return [f"regions={r}" for r in self.regions]

    def label_maps(self, image: np.ndarray) -> np.ndarray:
        import higra as hg
        from skimage.color import rgb2lab
        from skimage.filters import gaussian

        lab = rgb2lab(image)
        if self.sigma > 0:
            lab = gaussian(lab, sigma=self.sigma, channel_axis=-1)
        graph = hg.get_4_adjacency_graph(image.shape[:2])
        weights = hg.weight_graph(graph, lab, hg.WeightFunction.L2)
        build = {"area": hg.watershed_hierarchy_by_area, "volume": hg.watershed_hierarchy_by_volume,
                 "dynamics": hg.watershed_hierarchy_by_dynamics}[self.attribute]
        tree, altitudes = build(graph, weights)
        explorer = hg.HorizontalCutExplorer(tree, altitudes)
        return np.stack([explorer.horizontal_cut_from_num_regions(r).labelisation_leaves(tree)
                         for r in self.regions]).astype(np.int32)


# ------------------------------------------------------------------------------- predictions

# The most levels saved predictions may name: label maps are (levels, H, W) int32, so a record
# listing level 5000 would otherwise cost 5001 full maps (3 GB for a 480 x 320 image) before
# any check.  uniap's defaults use 5 to 8; the bound is checked before anything is allocated.
MAX_LEVELS = 64


def check_records(records: Sequence[dict], shape: Sequence[int] | None, source: object = "",
                  num_levels: int | None = None) -> None:
    """``ValueError`` naming the first record (by position and id) whose mask is not a valid
    RLE of an image of ``shape`` (:func:`uniap.records.check_rle`), or whose ``levels`` /
    ``level`` are not integers in ``[0, num_levels)`` (instance records; ``[0, MAX_LEVELS)``
    for the others, or when ``num_levels`` is None): nothing is decoded or allocated first."""
    from ..records import check_rle

    for i, rec in enumerate(records):
        name = f"record {i}" + (f" (id {rec['id']!r})" if isinstance(rec, dict) and "id" in rec else "")
        if not isinstance(rec, dict) or "segmentation" not in rec:
            raise ValueError(f"{source}: {name} has no 'segmentation'")
        try:
            check_rle(rec["segmentation"], shape)
            _record_levels(rec, num_levels if rec.get("kind", "instance") == "instance" else None)
        except ValueError as err:
            raise ValueError(f"{source}: {name}: {err}") from None


def _record_levels(rec: dict, num_levels: int | None) -> list[int]:
    """The levels a record spans (``levels``, else ``[level]``, else ``[0]``), each checked to
    be an integer in ``[0, num_levels)``, or ``[0, MAX_LEVELS)`` when the file gives none."""
    span = rec.get("levels", [rec.get("level", 0)])
    if not isinstance(span, (list, tuple)):
        raise ValueError(f"'levels' must be a list of level indices, got {span!r:.40}")
    bound = MAX_LEVELS if num_levels is None else num_levels
    for v in span:
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not 0 <= v < bound:
            where = f"the file's {num_levels} levels" if num_levels is not None else \
                f"the limit of {MAX_LEVELS} levels (uniap.evaluation.segmenters.MAX_LEVELS)"
            raise ValueError(f"level {v!r:.40} is not an index in [0, {bound}): beyond {where}")
    return [int(v) for v in span]


def levels_from_records(records: Sequence[dict], shape: Sequence[int], num_levels: int | None = None,
                        kind: str = "instance") -> np.ndarray:
    """Label maps (L, H, W) from SAM-style records of one ``kind`` (instance, or uniap-cli's
    contour regions).

    Records are grouped by the ``levels`` they span (``[level]`` without it, level 0 without
    either): a distinct-mask record of ``uniap-cli`` belongs to every level it lists. Within a
    level, masks are painted largest first, so a smaller overlapping mask wins its pixels.
    Pixels no mask covers (e.g. clusters below ``uniap-cli --min-size``) become regions of
    their own, one per 4-connected component.

    Raises
    ------
    ValueError
        A record's level is not an integer in ``[0, num_levels)`` (``[0, MAX_LEVELS)`` when
        ``num_levels`` is None; checked before the maps are allocated), or a mask has another
        shape.
    """
    from scipy import ndimage

    from ..records import decode_rle

    from ..features.image import DEFAULT_MAX_PIXELS, check_pixels

    height, width = int(shape[0]), int(shape[1])
    check_pixels((height, width), DEFAULT_MAX_PIXELS, "label maps")
    if num_levels is not None and not 0 <= num_levels <= MAX_LEVELS:
        raise ValueError(f"{num_levels} levels: more than the limit of {MAX_LEVELS} "
                         "(uniap.evaluation.segmenters.MAX_LEVELS)")
    chosen = [r for r in records if r.get("kind", "instance") == kind]
    spans = []
    for i, rec in enumerate(chosen):
        try:
            spans.append(_record_levels(rec, num_levels))
        except ValueError as err:
            raise ValueError(f"{kind} record {i}: {err}") from None
    if num_levels is None:
        num_levels = 1 + max((max(s) for s in spans if s), default=0)
    out = np.empty((num_levels, height, width), np.int32)
    for lv in range(num_levels):
        labels = np.full((height, width), -1, np.int64)
        mine = sorted((r for r, s in zip(chosen, spans) if lv in s), key=lambda r: -float(r.get("area", 0)))
        for j, rec in enumerate(mine):
            mask = decode_rle(rec["segmentation"])
            if mask.shape != (height, width):
                raise ValueError(f"a mask has shape {mask.shape}, the image is {(height, width)}")
            labels[mask] = j
        holes = labels < 0
        if holes.any():
            comp, _ = ndimage.label(holes)
            labels[holes] = len(mine) + comp[holes] - 1
        out[lv] = np.unique(labels, return_inverse=True)[1].reshape(height, width)
    return out


class Predictions(Segmenter):
    """Saved masks: ``<folder>/<key>.json`` per image, as written by ``uniap-cli --format sam``.

    A file holds a SAM document (``{"annotations": [...]}``, with ``uniap.thresholds`` giving
    the number of levels) or a bare list of records. Label maps are rebuilt with
    :func:`levels_from_records`; with ``uniap-cli --min-size 1`` every cluster is a record and
    they equal the label maps of a direct run.  Contour records (``kind: "contour"``) are
    rebuilt the same way and proposed with the levels, as in a direct run.
    ``score="record"`` ranks the saved masks by
    their ``score`` (``predicted_iou`` when absent); the other rules rank the rebuilt levels'
    regions.
    """

    name = "predictions"
    record_scores = True

    def __init__(self, folder, *, score: str = "contrast", min_area: int = 1):
        super().__init__(score, min_area)
        self.folder = Path(folder)

    @property
    def needs_image(self) -> bool:  # saved masks alone, unless the ranking looks at the image
        from .proposals import NEEDS_IMAGE

        return self.score in NEEDS_IMAGE

    def params(self) -> dict[str, Any]:
        return {"folder": str(self.folder), **super().params()}

    def path(self, key: str) -> Path:
        return self.folder / f"{key}.json"

    def level_names(self) -> list[str]:
        return []  # known per file (Segmentation.level_names)

    def read(self, key: str) -> tuple[list[dict], int | None, list[str] | None]:
        path = self.path(key)
        try:
            with open(path, "rb") as fh:
                doc = json.load(fh)
        except ValueError as err:  # JSONDecodeError, UnicodeDecodeError
            raise ValueError(f"{path} is not JSON: {err}") from None
        if isinstance(doc, list):
            return doc, None, None
        if not isinstance(doc, dict) or not isinstance(doc.get("annotations"), list):
            raise ValueError(f"{path} is neither a SAM document nor a list of records")
        uniap = doc.get("uniap")
        thresholds = uniap.get("thresholds") if isinstance(uniap, dict) else None
        if thresholds:
            if not isinstance(thresholds, list) or not all(
                    isinstance(t, (int, float)) and not isinstance(t, bool) for t in thresholds):
                raise ValueError(f"{path}: uniap.thresholds must be a list of numbers")
            if len(thresholds) > MAX_LEVELS:
                raise ValueError(f"{path}: {len(thresholds)} thresholds, more than the limit of {MAX_LEVELS} "
                                 "levels (uniap.evaluation.segmenters.MAX_LEVELS)")
            return doc["annotations"], len(thresholds), [f"t={t:g}" for t in thresholds]
        return doc["annotations"], None, None

    def segment(self, image, *, key="", shape=None, proposals=False) -> Segmentation:
        t0 = time.perf_counter()
        records, num_levels, names = self.read(key)
        check_records(records, shape, self.path(key), num_levels)
        levels = levels_from_records(records, shape, num_levels)
        contours = None
        if any(r.get("kind") == "contour" for r in records):
            contours = levels_from_records(records, shape, kind="contour")
        t1 = time.perf_counter()
        out = Segmentation(levels, None, {"segment": t1 - t0}, names, contours)
        if proposals:
            if self.score == "record":
                out.proposals = records_to_proposals(records, self.min_area)
            else:
                out.proposals = proposals_from_levels(levels, self.score, self.min_area, image=image,
                                                      contours=contours)
            out.timings["proposals"] = time.perf_counter() - t1
        return out


SEGMENTERS = {"uniap": Uniap, "felzenszwalb": Felzenszwalb, "slic_rag": SlicRag,
              "higra_watershed": HigraWatershed}

# Other packages add segmenters through this entry-point group (a name -> a Segmenter
# subclass), e.g. uniap_train's ``checkpoint``; they are imported only when chosen, and
# ``uniap`` itself never imports them.
PLUGIN_GROUP = "uniap.segmenters"


def plugin_segmenters() -> dict[str, Any]:
    """Entry points of the :data:`PLUGIN_GROUP` group by name (not loaded; built-ins win).

    Every installed distribution is read, not only the first of each name, so a stale
    ``*.egg-info`` in the working directory does not hide an installed plugin.
    """
    from importlib.metadata import distributions

    found: dict[str, Any] = {}
    for dist in distributions():
        for ep in dist.entry_points:
            if ep.group == PLUGIN_GROUP and ep.name not in SEGMENTERS:
                found.setdefault(ep.name, ep)
    return found


def segmenter_names() -> list[str]:
    """Every segmenter ``build_segmenter`` knows: the built-ins and the installed plugins."""
    return sorted(set(SEGMENTERS) | set(plugin_segmenters()))


def build_segmenter(name: str, **params: Any) -> Segmenter:
    """A segmenter by name with its parameters (``None`` values take the defaults).

    ``build_segmenter(r["segmenter"]["name"], **r["segmenter"]["params"])`` rebuilds the
    segmenter of a ``uniap-eval`` result ``r``.  Names of the :data:`PLUGIN_GROUP` entry
    points load their class on first use.
    """
    cls = SEGMENTERS.get(name)
    if cls is None:
        plugin = plugin_segmenters().get(name)
        if plugin is None:
            raise ValueError(f"unknown segmenter {name!r}; choose one of {segmenter_names()}")
        cls = plugin.load()
    return cls(**{k: v for k, v in params.items() if v is not None})
