"""The paper recipe (recipe: paper): pieces, a short run that learns, exact resume, DDP, the example.

Runs here take a few seconds: the synthetic images of test_train_run (so they run anywhere)
and the real BSDS500 images of ../shared/data for the example configuration (skipped when
absent).
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("yaml")

from test_train_run import REPO, env, images, load, read_metrics, shared_data  # noqa: E402, F401 (images: a fixture)
from uniap_train.config import load_config, save_config  # noqa: E402

PAPER_TINY = REPO / "examples" / "configs" / "paper_tiny_cpu.yaml"


def paper_small(images, out, *extra: str) -> list[str]:
    """Overrides for a tiny paper-recipe run on the 8 synthetic images (2 steps per epoch)."""
    return [
        "recipe=paper", f"data.root={images}", "data.batch_size=4", "data.max_side=96",
        "crops.teacher_size=64", "crops.local_size=32", "crops.num_local=2",
        "uniap.levels=[0.95, 0.9, 0.85, 0.8]", "uniap.min_size=4",
        "model.dim=32", "model.decoder_layers=2", "model.num_heads=2", "model.ffn_dim=64",
        "model.num_semantic_queries=4", "model.num_instance_queries=8",
        "model.hidden_dim=64", "model.bottleneck_dim=32", "model.out_dim=32",
        "loss.teacher_temp=0.04", "loss.warmup_teacher_temp=0.04", "loss.warmup_teacher_temp_steps=0",
        "loss.centering=sinkhorn", "loss.num_points=32", "optim.momentum_teacher=0.99",
        "optim.epochs=4", "optim.lr=0.2", "optim.warmup_steps=2", "optim.freeze_last_layer_steps=2",
        "log.every_steps=1", "log.progress=false", "log.tensorboard=false",
        "checkpoint.every_steps=100", "device=cpu", "threads=1", f"output_dir={out}", *extra,
    ]


def column(rows: list[dict], key: str) -> np.ndarray:
    return np.array([float(r[key]) for r in rows])


def assert_new_architecture(ckpt: dict) -> None:
    """The run used the default self-training model and teacher: a pixel stem and an FPN, deep
    supervision, a score head, superpixel teacher nodes and the student's whole view."""
    cfg = ckpt["config"]
    assert (cfg["model"]["pixel_decoder"], cfg["model"]["deep_supervision"], cfg["uniap"]["nodes"]) == \
        ("fpn", True, "superpixels")
    assert cfg["model"]["pixel_stem"] > 0 and cfg["crops"]["student_whole"]
    keys = ckpt["student"].keys()
    assert any(k.startswith("pixel_decoder.stem.") for k in keys)
    assert any(k.startswith("pixel_decoder.fpn.") for k in keys)
    assert "score_head.weight" in keys


# ------------------------------------------------------------------------------- pieces


def test_neck_starts_as_the_upsampled_features():
    """The adapter's last convolution is zero: the teacher's UniAP sees the pretrained features."""
    from uniap_train.decoder import PaperModel

    cfg = load_config(None, ["data.root=x", "recipe=paper", "model.dim=16", "model.num_heads=2"])
    model = PaperModel(6, cfg.model)
    assert model.needs_pixels  # the default model has a pixel stem: it reads the views' pixels too
    x = torch.randn(2, 5, 7, 6)
    pixels = torch.randint(0, 256, (2, 40, 56, 3), dtype=torch.uint8)  # 8-pixel patches
    fine, mask_features = model.teacher_maps(x, pixels)
    up = torch.nn.functional.interpolate(x.permute(0, 3, 1, 2), scale_factor=2.0, mode="bilinear",
                                         align_corners=False).permute(0, 2, 3, 1)
    assert fine.shape == (2, 10, 14, 6) and mask_features.shape == (2, 16, 10, 14)
    torch.testing.assert_close(fine, up)
    out = model(x, pixels)
    q = cfg.model.num_semantic_queries + cfg.model.num_instance_queries
    assert out["masks"].shape == (2, q, 10, 14) and out["scores"].shape == (2, q)
    assert out["logits"].shape == (2, q, cfg.model.out_dim) and out["queries"].shape == (2, q, 16)
    # [SEM] and [INS] queries differ by their type embedding only at the start
    dec = model.decoder
    assert dec.query_type.tolist() == [0] * dec.num_semantic + [1] * dec.num_instance


def test_attention_mask_blocks_outside_the_previous_mask():
    from uniap_train.decoder import MaskDecoder

    dec = MaskDecoder(8, 1, 2, 16, 1, 1)
    masks = torch.full((1, 2, 4, 4), -5.0)
    masks[0, 0, :2] = 5.0  # query 0: the top half; query 1: nowhere -> attends everywhere
    blocked = dec._attn_mask(masks, (4, 4), heads=2)
    assert blocked.shape == (2, 2, 16)
    assert blocked[0, 0].tolist() == [False] * 8 + [True] * 8
    assert not blocked[0, 1].any() and torch.equal(blocked[0], blocked[1])


def test_paper_embedder_for_semantic_evaluation():
    """eval.images with recipe paper: per pixel, the [SEM] queries' vectors weighted by their masks."""
    from uniap_train.recipes import get_recipe

    cfg = load_config(None, ["data.root=x", "recipe=paper", "model.dim=16", "model.num_heads=2",
                             "model.out_dim=8", "model.hidden_dim=16", "model.bottleneck_dim=4"])
    recipe = get_recipe("paper")(cfg, 6)
    teacher = recipe.build_student().eval()
    feats = torch.randn(5, 7, 6)
    pixels = torch.randint(0, 256, (40, 56, 3), dtype=torch.uint8)  # the default model has a pixel stem
    logits = recipe.embedder(teacher, "logits")(feats, torch.zeros(0, 6), pixels)
    bottleneck = recipe.embedder(teacher, "bottleneck")(feats, torch.zeros(0, 6), pixels)
    assert logits.shape == (5, 7, 8) and bottleneck.shape == (5, 7, 4)
    assert torch.all(torch.isfinite(logits)) and not torch.allclose(logits[0, 0], logits[4, 6])


def test_hungarian_on_dice_recovers_a_permutation():
    from uniap_train.matching import dice_cost, hungarian

    target = torch.zeros(3, 16)
    target[0, :4], target[1, 4:10], target[2, 10:] = 1, 1, 1
    student = target[[2, 0, 1]] * 0.9 + 0.05  # soft versions, permuted
    student = torch.cat([student, torch.full((1, 16), 0.5)])  # one query more than masks
    dice = dice_cost(student, target)
    rows, cols = hungarian(dice)
    assert dict(zip(rows.tolist(), cols.tolist())) == {0: 2, 1: 0, 2: 1}
    assert dice[0, 2] > 0.9 and dice[3].max() < 0.7
    assert [a.size for a in hungarian(dice[:, :0])] == [0, 0]


def test_cropped_teacher_masks_follow_the_crop():
    """A mask on the teacher's padded grid, resampled on a flipped local crop of the image."""
    from uniap_train.crops import Crop
    from uniap_train.data import teacher_cells, teacher_crop
    from uniap_train.matching import crop_masks, view_points

    teacher = teacher_crop(60, 100, 80)  # the 100-px side is the teacher's 80 px; the rest padding
    assert teacher.box == (0.0, 0.0, 100.0, 100.0)
    assert teacher_cells(60, 100, 10) == (6, 10)
    grid = torch.zeros(1, 20, 20)
    grid[0, :, :10] = 1  # the left half of the image (x < 50)
    view = Crop((25.0, 0.0, 75.0, 50.0), True, 32)  # x in [25, 75), flipped: left half shown right
    points = torch.from_numpy(view_points(view, teacher, 4, 4))[None]
    cropped = crop_masks(grid, points)[0, 0]
    assert cropped.shape == (4, 4)
    assert torch.all(cropped[:, 2:] == 1) and torch.all(cropped[:, :2] == 0)


def test_teacher_masks_of_a_hierarchy():
    import uniap
    from uniap_train.recipes.paper import INSTANCE, SEMANTIC, teacher_masks

    f = np.zeros((4, 6, 2), np.float32)
    f[:, :2, 0] = 1  # left and right strips alike (one semantic group), the middle different
    f[:, 2:4, 1] = 1
    f[:, 4:, 0] = 1
    h = uniap.segment(f, levels=(0.5,), min_size=2, semantic=True)
    (t,) = teacher_masks([h], (5, 8), min_size=2)
    assert t.masks.shape == (5, 5, 8)  # 2 semantic groups, 3 instance clusters, on the padded grid
    assert t.kinds.tolist() == [SEMANTIC] * 2 + [INSTANCE] * 3
    assert t.masks[:, 4:].sum() == 0 and t.masks[:, :, 6:].sum() == 0
    assert sorted(t.masks[t.kinds == SEMANTIC].sum((1, 2)).tolist()) == [8.0, 16.0]


@pytest.mark.parametrize("name", ["paper_tiny_cpu.yaml", "paper_vitb8.yaml"])
def test_paper_example_configs_load(name, monkeypatch):
    monkeypatch.setenv("UNIAP_TRAIN_IMAGES", "/data/images")
    cfg = load_config(REPO / "examples" / "configs" / name)
    assert cfg.recipe == "paper"
    if name == "paper_vitb8.yaml":  # the paper's schedule: peak lr 6.25e-4 at batch 16, 160k steps
        assert cfg.optim.lr * cfg.data.batch_size / 256 == pytest.approx(6.25e-4)
        assert (cfg.optim.total_steps, cfg.optim.warmup_steps) == (160000, 10000)
        assert (cfg.model.num_semantic_queries, cfg.model.num_instance_queries, cfg.model.out_dim) == (50, 150, 512)
        assert cfg.model.decoder_layers == 6 and cfg.crops.num_local == 2 and cfg.backbone.model.startswith("vit_base_patch8")


def test_schedules_in_steps():
    from uniap_train.trainer import Schedules

    cfg = load_config(None, ["data.root=x", "optim.total_steps=50", "optim.warmup_steps=10", "optim.lr=0.256",
                             "data.batch_size=8"])
    s = Schedules.build(cfg, steps_per_epoch=4)
    assert s.total_steps == 50 and s.lr.argmax() == 10
    assert s.lr.max() == pytest.approx(0.256 * 8 / 256)


def test_paper_config_rules():
    from uniap_train.config import ConfigError

    with pytest.raises(ConfigError, match="crops.num_local: must be >= 1 for recipe paper"):
        load_config(None, ["data.root=x", "recipe=paper", "crops.num_local=0"])
    with pytest.raises(ConfigError, match=r"model.dim: must be divisible by model.num_heads \(3\)"):
        load_config(None, ["data.root=x", "recipe=paper", "model.num_heads=3"])
    with pytest.raises(ConfigError, match="backbone.trainable: true needs recipe paper and backbone.kind vit"):
        load_config(None, ["data.root=x", "recipe=paper", "backbone.trainable=true"])
    with pytest.raises(ConfigError, match="backbone.trainable: true needs recipe paper"):
        load_config(None, ["data.root=x", "backbone.kind=vit", "backbone.trainable=true"])
    with pytest.raises(ConfigError, match="eval.images: is not supported with backbone.trainable"):
        load_config(None, ["data.root=x", "recipe=paper", "backbone.kind=vit", "backbone.trainable=true",
                           "eval.images=x", "eval.labels=y", "eval.num_classes=2"])


# --------------------------------------------------------------------------------- runs


def test_paper_run_learns(images, tmp_path):
    """30 steps: the loss falls and the matched Dice rises, third by third."""
    from uniap_train.trainer import train

    out = tmp_path / "run"
    summary = train(load_config(None, paper_small(images, out, "optim.epochs=15")))
    rows = read_metrics(out / "metrics.csv")
    assert summary["step"] == len(rows) == 30
    loss, dice = column(rows, "loss"), column(rows, "match_dice")
    assert np.all(np.isfinite(loss))
    lt = [p.mean() for p in np.array_split(loss, 3)]
    dt = [p.mean() for p in np.array_split(dice, 3)]
    assert lt[0] > lt[1] > lt[2], lt
    assert dt[0] + 0.05 < min(dt[1], dt[2]), dt  # rises, then levels off in so few steps
    assert column(rows, "queries_matched").min() >= 1 and column(rows, "teacher_masks").min() >= 4
    for key in ("loss_querysd", "loss_dice", "loss_bce", "match_dice_binary", "teacher_entropy"):
        assert np.all(np.isfinite(column(rows, key))), key
    ckpt = load(out / "checkpoint_last.pt")
    assert ckpt["recipe"] == "paper" and ckpt["config"]["recipe"] == "paper"
    assert ckpt["in_dim"] == 34 and ckpt["version"]


def test_paper_resume_is_bit_identical(images, tmp_path):
    from uniap_train.trainer import train

    full = tmp_path / "full"
    train(load_config(None, paper_small(images, full, "checkpoint.keep_every=3")))
    mid = full / "checkpoint_0000003.pt"
    part = tmp_path / "resumed"
    train(load_config(None, paper_small(images, part, f"resume={mid}")))
    a, b = load(full / "checkpoint_last.pt"), load(part / "checkpoint_last.pt")
    assert a["step"] == b["step"] == 8
    assert_new_architecture(a)
    for key in ("student", "teacher", "loss"):
        assert a[key].keys() == b[key].keys()
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), (key, name)
    rows_a, rows_b = read_metrics(full / "metrics.csv"), read_metrics(part / "metrics.csv")
    assert [int(r["step"]) for r in rows_b] == [4, 5, 6, 7, 8]
    for key in ("match_dice", "loss_score", "match_dice_whole", "score_iou_error"):
        assert [r[key] for r in rows_b] == [r[key] for r in rows_a[3:]], key


def test_paper_ddp_two_processes_match_one(images, tmp_path):
    """torchrun with 2 gloo processes (batch 2 each) == 1 process with batch 4."""
    from uniap_train.trainer import train

    one = tmp_path / "one"
    train(load_config(None, paper_small(images, one, "optim.epochs=2")))
    two = tmp_path / "two"
    config = tmp_path / "ddp.yaml"
    save_config(load_config(None, paper_small(images, two, "optim.epochs=2")), config)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "uniap_train", str(config)]
    proc = subprocess.run(cmd, cwd=REPO, env=env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = load(one / "checkpoint_last.pt"), load(two / "checkpoint_last.pt")
    assert b["world_size"] == 2 and a["step"] == b["step"] == 4
    assert_new_architecture(a)
    for name, ta in a["teacher"].items():
        # The key part of an attention's input bias has an exact gradient of 0 (softmax ignores
        # it): it moves by rounding noise only, which AdamW normalises; hence atol 1e-5 (its
        # values are about 2e-5), where every other parameter agrees to 1e-6.
        atol = 1e-5 if name.endswith("in_proj_bias") else 1e-6
        torch.testing.assert_close(b["teacher"][name], ta, rtol=1e-4, atol=atol, msg=name)
    torch.testing.assert_close(b["loss"]["center"], a["loss"]["center"], rtol=1e-4, atol=1e-6)
    ra, rb = read_metrics(one / "metrics.csv"), read_metrics(two / "metrics.csv")
    for key in ("loss", "loss_querysd", "loss_dice", "loss_bce", "loss_score", "match_dice", "match_dice_whole",
                "score_iou_error", "queries_matched", "teacher_masks", "teacher_masks_in_view"):
        np.testing.assert_allclose(column(rb, key), column(ra, key), rtol=1e-4, err_msg=key)


def test_paper_mixed_precision_path(images, tmp_path, monkeypatch):
    """optim.amp's float16 autocast and gradient scaler on the CPU (the CUDA code path)."""
    from uniap_train import trainer

    monkeypatch.setattr(trainer, "AMP_DEVICE_TYPES", ("cuda", "cpu"))
    out = tmp_path / "amp"
    trainer.train(load_config(None, paper_small(images, out, "optim.max_steps=4")))
    rows = read_metrics(out / "metrics.csv")
    assert len(rows) == 4 and np.all(np.isfinite(column(rows, "loss")))
    ckpt = load(out / "checkpoint_last.pt")
    assert ckpt["scaler"]["scale"] > 0
    assert all(v.dtype == torch.float32 for v in ckpt["student"].values() if v.is_floating_point())


def test_paper_tiny_example_cli(tmp_path):
    """`uniap-train examples/configs/paper_tiny_cpu.yaml`, a third of its steps."""
    data = shared_data()
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "uniap_train", str(PAPER_TINY), "--set", f"output_dir={out}",
           "--set", "optim.max_steps=20", "--set", "log.progress=false",
           "--set", f"data.root={data / 'bsds500' / 'images' / 'val'}"]
    proc = subprocess.run(cmd, cwd=REPO, env=env(), capture_output=True, text=True, timeout=170)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = read_metrics(out / "metrics.csv")
    assert len(rows) == 20
    assert np.all(np.isfinite(column(rows, "loss")))
    assert column(rows, "match_dice")[-5:].mean() > column(rows, "match_dice")[:5].mean()
    assert load_config(out / "config.yaml").recipe == "paper"


# ------------------------------------------------------------------- a trainable backbone


def test_trainable_vit_backbone(images, tmp_path):
    """backbone.trainable: the student fine-tunes a (tiny, random) ViT at backbone.lr_scale of the
    learning rate, the teacher follows by EMA, resume is exact, and the predictor needs no
    weights file (the fine-tuned ViT is in the checkpoint)."""
    from test_train_run import tiny_vit

    from uniap_train import Predictor
    from uniap_train.trainer import train

    vit = tiny_vit(tmp_path)
    weights = torch.load(tmp_path / "tiny_vit.pth", weights_only=True)
    full = tmp_path / "full"
    train(load_config(None, paper_small(images, full, *vit, "backbone.trainable=true", "optim.max_steps=4",
                                        "checkpoint.keep_every=2", "optim.warmup_steps=0")))
    a = load(full / "checkpoint_last.pt")
    moved = [n for n, w in weights.items() if not torch.equal(a["student"][f"backbone.net.{n}"], w)]
    assert "blocks.0.attn.qkv.weight" in moved and "patch_embed.proj.weight" in moved
    assert not torch.equal(a["teacher"]["backbone.net.patch_embed.proj.weight"], weights["patch_embed.proj.weight"])
    groups = a["optimizer"]["param_groups"]
    assert [g.get("lr_scale", 1.0) for g in groups] == [1.0, 1.0, 0.1, 0.1]
    assert groups[2]["lr"] == pytest.approx(0.1 * groups[0]["lr"])

    part = tmp_path / "resumed"
    train(load_config(None, paper_small(images, part, *vit, "backbone.trainable=true", "optim.max_steps=4",
                                        "optim.warmup_steps=0", f"resume={full / 'checkpoint_0000002.pt'}")))
    b = load(part / "checkpoint_last.pt")
    for name in a["teacher"]:
        assert torch.equal(a["teacher"][name], b["teacher"][name]), name

    (tmp_path / "tiny_vit.pth").unlink()
    predictor = Predictor.from_checkpoint(full / "checkpoint_last.pt", device="cpu", min_area=4)
    pred = predictor(np.full((40, 56, 3), 120, np.uint8))
    assert pred.levels.shape == (len(predictor.level_names()), 40, 56) and pred.records  # parts, UniAP's levels
    torch.testing.assert_close(predictor.model.backbone.net.patch_embed.proj.weight,
                               a["teacher"]["backbone.net.patch_embed.proj.weight"])


def test_trainable_backbone_ddp_matches_one_process(images, tmp_path):
    """The DDP path of a trainable ViT (find_unused_parameters: keys leave the last block's tail unused)."""
    from test_train_run import tiny_vit

    from uniap_train.trainer import train

    vit = tiny_vit(tmp_path)
    extra = (*vit, "backbone.trainable=true", "optim.max_steps=2")
    one = tmp_path / "one"
    train(load_config(None, paper_small(images, one, *extra)))
    config = tmp_path / "ddp.yaml"
    save_config(load_config(None, paper_small(images, tmp_path / "two", *extra)), config)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "uniap_train", str(config)]
    proc = subprocess.run(cmd, cwd=REPO, env=env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ra, rb = read_metrics(one / "metrics.csv"), read_metrics(tmp_path / "two" / "metrics.csv")
    np.testing.assert_allclose(column(rb, "loss"), column(ra, "loss"), rtol=1e-4)
    a, b = load(one / "checkpoint_last.pt"), load(tmp_path / "two" / "checkpoint_last.pt")
    for name, ta in a["teacher"].items():
        # parameters with (nearly) zero gradients move by AdamW-normalised rounding noise, about
        # 2e-6 here (the ViT's first LayerNorm bias, key biases): atol 1e-5 for all of them
        torch.testing.assert_close(b["teacher"][name], ta, rtol=1e-4, atol=1e-5, msg=name)


def test_semantic_partition_targets_are_one_level():
    """loss.semantic_targets: partition -> the [SEM] targets are the groups of the finest level
    with at most `partition` groups covering min_share of the pixels: disjoint, covering every node."""
    import uniap
    from uniap_train.recipes.paper import SEMANTIC, region_masks

    rng = np.random.default_rng(3)
    centres = rng.normal(size=(6, 8))
    x = (centres[rng.integers(0, 6, 60)] + 0.3 * rng.normal(size=(60, 8))).astype(np.float32)
    edges = np.array([(i, i + 1) for i in range(59)] + [(i, i + 10) for i in range(50)])
    h = uniap.segment_graph(x, edges, levels=(0.95, 0.6, 0.2, -0.5), min_size=1, semantic=True)
    counts = [len(np.unique(np.asarray(lv.semantic_labels))) for lv in h.levels]
    assert counts[0] > counts[-1]
    every = region_masks(h, 1)
    for limit in sorted(set(counts)):
        t = region_masks(h, 1, partition=limit)
        sem = t.members[t.kinds == SEMANTIC]
        assert torch.all(sem.sum(0) == 1)  # a partition of the nodes
        first = next(k for k, c in enumerate(counts) if c <= limit)  # the finest level that fits
        assert sem.shape[0] == counts[first]
        assert torch.equal(t.members[t.kinds != SEMANTIC], every.members[every.kinds != SEMANTIC])
    assert (every.kinds == SEMANTIC).sum() >= max(counts)  # all levels' groups by default
    # groups under min_share of the pixels do not count against the limit
    sizes = np.ones(60)
    sizes[0] = 1e6  # node 0's group holds almost every pixel: one group counts, the finest level fits
    t = region_masks(h, 1, partition=1, sizes=sizes, min_share=0.5)
    assert (t.kinds == SEMANTIC).sum() == counts[0]


def test_semantic_targets_option_is_checked():
    from uniap_train.config import ConfigError

    assert load_config(None, ["data.root=."]).loss.semantic_targets == "levels"
    assert load_config(None, ["data.root=.", "loss.semantic_targets=partition"]).loss.semantic_targets == "partition"
    with pytest.raises(ConfigError, match="loss.semantic_targets"):
        load_config(None, ["data.root=.", "loss.semantic_targets=one"])
