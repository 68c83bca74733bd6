"""Hand-written code against the libraries that could replace it (#25, item 7).

Run (docs/benchmarks.md, "Libraries instead of hand-written code")::

    OMP_NUM_THREADS=1 flock /tmp/heavy.lock python -m pytest bench/test_library_swaps.py \\
        --benchmark-only --benchmark-group-by=group --benchmark-columns=median,min,rounds

Each group times the two sides on the same inputs in the same run (``tests/test_library_oracles.py``
checks they give the same results):

* ``kmeans-*``: Lloyd by hand (uniap before) against ``scipy.cluster.vq.kmeans2`` from the same
  k-means++ seeds (uniap now), on the default features' 3000 sampled pixels (3 and 16
  dimensions, 8 iterations) and ``fit``'s 200 000 (20 iterations);
* ``vi`` / ``rand``: :mod:`uniap.metrics` against skimage's VI and scikit-learn's ``rand_score``;
* ``cosine``: the schedule by hand against timm's ``CosineLRScheduler`` stepped through 10 000
  steps;
* ``ema-*``: the teacher update as a loop of ``mul_``/``add_`` (before) against
  ``torch._foreach_lerp_`` (now) and ``torch.optim.swa_utils.AveragedModel``, on the released
  recipe's DINO head and on a ViT-S/8 (the paper recipe's trainable backbone).
"""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest


def _lloyd_by_hand(pts, centres, iters):
    centres = centres.copy()
    k, d = centres.shape
    for _ in range(iters):
        label = ((centres * centres).sum(1) - 2.0 * (pts @ centres.T)).argmin(1)
        count = np.bincount(label, minlength=k)
        sums = np.stack([np.bincount(label, pts[:, c], minlength=k) for c in range(d)], axis=1)
        filled = count > 0
        centres[filled] = sums[filled] / count[filled, None]
    return centres


def _scipy_lloyd(pts, centres, iters):
    from scipy.cluster.vq import kmeans2

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return kmeans2(pts, centres.copy(), iter=iters, minit="matrix", check_finite=False)[0]


KMEANS = {"3000x3": (3000, 3, 8), "3000x16": (3000, 16, 8), "200000x3": (200_000, 3, 20)}


@pytest.mark.parametrize("size", list(KMEANS))
@pytest.mark.parametrize("side", ["by_hand", "scipy_kmeans2"])
def test_kmeans(benchmark, size, side):
    n, d, iters = KMEANS[size]
    rng = np.random.default_rng(0)
    pts = rng.normal(size=(n, d)) + rng.integers(0, 5, (n, 1))
    centres = pts[rng.choice(n, 16, replace=False)]
    benchmark.group = f"kmeans-{size}"
    fn = _lloyd_by_hand if side == "by_hand" else _scipy_lloyd
    benchmark.pedantic(fn, args=(pts, centres, iters), rounds=3 if n > 10_000 else 20, iterations=1)


def _maps():
    yy, xx = np.mgrid[0:321, 0:481]
    seg = (yy // 23) * 100 + (xx // 31) + 1
    gt = ((yy + 7 + 7 * np.sin(xx / 9)) // 60).astype(int) * 10 + (xx // 97) + 1
    return seg, gt


@pytest.mark.parametrize("side", ["uniap", "skimage"])
def test_vi(benchmark, side):
    from skimage.metrics import variation_of_information as skimage_vi

    from uniap.metrics import variation_of_information

    seg, gt = _maps()
    benchmark.group = "vi"
    if side == "uniap":
        benchmark(variation_of_information, seg, gt)
    else:
        benchmark(skimage_vi, gt, seg)


@pytest.mark.parametrize("side", ["uniap", "sklearn"])
def test_rand(benchmark, side):
    from uniap.metrics import rand_index

    seg, gt = _maps()
    benchmark.group = "rand"
    if side == "uniap":
        benchmark(rand_index, seg, gt)
    else:
        metrics = pytest.importorskip("sklearn.metrics")
        benchmark(metrics.rand_score, gt.ravel(), seg.ravel())


@pytest.mark.parametrize("side", ["uniap", "timm"])
def test_cosine(benchmark, side):
    torch = pytest.importorskip("torch")
    from timm.scheduler import CosineLRScheduler

    from uniap_train.utils import cosine_scheduler

    total, warmup = 10_000, 500

    def timm_schedule():
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.2)
        sch = CosineLRScheduler(opt, t_initial=total - warmup - 1, lr_min=1e-6, warmup_t=warmup,
                                warmup_prefix=True, t_in_epochs=False)
        out = np.empty(total)
        for step in range(total):
            sch.step_update(step)
            out[step] = opt.param_groups[0]["lr"]
        return out

    benchmark.group = "cosine"
    if side == "uniap":
        benchmark(cosine_scheduler, 0.2, 1e-6, total, warmup)
    else:
        benchmark.pedantic(timm_schedule, rounds=3, iterations=1)


def _modules(kind):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    if kind == "dino_head":
        student = torch.nn.Sequential(torch.nn.Linear(34, 256), torch.nn.GELU(), torch.nn.Linear(256, 256),
                                      torch.nn.GELU(), torch.nn.Linear(256, 64))
    else:
        timm = pytest.importorskip("timm")
        student = timm.create_model("vit_small_patch8_224", num_classes=0)
    return copy.deepcopy(student), student


@pytest.mark.parametrize("kind", ["dino_head", "vit_s8"])
@pytest.mark.parametrize("side", ["loop", "foreach_lerp", "swa_utils"])
def test_ema(benchmark, kind, side):
    import torch
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    from uniap_train.model import ema_update

    torch.set_num_threads(1)
    teacher, student = _modules(kind)

    @torch.no_grad()
    def loop():
        for pt, ps in zip(teacher.parameters(), student.parameters()):
            pt.mul_(0.996).add_(ps.detach(), alpha=1 - 0.996)

    benchmark.group = f"ema-{kind}"
    if side == "loop":
        benchmark(loop)
    elif side == "foreach_lerp":
        benchmark(ema_update, teacher, student, 0.996)
    else:
        swa = AveragedModel(teacher, multi_avg_fn=get_ema_multi_avg_fn(0.996), use_buffers=False)
        swa.n_averaged += 1
        benchmark(swa.update_parameters, student)
