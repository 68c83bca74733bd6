"""The self-training parts of the paper recipe (issue 21): the pixel stem + FPN model with deep
supervision and a score head, superpixel regions and calibrated levels of the teacher, the
student's whole view, the score target, the predictor's post-processing and the teacher
segmenter.

Everything is tiny: random tensors, label maps of a few pixels, synthetic images of 64 x 96 (or
96 x 64) pixels and one training run of a few steps that the predictor tests share.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")
pytest.importorskip("yaml")

from test_predict import picture  # noqa: E402
from test_train_paper import paper_small  # noqa: E402
from test_train_run import images, load, read_metrics  # noqa: E402, F401 (images: a fixture)
from uniap_train.config import ConfigError, load_config  # noqa: E402
from uniap_train.crops import Crop  # noqa: E402

SEEDS = st.integers(0, 2**32 - 1)


# ------------------------------------------------------------------------------ the model


def model_config(*extra: str):
    return load_config(None, ["data.root=x", "recipe=paper", "model.dim=16", "model.num_heads=2",
                              "model.decoder_layers=3", "model.ffn_dim=32", "model.num_semantic_queries=2",
                              "model.num_instance_queries=3", "model.hidden_dim=16", "model.bottleneck_dim=8",
                              "model.out_dim=8", "model.pixel_stem=8", *extra]).model


def views(batch: int, h: int, w: int, channels: int = 6, seed: int = 0):
    """Features (B, h, w, C) and their uint8 pixels (B, 8 h, 8 w, 3) (8-pixel patches)."""
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, h, w, channels, generator=g),
            torch.randint(0, 256, (batch, 8 * h, 8 * w, 3), generator=g, dtype=torch.uint8))


def test_fpn_model_outputs_and_deep_supervision():
    from uniap_train.decoder import PaperModel

    torch.manual_seed(0)
    cfg = model_config()
    assert (cfg.pixel_decoder, cfg.deep_supervision) == ("fpn", True)  # the defaults
    model = PaperModel(6, cfg)
    assert model.needs_pixels
    x, pixels = views(2, 5, 7)
    out = model(x, pixels)
    q = 5
    assert out["masks"].shape == (2, q, 10, 14)  # twice the patch grid
    assert out["scores"].shape == (2, q) and out["queries"].shape == (2, q, 16) and out["logits"].shape == (2, q, 8)
    assert len(out["aux"]) == cfg.decoder_layers == 3
    for a in out["aux"]:
        assert a["masks"].shape == (2, q, 10, 14) and a["scores"].shape == (2, q)
    # the earlier predictions are the decoder's own, not copies of the last
    assert not torch.allclose(out["aux"][-1]["masks"], out["masks"])
    assert not torch.allclose(out["aux"][0]["masks"], out["aux"][1]["masks"])

    flat = PaperModel(6, replace(cfg, deep_supervision=False))
    flat.load_state_dict(model.state_dict())  # the same parameters: supervision only changes the outputs
    lean = flat(x, pixels)
    assert lean["aux"] == []
    torch.testing.assert_close(lean["masks"], out["masks"])
    torch.testing.assert_close(lean["scores"], out["scores"])


def test_list_of_groups_gives_one_output_each():
    from uniap_train.decoder import PaperModel

    torch.manual_seed(1)
    model = PaperModel(6, model_config()).eval()
    (x1, p1), (x2, p2) = views(3, 4, 4, seed=1), views(2, 6, 5, seed=2)
    with torch.no_grad():
        outs = model([x1, x2], [p1, p2])
        alone = [model(x1, p1), model(x2, p2)]
    assert isinstance(outs, list) and len(outs) == 2
    assert outs[0]["masks"].shape == (3, 5, 8, 8) and outs[1]["masks"].shape == (2, 5, 12, 10)
    for together, single in zip(outs, alone):
        for key in ("masks", "scores", "logits"):
            torch.testing.assert_close(together[key], single[key])
        assert len(together["aux"]) == 3


def test_gradients_reach_stem_fpn_score_head_and_every_layer():
    from uniap_train.decoder import PaperModel

    torch.manual_seed(2)
    cfg = model_config()
    model = PaperModel(6, cfg).train()
    x, pixels = views(2, 4, 6, seed=3)
    out = model(x, pixels)
    g = torch.Generator().manual_seed(4)
    mask_target = (torch.rand(out["masks"].shape, generator=g) > 0.5).float()
    score_target = torch.rand(out["scores"].shape, generator=g)
    loss = (torch.nn.functional.binary_cross_entropy_with_logits(out["masks"], mask_target)
            + torch.nn.functional.binary_cross_entropy_with_logits(out["scores"], score_target))
    loss.backward()

    def moved(module, skip=()) -> list[str]:
        """Names of the module's parameters without a nonzero gradient."""
        return [n for n, p in module.named_parameters()
                if not n.endswith(skip) and (p.grad is None or not torch.any(p.grad != 0))]

    assert moved(model.pixel_decoder.stem) == []
    assert moved(model.pixel_decoder.fpn) == []
    assert moved(model.pixel_decoder.mask_features) == []
    assert moved(model.score_head) == []
    assert len(model.decoder.layers) == cfg.decoder_layers
    for i, layer in enumerate(model.decoder.layers):
        # the key part of an attention's input bias has an exact gradient of 0 (softmax ignores it)
        assert moved(layer, skip=("in_proj_bias",)) == [], i
        for attn in (layer.cross, layer.self_attn):
            d = attn.embed_dim
            assert torch.any(attn.in_proj_bias.grad[2 * d:] != 0), i  # the value part does move


def test_simple_pixel_decoder_needs_no_pixels():
    from uniap_train.decoder import PaperModel

    torch.manual_seed(3)
    cfg = model_config("model.pixel_decoder=simple", "model.pixel_stem=0")
    model = PaperModel(6, cfg)
    assert model.pixel_decoder is None and not model.needs_pixels
    x, _ = views(2, 5, 7)
    out = model(x)
    assert out["masks"].shape == (2, 5, 10, 14) and out["scores"].shape == (2, 5) and len(out["aux"]) == 3
    fine, mask_features = model.teacher_maps(x)
    assert fine.shape == (2, 10, 14, 6) and mask_features.shape == (2, 16, 10, 14)
    fpn_no_stem = PaperModel(6, model_config("model.pixel_stem=0"))
    assert fpn_no_stem.pixel_decoder is not None and not fpn_no_stem.needs_pixels
    assert fpn_no_stem(x)["masks"].shape == (2, 5, 10, 14)
    with pytest.raises(ConfigError, match="model.pixel_stem: needs model.pixel_decoder: fpn"):
        model_config("model.pixel_decoder=simple")  # the default stem of 32 channels


def test_a_stem_without_pixels_is_a_clear_error():
    from uniap_train.decoder import PaperModel

    model = PaperModel(6, model_config())
    x, _ = views(1, 4, 4)
    with pytest.raises(ValueError, match=r"pixel stem \(model.pixel_stem\): it needs the view's pixels"):
        model(x)
    with pytest.raises(ValueError, match="needs the view's pixels"):
        model.teacher_maps(x)


# ---------------------------------------------------------------------------- regions


@settings(max_examples=30, deadline=None)
@given(seed=SEEDS, height=st.integers(1, 17), width=st.integers(1, 17), cells=st.integers(1, 24),
       count=st.integers(1, 6))
def test_fine_pooling_against_brute_force(seed, height, width, cells, count):
    """Every pixel counted once, in the fine cell of the teacher's square view that holds it: cell
    c of ``cells`` spans ``[c side / cells, (c + 1) side / cells)`` of the image's pixels, and a
    pixel (y, x) lies where its centre (y + 1/2, x + 1/2) does (the rule ``fine_pooling`` documents)."""
    from uniap_train.regions import fine_pooling

    rng = np.random.default_rng(seed)
    labels = rng.integers(0, count, (height, width))
    region, cell, pixels = fine_pooling(labels, cells)
    assert region.dtype == np.int64 and cell.dtype == np.int64 and pixels.dtype == np.float32
    assert pixels.sum() == height * width and np.all(pixels > 0)
    side = max(height, width)

    def span(t: int) -> int:  # brute force: the cell whose span holds coordinate t (exact integers)
        (c,) = [c for c in range(cells) if 2 * c * side <= (2 * t + 1) * cells < 2 * (c + 1) * side]
        return c

    expected: dict[tuple[int, int], int] = {}
    for y in range(height):
        for x in range(width):
            key = (int(labels[y, x]), span(y) * cells + span(x))
            expected[key] = expected.get(key, 0) + 1
    got = {(int(r), int(c)): float(n) for r, c, n in zip(region, cell, pixels)}
    assert len(got) == len(region)  # each pair once
    assert got == expected


def brute_region_ids(labels: np.ndarray, crop: Crop, points: int) -> np.ndarray:
    height, width = labels.shape
    x0, y0, x1, y1 = crop.box
    out = np.full((points, points), -9, np.int64)
    for i in range(points):
        for j in range(points):
            u, v = (j + 0.5) / points, (i + 0.5) / points
            x = x0 + ((1 - u) if crop.flip else u) * (x1 - x0)
            y = y0 + v * (y1 - y0)
            out[i, j] = labels[math.floor(y), math.floor(x)] if 0 <= x < width and 0 <= y < height else -1
    return out


@settings(max_examples=30, deadline=None)
@given(seed=SEEDS, flip=st.booleans(), points=st.integers(1, 12))
def test_view_region_ids_against_brute_force(seed, flip, points):
    from uniap_train.regions import view_region_ids

    rng = np.random.default_rng(seed)
    height, width = (int(v) for v in rng.integers(3, 20, 2))
    labels = rng.integers(0, 7, (height, width))
    # a box partly outside the image (as the teacher's padded square and the whole view are)
    x0, y0 = rng.uniform(-3, width - 1), rng.uniform(-3, height - 1)
    crop = Crop((x0, y0, x0 + rng.uniform(1, 1.5 * width), y0 + rng.uniform(1, 1.5 * height)), flip, 32)
    ids = view_region_ids(labels, crop, points)
    assert ids.shape == (points, points) and ids.dtype == np.int32
    np.testing.assert_array_equal(ids, brute_region_ids(labels, crop, points))


def test_view_region_ids_of_the_padded_whole_view():
    """The whole-image square of a wide image: the rows below it are -1, flipped or not."""
    from uniap_train.data import teacher_crop
    from uniap_train.regions import view_region_ids

    labels = np.arange(6 * 10).reshape(6, 10)
    for flip in (False, True):
        crop = replace(teacher_crop(6, 10, 80), flip=flip)
        ids = view_region_ids(labels, crop, 10)
        np.testing.assert_array_equal(ids, brute_region_ids(labels, crop, 10))
        assert np.all(ids[6:] == -1) and np.all(ids[:6] >= 0)
        np.testing.assert_array_equal(ids[:6], labels[:, ::-1] if flip else labels)


# ------------------------------------------------------------------------ calibrated levels


def cosines(x: np.ndarray, edges: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(x, axis=1)
    norm[norm == 0] = 1
    xn = x / norm[:, None]
    return np.array([float(xn[a] @ xn[b]) for a, b in edges])


@st.composite
def graphs(draw):
    """Node features (some rows repeated: tied similarities), a random simple graph, fractions."""
    n = draw(st.integers(2, 14))
    c = draw(st.integers(1, 4))
    seed = draw(SEEDS)
    rng = np.random.default_rng(seed)
    palette = rng.normal(size=(draw(st.integers(1, n)), c))
    x = palette[rng.integers(0, len(palette), n)]
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
    keep = rng.random(len(pairs)) < draw(st.floats(0.1, 1.0))
    edges = np.array([p for p, k in zip(pairs, keep) if k], np.int64).reshape(-1, 2)
    assume(len(edges) >= 1)
    fractions = sorted(set(draw(st.lists(st.floats(0.02, 0.98), min_size=1, max_size=4))))
    assume(all(b - a > 1e-3 for a, b in zip(fractions, fractions[1:])))
    return x, edges, tuple(fractions)


@settings(max_examples=80, deadline=None)
@given(graphs())
def test_calibrated_levels_share_of_edges_above(graph):
    from uniap_train.teacher import TIE, calibrated_levels

    x, edges, fractions = graph
    levels = calibrated_levels(x, edges, fractions)
    assert len(levels) == len(fractions)
    assert all(-1 <= t <= 1 for t in levels)
    assert all(a > b for a, b in zip(levels, levels[1:]))  # strictly decreasing
    sims = cosines(x, edges)
    desc = np.sort(sims)[::-1]
    for k, f in enumerate(fractions):
        (raw,) = calibrated_levels(x, edges, (f,))  # the level on its own: not nudged below another
        assert levels[k] <= raw + 1e-12
        if k == 0 or raw < levels[k - 1]:
            assert levels[k] == raw
        need = math.ceil(f * len(edges) - 1e-9)  # at least the share f of the edges exceed it
        top = desc[need - 1]
        if top < -1 + 2e-3:
            continue  # thresholds stop at -1 + 1e-3: anti-parallel neighbours never merge
        above = sims > raw
        assert above.sum() >= need, (f, raw, sims)
        assert np.all(sims[sims >= top] > raw)  # every edge tied with the last one needed is above
        assert np.all(sims[above] >= top - TIE)  # and no edge clearly less alike than it


@settings(max_examples=60, deadline=None)
@given(graphs(), st.sampled_from(["released", "paper"]))
def test_edge_scores_are_what_the_first_pass_contracts(graph, preset):
    """An edge scoring above a threshold is one UniAP's first pass (``passes="single"``)
    contracts under the same preset: the nodes it joins are the components of those edges."""
    import uniap
    from uniap_train.teacher import edge_scores

    x, edges, _ = graph
    x = x.astype(np.float32)
    scores = edge_scores(x, edges, preset=preset)
    if preset == "released":
        np.testing.assert_allclose(scores, cosines(x.astype(np.float64), edges), atol=1e-12)
    desc = np.unique(scores)[::-1]
    clear = desc[:-1] - desc[1:] > 1e-4  # thresholds between two scores, clear of float32 rounding
    for t in ((desc[:-1] + desc[1:]) / 2)[clear]:
        if not -1 < t < 1:
            continue
        h = uniap.segment_graph(x, edges, levels=(float(t),), preset=preset, passes="single", min_size=1)
        labels = np.asarray(h.levels[0].labels)
        above = edges[scores > t]
        parent = list(range(len(x)))

        def find(i):
            while parent[i] != i:
                i = parent[i]
            return i

        for a, b in above:
            parent[find(a)] = find(b)
        expected = np.array([find(i) for i in range(len(x))])
        assert (labels[:, None] == labels[None, :]).tolist() == (expected[:, None] == expected[None, :]).tolist()


@settings(max_examples=40, deadline=None)
@given(graphs())
def test_calibrated_levels_of_the_paper_rule_count_its_scores(graph):
    """With ``preset="paper"`` the levels are calibrated on the paper's first-pass scores:
    at least the share f of the edges score above each level."""
    from uniap_train.teacher import calibrated_levels, edge_scores

    x, edges, fractions = graph
    levels = calibrated_levels(x, edges, fractions, preset="paper")
    scores = edge_scores(x, edges, preset="paper")
    for t, f in zip(levels, fractions):
        if np.sort(scores)[::-1][math.ceil(f * len(edges) - 1e-9) - 1] < -1 + 2e-3:
            continue
        assert (scores > t).sum() >= math.ceil(f * len(edges) - 1e-9)


def test_calibrated_levels_without_edges():
    from uniap_train.teacher import calibrated_levels

    x = np.random.default_rng(0).normal(size=(3, 2))
    for empty in (np.zeros((0, 2), np.int64), []):
        levels = calibrated_levels(x, empty, (0.2, 0.5, 0.9))
        np.testing.assert_allclose(levels, (0.8, 0.5, 0.1))


def test_calibrated_levels_merge_tied_neighbours():
    """A strip of 8 cells, two flat halves: 6 of its 7 edges join identical cells.  Half the
    edges asked for, UniAP's first level merges all 6 tied edges (not none of them, as a
    threshold on the tied similarity itself would), and 0.95 of them merges everything."""
    from uniap_train.teacher import calibrated_levels, cell_edges, teacher_hierarchy

    x = np.zeros((8, 3), np.float32)
    x[:4] = (1.0, 0.2, 0.1)
    x[4:] = (0.1, 0.3, 1.0)
    edges = cell_edges(1, 8)
    assert len(edges) == 7
    levels = calibrated_levels(x, edges, (0.5, 0.95))
    h = teacher_hierarchy(x, edges, levels, min_size=1)
    first, second = (np.asarray(lv.labels) for lv in h.levels)
    assert len(set(first[:4].tolist())) == 1 and len(set(first[4:].tolist())) == 1 and first[0] != first[4]
    assert len(set(second.tolist())) == 1


# --------------------------------------------------------------------- the data pipeline


@pytest.fixture(scope="module")
def shaped_images(tmp_path_factory):
    """Two tall (96 x 64) and two wide (64 x 96) images: padding right of and below the image."""
    from PIL import Image

    folder = tmp_path_factory.mktemp("shaped")
    rng = np.random.default_rng(5)
    for i, shape in enumerate([(96, 64), (64, 96), (96, 64), (64, 96)]):
        img = np.zeros(shape + (3,), np.uint8)
        img[:] = rng.integers(30, 255, 3)
        for _ in range(3):
            y0, x0 = rng.integers(0, shape[0] - 16), rng.integers(0, shape[1] - 16)
            img[y0:y0 + 16, x0:x0 + 24] = rng.integers(30, 255, 3)
        Image.fromarray(img).save(folder / f"s{i}.png")
    return folder


def paper_dataset(folder, *extra: str):
    from uniap_train.backbone import Backbone
    from uniap_train.recipes import get_recipe

    cfg = load_config(None, paper_small(folder, folder / "unused", "crops.flip_prob=0.5", *extra))
    backbone = Backbone(cfg.backbone, torch.device("cpu"))
    assert backbone.crop_features  # views cut from each image's feature grid, pixels beside them
    recipe = get_recipe("paper")(cfg, 34)
    return cfg, recipe.build_dataset(sorted(folder.glob("*.png")), backbone, backbone.factory())


def test_whole_view_is_zero_exactly_outside_the_image(shaped_images):
    cfg, ds = paper_dataset(shaped_images)
    assert cfg.crops.student_whole and ds.num_views == 1 + cfg.crops.num_local + 1
    cells = cfg.crops.teacher_size // 8
    flips = set()
    for epoch in range(3):
        for index in range(len(ds)):
            s = ds[(epoch, index)]
            whole = s.crops[-1]
            side = whole.box[2]
            assert whole.box == (0.0, 0.0, side, side) and whole.size == cfg.crops.teacher_size
            shape = ds.image_grid(index)[2]
            outside = np.zeros((cells, cells), bool)
            for r in range(cells):
                for c in range(cells):
                    u = (c + 0.5) / cells
                    x = side * ((1 - u) if whole.flip else u)
                    outside[r, c] = x >= shape[1] or side * (r + 0.5) / cells >= shape[0]
            assert outside.any() and not outside.all()
            feats = s.features[-1]
            assert feats.shape[:2] == (cells, cells)
            assert np.all(feats[outside] == 0)
            assert np.all(np.abs(feats[~outside]).sum(-1) > 0)
            flips.add(whole.flip)
    assert flips == {False, True}


def test_pixel_views_sizes_and_the_whole_views_pixels(shaped_images):
    cfg, ds = paper_dataset(shaped_images, "crops.jitter_prob=0", "crops.grayscale_prob=0")
    c = cfg.crops
    for index in range(len(ds)):
        s = ds[(1, index)]
        assert len(s.pixels) == len(s.features) == ds.num_views
        sizes = [c.teacher_size] + [c.local_size] * c.num_local + [c.teacher_size]
        for view, feats, side in zip(s.pixels, s.features, sizes):
            assert view.shape == (side, side, 3) and view.dtype == np.uint8
            assert feats.shape[:2] == (side // 8, side // 8)
        # without colour jitter the whole view is the teacher's pixels, flipped with its own flip
        whole = s.pixels[-1]
        np.testing.assert_array_equal(whole, s.pixels[0][:, ::-1] if s.crops[-1].flip else s.pixels[0])


def test_whole_view_leaves_the_other_views_unchanged(shaped_images):
    cfg_on, on = paper_dataset(shaped_images)
    cfg_off, off = paper_dataset(shaped_images, "crops.student_whole=false")
    assert on.num_views == off.num_views + 1
    for key in [(0, 0), (1, 1), (2, 3)]:
        a, b = on[key], off[key]
        assert a.crops[:-1] == b.crops and len(a.crops) == len(b.crops) + 1
        for fa, fb in zip(a.features, b.features):
            np.testing.assert_array_equal(fa, fb)
        for pa, pb in zip(a.pixels, b.pixels):
            np.testing.assert_array_equal(pa, pb)
        assert len(a.regions["ids"]) == len(b.regions["ids"]) + 1
        for ia, ib in zip(a.regions["ids"], b.regions["ids"]):
            np.testing.assert_array_equal(ia, ib)


def test_region_data_of_a_sample(shaped_images):
    from uniap_train.recipes.paper import TARGET_SCALE

    cfg, ds = paper_dataset(shaped_images)
    s = ds[(0, 1)]
    r = s.regions
    assert set(r) == {"edges", "contours", "pool", "sizes", "ids"}
    n = len(r["sizes"])
    assert n > 1 and r["sizes"].sum() == np.prod(ds.image_grid(1)[2])
    region, cell, count = r["pool"]
    assert np.bincount(region, weights=count, minlength=n).tolist() == r["sizes"].tolist()
    assert cell.max() < (2 * cfg.crops.teacher_size // 8) ** 2
    assert r["edges"].shape[1] == 2 and r["edges"].max() < n
    assert len(r["ids"]) == len(s.crops) - 1  # one per student view
    for crop, ids in zip(s.crops[1:], r["ids"]):
        side = TARGET_SCALE * 2 * (crop.size // 8)  # target points: TARGET_SCALE per mask cell and side
        assert ids.shape == (side, side) and ids.min() >= -1 and ids.max() < n
    assert np.any(r["ids"][-1] == -1) and np.all(r["ids"][0] >= 0)  # the whole view is padded, crops are not


# --------------------------------------------------------------------------- the score target


def test_score_target_is_the_iou_with_the_match():
    from uniap_train.recipes.paper import INSTANCE, SEMANTIC, PaperRecipe, _Frame

    h = w = 4
    whole = torch.ones(h, w)
    left = torch.zeros(h, w)
    left[:, :2] = 1
    right = 1 - left
    top = torch.zeros(h, w)
    top[:2] = 1
    targets = torch.stack([whole, left, right])  # one semantic mask, two instance masks
    kinds = torch.tensor([SEMANTIC, INSTANCE, INSTANCE])

    def logits(*masks):
        return torch.stack([m * 20 - 10 for m in masks])

    # queries: [SEM] the whole image; [INS] the left half exactly, the top half, nothing
    row = logits(whole, left, top, torch.zeros(h, w))
    masks = [torch.stack([row, row]), row[None].clone()]  # group 0: two views, group 1: one
    every = torch.arange(3)
    kept = torch.tensor([0, 1])  # the right half too small in this view: not in its frame
    frames = [
        _Frame(0, 0, 0, 1, targets, targets, kinds, every),
        _Frame(0, 1, 1, 2, targets[kept], targets[kept], kinds[kept], kept),
        _Frame(1, 0, 0, 3, targets, targets, kinds, every),
    ]
    matches, scores = PaperRecipe._match(frames, masks, num_semantic=1)
    assert [s.shape for s in scores] == [(2, 4), (1, 4)]
    # the matched query whose mask equals its teacher mask: 1; the top half matched to the right
    # half: IoU 4 / 12; a query left unmatched: 0
    torch.testing.assert_close(scores[0], torch.tensor([[1.0, 1.0, 1 / 3, 0.0], [1.0, 1.0, 0.0, 0.0]]))
    torch.testing.assert_close(scores[1], torch.tensor([[1.0, 1.0, 1 / 3, 0.0]]))
    pairs = {(frames.index(f), q, t) for f, qs, ts in matches for q, t in zip(qs.tolist(), ts.tolist())}
    assert pairs == {(0, 0, 0), (0, 1, 1), (0, 2, 2), (1, 0, 0), (1, 1, 1), (2, 0, 0), (2, 1, 1), (2, 2, 2)}
    # loss.score_target "matched": every matched query 1 whatever its IoU (the top half's 1/3),
    # the unmatched 0; the same matches
    same, objectness = PaperRecipe._match(frames, masks, num_semantic=1, score_target="matched")
    torch.testing.assert_close(objectness[0], torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0]]))
    torch.testing.assert_close(objectness[1], torch.tensor([[1.0, 1.0, 1.0, 0.0]]))
    assert {(frames.index(f), q, t) for f, qs, ts in same for q, t in zip(qs.tolist(), ts.tolist())} == pairs


def test_score_target_option_is_checked():
    from uniap_train.config import ConfigError, load_config

    assert load_config(None, ["data.root=.", "loss.score_target=matched"]).loss.score_target == "matched"
    assert load_config(None, ["data.root=."]).loss.score_target == "iou"  # the default is unchanged
    with pytest.raises(ConfigError, match="loss.score_target"):
        load_config(None, ["data.root=.", "loss.score_target=area"])


# ---------------------------------------------------------------------------- the predictor


def random_logits(seed: int, n: int = 8, h: int = 20, w: int = 24) -> torch.Tensor:
    """Smooth random mask logits: coarse noise upsampled, some masks near copies of others."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(n, 1, 4, 5, generator=g) * 4
    out = torch.nn.functional.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)[:, 0]
    out[n // 2:] = out[: n - n // 2] + 0.3 * torch.randn(n - n // 2, h, w, generator=g)  # near duplicates
    return out


def pairwise_iou(masks: torch.Tensor) -> np.ndarray:
    m = masks.flatten(1).numpy()
    inter = (m[:, None] & m[None]).sum(-1)
    union = (m[:, None] | m[None]).sum(-1)
    return inter / np.maximum(union, 1)


def test_instance_masks_snapped_to_regions_are_unions_of_regions():
    from uniap_train.predict import instance_masks

    logits = random_logits(0)
    regions = torch.from_numpy((np.arange(20)[:, None] // 3) * 10 + np.arange(24)[None] // 3)
    regions = torch.unique(regions, return_inverse=True)[1]  # 0 .. R-1

    def unions(masks) -> bool:
        return all(bool(torch.all(m[regions == r] == m[regions == r][0])) for m in masks
                   for r in torch.unique(regions).tolist())

    snapped, prob, keep = instance_masks(logits, 0.5, 1, regions=regions)
    assert int(keep.sum()) >= 3 and unions(snapped)
    per_pixel, _, _ = instance_masks(logits, 0.5, 1)
    assert not unions(per_pixel)  # the check can tell: thresholded per pixel they are not
    torch.testing.assert_close(prob, logits.sigmoid())
    _, _, keep_large = instance_masks(logits, 0.5, 200, regions=regions)
    assert torch.equal(keep_large, snapped.flatten(1).sum(-1) >= 200) and keep_large.sum() < keep.sum()


def test_hard_nms_and_max_masks():
    from uniap_train.predict import rank_instances

    logits = random_logits(1)
    scores = torch.linspace(2, -2, len(logits))
    binary = logits > 0

    every = rank_instances(logits, 0.5, score_logits=scores, nms="none", max_masks=0)
    assert pairwise_iou(binary[every.queries])[np.triu_indices(len(every.queries), 1)].max() > 0.5  # overlaps
    assert torch.all(every.scores[:-1] >= every.scores[1:])
    torch.testing.assert_close(every.scores, scores[every.queries].sigmoid())  # ranked by the learned score
    hard = rank_instances(logits, 0.5, score_logits=scores, nms="hard", nms_threshold=0.5)
    assert 1 <= len(hard.queries) < len(every.queries)
    assert pairwise_iou(binary[hard.queries])[np.triu_indices(len(hard.queries), 1)].max(initial=0) <= 0.5
    # greedy: the best mask always stays
    assert hard.queries[0] == every.queries[0]
    matrix = rank_instances(logits, 0.5, score_logits=scores, nms="matrix")
    assert len(matrix.queries) == len(every.queries) and torch.all(matrix.scores <= every.scores.max())
    capped = rank_instances(logits, 0.5, score_logits=scores, nms="none", max_masks=3)
    assert len(capped.queries) == 3
    assert capped.queries.tolist() == every.queries[:3].tolist()
    torch.testing.assert_close(capped.scores, every.scores[:3])
    torch.testing.assert_close(capped.predicted_iou, scores[capped.queries].sigmoid())
    by_mask = rank_instances(logits, 0.5, score_logits=scores, nms="none", score="mask")
    prob = logits.sigmoid()
    inside = (prob * binary).flatten(1).sum(-1) / binary.flatten(1).sum(-1).clamp_min(1)
    torch.testing.assert_close(by_mask.scores, inside[by_mask.queries])
    with pytest.raises(ValueError, match="edge strength"):
        rank_instances(logits, 0.5, score_logits=scores, score="contrast")


@pytest.fixture(scope="module")
def checkpoint(images, tmp_path_factory):
    from uniap_train.trainer import train

    out = tmp_path_factory.mktemp("selftrain_run")
    train(load_config(None, paper_small(images, out, "optim.epochs=3")))
    return out / "checkpoint_last.pt"


@pytest.fixture(scope="module")
def predictor(checkpoint):
    from uniap_train import Predictor

    return Predictor.from_checkpoint(checkpoint, device="cpu", min_area=4)


def test_records_carry_learned_and_stability_scores(predictor, checkpoint):
    ckpt = load(checkpoint)
    assert ckpt["config"]["model"]["pixel_stem"] > 0 and ckpt["config"]["uniap"]["nodes"] == "superpixels"
    assert any(k.startswith("pixel_decoder.stem.") for k in ckpt["teacher"])
    pred = predictor(picture(0))
    assert pred.records
    iou = np.array([r["predicted_iou"] for r in pred.records])
    stability = np.array([r["stability_score"] for r in pred.records])
    score = np.array([r["score"] for r in pred.records])
    assert np.all((iou >= 0) & (iou <= 1)) and np.all((stability >= 0) & (stability <= 1))
    assert not np.all(stability == 1.0)
    assert not np.allclose(iou, score)  # the learned score, not the ranking score
    instance = np.array([r["stability_score"] for r in pred.records if r["kind"] == "instance" and r["level"] == 0])
    assert len(pred.masks) and instance.size and not np.all(instance == 1.0)  # the masks' own stability
    assert pred.predicted_iou.shape == pred.stability.shape == pred.scores.shape
    assert np.all((pred.predicted_iou > 0) & (pred.predicted_iou < 1))
    assert np.all((pred.stability >= 0) & (pred.stability <= 1)) and not np.all(pred.stability == 1.0)


@pytest.mark.parametrize("nodes", ["superpixels", "fine"])
def test_teacher_levels(predictor, nodes):
    p = copy.copy(predictor)
    p.cfg = replace(p.cfg, uniap=replace(p.cfg.uniap, nodes=nodes))
    img = picture(3, (48, 72))
    maps = p.teacher_levels(img)
    n = len(p.cfg.uniap.levels)
    assert maps.shape == (2 * n, 48, 72) and maps.dtype == np.int32
    clusters, groups = maps[:n], maps[n:]

    def nested(fine: np.ndarray, coarse: np.ndarray) -> bool:
        return np.unique(np.stack([fine.ravel(), coarse.ravel()]), axis=1).shape[1] == len(np.unique(fine))

    for k in range(n):
        assert nested(clusters[k], groups[k])  # a cluster lies in one semantic group
        if k + 1 < n:
            assert nested(clusters[k], clusters[k + 1])  # and in one cluster of the next level
    assert len(np.unique(clusters[0])) > 1


def coco_folder(root):
    """Two 48 x 64 images, each with two rectangles annotated as COCO polygons."""
    from PIL import Image

    (root / "images").mkdir(parents=True)
    rng = np.random.default_rng(7)
    images, annotations = [], []
    for i in range(2):
        img = np.zeros((48, 64, 3), np.uint8)
        img[:] = rng.integers(0, 120, 3)
        for k, (y0, x0, y1, x1) in enumerate([(6, 8, 26, 30), (20, 36, 44, 60)]):
            img[y0:y1, x0:x1] = rng.integers(130, 255, 3)
            annotations.append({"id": 10 * i + k + 1, "image_id": i + 1, "category_id": 1, "iscrowd": 0,
                                "segmentation": [[x0, y0, x1, y0, x1, y1, x0, y1]], "area": (x1 - x0) * (y1 - y0),
                                "bbox": [x0, y0, x1 - x0, y1 - y0]})
        Image.fromarray(img).save(root / "images" / f"c{i}.png")
        images.append({"id": i + 1, "file_name": f"c{i}.png", "height": 48, "width": 64})
    (root / "instances.json").write_text(json.dumps({"images": images, "annotations": annotations,
                                                     "categories": [{"id": 1, "name": "thing"}]}))
    return root


def test_uniap_eval_teacher_segmenter(checkpoint, tmp_path, capsys):
    from uniap.evaluation.cli import main

    data = coco_folder(tmp_path / "coco")
    out = tmp_path / "teacher.json"
    assert main(["--dataset", "coco", "--data", str(data), "--workers", "1", "--segmenter", "teacher",
                 "--checkpoint", str(checkpoint), "--out", str(out)]) == 0
    printed = capsys.readouterr()
    assert "AP" in printed.out + printed.err
    result = json.loads(out.read_text())
    assert result["segmenter"]["name"] == "teacher"
    assert result["segmenter"]["params"]["checkpoint"] == str(checkpoint)
    m = result["metrics"]
    assert m["num_gt"] == 4 and 0 <= m["AP"] <= 1 and m["proposals_per_image"] > 0

    # the trained model itself, with the post-processing flags uniap-eval passes on
    out = tmp_path / "model.json"
    assert main(["--dataset", "coco", "--data", str(data), "--workers", "1", "--segmenter", "checkpoint",
                 "--checkpoint", str(checkpoint), "--nms", "hard", "--nms-threshold", "0.6", "--max-masks", "3",
                 "--ranking", "mask", "--refine", "none", "--out", str(out), "--quiet"]) == 0
    result = json.loads(out.read_text())
    params = result["segmenter"]["params"]
    assert (params["nms"], params["nms_threshold"], params["max_masks"], params["ranking"], params["refine"]) == \
        ("hard", 0.6, 3, "mask", "none")
    assert 0 < result["metrics"]["proposals_per_image"] <= 3


# ------------------------------------------------------------------- evaluation during training


def test_paper_run_with_semantic_evaluation(images, tmp_path):
    """eval.images with the default paper model (a pixel stem): the evaluator gives it the pixels."""
    from PIL import Image

    from uniap_train.trainer import train

    (tmp_path / "labels").mkdir()
    for path in sorted(images.glob("*.png"))[:3]:
        rgb = np.asarray(Image.open(path))
        Image.fromarray((rgb.sum(-1) > 300).astype(np.uint8)).save(tmp_path / "labels" / path.name)
    out = tmp_path / "run"
    summary = train(load_config(None, paper_small(images, out, "optim.max_steps=1", f"eval.images={images}",
                                                  f"eval.labels={tmp_path / 'labels'}", "eval.num_classes=2")))
    assert 0 <= summary["eval"]["model_miou"] <= 1
    assert read_metrics(out / "metrics.csv")


def test_grid_pixels_lie_under_their_cells():
    from uniap_train.backbone import Backbone
    from uniap_train.config import BackboneConfig
    from uniap_train.evaluate import grid_pixels

    backbone = Backbone(BackboneConfig(kind="default"), torch.device("cpu"))
    image = np.random.default_rng(0).integers(0, 255, (37, 61, 3), dtype=np.uint8)
    grid = backbone.image_features(image)
    pixels = grid_pixels(image, grid)
    h, w = grid.features.shape[:2]
    assert pixels.shape == (8 * h, 8 * w, 3) and pixels.dtype == np.uint8
    np.testing.assert_array_equal(pixels[:37, :61], image)
    assert not pixels[37:].any() and not pixels[:, 61:].any()


def test_selftrain_cpu_config_runs_as_shipped(images, tmp_path):
    """examples/configs/selftrain_cpu.yaml as shipped (every model and loss key), on other images:
    two steps train, the checkpoint predicts with learned scores, and the schedules span 1000 steps."""
    from pathlib import Path

    from uniap_train import Predictor
    from uniap_train.trainer import train

    config = Path(__file__).resolve().parents[1] / "examples" / "configs" / "selftrain_cpu.yaml"
    cfg = load_config(config, [f"data.root={images}", f"output_dir={tmp_path / 'run'}", "optim.max_steps=2",
                               "log.progress=false", "log.tensorboard=false", "threads=1", "data.max_side=96",
                               "crops.teacher_size=64", "crops.local_size=32"])
    assert cfg.optim.total_steps == 1000 and cfg.uniap.edge_fractions and cfg.model.num_instance_queries == 300
    assert cfg.loss.score_target == "matched"
    train(cfg)
    rows = read_metrics(tmp_path / "run" / "metrics.csv")
    assert [int(r["step"]) for r in rows][-1] == 2 and all(math.isfinite(float(r["loss"])) for r in rows)
    predictor = Predictor.from_checkpoint(tmp_path / "run" / "checkpoint_last.pt", device="cpu", min_area=1)
    pred = predictor(picture(3, (64, 96)))
    # the parts, then one level per edge fraction (hierarchy="pooled")
    assert len(pred.masks) <= 100 and pred.levels.shape == (1 + len(cfg.uniap.edge_fractions), 64, 96)
    assert np.all((pred.predicted_iou >= 0) & (pred.predicted_iou <= 1))
