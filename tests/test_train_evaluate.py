"""Evaluation: k-means, image / label pairing, Hungarian mIoU of the baseline and of a model."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from uniap_train.backbone import Backbone  # noqa: E402
from uniap_train.config import BackboneConfig, ConfigError, EvalConfig, ModelConfig, load_config  # noqa: E402
from uniap_train.evaluate import SemanticEvaluator, kmeans, list_pairs  # noqa: E402
from uniap_train.recipes import get_recipe  # noqa: E402


def test_kmeans_finds_separated_clusters():
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    x = torch.cat([c + 0.1 * torch.randn(50, 2, generator=g) for c in centres])
    found = kmeans(x, 3, seed=1)
    order = torch.cdist(centres, found).argmin(1)
    assert sorted(order.tolist()) == [0, 1, 2]
    torch.testing.assert_close(found[order], centres, atol=0.1, rtol=0)
    assert torch.equal(kmeans(x, 3, seed=1), found)  # deterministic
    assert kmeans(x[:2], 5).shape == (2, 2)  # k capped by the number of points


@pytest.fixture
def pairs(tmp_path):
    from PIL import Image

    (tmp_path / "img").mkdir()
    (tmp_path / "lab").mkdir()
    image = np.zeros((32, 48, 3), np.uint8)
    image[:, :24] = (200, 30, 30)
    image[:, 24:] = (30, 30, 200)
    labels = np.zeros((32, 48), np.uint16)
    labels[:, 24:] = 1
    labels[:4] = 9  # void
    for i in range(3):
        Image.fromarray(image).save(tmp_path / "img" / f"a{i}.png")
        Image.fromarray(labels).save(tmp_path / "lab" / f"a{i}.png")
    Image.fromarray(image).save(tmp_path / "img" / "unlabelled.png")
    return tmp_path


def test_list_pairs(pairs):
    found = list_pairs(str(pairs / "img"), str(pairs / "lab"))
    assert [p.stem for p, _ in found] == ["a0", "a1", "a2"]
    assert len(list_pairs(str(pairs / "img"), str(pairs / "lab"), max_images=2)) == 2
    with pytest.raises(ConfigError, match="eval.images: folder not found"):
        list_pairs(str(pairs / "nope"), str(pairs / "lab"))
    (pairs / "empty").mkdir()
    with pytest.raises(ConfigError, match="no image"):
        list_pairs(str(pairs / "empty"), str(pairs / "lab"))


def test_evaluator_baseline_and_model(pairs):
    cfg = EvalConfig(images=str(pairs / "img"), labels=str(pairs / "lab"), num_classes=2, ignore_index=9)
    backbone = Backbone(BackboneConfig(kind="default"), torch.device("cpu"))
    options = dict(levels=(0.8, 0.5), min_size=2)
    ev = SemanticEvaluator(cfg, backbone, options, torch.device("cpu"))
    assert len(ev.items) == 3 and ev.k == 2
    base = ev.baseline()
    assert base["kmeans_l2_miou"] > 0.9 and base["kmeans_raw_pixel_accuracy"] > 0.9
    train_cfg = load_config(None, ["data.root=x"])
    recipe = get_recipe("released")(train_cfg, ev.items[0].features.shape[-1])
    recipe.cfg.model = ModelConfig(hidden_dim=16, bottleneck_dim=8, out_dim=8)
    head = recipe.build_student()
    result = ev.evaluate(recipe.embedder(head, "logits"))
    assert 0 <= result["miou"] <= 1 and 0 <= result["pixel_accuracy"] <= 1
    assert ev.evaluate(recipe.embedder(head, "bottleneck"))["miou"] >= 0
    bad = EvalConfig(images=cfg.images, labels=cfg.labels, num_classes=1, ignore_index=9)
    with pytest.raises(ConfigError, match="eval.num_classes"):
        SemanticEvaluator(bad, backbone, options, torch.device("cpu")).baseline()
