"""``uniap-eval --segmenter checkpoint|teacher --checkpoint PATH``: a trained model as a uniap segmenter.

``checkpoint`` scores what the trained model predicts (:class:`CheckpointSegmenter`, defined in
:mod:`uniap_train.predict`: ``uniap-predict`` runs the same class through the pipeline);
``teacher`` scores UniAP on the trained teacher's own fine map (:class:`TeacherSegmenter`), the
pseudo-masks the student learned from at the end of training.

Registered through the ``uniap.segmenters`` entry-point group (``pyproject.toml``), so uniap's
evaluation loads it by name and never imports ``uniap_train`` otherwise.  Every protocol of
``uniap-eval`` applies unchanged: the label maps are the predictor's three nested levels (parts,
regions, semantic groups; :class:`uniap_train.predict.Predictor`), and for COCO AP / AR the proposals are the
instance masks ranked by their mask scores (``--score record``, the default here) or the
levels' regions ranked by a rule of :mod:`uniap.evaluation.proposals`.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from uniap.evaluation.proposals import proposals_from_levels
from uniap.evaluation.segmenters import Segmentation, Segmenter

# the predictor's segmenter lives with the predictor: uniap-predict runs the same class
from .predict import CheckpointSegmenter

__all__ = ["CheckpointSegmenter", "TeacherSegmenter"]


class TeacherSegmenter(Segmenter):
    """UniAP on a trained model's own fine map: the pseudo-masks its teacher trains the student on.

    The checkpoint's EMA teacher gives the fine map of the whole image (as in training, the
    image at ``data.max_side`` seen at ``crops.teacher_size``), and UniAP runs on it with the
    run's options (``uniap.levels``, ``uniap.nodes``: its cells or the image's superpixels),
    with semantic groups.  The label maps are every level's clusters, then every level's
    semantic groups (``--dataset labelmaps`` reports the best); COCO proposals are the clusters
    of every level ranked by ``score`` (a rule of :mod:`uniap.evaluation.proposals`).

    Parameters
    ----------
    checkpoint : str
    device : str
    score : str
        A rule of :mod:`uniap.evaluation.proposals` (default ``contrast``).
    min_area : int
    """

    name = "teacher"

    def __init__(self, checkpoint: str | None = None, *, device: str = "auto", score: str = "contrast",
                 min_area: int = 1) -> None:
        super().__init__(score, min_area)
        if checkpoint is None:
            raise ValueError(f"--segmenter {self.name} needs --checkpoint FILE (a uniap-train checkpoint)")
        from .predict import Predictor

        self.checkpoint = str(checkpoint)
        self.device = device
        self.predictor = Predictor.from_checkpoint(checkpoint, device=device)
        u = self.predictor.cfg.uniap
        # calibrated levels: named by the share of edges above them (thresholds vary per image)
        self.levels = [f"f={f:g}" for f in u.edge_fractions] if u.edge_fractions else [f"t={t:g}" for t in u.levels]

    def params(self) -> dict[str, Any]:
        return {"checkpoint": self.checkpoint, "device": self.device, **super().params()}

    def level_names(self) -> list[str]:
        return list(self.levels) + [f"semantic {name}" for name in self.levels]

    def label_maps(self, image: np.ndarray) -> np.ndarray:
        return self.predictor.teacher_levels(image)

    def segment(self, image, *, key="", shape=None, proposals=False) -> Segmentation:
        t0 = time.perf_counter()
        levels = self.label_maps(image)
        t1 = time.perf_counter()
        out = Segmentation(levels, None, {"segment": t1 - t0})
        if proposals:
            out.proposals = proposals_from_levels(levels[: len(self.levels)], self.score, self.min_area, image=image)
            out.timings["proposals"] = time.perf_counter() - t1
        return out
