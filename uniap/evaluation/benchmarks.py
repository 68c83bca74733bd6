"""What is measured on each data set: per-image work (in the workers) and the data-set summary.

* :class:`BSDSBenchmark` -- the BSDS500 benchmark of :mod:`uniap.metrics.bsds` on the levels
  (threshold k = level k): segmentation covering ODS / OIS / best, PRI and VI ODS / OIS,
  boundary F ODS / OIS and AP against the data set's human ``Boundaries``.
* :class:`CocoBenchmark` -- class-agnostic mask AP / AR (:mod:`uniap.metrics.instance`) of each
  image's proposals: all levels' masks, deduplicated and ranked (:mod:`uniap.evaluation.proposals`).
* :class:`LabelMapBenchmark` -- Hungarian-matched mIoU and pixel accuracy per level
  (:mod:`uniap.metrics.semantic`). A segmenter's cluster ids mean nothing from one image to the
  next, so clusters are matched to classes **per image** (one-to-one, maximising matched pixels);
  the matched confusion matrices are then summed over the data set and IoU computed once per
  class. Void pixels (``ignore_index``) are left out. The headline is the best level.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

__all__ = ["BENCHMARKS", "BSDSBenchmark", "CocoBenchmark", "LabelMapBenchmark"]


def _shape_of(truth_map) -> tuple[int, int]:
    return tuple(int(s) for s in np.asarray(truth_map).shape[:2])


class BSDSBenchmark:
    """Hierarchical segmentation on BSDS500 (Arbelaez et al., TPAMI 2011)."""

    wants_proposals = False

    def __init__(self, dataset, boundary: bool = True):
        self.dataset = dataset
        self.boundary = boundary

    @staticmethod
    def shape(truth: dict) -> tuple[int, int]:
        return _shape_of(truth["segmentations"][0])

    def per_image(self, sample, truth: dict, seg) -> Any:
        from ..metrics.bsds import evaluate_image

        return evaluate_image(segmentations=list(seg.levels), gt_segmentations=truth["segmentations"],
                              gt_boundaries=truth["boundaries"], boundary=self.boundary)

    def summarise(self, partials: Sequence, level_names: Sequence[str]) -> tuple[dict, list[dict]]:
        from ..metrics.bsds import collect

        res = collect(list(partials))
        metrics: dict[str, Any] = {}
        reg = res.region
        metrics.update(covering_ods=reg.covering_ods, covering_ois=reg.covering_ois,
                       covering_best=reg.covering_best, pri_ods=reg.pri_ods, pri_ois=reg.pri_ois,
                       vi_ods=reg.vi_ods, vi_ois=reg.vi_ois,
                       covering_ods_level=_name(level_names, reg.covering_ods_threshold),
                       pri_ods_level=_name(level_names, reg.pri_ods_threshold),
                       vi_ods_level=_name(level_names, reg.vi_ods_threshold))
        per_level = [{"covering": float(reg.covering[k]), "pri": float(reg.pri[k]), "vi": float(reg.vi[k])}
                     for k in range(len(reg.thresholds))]
        if res.boundary is not None:
            b = res.boundary
            metrics.update(boundary_ods=b.ods_f, boundary_ois=b.ois_f, boundary_ap=b.ap,
                           boundary_ods_precision=b.ods_precision, boundary_ods_recall=b.ods_recall)
            for k, row in enumerate(per_level):
                row.update(boundary_f=float(b.f[k]), boundary_precision=float(b.precision[k]),
                           boundary_recall=float(b.recall[k]))
        return _floats(metrics), per_level

    columns = (("covering", "covering"), ("pri", "PRI"), ("vi", "VI"), ("boundary_f", "bdry F"))
    headline = (("covering_ods", "covering ODS"), ("covering_ois", "covering OIS"), ("pri_ods", "PRI ODS"),
                ("pri_ois", "PRI OIS"), ("vi_ods", "VI ODS"), ("vi_ois", "VI OIS"),
                ("boundary_ods", "boundary F ODS"), ("boundary_ois", "boundary F OIS"),
                ("boundary_ap", "boundary AP"))


class CocoBenchmark:
    """Class-agnostic instance masks on COCO (Lin et al., ECCV 2014), as in CutLER / UnSAM."""

    wants_proposals = True

    def __init__(self, dataset):
        self.dataset = dataset

    @staticmethod
    def shape(truth: dict) -> tuple[int, int]:
        return int(truth["height"]), int(truth["width"])

    def per_image(self, sample, truth: dict, seg) -> Any:
        image_id = int(truth["image_id"])
        # a contour region (uniap's second hierarchy) is counted under no level
        props = [{"image_id": image_id, "score": p["score"], "segmentation": p["segmentation"],
                  "level": p.get("level", 0) if p.get("kind", "instance") == "instance" else -1}
                 for p in seg.proposals]
        return {"image_id": image_id, "proposals": props}

    def summarise(self, partials: Sequence, level_names: Sequence[str]) -> tuple[dict, list[dict]]:
        from ..metrics.instance import class_agnostic_mask_ap

        preds = [p for part in partials for p in part["proposals"]]
        ids = [part["image_id"] for part in partials]  # the images evaluated (e.g. with --limit)
        r = class_agnostic_mask_ap(preds, self.dataset.annotations, image_ids=ids)
        counts = [len(part["proposals"]) for part in partials]
        metrics = {k: r[k] for k in ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR@1", "AR@10", "AR@100", "AR@1000")}
        metrics.update(proposals_per_image=float(np.mean(counts)) if counts else 0.0,
                       num_gt=r["num_gt"])
        per_level = []
        for k in range(len(level_names)):
            n = [sum(1 for p in part["proposals"] if p["level"] == k) for part in partials]
            per_level.append({"proposals": float(np.mean(n)) if n else 0.0})
        return _floats(metrics), per_level

    columns = (("proposals", "new masks"),)  # masks first seen at this level (after deduplication)
    headline = (("AP", "AP"), ("AP50", "AP50"), ("AP75", "AP75"), ("AR@10", "AR@10"), ("AR@100", "AR@100"),
                ("AR@1000", "AR@1000"), ("proposals_per_image", "masks/image"))


class LabelMapBenchmark:
    """Hungarian-matched mIoU / pixel accuracy against per-pixel class maps (e.g. CamVid)."""

    wants_proposals = False

    def __init__(self, dataset):
        self.dataset = dataset
        self.num_classes = dataset.num_classes
        self.ignore_index = dataset.ignore_index

    @staticmethod
    def shape(truth: dict) -> tuple[int, int]:
        return _shape_of(truth["labels"])

    def per_image(self, sample, truth: dict, seg) -> Any:
        from ..metrics.semantic import confusion_matrix, scores_from_confusion

        gt = np.asarray(truth["labels"]).astype(np.int64)
        matched, per_image = [], []
        for level in seg.levels:
            pred = np.unique(level, return_inverse=True)[1].reshape(level.shape)
            conf = confusion_matrix(pred, gt, num_classes=self.num_classes, ignore_index=self.ignore_index)
            s = scores_from_confusion(conf)
            matched.append(s["matched_confusion"])
            per_image.append(s["miou"])
        return {"matched": np.stack(matched), "miou": np.array(per_image, np.float64)}

    def summarise(self, partials: Sequence, level_names: Sequence[str]) -> tuple[dict, list[dict]]:
        c = self.num_classes
        total = np.sum([p["matched"] for p in partials], axis=0)  # (L, C, C+1)
        per_level = []
        for k, mc in enumerate(total):
            tp = np.diag(mc[:, :c]).astype(np.float64)
            union = mc.sum(1) + mc[:, :c].sum(0) - tp
            iou = np.divide(tp, union, out=np.full(c, np.nan), where=union > 0)
            valid = mc.sum()
            per_level.append({
                "miou": float(np.nanmean(iou)) if np.any(union > 0) else float("nan"),
                "pixel_accuracy": float(tp.sum() / valid) if valid else float("nan"),
                "mean_image_miou": float(np.nanmean([p["miou"][k] for p in partials])),
                "iou": [None if np.isnan(v) else float(v) for v in iou],
            })
        best = int(np.nanargmax([row["miou"] for row in per_level]))
        metrics = {"miou": per_level[best]["miou"], "pixel_accuracy": per_level[best]["pixel_accuracy"],
                   "best_level": _name(level_names, best + 1),
                   "best_pixel_accuracy": max(row["pixel_accuracy"] for row in per_level),
                   "class_iou": dict(zip(self._class_names(), per_level[best]["iou"]))}
        return _floats(metrics), per_level

    def _class_names(self) -> list[str]:
        names = getattr(self.dataset, "class_names", None)
        return list(names) if names else [str(i) for i in range(self.num_classes)]

    columns = (("miou", "mIoU"), ("pixel_accuracy", "pixel acc"), ("mean_image_miou", "mIoU/img"))
    headline = (("miou", "mIoU (best level)"), ("pixel_accuracy", "pixel acc (same level)"),
                ("best_pixel_accuracy", "best pixel acc"))


def _name(level_names: Sequence[str], threshold: float) -> str:
    """Name of the 1-based level index the benchmark reports as a 'threshold'."""
    k = round(threshold) - 1
    return level_names[k] if 0 <= k < len(level_names) else f"level {k}"


def _floats(d: dict) -> dict:
    return {k: (float(v) if isinstance(v, (np.floating, np.integer)) else v) for k, v in d.items()}


BENCHMARKS = {"bsds500": BSDSBenchmark, "coco": CocoBenchmark, "labelmaps": LabelMapBenchmark}
