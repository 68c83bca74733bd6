"""Panoptic Quality (PQ), Segmentation Quality (SQ) and Recognition Quality (RQ).

Definition of Kirillov et al. (CVPR 2019), following the reference
implementation ``panopticapi/evaluation.py`` (``pq_compute_single_core``):

* a predicted and a ground-truth segment **match** when they have the same
  class and IoU > 0.5 (such a match is unique); the union leaves out the
  predicted pixels that fall on ground-truth *void*;
* TP = matched pairs, FN = unmatched non-crowd ground-truth segments, FP =
  unmatched predicted segments, except those with more than half of their
  area on void (or on a crowd region of their class), which are ignored;
* per class: :math:`PQ = \\frac{\\sum_{TP} IoU}{|TP| + |FP|/2 + |FN|/2}
  = SQ \\times RQ` with :math:`SQ = \\sum_{TP} IoU / |TP|` and
  :math:`RQ = |TP| / (|TP| + |FP|/2 + |FN|/2)`; the reported numbers are
  averages over the classes that occur (TP + FP + FN > 0).

Segments are given as integer segment-id maps; id ``void`` (0 by default) is
"no segment".  Without classes every segment is of one class (class-agnostic
PQ, as used for unsupervised panoptic / instance pseudo-masks).  With
classes, predicted class ids can first be mapped to ground-truth classes with
``class_mapping`` (e.g. the Hungarian ``cluster_to_class`` of
:class:`uniap.metrics.semantic.HungarianMIoU`), "PQ with matched classes".
Over a data set TP/FP/FN and the IoU sums are accumulated per class and PQ is
computed once (:class:`PanopticQuality`), as panopticapi does.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from ._labels import as_label_array

__all__ = ["PanopticQuality", "panoptic_quality"]

_AGNOSTIC = 0


def _segment_classes(ids: np.ndarray, classes, mapping=None) -> np.ndarray:
    """Class of each segment id in ``ids`` (array); -1 for unmapped predicted classes."""
    if classes is None:
        out = np.full(ids.shape, _AGNOSTIC, np.int64)
    elif isinstance(classes, Mapping):
        try:
            out = np.array([int(classes[int(i)]) for i in ids], np.int64)
        except KeyError as e:
            raise ValueError(f"no class given for segment {e.args[0]}") from None
    else:
        lut = np.asarray(classes)
        if ids.size and ids.max() >= lut.size:
            raise ValueError("class lookup array too short for the segment ids")
        out = lut[ids].astype(np.int64)
    if mapping is not None:
        if isinstance(mapping, Mapping):
            out = np.array([int(mapping.get(int(c), -1)) for c in out], np.int64)
        else:
            lut = np.asarray(mapping, np.int64)
            ok = (out >= 0) & (out < lut.size)
            out = np.where(ok, lut[np.clip(out, 0, max(lut.size - 1, 0))] if lut.size else -1, -1)
    return out


class PanopticQuality:
    """Accumulate PQ statistics over images, then :meth:`compute` once.

    Parameters
    ----------
    void : int, default 0
        Segment id meaning "no segment" in both maps (ground-truth void).
    iou_threshold : float, default 0.5
        Matching threshold (strict ``>``); values below 0.5 break uniqueness.

    Examples
    --------
    >>> import numpy as np
    >>> gt = np.array([[1, 1, 2, 2]])
    >>> pq = PanopticQuality()
    >>> pq.update(np.array([[5, 5, 5, 7]]), gt)  # 5 matches 1 (IoU 2/3); 7 misses 2 (IoU 1/2)
    >>> r = pq.compute(); (r["tp"], r["fp"], r["fn"]), round(r["sq"], 4), r["rq"]
    ((1, 1, 1), 0.6667, 0.5)
    """

    def __init__(self, *, void: int = 0, iou_threshold: float = 0.5):
        self.void = void
        self.iou_threshold = float(iou_threshold)
        self.stats: dict[int, list] = {}  # class -> [iou_sum, tp, fp, fn]

    def reset(self) -> None:
        self.stats = {}

    def _stat(self, c: int) -> list:
        s = self.stats.get(c)
        if s is None:
            s = self.stats[c] = [0.0, 0, 0, 0]
        return s

    def update(self, pred, gt, *, pred_classes=None, gt_classes=None, class_mapping=None, gt_crowd=None) -> None:
        """Add one image.

        Parameters
        ----------
        pred, gt : array_like of int, shape (H, W)
            Segment-id maps (``void`` = no segment).
        pred_classes, gt_classes : dict or array_like, optional
            Class of each segment id (``{id: class}`` or a lookup array
            indexed by id).  Give both or neither (class-agnostic).
        class_mapping : dict or array_like, optional
            Applied to the predicted classes (e.g. cluster -> class); classes
            it does not map (or maps to -1) can match nothing and are counted
            in ``fp_unmapped``.
        gt_crowd : iterable of int, optional
            Ground-truth segment ids that are crowd regions.
        """
        if (pred_classes is None) != (gt_classes is None):
            raise ValueError("give both pred_classes and gt_classes, or neither")
        p = as_label_array(pred, "pred")
        g = as_label_array(gt, "gt")
        if p.shape != g.shape:
            raise ValueError(f"pred and gt differ in shape: {p.shape} vs {g.shape}")
        p = p.ravel().astype(np.int64)
        g = g.ravel().astype(np.int64)
        pid, pinv, parea = np.unique(p, return_inverse=True, return_counts=True)
        gid, ginv, garea = np.unique(g, return_inverse=True, return_counts=True)
        pinv = pinv.ravel()
        ginv = ginv.ravel()
        key = ginv * pid.size + pinv
        keys, inter = np.unique(key, return_counts=True)
        gi, pi = keys // pid.size, keys % pid.size

        p_real = pid != self.void
        g_real = gid != self.void
        if class_mapping is not None and pred_classes is None:
            raise ValueError("class_mapping needs pred_classes and gt_classes")
        pcls = np.full(pid.size, -1, np.int64)
        pcls[p_real] = _segment_classes(pid[p_real], pred_classes, class_mapping)
        gcls = np.full(gid.size, -1, np.int64)
        gcls[g_real] = _segment_classes(gid[g_real], gt_classes)
        if gt_crowd is not None:
            crowd = np.isin(gid, np.fromiter((int(c) for c in gt_crowd), np.int64))
        else:
            crowd = np.zeros(gid.size, bool)
        crowd &= g_real

        # predicted pixels on ground-truth void, per predicted segment
        void_g = np.flatnonzero(~g_real)
        p_on_void = np.zeros(pid.size, np.int64)
        if void_g.size:
            sel = gi == void_g[0]
            p_on_void[pi[sel]] = inter[sel]

        cand = p_real[pi] & g_real[gi] & ~crowd[gi] & (pcls[pi] == gcls[gi]) & (gcls[gi] >= 0)
        ci, cp, cn = gi[cand], pi[cand], inter[cand]
        union = parea[cp] + garea[ci] - cn - p_on_void[cp]
        iou = cn / union
        ok = iou > self.iou_threshold
        g_matched = np.zeros(gid.size, bool)
        p_matched = np.zeros(pid.size, bool)
        g_matched[ci[ok]] = True
        p_matched[cp[ok]] = True
        for c, v in zip(gcls[ci[ok]], iou[ok]):
            s = self._stat(int(c))
            s[0] += float(v)
            s[1] += 1
        # false negatives: unmatched, non-crowd ground-truth segments
        for c in gcls[g_real & ~g_matched & ~crowd]:
            self._stat(int(c))[3] += 1
        # false positives, unless mostly on void / a crowd region of their class
        crowd_of_class = {}
        for j in np.flatnonzero(crowd & ~g_matched):
            crowd_of_class.setdefault(int(gcls[j]), []).append(j)
        for j in np.flatnonzero(p_real & ~p_matched):
            ignored = p_on_void[j]
            for cj in crowd_of_class.get(int(pcls[j]), ()):
                hit = (gi == cj) & (pi == j)
                ignored += int(inter[hit].sum())
            if ignored / parea[j] > 0.5:
                continue
            self._stat(int(pcls[j]))[2] += 1

    def compute(self) -> dict:
        """PQ, SQ, RQ averaged over the classes that occur, with totals and per-class values.

        Returns
        -------
        dict
            ``pq``, ``sq``, ``rq`` (class averages; ``nan`` when nothing
            occurs), ``tp``, ``fp``, ``fn`` (totals), ``n_classes``,
            ``per_class`` ``{class: {"pq", "sq", "rq", "tp", "fp", "fn"}}`` and
            ``fp_unmapped``: unmatched predicted segments whose class
            ``class_mapping`` left unmapped (they are false positives of no
            class, so they enter no class average).
        """
        per = {}
        for c, (iou_sum, tp, fp, fn) in sorted(self.stats.items()):
            if tp + fp + fn == 0 or c < 0:
                continue
            denom = tp + 0.5 * fp + 0.5 * fn
            sq = iou_sum / tp if tp else 0.0
            rq = tp / denom
            per[c] = {"pq": iou_sum / denom, "sq": sq, "rq": rq, "tp": tp, "fp": fp, "fn": fn}
        n = len(per)
        mean = (lambda k: float(np.mean([v[k] for v in per.values()]))) if n else (lambda k: float("nan"))
        return {
            "pq": mean("pq"), "sq": mean("sq"), "rq": mean("rq"),
            "tp": sum(v["tp"] for v in per.values()), "fp": sum(v["fp"] for v in per.values()),
            "fn": sum(v["fn"] for v in per.values()), "n_classes": n, "per_class": per,
            "fp_unmapped": sum(v[2] for c, v in self.stats.items() if c < 0),
        }


def panoptic_quality(pred, gt, *, pred_classes=None, gt_classes=None, class_mapping=None, gt_crowd=None,
                     void: int = 0) -> dict:
    """PQ / SQ / RQ of one image (Kirillov et al. 2019).

    Parameters
    ----------
    pred, gt : array_like of int, shape (H, W)
        Segment-id maps; ``void`` (0) = no segment / void.
    pred_classes, gt_classes : dict or array_like, optional
        Segment class lookups (omit both for class-agnostic PQ).
    class_mapping : dict or array_like, optional
        Predicted class -> ground-truth class (e.g. Hungarian cluster matching).
    gt_crowd : iterable of int, optional
        Crowd ground-truth segment ids.
    void : int, default 0

    Returns
    -------
    dict
        See :meth:`PanopticQuality.compute`.

    References
    ----------
    A. Kirillov, K. He, R. Girshick, C. Rother, P. Dollar. Panoptic
    Segmentation. CVPR 2019.

    Examples
    --------
    >>> import numpy as np
    >>> gt = np.array([[1, 1, 2, 2], [1, 1, 2, 2]])
    >>> panoptic_quality(gt * 10, gt)["pq"]
    1.0
    >>> r = panoptic_quality(np.array([[1, 1, 1, 1], [1, 1, 1, 1]]), gt)   # IoU 1/2: no match
    >>> r["pq"], r["tp"], r["fp"], r["fn"]
    (0.0, 0, 1, 2)
    """
    acc = PanopticQuality(void=void)
    acc.update(pred, gt, pred_classes=pred_classes, gt_classes=gt_classes, class_mapping=class_mapping,
               gt_crowd=gt_crowd)
    return acc.compute()
