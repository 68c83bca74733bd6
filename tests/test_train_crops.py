"""Crop-box bookkeeping: common regions of two views (flips included), feature crops, sampler."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from uniap_train.config import CropConfig  # noqa: E402
from uniap_train.crops import (  # noqa: E402
    Crop,
    MultiCrop,
    common_region,
    crop_feature_grid,
    region_points,
    sample_crop_box,
)
from uniap_train.data import ResumableDistributedSampler  # noqa: E402


def test_common_region_plain():
    a = Crop((0, 0, 100, 50), False, 32)
    b = Crop((50, 25, 150, 75), False, 32)
    ra, rb = common_region(a, b)
    np.testing.assert_allclose(ra, [0.5, 0.5, 1.0, 1.0])
    np.testing.assert_allclose(rb, [0.0, 0.0, 0.5, 0.5])


def test_common_region_flips():
    a = Crop((0, 0, 100, 100), True, 32)
    b = Crop((50, 0, 150, 100), False, 32)
    ra, rb = common_region(a, b)
    # image x in [50, 100] is view-a u in [0.5, 0] (flipped: the image's left edge is on the right)
    np.testing.assert_allclose(ra, [0.5, 0.0, 0.0, 1.0])
    np.testing.assert_allclose(rb, [0.0, 0.0, 0.5, 1.0])
    both = common_region(a, Crop((50, 0, 150, 100), True, 32))
    np.testing.assert_allclose(both[1], [1.0, 0.0, 0.5, 1.0])


def test_common_region_none_and_symmetry():
    a = Crop((0, 0, 10, 10), False, 8)
    assert common_region(a, Crop((10, 0, 20, 10), False, 8)) is None  # touching: zero area
    assert common_region(a, Crop((0, 20, 10, 30), True, 8)) is None
    b = Crop((5, 5, 15, 15), True, 8)
    ab, ba = common_region(a, b), common_region(b, a)
    np.testing.assert_allclose(ab[0], ba[1])
    np.testing.assert_allclose(ab[1], ba[0])


def test_region_points_hit_the_same_image_points():
    rng = np.random.default_rng(0)
    for _ in range(200):
        crops = []
        for _ in range(2):
            box = sample_crop_box(rng, 120, 200, (0.1, 1.0))
            crops.append(Crop(tuple(float(t) for t in box), bool(rng.random() < 0.5), 16))
        region = common_region(*crops)
        if region is None:
            continue
        pa, pb = region_points(region[0], 5), region_points(region[1], 5)
        xa, ya = crops[0].to_image(pa[..., 0], pa[..., 1])
        xb, yb = crops[1].to_image(pb[..., 0], pb[..., 1])
        np.testing.assert_allclose(xa, xb, atol=1e-9)
        np.testing.assert_allclose(ya, yb, atol=1e-9)
        assert pa.min() >= 0 and pa.max() <= 1 and pb.min() >= 0 and pb.max() <= 1


def test_to_image_from_image_inverse():
    c = Crop((10, 20, 50, 100), True, 8)
    u, v = np.array([0.0, 0.25, 1.0]), np.array([0.0, 0.5, 1.0])
    x, y = c.to_image(u, v)
    np.testing.assert_allclose(x, [50, 40, 10])
    np.testing.assert_allclose(y, [20, 60, 100])
    np.testing.assert_allclose(c.from_image(x, y), (u, v))


def test_sample_crop_box_bounds_and_scale():
    rng = np.random.default_rng(1)
    for _ in range(300):
        x0, y0, x1, y1 = sample_crop_box(rng, 90, 140, (0.05, 0.4))
        assert 0 <= x0 < x1 <= 140 and 0 <= y0 < y1 <= 90
        assert (x1 - x0) * (y1 - y0) <= 0.42 * 90 * 140
    # impossible scale/ratio: the centred fallback
    assert sample_crop_box(rng, 10, 100, (1.0, 1.0), (1.0, 1.0)) == (45, 0, 55, 10)


def test_multicrop_views_and_determinism():
    cfg = CropConfig(global_size=16, local_size=8, num_local=3)
    image = (np.random.default_rng(2).random((40, 60, 3)) * 255).astype(np.uint8)
    mc = MultiCrop(cfg)
    v1, c1 = mc(image, np.random.default_rng([0, 1, 2]))
    v2, c2 = mc(image, np.random.default_rng([0, 1, 2]))
    assert [v.shape for v in v1] == [(16, 16, 3)] * 2 + [(8, 8, 3)] * 3
    assert all(np.array_equal(a, b) for a, b in zip(v1, v2)) and c1 == c2
    none, c3 = mc(image, np.random.default_rng([0, 1, 2]), render=False)
    assert none is None and c3 == c1  # the same draws without pixels


def test_flipped_view_pixels_match_crop_box():
    """A rendered, flipped view shows the image's crop box mirrored."""
    cfg = CropConfig(global_size=16, local_size=8, num_local=0, flip_prob=1.0, jitter_prob=0.0,
                     grayscale_prob=0.0, global_scale=(1.0, 1.0), ratio=(1.5, 1.5))
    image = np.zeros((16, 24, 3), np.uint8)
    image[:, :12] = 255  # left half white
    views, crops = MultiCrop(cfg)(image, np.random.default_rng(0))
    assert crops[0].flip and crops[0].box == (0.0, 0.0, 24.0, 16.0)
    assert views[0][:, -4:].min() == 255 and views[0][:, :4].max() == 0  # white now on the right


def test_crop_feature_grid_matches_direct_sampling():
    h, w, p = 6, 8, 4
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    feats = np.stack([yy, xx], -1)  # cell centre coordinates as features
    crop = Crop((4.0, 0.0, 20.0, 16.0), False, 8)  # image pixels; 2 x 2 view cells
    out = crop_feature_grid(feats, crop, 2, (1 / p, 1 / p))
    # view cell centres at image x = 8, 16 -> grid x = 1.5, 3.5; y = 4, 12 -> 0.5, 2.5
    np.testing.assert_allclose(out[..., 1], [[1.5, 3.5], [1.5, 3.5]])
    np.testing.assert_allclose(out[..., 0], [[0.5, 0.5], [2.5, 2.5]])
    flipped = crop_feature_grid(feats, Crop(crop.box, True, 8), 2, (1 / p, 1 / p))
    np.testing.assert_allclose(flipped, out[:, ::-1])


def test_sampler_splits_global_batches_and_resumes():
    n, batch, world = 22, 4, 2
    data = list(range(n))
    single = ResumableDistributedSampler(data, batch, num_replicas=1, rank=0, seed=3)
    ranks = [ResumableDistributedSampler(data, batch // world, num_replicas=world, rank=r, seed=3)
             for r in range(world)]
    assert single.batches_per_epoch == ranks[0].batches_per_epoch == n // batch
    for epoch in (0, 1):
        single.set_epoch(epoch)
        one = [i for _, i in single]
        parts = []
        for s in ranks:
            s.set_epoch(epoch)
            parts.append([i for e, i in s])
        for k in range(single.batches_per_epoch):
            got = set(parts[0][2 * k: 2 * k + 2]) | set(parts[1][2 * k: 2 * k + 2])
            assert got == set(one[batch * k: batch * (k + 1)])
    single.set_epoch(1)
    full = list(single)
    single.set_epoch(1, start_batch=2)
    assert list(single) == full[2 * batch:] and len(single) == len(full) - 2 * batch
    assert all(e == 1 for e, _ in full)
    with pytest.raises(ValueError, match="start_batch"):
        single.set_epoch(0, start_batch=99)
