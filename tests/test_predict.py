"""Using a trained paper-recipe model: Predictor, uniap-predict, uniap-eval --segmenter checkpoint.

One tiny run on the synthetic images of test_train_run (a few seconds) gives the checkpoint
every test here reads.
"""

from __future__ import annotations

import json
import pickle
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")
pytest.importorskip("yaml")

from test_train_paper import paper_small  # noqa: E402
from test_train_run import REPO, env, images, shared_data, small  # noqa: E402, F401 (images: a fixture)
from uniap_train.config import load_config  # noqa: E402


@pytest.fixture(scope="module")
def checkpoint(images, tmp_path_factory):
    from uniap_train.trainer import train

    out = tmp_path_factory.mktemp("paper_run")
    train(load_config(None, paper_small(images, out, "optim.epochs=6", "backbone.vocabulary=shared")))
    return out / "checkpoint_last.pt"


@pytest.fixture(scope="module")
def predictor(checkpoint):
    from uniap_train import Predictor

    return Predictor.from_checkpoint(checkpoint, device="cpu", min_area=4)


def picture(seed: int, shape=(50, 70)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = np.zeros(shape + (3,), np.uint8)
    img[:] = rng.integers(0, 255, 3)
    img[10:30, 15:45] = rng.integers(0, 255, 3)
    img[:, 50:] = rng.integers(0, 255, 3)
    return img


def test_prediction_columns_and_nesting(predictor):
    from uniap.records import decode_rle

    img = picture(0)
    pred = predictor(img)
    n_sem = predictor.cfg.model.num_semantic_queries
    assert pred.masks.shape[1:] == img.shape[:2] and pred.masks.dtype == bool
    assert pred.scores.shape == (len(pred.masks),) and np.all(np.diff(pred.scores) <= 0)
    assert np.all((pred.scores > 0) & (pred.scores <= 1))
    assert pred.masks.reshape(len(pred.masks), -1).sum(1).min(initial=4) >= 4
    assert pred.semantic.shape == img.shape[:2] and 0 <= pred.semantic.min() <= pred.semantic.max() < n_sem
    # the parts, then UniAP's levels on the superpixels' [SEM] logits (hierarchy="pooled")
    assert pred.levels.shape == (1 + len(predictor.cfg.uniap.levels),) + img.shape[:2]
    assert predictor.level_names() == ["parts"] + [f"t={t:g}" for t in predictor.cfg.uniap.levels]
    assert pred.hierarchy.thresholds == (1.0, *predictor.cfg.uniap.levels)
    # every part lies in one region, every region in the next level's
    for fine, coarse in zip(pred.levels[:-1], pred.levels[1:]):
        pairs = np.unique(np.stack([fine.ravel(), coarse.ravel()]), axis=1)
        assert pairs.shape[1] == fine.max() + 1
    by_id = {r["id"]: r for r in pred.records}
    assert pred.records and {r["kind"] for r in pred.records} == {"instance", "semantic"}
    for rec in pred.records:
        mask = decode_rle(rec["segmentation"])
        assert mask.shape == img.shape[:2] and mask.sum() == rec["area"] >= 4
        # predicted_iou: the query's learned score; stability_score: SAM's, of its mask logits
        assert 0 <= rec["score"] <= 1 and 0 <= rec["predicted_iou"] <= 1 and 0 <= rec["stability_score"] <= 1
        if rec["kind"] == "instance" and rec["parent"] >= 0:
            assert not (mask & ~decode_rle(by_id[rec["parent"]]["segmentation"])).any()


@pytest.mark.parametrize("seed", range(5))
def test_levels_follow_the_semantic_map_even_under_a_large_instance(seed):
    """One instance mask over most of the image must not decide the query of what it covers."""
    from uniap_train.predict import nested_levels

    rng = np.random.default_rng(seed)
    h, w = 30, 40
    semantic = np.zeros((h, w), np.int64)
    semantic[:, 15:] = 1
    semantic[20:, :] = 2 + rng.integers(0, 2)
    semantic[5:9, 30:36] = 3  # an island of query 3 inside query 1
    large = np.ones((h, w), bool)
    large[:2] = False  # 93% of the image
    small = np.zeros((h, w), bool)
    small[10:15, 5:12] = True
    masks = np.stack([large, small])
    scores = np.array([0.9, 0.95])
    prob = np.where(masks, 0.9, 0.1)
    levels, groups, part_scores, source = nested_levels(masks, scores, prob, semantic, np.full((h, w), 0.7))
    # level 2 is the semantic map, level 1 its connected regions
    pairs = np.unique(np.stack([levels[2].ravel(), semantic.ravel()]), axis=1)
    assert pairs.shape[1] == np.unique(semantic).size == levels[2].max() + 1
    from skimage.measure import label
    assert levels[1].max() + 1 == label(semantic + 1, connectivity=1).max()
    for fine, coarse in zip(levels[:-1], levels[1:]):  # nested
        pairs = np.unique(np.stack([fine.ravel(), coarse.ravel()]), axis=1)
        assert pairs.shape[1] == fine.max() + 1
    # every part carries its one query, its source and its score
    np.testing.assert_array_equal(groups[levels[0]], semantic)
    assert set(source[levels[0][large & ~small]]) == {0} and set(source[levels[0][small]]) == {1}
    np.testing.assert_allclose(part_scores[levels[0][small]], 0.95)
    np.testing.assert_allclose(part_scores[levels[0][:2]], 0.7)  # not covered: the semantic confidence


def _connected_and_nested(levels: np.ndarray) -> None:
    from skimage.measure import label

    for lv in levels:  # every region in one piece
        assert label(lv + 1, background=0, connectivity=1).max() == np.unique(lv).size
    for fine, coarse in zip(levels[:-1], levels[1:]):
        assert np.unique(np.stack([fine.ravel(), coarse.ravel()]), axis=1).shape[1] == np.unique(fine).size


def test_pooled_levels_are_regions_of_the_superpixels_merged_on_sem_logits(predictor, monkeypatch):
    """``hierarchy="pooled"``: above the parts, UniAP on the superpixels' mean [SEM] logits; each
    level a union of superpixels, connected, nested; ``hierarchy="semantic"`` keeps the three
    semantic-led levels."""
    import copy

    import uniap_train.predict as predict_module
    from uniap.superpixels import superpixels

    img = picture(5, (60, 80))
    seen = {}
    real = predict_module.pooled_levels

    def spy(region_logits, regions, edges, **kw):
        seen.update(logits=region_logits, regions=regions, edges=edges, **kw)
        return real(region_logits, regions, edges, **kw)

    monkeypatch.setattr(predict_module, "pooled_levels", spy)
    pred = predictor(img)
    n_sem = predictor.cfg.model.num_semantic_queries
    regions = superpixels(img)
    np.testing.assert_array_equal(seen["regions"], regions)
    assert seen["logits"].shape == (regions.max() + 1, n_sem)
    assert seen["thresholds"] == predictor.cfg.uniap.levels and seen["edge_fractions"] is None
    assert seen["preset"] == predictor.cfg.uniap.preset  # the run's UniAP rule
    spatial, _ = real(seen["logits"], regions, seen["edges"], thresholds=predictor.cfg.uniap.levels)
    for k, level in enumerate(spatial):  # the same partitions as UniAP's, renumbered
        pairs = np.unique(np.stack([level.ravel(), pred.levels[k + 1].ravel()]), axis=1)
        assert pairs.shape[1] == np.unique(level).size == np.unique(pred.levels[k + 1]).size
        # each region is a union of superpixels
        assert np.unique(np.stack([regions.ravel(), level.ravel()]), axis=1).shape[1] == regions.max() + 1
    _connected_and_nested(pred.levels)
    semantic_led = copy.copy(predictor)
    semantic_led.hierarchy = "semantic"
    old = semantic_led(img)
    assert old.levels.shape == (3, 60, 80) and semantic_led.level_names() == ["parts", "regions", "semantic"]
    pairs = np.unique(np.stack([old.levels[2].ravel(), old.semantic.ravel()]), axis=1)  # the semantic map itself
    assert pairs.shape[1] == np.unique(old.semantic).size == old.levels[2].max() + 1
    _connected_and_nested(old.levels[:2])
    with pytest.raises(ValueError, match="hierarchy must be one of"):
        type(predictor)(predictor.model, predictor.cfg, predictor.extractor, predictor.device, hierarchy="groups")


def test_flip_pools_the_mirrored_views_sem_logits_beside_the_images(predictor, monkeypatch):
    """``flip=True``: each superpixel holds its mean [SEM] logits of the image, then those of the
    mirrored image's view mirrored back onto the image's pixels; the instance masks are the
    image's alone."""
    import copy

    import uniap_train.predict as predict_module
    from uniap.superpixels import superpixels
    from uniap_train.postprocess import region_means

    img = picture(7, (60, 80))
    img[:, :25] = (250, 20, 20)  # left and right differ: a missing flip back would show
    seen = []
    real = predict_module.pooled_levels

    def spy(region_logits, regions, edges, **kw):
        seen.append(region_logits)
        return real(region_logits, regions, edges, **kw)

    monkeypatch.setattr(predict_module, "pooled_levels", spy)
    plain = predictor(img)
    mirrored_predictor = copy.copy(predictor)
    mirrored_predictor.flip = True
    both = mirrored_predictor(img)
    n_sem = predictor.cfg.model.num_semantic_queries
    assert seen[0].shape[1] == n_sem and seen[1].shape == (seen[0].shape[0], 2 * n_sem)
    np.testing.assert_allclose(seen[1][:, :n_sem], seen[0], rtol=1e-6, atol=1e-6)
    mirror = np.ascontiguousarray(img[:, ::-1])
    with torch.no_grad():
        grids, shapes, pixels = predictor._grids([mirror], *predictor._view())
        logits = predictor.model(grids, pixels)["masks"][0, :n_sem]
        back = predict_module.decode_masks(logits, img.shape[:2], shapes[0]).flip(-1)
        expected = region_means(back, torch.from_numpy(superpixels(img).astype(np.int64))).T.numpy()
    np.testing.assert_allclose(seen[1][:, n_sem:], expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(both.masks, plain.masks)
    _connected_and_nested(both.levels)
    assert mirrored_predictor.options()["flip"] is True and predictor.options()["flip"] is False
    with pytest.raises(ValueError, match="flip mirrors the pooled levels"):
        type(predictor)(predictor.model, predictor.cfg, predictor.extractor, predictor.device, flip=True,
                        hierarchy="semantic")


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), blocks=st.integers(2, 6), queries=st.integers(2, 6),
       fractions=st.lists(st.floats(0.05, 0.95), min_size=1, max_size=4, unique=True),
       preset=st.sampled_from(["released", "paper"]))
def test_pooled_levels_nest_and_stay_connected(seed, blocks, queries, fractions, preset):
    """On random region graphs and logits, under either rule: nested, connected levels, each a
    union of regions."""
    from uniap.superpixels import adjacency
    from uniap_train.predict import pooled_levels

    rng = np.random.default_rng(seed)
    side = 4 * blocks
    regions = (np.arange(side)[:, None] // 4) * blocks + np.arange(side)[None] // 4  # a grid of 4x4 blocks
    regions = rng.permutation(blocks * blocks)[regions]
    logits = rng.normal(size=(blocks * blocks, queries)) * rng.uniform(0.1, 5)
    levels, thresholds = pooled_levels(logits, regions, adjacency(regions), edge_fractions=sorted(fractions),
                                       preset=preset)
    assert levels.shape == (len(fractions), side, side) and levels.dtype == np.int32
    assert all(a > b for a, b in zip(thresholds, thresholds[1:]))
    _connected_and_nested(levels)
    for level in levels:
        assert np.unique(np.stack([regions.ravel(), level.ravel()]), axis=1).shape[1] == blocks * blocks


def test_pooled_levels_never_join_alike_regions_that_do_not_touch():
    """Two regions of the same [SEM] query split by another stay two (the semantic map's own
    groups would join them across the image)."""
    from uniap.superpixels import adjacency
    from uniap_train.predict import pooled_levels

    regions = np.repeat(np.arange(5)[None], 4, 0).repeat(3, 1)  # five vertical bands
    logits = np.array([[5.0, 0.0], [4.8, 0.1], [0.0, 5.0], [5.0, 0.2], [4.9, 0.0]])  # A A B A A
    levels, _ = pooled_levels(logits, regions, adjacency(regions), thresholds=(0.9,))
    np.testing.assert_array_equal(np.unique(levels[0][0], return_index=True)[1], [0, 6, 9])  # AA | B | AA


def test_batch_equals_one_by_one(predictor):
    a, b = picture(1), picture(2, (64, 40))
    together = predictor.predict([a, b])
    for image, pred in zip((a, b), together):
        alone = predictor(image)
        np.testing.assert_array_equal(alone.levels, pred.levels)
        np.testing.assert_array_equal(alone.masks, pred.masks)
        np.testing.assert_allclose(alone.scores, pred.scores, rtol=1e-5)
        assert [r["segmentation"] for r in alone.records] == [r["segmentation"] for r in pred.records]


def test_large_images_are_worked_on_a_bounded_grid_and_mapped_back(predictor):
    """Above ``mask_pixels`` the masks, superpixels and levels are computed on a downscaled copy
    (memory bounded by it, not by the image) and mapped back to every pixel of the image."""
    import copy

    from uniap.hierarchy import nearest_index
    from uniap.records import decode_rle

    img = picture(3, (90, 120))
    bounded = copy.copy(predictor)
    bounded.mask_pixels = 45 * 60  # a quarter of the pixels
    pred = bounded(img)
    assert pred.levels.shape == (len(predictor.level_names()), 90, 120) and pred.masks.shape[1:] == (90, 120)
    assert pred.semantic.shape == (90, 120)
    # the levels are the working grid's, each working pixel a 2 x 2 block of the image
    ys, xs = nearest_index(90, 45), nearest_index(120, 60)
    np.testing.assert_array_equal(pred.levels, pred.levels[:, ::2, ::2][:, ys][:, :, xs])
    for fine, coarse in zip(pred.levels[:-1], pred.levels[1:]):  # still nested
        assert np.unique(np.stack([fine.ravel(), coarse.ravel()]), axis=1).shape[1] == fine.max() + 1
    for rec in pred.records:  # records describe the image's pixels
        mask = decode_rle(rec["segmentation"])
        assert mask.shape == (90, 120) and mask.sum() == rec["area"]
    assert bounded.options()["mask_pixels"] == 45 * 60 != predictor.options()["mask_pixels"]
    with pytest.raises(ValueError, match="mask_pixels"):
        type(predictor)(predictor.model, predictor.cfg, predictor.extractor, predictor.device, mask_pixels=0)


def test_masks_decoded_a_few_at_a_time_give_the_same_prediction(predictor, monkeypatch):
    """The panoptic owner is found chunk by chunk (no (K, H, W) floats held): the same as at once."""
    import uniap_train.predict as predict

    img = picture(4, (60, 80))
    at_once = predictor(img)
    monkeypatch.setattr(predict, "DECODE_PIXELS", 60 * 80)  # one mask a chunk
    one_by_one = predictor(img)
    np.testing.assert_array_equal(at_once.levels, one_by_one.levels)
    np.testing.assert_array_equal(at_once.masks, one_by_one.masks)
    assert [r["segmentation"] for r in at_once.records] == [r["segmentation"] for r in one_by_one.records]


def test_checkpoint_records_config_version_and_words(checkpoint):
    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True)
    assert ckpt["recipe"] == "paper" and ckpt["config"]["recipe"] == "paper"
    assert ckpt["version"] and ckpt["in_dim"] == 34
    assert ckpt["vocabulary"]["color"].ndim == 2  # the shared words travel with the weights


def test_bad_checkpoints_are_one_line_errors(checkpoint, images, tmp_path):
    from uniap_train import Predictor
    from uniap_train.checkpoint import CheckpointError
    from uniap_train.trainer import train

    released = tmp_path / "released"
    train(load_config(None, small(images, released, "optim.max_steps=1")))
    with pytest.raises(CheckpointError, match="recipe 'released'; the predictor needs recipe 'paper'"):
        Predictor.from_checkpoint(released / "checkpoint_last.pt")
    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True)
    ckpt["config"]["model"]["dim"] = 48
    changed = tmp_path / "changed.pt"
    torch.save(ckpt, changed)
    with pytest.raises(CheckpointError, match="do not fit the model its configuration describes .*size mismatch"):
        Predictor.from_checkpoint(changed)
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        Predictor.from_checkpoint(empty)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(checkpoint.read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        Predictor.from_checkpoint(truncated)
    evil = tmp_path / "evil.pt"
    with open(evil, "wb") as f:
        pickle.dump({"step": 1, "payload": _Evil()}, f)
    with pytest.raises(CheckpointError, match="refused|not a readable checkpoint"):
        Predictor.from_checkpoint(evil)
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        Predictor.from_checkpoint(tmp_path / "missing.pt")
    for err in ("empty", "truncated", "evil"):
        try:
            Predictor.from_checkpoint(tmp_path / f"{err}.pt")
        except CheckpointError as e:
            assert "\n" not in str(e)


class _Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_uniap_predict_writes_records_like_uniap_cli(checkpoint, tmp_path, capsys):
    from PIL import Image

    from uniap.records import decode_rle
    from uniap_train.predict import main

    folder = tmp_path / "in" / "sub"
    folder.mkdir(parents=True)
    for i in range(3):
        Image.fromarray(picture(10 + i)).save(folder / f"p{i}.png")
    out = tmp_path / "out"
    assert main([str(checkpoint), str(tmp_path / "in"), "--out", str(out), "--viz", str(tmp_path / "viz"),
                 "--batch-size", "2", "--quiet", "--min-area", "4"]) == 0
    docs = sorted((out / "sub").glob("*.json"))
    assert [d.name for d in docs] == ["p0.json", "p1.json", "p2.json"]
    doc = json.loads(docs[0].read_text())
    levels = load_config(checkpoint.parent / "config.yaml").uniap.levels  # the parts, then UniAP's levels
    assert doc["image"]["file_name"] == "sub/p0.png" and doc["uniap"]["thresholds"] == [1.0, *levels]
    assert doc["uniap"]["options"]["hierarchy"] == "pooled"
    assert doc["uniap"]["features"].startswith("uniap_train:paper:checkpoint_last.pt@")
    for rec in doc["annotations"]:
        assert decode_rle(rec["segmentation"]).sum() == rec["area"]
    assert len(list((tmp_path / "viz" / "sub").glob("*.png"))) == 3
    # a rerun with the same settings skips; other settings are refused without --overwrite
    assert main([str(checkpoint), str(tmp_path / "in"), "--out", str(out), "--min-area", "4"]) == 0
    assert "3 skipped" in capsys.readouterr().err
    assert main([str(checkpoint), str(tmp_path / "in"), "--out", str(out), "--quiet", "--min-area", "9"]) == 2
    assert "overwrite" in capsys.readouterr().err
    coco = tmp_path / "coco.json"
    assert main([str(checkpoint), str(tmp_path / "in"), "--out", str(coco), "--format", "coco", "--quiet"]) == 0
    data = json.loads(coco.read_text())
    assert len(data["images"]) == 3 and data["annotations"]
    png = tmp_path / "png"
    assert main([str(checkpoint), str(tmp_path / "in"), "--out", str(png), "--format", "png", "--quiet"]) == 0
    from PIL import Image as PILImage

    maps = sorted((png / "sub" / "p0").glob("*.png"))
    assert maps and np.asarray(PILImage.open(maps[0])).shape == picture(10).shape[:2]
    pytest.importorskip("pyarrow")
    from uniap.io import read_records

    parquet = tmp_path / "parquet"
    assert main([str(checkpoint), str(tmp_path / "in"), "--out", str(parquet), "--format", "parquet", "--quiet",
                 "--min-area", "4"]) == 0
    from_parquet = read_records(str(parquet))
    assert sorted(from_parquet) == ["sub/p0.png", "sub/p1.png", "sub/p2.png"]
    assert from_parquet["sub/p0.png"][1] == doc["annotations"]  # the same records in every format


def test_uniap_predict_usage_errors(checkpoint, tmp_path, capsys):
    from uniap_train.predict import main

    assert main([str(tmp_path / "nope.pt"), str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
    assert main([str(checkpoint), str(tmp_path / "missing.png"), "--out", str(tmp_path / "o")]) == 2
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:  # argparse's usage error, as uniap-cli's
        main([str(checkpoint), str(tmp_path), "--out", str(tmp_path / "o"), "--shard", "3/2"])
    assert exit_info.value.code == 2 and "--shard i/n needs 0 <= i < n" in capsys.readouterr().err


@pytest.mark.parametrize("variables, written", [
    ({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}, ["p1.json", "p3.json"]),
    ({"SLURM_ARRAY_TASK_ID": "0", "SLURM_ARRAY_TASK_COUNT": "3"}, ["p0.json", "p3.json"]),
    ({}, ["p0.json", "p1.json", "p2.json", "p3.json"]),
])
def test_uniap_predict_shard_auto(checkpoint, tmp_path, monkeypatch, variables, written):
    """--shard auto as uniap-cli reads it: the scheduler's variables pick this process's images."""
    from PIL import Image

    from uniap_train.predict import main

    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT",
                 "SLURM_ARRAY_TASK_MIN", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID"):
        monkeypatch.delenv(name, raising=False)
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    (tmp_path / "in").mkdir()
    for i in range(4):
        Image.fromarray(picture(20 + i)).save(tmp_path / "in" / f"p{i}.png")
    out = tmp_path / "out"
    assert main([str(checkpoint), str(tmp_path / "in"), "--out", str(out), "--shard", "auto", "--quiet",
                 "--device", "cpu"]) == 0
    assert sorted(p.name for p in out.glob("*.json")) == written


def test_uniap_predict_shard_auto_with_a_bad_variable(checkpoint, tmp_path, monkeypatch, capsys):
    from uniap_train.predict import main

    monkeypatch.setenv("RANK", "x")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main([str(checkpoint), str(tmp_path), "--out", str(tmp_path / "o"), "--shard", "auto"]) == 2
    assert "RANK" in capsys.readouterr().err


def test_segmenter_plugin_is_registered_and_lazy():
    """uniap-eval lists the entry point without importing uniap_train."""
    code = ("import sys; from uniap.evaluation.cli import build_parser; build_parser(); "
            "from uniap.evaluation.segmenters import segmenter_names; "
            "print('checkpoint' in segmenter_names(), 'uniap_train' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env(), capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["True", "False"]


def test_uniap_eval_checkpoint_segmenter(checkpoint, tmp_path, capsys):
    from uniap.evaluation.cli import main

    data = shared_data()
    out = tmp_path / "coco.json"
    argv = ["--dataset", "coco", "--data", str(data / "coco"), "--limit", "2", "--workers", "1",
            "--segmenter", "checkpoint", "--checkpoint", str(checkpoint), "--out", str(out), "--quiet"]
    assert main(argv) == 0
    result = json.loads(out.read_text())
    assert result["segmenter"]["name"] == "checkpoint"
    from uniap.evaluation.segmenters import build_segmenter

    again = build_segmenter("checkpoint", **result["segmenter"]["params"])  # the result says how to rebuild it
    assert again.params() == result["segmenter"]["params"] and again.score == "record"
    m = result["metrics"]
    assert m["num_gt"] > 0 and 0 <= m["AP"] <= 1 and 0 <= m["AR@100"] <= 1 and m["proposals_per_image"] > 0
    assert main(argv[:-5] + ["--segmenter", "checkpoint", "--out", str(tmp_path / "b.json")]) == 2
    assert "needs --checkpoint" in capsys.readouterr().err
    # --hierarchy reaches the predictor: the semantic-led levels are three, named so
    semantic = tmp_path / "semantic.json"
    assert main(argv[:-3] + ["--hierarchy", "semantic", "--out", str(semantic), "--quiet"]) == 0
    params = json.loads(semantic.read_text())["segmenter"]["params"]
    rebuilt = build_segmenter("checkpoint", **params)
    assert params["hierarchy"] == "semantic" and rebuilt.level_names() == ["parts", "regions", "semantic"]
    assert again.level_names()[0] == "parts" and len(again.level_names()) == 1 + len(again.predictor.cfg.uniap.levels)
    assert main(["--dataset", "coco", "--data", str(data / "coco"), "--checkpoint", str(checkpoint),
                 "--out", str(tmp_path / "c.json")]) == 2
    assert "--checkpoint does not apply to --segmenter uniap" in capsys.readouterr().err
