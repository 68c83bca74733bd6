"""Hand-written pieces against the well-kept libraries that do the same (issue #25, item 7).

Where uniap now calls the library (k-means: scipy's ``kmeans2``; the teacher's EMA:
``torch._foreach_lerp_``, the update of ``torch.optim.swa_utils``) the tests check it does;
where the hand-written code stays (VI and Rand index, the cosine schedule) they check it gives
the library's values, so the one-line reasons beside that code stay true.
Speed: ``bench/test_library_swaps.py``.
"""

from __future__ import annotations

import numpy as np
import pytest


def _kmeans_lloyd_by_hand(pts, k, rng, iters):
    """The k-means uniap had before it called scipy (k-means++ seeds, then Lloyd)."""
    n, d = pts.shape
    centres = np.empty((k, d))
    centres[0] = pts[rng.integers(n)]
    closest = ((pts - centres[0]) ** 2).sum(1)
    for j in range(1, k):
        total = closest.sum()
        i = rng.choice(n, p=closest / total) if total > 0 else rng.integers(n)
        centres[j] = pts[i]
        np.minimum(closest, ((pts - pts[i]) ** 2).sum(1), out=closest)
    for _ in range(iters):
        label = ((centres * centres).sum(1) - 2.0 * (pts @ centres.T)).argmin(1)
        count = np.bincount(label, minlength=k)
        sums = np.stack([np.bincount(label, pts[:, c], minlength=k) for c in range(d)], axis=1)
        filled = count > 0
        centres[filled] = sums[filled] / count[filled, None]
    return centres


@pytest.mark.parametrize("n, d, k, iters", [(3000, 3, 16, 8), (3000, 16, 16, 8), (500, 2, 40, 20)])
def test_kmeans_is_scipys_with_the_same_centres(monkeypatch, n, d, k, iters):
    import scipy.cluster.vq

    from uniap.features.default import _kmeans

    rng = np.random.default_rng(n + d)
    pts = rng.normal(size=(n, d)) + rng.integers(0, 6, (n, 1))
    calls = []
    real = scipy.cluster.vq.kmeans2
    monkeypatch.setattr(scipy.cluster.vq, "kmeans2", lambda *a, **kw: calls.append(kw) or real(*a, **kw))
    ours = _kmeans(pts, k, np.random.default_rng(0), iters)
    assert calls and calls[0]["iter"] == iters and calls[0]["minit"] == "matrix"
    before = _kmeans_lloyd_by_hand(pts, k, np.random.default_rng(0), iters)
    np.testing.assert_allclose(ours, before, rtol=0, atol=1e-12)


def test_kmeans_with_an_empty_cluster_keeps_its_centre_silently():
    """Duplicated points leave clusters empty: no warning (pytest turns warnings into errors)."""
    from uniap.features.default import _kmeans

    pts = np.repeat(np.array([[0.0, 0.0], [10.0, 10.0]]), 50, axis=0)
    centres = _kmeans(pts, 5, np.random.default_rng(0), 8)
    assert centres.shape == (5, 2) and np.isfinite(centres).all()
    assert {tuple(c) for c in np.round(centres, 9)} >= {(0.0, 0.0), (10.0, 10.0)}


def _two_maps():
    yy, xx = np.mgrid[0:97, 0:131]
    seg = (yy // 13) * 100 + (xx // 17) + 1
    gt = ((yy + 7 + 7 * np.sin(xx / 9)) // 30).astype(int) * 10 + (xx // 41) + 1
    return seg, gt


def test_variation_of_information_is_skimages():
    from skimage.metrics import variation_of_information as skimage_vi

    from uniap.metrics import variation_of_information

    seg, gt = _two_maps()
    assert variation_of_information(seg, gt) == pytest.approx(skimage_vi(gt, seg).sum(), rel=1e-12)
    # void in either map is left out (skimage's ignore_labels masks its first image only)
    seg0, gt0 = seg.copy(), gt.copy()
    seg0[:, :20], gt0[:15] = 0, 0
    both = (seg0 != 0) & (gt0 != 0)
    assert variation_of_information(seg0, gt0, void=0) == pytest.approx(
        skimage_vi(gt0[both], seg0[both]).sum(), rel=1e-12)


def test_rand_index_is_sklearns():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")

    from uniap.metrics import rand_index

    seg, gt = _two_maps()
    assert rand_index(seg, gt) == pytest.approx(sklearn_metrics.rand_score(gt.ravel(), seg.ravel()), rel=1e-12)


@pytest.mark.parametrize("total, warmup", [(40, 4), (1000, 0), (7, 3)])
def test_cosine_schedule_is_timms(total, warmup):
    torch = pytest.importorskip("torch")
    scheduler = pytest.importorskip("timm.scheduler")

    from uniap_train.utils import cosine_scheduler

    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=0.3)
    timm_cos = scheduler.CosineLRScheduler(opt, t_initial=max(total - warmup - 1, 1), lr_min=1e-4,
                                           warmup_t=warmup, warmup_lr_init=0.01, warmup_prefix=True,
                                           t_in_epochs=False)
    expected = []
    for step in range(total):
        timm_cos.step_update(step)
        expected.append(opt.param_groups[0]["lr"])
    np.testing.assert_allclose(cosine_scheduler(0.3, 1e-4, total, warmup, start_warmup_value=0.01),
                               expected, rtol=1e-12, atol=1e-15)


def test_ema_update_is_swa_utils_ema(monkeypatch):
    """The teacher's update is torch's fused lerp, as swa_utils' EMA, and equals the old loop."""
    torch = pytest.importorskip("torch")
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    from uniap_train.model import ema_update

    torch.manual_seed(0)
    student = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.LayerNorm(16), torch.nn.Linear(16, 4))
    teacher = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.LayerNorm(16), torch.nn.Linear(16, 4))
    loop = [p.detach().clone() for p in teacher.parameters()]
    swa = AveragedModel(teacher, multi_avg_fn=get_ema_multi_avg_fn(0.9), use_buffers=False)
    swa.n_averaged += 1  # past its first call, which copies the model
    calls = []
    real = torch._foreach_lerp_
    monkeypatch.setattr(torch, "_foreach_lerp_", lambda *a: calls.append(len(a[0])) or real(*a))
    for _ in range(3):
        ema_update(teacher, student, 0.9)
        for t, s in zip(loop, student.parameters()):
            t.mul_(0.9).add_(s.detach(), alpha=0.1)
    monkeypatch.undo()
    for _ in range(3):
        swa.update_parameters(student)
    assert calls == [6, 6, 6]  # one fused call per update
    for ours, old, theirs in zip(teacher.parameters(), loop, swa.module.parameters()):
        torch.testing.assert_close(ours, old, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-7)
