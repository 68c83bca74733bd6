"""Matching and point sampling batched over a step give what the per-frame loops gave."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("scipy")

from uniap_train.matching import dice_cost, hungarian, uncertain_points, uncertain_points_many  # noqa: E402
from uniap_train.recipes.paper import INSTANCE, SEMANTIC, PaperRecipe, _Frame  # noqa: E402


def test_uncertain_points_many_equals_one_row_at_a_time():
    logits = torch.randn(5, 12, 12, generator=torch.Generator().manual_seed(0))
    seeds = [3, 1, 4, 1, 5]
    many = uncertain_points_many(logits, 20, 3.0, 0.75, [torch.Generator().manual_seed(s) for s in seeds])
    one = torch.cat([uncertain_points(logits[i:i + 1], 20, 3.0, 0.75, torch.Generator().manual_seed(s))
                     for i, s in enumerate(seeds)])
    assert torch.equal(many, one)
    assert uncertain_points_many(logits[:0], 20, 3.0, 0.75, []).shape == (0, 20, 2)


def _frames(rng: np.random.Generator, groups: int, rows: int) -> list[_Frame]:
    frames = []
    for g in range(groups):
        for r in range(rows):
            m = int(rng.integers(0, 7))
            soft = torch.from_numpy((rng.random((m, 6, 6)) > 0.6).astype(np.float32))
            kinds = torch.from_numpy(rng.integers(0, 2, m))
            frames.append(_Frame(g, r, r, g + 1, soft, soft, kinds, torch.arange(m)))
    return frames


def _reference(frames, masks, num_semantic):
    """The per-frame, per-kind loop (a host copy and a sync each) the batched matching replaced."""
    out = []
    for f in frames:
        prob = masks[f.group][f.row].float().sigmoid().flatten(1)
        soft = f.soft.flatten(1)
        for kind, first, last in ((SEMANTIC, 0, num_semantic), (INSTANCE, num_semantic, prob.shape[0])):
            sel = torch.nonzero(f.kinds == kind).flatten()
            if sel.numel() == 0 or last == first:
                continue
            q, t = hungarian(dice_cost(prob[first:last], soft[sel]))
            if q.size:
                out.append((f.group, f.row, (q + first).tolist(), sel[torch.as_tensor(t)].tolist()))
    return out


@pytest.mark.parametrize("seed", range(4))
def test_batched_matching_equals_the_per_frame_loop(seed):
    rng = np.random.default_rng(seed)
    frames = _frames(rng, groups=2, rows=3)
    levels = [[torch.from_numpy(rng.normal(size=(3, 9, 6, 6)).astype(np.float32)) for _ in range(2)]
              for _ in range(3)]
    matches, scores = PaperRecipe._match_levels(frames, levels, num_semantic=4)
    assert len(matches) == len(scores) == 3
    for level, found in zip(levels, matches):
        got = [(f.group, f.row, q.tolist(), t.tolist()) for f, q, t in found]
        assert got == _reference(frames, level, 4)
        assert all(m.host_queries.tolist() == m[1].tolist() for m in found)
    one, one_scores = PaperRecipe._match(frames, levels[1], num_semantic=4)  # one level: the same
    assert [(q.tolist(), t.tolist()) for _, q, t in one] == [(q.tolist(), t.tolist()) for _, q, t in matches[1]]
    assert all(torch.equal(a, b) for a, b in zip(one_scores, scores[1]))
