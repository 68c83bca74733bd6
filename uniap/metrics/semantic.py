"""Unsupervised semantic segmentation: Hungarian-matched mIoU and pixel accuracy.

Predicted cluster ids carry no class meaning, so they are first assigned to
ground-truth classes one-to-one with the Hungarian algorithm
(:func:`scipy.optimize.linear_sum_assignment`) on the class x cluster
confusion matrix, then scored as ordinary semantic segmentation -- the
protocol of IIC (Ji et al., ICCV 2019), PiCIE (Cho et al., CVPR 2021) and
STEGO (Hamilton et al., ICLR 2022).  Over a data set the confusion matrix is
summed over all images and matched **once** (:class:`HungarianMIoU`); the
per-image variant matches each image on its own (:func:`hungarian_miou`).

Conventions:

* ``gt`` holds class ids ``0..C-1``; ``ignore_index`` pixels (void) are left
  out of everything.  ``pred`` holds cluster ids ``0..K-1``.
* ``K > C`` is allowed: the ``K - C`` unmatched clusters are wrong wherever
  they are predicted (their pixels are false negatives of the true class and
  false positives of no class).  ``K < C`` leaves classes unmatched (IoU 0
  where they occur).
* IoU of class ``c`` matched to cluster ``k``:
  ``M[c,k] / (sum_k' M[c,k'] + sum_c' M[c',k] - M[c,k])``; ``nan`` for a class
  absent from both ground truth and its matched cluster; ``miou`` is the
  mean over the non-``nan`` classes.  Pixel accuracy = matched pixels / valid
  pixels.
* ``match="pixels"`` (default) maximises the total number of correctly
  matched pixels (sum of the matched confusion entries) as IIC/PiCIE/STEGO;
  ``match="iou"`` maximises the sum of the per-class IoUs instead.
"""

from __future__ import annotations

import numpy as np

__all__ = ["HungarianMIoU", "confusion_matrix", "hungarian_match", "hungarian_miou", "scores_from_confusion"]


def _int_array(a, name):
    a = np.asarray(a)
    if a.dtype == bool:
        a = a.astype(np.uint8)
    if a.dtype.kind not in "iu":
        if a.dtype.kind == "f" and np.all(np.isfinite(a)) and np.array_equal(a, np.round(a)):
            a = a.astype(np.int64)
        else:
            raise TypeError(f"{name} must hold integer labels, got {a.dtype}")
    return a


def confusion_matrix(pred, gt, *, num_classes: int | None = None, num_clusters: int | None = None,
                     ignore_index: int | None = None) -> np.ndarray:
    """Class x cluster confusion matrix (counts) of one or many images.

    Parameters
    ----------
    pred : array_like of int
        Cluster id per pixel, ``0..K-1``.
    gt : array_like of int, same shape
        Class id per pixel, ``0..C-1``, or ``ignore_index``.
    num_classes, num_clusters : int, optional
        ``C`` and ``K``; inferred from the data (max + 1) when omitted.
    ignore_index : int, optional
        Ground-truth label of pixels to leave out.

    Returns
    -------
    ndarray of int64, shape (C, K)
        ``M[c, k]`` = number of pixels of class ``c`` predicted as cluster ``k``.

    Examples
    --------
    >>> import numpy as np
    >>> confusion_matrix(np.array([0, 1, 1, 2]), np.array([1, 0, 0, 255]), ignore_index=255)
    array([[0, 2],
           [1, 0]])
    """
    p = _int_array(pred, "pred").ravel()
    g = _int_array(gt, "gt").ravel()
    if p.shape != g.shape:
        raise ValueError(f"pred and gt differ in size: {np.shape(pred)} vs {np.shape(gt)}")
    if ignore_index is not None:
        keep = g != ignore_index
        p, g = p[keep], g[keep]
    if p.size and (p.min() < 0 or g.min() < 0):
        raise ValueError("labels must be >= 0 (except ignore_index)")
    c = int(num_classes) if num_classes is not None else (int(g.max()) + 1 if g.size else 0)
    k = int(num_clusters) if num_clusters is not None else (int(p.max()) + 1 if p.size else 0)
    if g.size and g.max() >= c:
        raise ValueError(f"gt has class {int(g.max())} >= num_classes={c}")
    if p.size and p.max() >= k:
        raise ValueError(f"pred has cluster {int(p.max())} >= num_clusters={k}")
    counts = np.bincount(g.astype(np.int64) * k + p.astype(np.int64), minlength=c * k) if c * k else np.zeros(0, np.int64)
    return counts.reshape(c, k).astype(np.int64)


def hungarian_match(confusion, *, match: str = "pixels") -> np.ndarray:
    """One-to-one assignment of clusters to classes maximising agreement.

    Parameters
    ----------
    confusion : array_like, shape (C, K)
        Class x cluster counts.
    match : {"pixels", "iou"}
        Maximise the matched pixel count or the sum of IoUs.

    Returns
    -------
    ndarray of int, shape (K,)
        Class assigned to each cluster, ``-1`` for unmatched clusters.

    Examples
    --------
    >>> hungarian_match([[0, 5, 1], [7, 0, 2]]).tolist()
    [1, 0, -1]
    """
    from scipy.optimize import linear_sum_assignment

    m = np.asarray(confusion, dtype=np.float64)
    c, k = m.shape
    out = np.full(k, -1, np.intp)
    if c == 0 or k == 0:
        return out
    if match == "pixels":
        score = m
    elif match == "iou":
        union = m.sum(1, keepdims=True) + m.sum(0, keepdims=True) - m
        score = np.divide(m, union, out=np.zeros_like(m), where=union > 0)
    else:
        raise ValueError("match must be 'pixels' or 'iou'")
    rows, cols = linear_sum_assignment(score, maximize=True)
    out[cols] = rows
    return out


def scores_from_confusion(confusion, cluster_to_class=None, *, match: str = "pixels") -> dict:
    """mIoU, pixel accuracy and per-class IoU from a class x cluster confusion matrix.

    Parameters
    ----------
    confusion : array_like, shape (C, K)
    cluster_to_class : array_like of int, shape (K,), optional
        A given assignment (``-1`` = unmatched); computed with
        :func:`hungarian_match` when omitted.
    match : {"pixels", "iou"}

    Returns
    -------
    dict
        ``miou``, ``pixel_accuracy``, ``iou`` (C,), ``cluster_to_class`` (K,),
        ``class_to_cluster`` (C,; -1 = unmatched), ``confusion`` (C, K) and
        ``matched_confusion`` (C, C+1: classes x assigned classes, last column
        the pixels that went to unmatched clusters).
    """
    m = np.asarray(confusion, dtype=np.int64)
    if m.ndim != 2:
        raise ValueError("confusion must be 2-D")
    c, k = m.shape
    assign = hungarian_match(m, match=match) if cluster_to_class is None else np.asarray(cluster_to_class, np.intp)
    if assign.shape != (k,):
        raise ValueError("cluster_to_class must have one entry per cluster")
    cls2clu = np.full(c, -1, np.intp)
    matched = np.flatnonzero(assign >= 0)
    if np.unique(assign[matched]).size != matched.size:
        raise ValueError("cluster_to_class must be one-to-one")
    cls2clu[assign[matched]] = matched
    # classes x predicted-class table; column c = unmatched clusters
    mc = np.zeros((c, c + 1), np.int64)
    np.add.at(mc.T, np.where(assign >= 0, assign, c), m.T)
    tp = np.diag(mc[:, :c]).astype(np.float64)
    gt_tot = mc.sum(1).astype(np.float64)
    pred_tot = mc[:, :c].sum(0).astype(np.float64)
    union = gt_tot + pred_tot - tp
    iou = np.divide(tp, union, out=np.full(c, np.nan), where=union > 0)
    valid = float(gt_tot.sum())
    return {
        "miou": float(np.nanmean(iou)) if np.any(union > 0) else float("nan"),
        "pixel_accuracy": float(tp.sum() / valid) if valid else float("nan"),
        "iou": iou,
        "cluster_to_class": assign,
        "class_to_cluster": cls2clu,
        "confusion": m,
        "matched_confusion": mc,
    }


def hungarian_miou(pred, gt, *, num_classes: int | None = None, num_clusters: int | None = None,
                   ignore_index: int | None = None, match: str = "pixels") -> dict:
    """Hungarian-matched mIoU and pixel accuracy of one prediction (matched on its own).

    Parameters
    ----------
    pred : array_like of int
        Cluster ids ``0..K-1`` (any shape; e.g. one image or a stack).
    gt : array_like of int, same shape
        Class ids ``0..C-1`` or ``ignore_index``.
    num_classes, num_clusters : int, optional
        Inferred (max + 1) when omitted; give them when a class or cluster
        may be absent.
    ignore_index : int, optional
        Void label in ``gt``.
    match : {"pixels", "iou"}
        Matching objective (see module docstring).

    Returns
    -------
    dict
        See :func:`scores_from_confusion`; at least ``miou``,
        ``pixel_accuracy``, ``iou`` and ``cluster_to_class``.

    References
    ----------
    X. Ji, J. F. Henriques, A. Vedaldi. Invariant Information Clustering for
    Unsupervised Image Classification and Segmentation. ICCV 2019.
    M. Hamilton et al. Unsupervised Semantic Segmentation by Distilling
    Feature Correspondences (STEGO). ICLR 2022.

    Examples
    --------
    Permuted cluster ids score perfectly; a fourth cluster is unmatched:

    >>> import numpy as np
    >>> gt = np.array([[0, 0, 1, 1, 2, 255]])
    >>> r = hungarian_miou(np.array([[2, 2, 0, 0, 1, 3]]), gt, ignore_index=255, num_clusters=4)
    >>> r["miou"], r["pixel_accuracy"], r["cluster_to_class"].tolist()
    (1.0, 1.0, [1, 2, 0, -1])
    >>> r = hungarian_miou(np.array([[2, 2, 0, 3, 1, 1]]), gt, ignore_index=255)
    >>> r["iou"].tolist(), round(r["pixel_accuracy"], 3)
    ([1.0, 0.5, 1.0], 0.8)
    """
    conf = confusion_matrix(pred, gt, num_classes=num_classes, num_clusters=num_clusters, ignore_index=ignore_index)
    return scores_from_confusion(conf, match=match)


class HungarianMIoU:
    """Data-set accumulator: sum the confusion matrix over images, match once.

    Parameters
    ----------
    num_classes : int
        Number of ground-truth classes ``C``.
    num_clusters : int, optional
        Number of clusters ``K``; by default grown to fit the largest cluster
        id seen.
    ignore_index : int, optional
        Void label in the ground truth.
    match : {"pixels", "iou"}

    Examples
    --------
    >>> import numpy as np
    >>> acc = HungarianMIoU(num_classes=2, ignore_index=255)
    >>> acc.update(np.array([1, 1, 0]), np.array([0, 0, 1]))
    >>> acc.update(np.array([0, 1, 3]), np.array([1, 255, 0]))
    >>> r = acc.compute()
    >>> r["cluster_to_class"].tolist(), round(r["miou"], 4), r["pixel_accuracy"]
    ([1, 0, -1, -1], 0.8333, 0.8)
    """

    def __init__(self, num_classes: int, num_clusters: int | None = None, *, ignore_index: int | None = None,
                 match: str = "pixels"):
        self.num_classes = int(num_classes)
        self.num_clusters = num_clusters
        self.ignore_index = ignore_index
        self.match = match
        self.confusion = np.zeros((self.num_classes, int(num_clusters or 0)), np.int64)

    def reset(self) -> None:
        """Forget everything accumulated."""
        self.confusion = np.zeros((self.num_classes, int(self.num_clusters or 0)), np.int64)

    def update(self, pred, gt) -> None:
        """Add one image (or a batch of images) to the confusion matrix."""
        p = _int_array(pred, "pred")
        if self.num_clusters is None:
            valid = p if self.ignore_index is None else p[np.asarray(gt) != self.ignore_index]
            k = max(self.confusion.shape[1], int(valid.max()) + 1 if valid.size else 0)
        else:
            k = int(self.num_clusters)
        conf = confusion_matrix(p, gt, num_classes=self.num_classes, num_clusters=k, ignore_index=self.ignore_index)
        if k > self.confusion.shape[1]:
            grown = np.zeros((self.num_classes, k), np.int64)
            grown[:, : self.confusion.shape[1]] = self.confusion
            self.confusion = grown
        self.confusion += conf

    def compute(self) -> dict:
        """Match once on the summed confusion matrix and score (see :func:`scores_from_confusion`)."""
        return scores_from_confusion(self.confusion, match=self.match)
