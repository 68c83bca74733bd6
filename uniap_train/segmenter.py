"""``uniap-eval --segmenter checkpoint --checkpoint PATH``: a trained model as a uniap segmenter.

Registered through the ``uniap.segmenters`` entry-point group (``pyproject.toml``), so uniap's
evaluation loads it by name and never imports ``uniap_train`` otherwise.  Every protocol of
``uniap-eval`` applies unchanged: the label maps are the predictor's two nested levels (parts,
regions; :class:`uniap_train.predict.Predictor`), and for COCO AP / AR the proposals are the
instance masks ranked by their mask scores (``--score record``, the default here) or the
levels' regions ranked by a rule of :mod:`uniap.evaluation.proposals`.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from uniap.evaluation.proposals import proposals_from_levels
from uniap.evaluation.segmenters import Segmentation, Segmenter

__all__ = ["CheckpointSegmenter"]


class CheckpointSegmenter(Segmenter):
    """A ``recipe: paper`` checkpoint through :class:`~uniap_train.predict.Predictor`.

    Parameters
    ----------
    checkpoint : str
        The checkpoint file.
    device : str
        Where the model runs (``auto``: CUDA when available).
    score : str
        ``record`` (default): the instance masks by their scores; or a rule of
        :mod:`uniap.evaluation.proposals` on the levels.
    min_area : int
        Smallest proposal (pixels).
    """

    name = "checkpoint"
    record_scores = True

    def __init__(self, checkpoint: str | None = None, *, device: str = "auto", score: str = "record",
                 min_area: int = 1) -> None:
        super().__init__(score, min_area)
        if checkpoint is None:
            raise ValueError("--segmenter checkpoint needs --checkpoint FILE (a uniap-train checkpoint)")
        from .predict import Predictor

        self.checkpoint = str(checkpoint)
        self.device = device
        self.predictor = Predictor.from_checkpoint(checkpoint, device=device)

    def params(self) -> dict[str, Any]:
        """The constructor's arguments (``build_segmenter("checkpoint", **params)`` rebuilds it)."""
        return {"checkpoint": self.checkpoint, "device": self.device, **super().params()}

    def level_names(self) -> list[str]:
        return ["parts", "regions"]

    def label_maps(self, image: np.ndarray) -> np.ndarray:
        return self.predictor(image).levels

    def segment(self, image, *, key="", shape=None, proposals=False) -> Segmentation:
        from uniap.records import encode_rle

        t0 = time.perf_counter()
        pred = self.predictor(image)
        t1 = time.perf_counter()
        out = Segmentation(pred.levels, None, {"segment": t1 - t0})
        if proposals:
            if self.score == "record":
                keep = pred.masks.reshape(len(pred.masks), -1).sum(1) >= self.min_area
                rles = encode_rle(pred.masks[keep])
                areas = pred.masks[keep].reshape(int(keep.sum()), -1).sum(1)
                out.proposals = [{"segmentation": r, "score": float(s), "area": int(a), "level": 0}
                                 for r, s, a in zip(rles, pred.scores[keep], areas)]
            else:
                out.proposals = proposals_from_levels(pred.levels, self.score, self.min_area, image=image)
            out.timings["proposals"] = time.perf_counter() - t1
        return out
