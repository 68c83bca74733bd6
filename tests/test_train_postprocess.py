"""Mask post-processing of the trainer's predictions: IoU, Matrix NMS, greedy NMS, SAM's stability
score and snapping coarse probabilities to superpixels, against brute-force NumPy versions."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")

from uniap_train.postprocess import (  # noqa: E402
    mask_iou,
    mask_nms,
    matrix_nms,
    snap_to_regions,
    stability_score,
)

SEEDS = st.integers(0, 2**32 - 1)


def _masks(rng: np.random.Generator, n: int, h: int, w: int) -> np.ndarray:
    """Random masks (n, h, w) bool with every kind of overlap: empty, full, sparse, dense,
    exact duplicates and small edits of earlier masks."""
    out = np.zeros((n, h, w), bool)
    for k in range(n):
        kind = rng.integers(6)
        if kind == 0 and k:
            out[k] = out[rng.integers(k)]  # a duplicate
        elif kind == 1 and k:
            out[k] = out[rng.integers(k)] ^ (rng.random((h, w)) < 0.15)  # a small edit
        elif kind == 2:
            out[k] = rng.random() < 0.5  # empty or full
        else:
            out[k] = rng.random((h, w)) < rng.uniform(0.05, 0.95)
    return out


def _iou_np(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Brute-force IoU (float32 division of exact counts, as torch's)."""
    out = np.zeros((len(a), len(b)), np.float32)
    for i in range(len(a)):
        for j in range(len(b)):
            inter = np.logical_and(a[i], b[j]).sum()
            union = np.logical_or(a[i], b[j]).sum()
            out[i, j] = np.float32(inter) / np.float32(union) if union else 0.0
    return out


def _scores(rng: np.random.Generator, n: int, distinct: bool = False) -> np.ndarray:
    if distinct:
        return (rng.permutation(n) + 1).astype(np.float32) / (n + 1) * rng.uniform(0.5, 1.0)
    return rng.choice([0.1, 0.3, 0.5, 0.8, 1.0], size=n).astype(np.float32)  # with ties


# -- mask_iou ---------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(SEEDS, st.integers(0, 6), st.integers(0, 6), st.integers(1, 7), st.integers(1, 7),
       st.sampled_from([torch.bool, torch.float32, torch.uint8]), st.integers(1, 60))
def test_mask_iou_is_brute_force_iou_chunked_or_not(seed, n, m, h, w, dtype, max_elements):
    rng = np.random.default_rng(seed)
    a, b = _masks(rng, n, h, w), _masks(rng, m, h, w)
    ta, tb = torch.from_numpy(a).to(dtype), torch.from_numpy(b).to(dtype)
    iou = mask_iou(ta, tb)
    assert iou.shape == (n, m) and iou.dtype == torch.float32
    np.testing.assert_array_equal(iou.numpy(), _iou_np(a, b))
    assert torch.equal(mask_iou(ta, tb, max_elements=max_elements), iou)  # chunks of pixels
    assert torch.equal(mask_iou(ta, tb, max_elements=1), iou)  # one pixel at a time
    self_iou = mask_iou(ta, ta, max_elements=max_elements)  # the `b is a` path
    assert torch.equal(self_iou, mask_iou(ta, ta.clone()))
    assert torch.equal(self_iou, self_iou.T)
    np.testing.assert_array_equal(self_iou.diagonal().numpy(), a.reshape(n, h * w).any(1).astype(np.float32))


def test_mask_iou_of_empty_masks_is_zero_and_float_masks_count_nonzero():
    empty = torch.zeros(2, 3, 3)
    assert torch.equal(mask_iou(empty, empty), torch.zeros(2, 2))
    assert mask_iou(torch.zeros(0, 3, 3), empty).shape == (0, 2)
    assert mask_iou(torch.ones(1, 0, 4), torch.ones(3, 0, 4)).shape == (1, 3)
    a = torch.tensor([[[0.0, 2.0, -1.0]]])  # nonzero is foreground
    assert mask_iou(a, torch.tensor([[[1, 1, 1]]])).item() == pytest.approx(2 / 3)


def test_mask_iou_counts_stay_exact_under_autocast():
    a = torch.ones(1, 64, 80, dtype=torch.bool)  # 5120 pixels: fp16 could not count them one by one
    b = a.clone()
    b[0, 0, :3] = False
    with torch.autocast("cpu", dtype=torch.bfloat16):
        iou = mask_iou(a, b)
    assert iou.dtype == torch.float32 and iou.item() == np.float32(5117) / np.float32(5120)


def test_mask_iou_refuses_bad_shapes():
    with pytest.raises(ValueError, match="differ in size"):
        mask_iou(torch.zeros(1, 3, 4), torch.zeros(1, 4, 3))
    with pytest.raises(ValueError, match=r"\(N, H, W\)"):
        mask_iou(torch.zeros(3, 4), torch.zeros(1, 3, 4))
    with pytest.raises(ValueError, match="max_elements"):
        mask_iou(torch.zeros(1, 3, 4), torch.zeros(1, 3, 4), max_elements=0)


# -- matrix_nms -------------------------------------------------------------------------------


def _matrix_nms_np(masks: np.ndarray, scores: np.ndarray, kernel: str, sigma: float) -> np.ndarray:
    """The definition, one pair at a time, in float64."""
    n = len(scores)
    order = np.argsort(-scores, kind="stable")
    iou = _iou_np(masks[order], masks[order]).astype(np.float64)

    def f(x):
        return math.exp(-sigma * x * x) if kernel == "gaussian" else 1.0 - x

    comp = [max((iou[k, i] for k in range(i)), default=0.0) for i in range(n)]
    out = np.empty(n)
    for r, j in enumerate(order):
        decay = 1.0
        for i in range(r):
            num, den = f(iou[i, r]), f(comp[i])
            decay = min(decay, num / den if den else (0.0 if num == 0 else math.inf))
        out[j] = scores[j] * decay
    return out


@settings(max_examples=40, deadline=None)
@given(SEEDS, st.integers(0, 7), st.integers(1, 6), st.integers(1, 6),
       st.sampled_from(["gaussian", "linear"]), st.sampled_from([0.5, 2.0, 10.0]))
def test_matrix_nms_is_the_definition(seed, n, h, w, kernel, sigma):
    rng = np.random.default_rng(seed)
    masks, scores = _masks(rng, n, h, w), _scores(rng, n)
    out = matrix_nms(torch.from_numpy(masks), torch.from_numpy(scores), kernel=kernel, sigma=sigma)
    assert out.shape == (n,) and out.dtype == torch.float32 and torch.isfinite(out).all()
    np.testing.assert_allclose(out.numpy(), _matrix_nms_np(masks, scores, kernel, sigma), rtol=1e-5, atol=1e-7)
    assert np.all(out.numpy() <= scores)  # never increases
    if n:
        top = int(np.argmax(scores))  # the first of the best
        assert out[top].item() == scores[top]  # keeps its score


@settings(max_examples=25, deadline=None)
@given(SEEDS, st.integers(2, 7), st.integers(1, 6), st.integers(1, 6), st.sampled_from(["gaussian", "linear"]))
def test_matrix_nms_permuting_the_input_permutes_the_output(seed, n, h, w, kernel):
    rng = np.random.default_rng(seed)
    masks = torch.from_numpy(_masks(rng, n, h, w))
    scores = torch.from_numpy(_scores(rng, n, distinct=True))
    perm = torch.from_numpy(rng.permutation(n))
    out = matrix_nms(masks, scores, kernel=kernel)
    assert torch.equal(matrix_nms(masks[perm], scores[perm], kernel=kernel), out[perm])
    assert torch.equal(matrix_nms(masks.float(), scores, kernel=kernel), out)  # 0/1 floats as bools


@pytest.mark.parametrize("sigma", [0.5, 2.0, 5.0])
def test_matrix_nms_duplicates_decay_and_disjoint_masks_keep_their_scores(sigma):
    masks = torch.zeros(4, 4, 8, dtype=torch.bool)
    masks[0, :2, :4] = masks[1, :2, :4] = True  # a duplicate pair
    masks[2, 2:, :4] = True  # disjoint from everything
    masks[3, :, 4:] = True
    scores = torch.tensor([0.6, 0.9, 0.4, 0.7])
    out = matrix_nms(masks, scores, sigma=sigma)
    # the duplicate ranked second: f(1) / f(0) = exp(-sigma)
    assert out[0].item() == pytest.approx(0.6 * math.exp(-sigma), rel=1e-6)
    assert out[1:].tolist() == scores[1:].tolist()
    linear = matrix_nms(masks, scores, kernel="linear")
    assert linear.tolist() == [0.0] + scores[1:].tolist()


def test_matrix_nms_linear_kernel_with_triplicates_is_not_nan():
    # the reference divides 0 by 0 for the third copy (its suppressor is fully suppressed)
    masks = torch.ones(3, 2, 2, dtype=torch.bool)
    out = matrix_nms(masks, torch.tensor([0.9, 0.8, 0.7]), kernel="linear")
    assert out.tolist() == pytest.approx([0.9, 0.0, 0.0])
    gaussian = matrix_nms(masks, torch.tensor([0.9, 0.8, 0.7]), sigma=1e4)  # no 0 / 0 either
    assert torch.isfinite(gaussian).all() and gaussian[0].item() == pytest.approx(0.9)


def test_matrix_nms_edge_cases_and_errors():
    assert matrix_nms(torch.zeros(0, 3, 3), torch.zeros(0)).shape == (0,)
    assert matrix_nms(torch.ones(1, 3, 3), torch.tensor([0.25])).tolist() == [0.25]
    assert matrix_nms(torch.ones(2, 3, 3), torch.tensor([2, 1]), kernel="linear").tolist() == [2.0, 0.0]
    with pytest.raises(ValueError, match="kernel"):
        matrix_nms(torch.ones(1, 3, 3), torch.ones(1), kernel="gauss")
    with pytest.raises(ValueError, match="scores"):
        matrix_nms(torch.ones(2, 3, 3), torch.ones(3))


# -- mask_nms ---------------------------------------------------------------------------------


def _greedy_np(masks: np.ndarray, scores: np.ndarray, threshold: float) -> list[int]:
    iou = _iou_np(masks, masks)
    kept: list[int] = []
    for j in np.argsort(-scores, kind="stable"):
        if all(iou[j, k] <= np.float32(threshold) for k in kept):
            kept.append(int(j))
    return kept


@settings(max_examples=40, deadline=None)
@given(SEEDS, st.integers(0, 8), st.integers(1, 6), st.integers(1, 6),
       st.sampled_from([0.0, 0.3, 0.5, 2 / 3, 0.9, 1.0]), st.booleans())
def test_mask_nms_is_brute_force_greedy_nms(seed, n, h, w, threshold, distinct):
    rng = np.random.default_rng(seed)
    masks, scores = _masks(rng, n, h, w), _scores(rng, n, distinct)
    keep = mask_nms(torch.from_numpy(masks), torch.from_numpy(scores), threshold)
    assert keep.dtype == torch.long
    assert keep.tolist() == _greedy_np(masks, scores, threshold)
    iou = _iou_np(masks[keep.numpy()], masks[keep.numpy()])
    np.fill_diagonal(iou, 0)
    assert np.all(iou <= np.float32(threshold))  # kept masks pairwise overlap by at most the threshold
    assert np.all(np.diff(scores[keep.numpy()]) <= 0)  # best score first


def test_mask_nms_edge_cases():
    assert mask_nms(torch.zeros(0, 2, 2), torch.zeros(0)).tolist() == []
    # empty masks overlap nothing and are all kept
    assert mask_nms(torch.zeros(3, 2, 2), torch.tensor([0.1, 0.3, 0.2])).tolist() == [1, 2, 0]
    assert mask_nms(torch.ones(3, 2, 2), torch.tensor([0.1, 0.3, 0.2])).tolist() == [1]


# -- stability_score --------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(SEEDS, st.integers(0, 5), st.integers(1, 6), st.integers(1, 6),
       st.sampled_from([-1.0, 0.0, 0.5]), st.sampled_from([0.0, 0.5, 1.0, 3.0]))
def test_stability_score_is_brute_force(seed, n, h, w, threshold, offset):
    rng = np.random.default_rng(seed)
    logits = (rng.normal(size=(n, h, w)) * rng.uniform(0.1, 5)).astype(np.float32)
    out = stability_score(torch.from_numpy(logits), threshold, offset)
    expected = np.zeros(n, np.float32)
    for k in range(n):
        high = int((logits[k] > threshold + offset).sum())
        low = int((logits[k] > threshold - offset).sum())
        expected[k] = np.float32(high) / np.float32(low) if low else 0.0
    assert out.dtype == torch.float32 and out.shape == (n,)
    np.testing.assert_array_equal(out.numpy(), expected)
    assert torch.all((out >= 0) & (out <= 1))


@settings(max_examples=20, deadline=None)
@given(SEEDS, st.sampled_from([-2.0, 0.0, 1.5]), st.sampled_from([0.5, 1.0]))
def test_stability_score_is_one_far_from_the_threshold(seed, threshold, offset):
    rng = np.random.default_rng(seed)
    sign = np.where(rng.random((3, 5, 6)) < 0.5, -1.0, 1.0)
    sign[:, 0, 0] = 1.0  # not empty
    logits = torch.from_numpy(threshold + sign * (offset + rng.uniform(0.01, 4, size=sign.shape)))
    assert stability_score(logits, threshold, offset).tolist() == [1.0, 1.0, 1.0]
    # a probability cut of 0.5 is logit 0: all far below it is empty, scored 0
    assert stability_score(torch.full((2, 3, 3), -5.0)).tolist() == [0.0, 0.0]


def test_stability_score_errors():
    with pytest.raises(ValueError, match="offset"):
        stability_score(torch.zeros(1, 2, 2), offset=-1.0)
    with pytest.raises(ValueError, match="shape"):
        stability_score(torch.zeros(4))


# -- snap_to_regions --------------------------------------------------------------------------


def _regions(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Random labels 0 .. R-1 (R = max + 1, some labels possibly without pixels)."""
    block = rng.integers(1, 4)
    grid = rng.integers(0, rng.integers(1, 12), size=(-(-h // block), -(-w // block)))
    return np.kron(grid, np.ones((block, block), int))[:h, :w]


@settings(max_examples=40, deadline=None)
@given(SEEDS, st.integers(0, 4), st.integers(1, 9), st.integers(1, 9), st.sampled_from([0.2, 0.5, 0.8]))
def test_snap_to_regions_means_are_bincounts_and_masks_are_unions_of_regions(seed, n, h, w, threshold):
    rng = np.random.default_rng(seed)
    regions = _regions(rng, h, w)
    r = int(regions.max()) + 1
    prob = rng.random((n, h, w)).astype(np.float32)
    masks, region_prob = snap_to_regions(torch.from_numpy(prob), torch.from_numpy(regions), threshold)
    assert masks.shape == (n, h, w) and masks.dtype == torch.bool
    assert region_prob.shape == (n, r) and region_prob.dtype == torch.float32
    sizes = np.bincount(regions.ravel(), minlength=r)
    for k in range(n):
        sums = np.bincount(regions.ravel(), weights=prob[k].ravel().astype(np.float64), minlength=r)
        expected = np.divide(sums, sizes, out=np.zeros(r), where=sizes > 0)
        np.testing.assert_allclose(region_prob[k].numpy(), expected, rtol=1e-5, atol=1e-7)
        mask = masks[k].numpy()
        for label in np.unique(regions):
            inside = mask[regions == label]
            assert inside.all() or not inside.any()  # constant on each region
            assert inside[0] == (region_prob[k, label].item() > threshold)


@settings(max_examples=30, deadline=None)
@given(SEEDS, st.integers(1, 4), st.integers(1, 9), st.integers(1, 9), st.sampled_from([0.0, 0.05, 0.3]))
def test_snap_to_regions_keeps_a_union_of_regions(seed, n, h, w, noise):
    rng = np.random.default_rng(seed)
    regions = _regions(rng, h, w)
    chosen = rng.random((n, int(regions.max()) + 1)) < 0.5
    union = chosen[:, regions]  # (n, h, w): unions of regions
    prob = np.where(union, 1.0 - noise, noise) + rng.uniform(-noise / 2, noise / 2, size=union.shape)
    masks, _ = snap_to_regions(torch.from_numpy(prob.astype(np.float32)), torch.from_numpy(regions))
    np.testing.assert_array_equal(masks.numpy(), union)


def test_snap_to_regions_on_superpixels():
    from uniap.superpixels import superpixels

    rng = np.random.default_rng(3)
    image = np.full((24, 32, 3), 40, np.uint8)
    image[:, 16:] = 220  # two flat halves
    image = np.clip(image + rng.normal(0, 3, image.shape), 0, 255).astype(np.uint8)
    regions = superpixels(image, size=20)  # an ndarray: moved to prob's device
    coarse = torch.zeros(1, 1, 3, 4)
    coarse[..., 2:] = 0.8  # the right half, at 1/8 of the resolution
    prob = torch.nn.functional.interpolate(coarse, size=(24, 32), mode="bilinear", align_corners=False)[:, 0]
    masks, region_prob = snap_to_regions(prob, regions)
    assert region_prob.shape == (1, int(regions.max()) + 1)
    labels = torch.from_numpy(regions.astype(np.int64))
    assert torch.equal(masks[0], (region_prob[0] > 0.5)[labels])
    assert masks[0, :, 20:].all() and not masks[0, :, :12].any()


def test_snap_to_regions_num_regions_and_errors():
    prob = torch.full((2, 2, 3), 0.75)
    regions = torch.tensor([[0, 0, 2], [2, 2, 0]], dtype=torch.uint8)
    masks, region_prob = snap_to_regions(prob, regions, num_regions=5)
    assert region_prob.tolist() == [[0.75, 0.0, 0.75, 0.0, 0.0]] * 2  # labels without pixels get 0
    assert masks.all()
    masks, region_prob = snap_to_regions(torch.zeros(0, 2, 3), regions)
    assert masks.shape == (0, 2, 3) and region_prob.shape == (0, 3)
    with pytest.raises(ValueError, match=r"\(H, W\) = \(2, 3\)"):
        snap_to_regions(prob, regions.T)
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        snap_to_regions(prob, regions[None])
    with pytest.raises(ValueError, match=r"\(N, H, W\)"):
        snap_to_regions(prob[0], regions)
    with pytest.raises(ValueError, match=">= 0"):
        snap_to_regions(prob, torch.tensor([[0, -1, 2], [2, 2, 0]]))
    with pytest.raises(ValueError, match="integer"):
        snap_to_regions(prob, regions.float())
    with pytest.raises(ValueError, match="floating"):
        snap_to_regions(prob.to(torch.int64), regions)
    with pytest.raises(ValueError, match="num_regions"):
        snap_to_regions(prob, regions, num_regions=2)
