"""Every training schedule is counted in steps (issue 21): the run's length, the lr and teacher
temperature warm-ups and the prototypes' freeze; epochs only as a length, converted once."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
yaml = pytest.importorskip("yaml")

from test_train_paper import paper_small  # noqa: E402
from test_train_run import images, small  # noqa: E402, F401 (images: a fixture)
from uniap_train.checkpoint import checkpoint_config, upgrade_schedule_keys  # noqa: E402
from uniap_train.cli import main  # noqa: E402
from uniap_train.config import ConfigError, config_from_dict, config_to_dict, load_config, save_config  # noqa: E402
from uniap_train.trainer import Schedules  # noqa: E402
from uniap_train.utils import cancel_gradients_last_layer  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PAPER_VITB8 = REPO / "examples" / "configs" / "paper_vitb8.yaml"

# steps per epoch of paper_vitb8.yaml (batch 16): tiny folders (16 and 32 images), ImageNet
# (1,281,167 images), a 2M-image SA-1B subset, the whole SA-1B (~11M images)
STEPS_PER_EPOCH = [1, 2, 80_072, 125_000, 11_000_000 // 16]


@pytest.fixture
def vitb8(monkeypatch):
    monkeypatch.setenv("UNIAP_TRAIN_IMAGES", "/data/images")
    return load_config(PAPER_VITB8)


@pytest.mark.parametrize("path", sorted((REPO / "examples" / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_example_configs_count_schedules_in_steps(path, monkeypatch):
    monkeypatch.setenv("UNIAP_TRAIN_IMAGES", "/data/images")
    text = path.read_text()
    for old in ("freeze_last_layer:", "warmup_epochs", "warmup_teacher_temp_epochs"):
        assert old not in text
    o = load_config(path).optim
    assert (o.total_steps is None) != (o.epochs is None)
    assert "freeze_last_layer_steps" in text and "warmup_steps" in text and "warmup_teacher_temp_steps" in text


def frozen_steps(schedules: Schedules, probe: list[int]) -> list[int]:
    """The steps among ``probe`` at which the trainer drops the prototypes' gradients."""
    head = torch.nn.Module()
    head.last_layer = torch.nn.Linear(2, 2)
    out = []
    for step in probe:
        head.last_layer.weight.grad = torch.ones(2, 2)
        cancel_gradients_last_layer(step, head, schedules.freeze_last_layer_steps)
        if head.last_layer.weight.grad is None:
            out.append(step)
    return out


@pytest.mark.parametrize("steps_per_epoch", STEPS_PER_EPOCH)
def test_160k_step_config_never_freezes_prototypes_longer_than_configured(vitb8, steps_per_epoch):
    configured = vitb8.optim.freeze_last_layer_steps
    assert vitb8.optim.total_steps == 160_000 and configured == 1250
    s = Schedules.build(vitb8, steps_per_epoch)
    assert s.total_steps == 160_000  # the data set's size does not change the run's length
    assert s.freeze_last_layer_steps == configured
    assert frozen_steps(s, [0, 1, configured - 1, configured, configured + 1, 80_072, 159_999]) == \
        [0, 1, configured - 1]


def test_freeze_and_warmups_are_clamped_to_the_run():
    cfg = load_config(None, ["data.root=x", "optim.total_steps=30", "optim.freeze_last_layer_steps=1000000",
                             "optim.warmup_steps=500", "loss.warmup_teacher_temp_steps=700"])
    s = Schedules.build(cfg, steps_per_epoch=3)
    assert (s.total_steps, s.freeze_last_layer_steps, s.warmup_steps, s.warmup_teacher_temp_steps) == (30, 30, 30, 30)
    assert s.lr.shape == s.teacher_temp.shape == (30,)
    assert frozen_steps(s, [0, 29, 30]) == [0, 29]


@pytest.mark.parametrize("steps_per_epoch", STEPS_PER_EPOCH)
def test_teacher_temperature_reaches_its_final_value_after_the_warmup_steps(vitb8, steps_per_epoch):
    lo = vitb8.loss
    assert lo.warmup_teacher_temp_steps == 10_000
    t = Schedules.build(vitb8, steps_per_epoch).teacher_temp
    assert t[0] == pytest.approx(lo.warmup_teacher_temp)
    assert np.all(np.diff(t[: lo.warmup_teacher_temp_steps + 1]) > 0)  # rising all through the warm-up
    assert t[lo.warmup_teacher_temp_steps - 1] < lo.teacher_temp
    assert np.all(t[lo.warmup_teacher_temp_steps:] == lo.teacher_temp)


def test_teacher_temperature_warmup_from_the_key():
    cfg = load_config(None, ["data.root=x", "optim.total_steps=40", "loss.warmup_teacher_temp=0.02",
                             "loss.teacher_temp=0.06", "loss.warmup_teacher_temp_steps=6"])
    t = Schedules.build(cfg, steps_per_epoch=4).teacher_temp
    assert t[:6].tolist() == pytest.approx([0.02 + 0.04 * i / 6 for i in range(6)])
    assert np.all(t[6:] == 0.06)
    none = load_config(None, ["data.root=x", "optim.total_steps=40", "loss.warmup_teacher_temp_steps=0"])
    assert np.all(Schedules.build(none, 4).teacher_temp == none.loss.teacher_temp)


@pytest.mark.parametrize("steps_per_epoch", [1, 3, 80_072])
def test_lr_warmup_length_in_steps(steps_per_epoch):
    cfg = load_config(None, ["data.root=x", "optim.total_steps=200", "optim.warmup_steps=8", "optim.lr=0.256",
                             "data.batch_size=8"])
    lr = Schedules.build(cfg, steps_per_epoch).lr
    assert lr[0] == 0 and np.all(np.diff(lr[:9]) > 0)  # rises for 8 steps ...
    assert lr.argmax() == 8 and lr[8] == pytest.approx(0.256 * 8 / 256)  # ... peaks at step 8
    assert np.all(np.diff(lr[8:]) <= 0)  # then the cosine
    flat = load_config(None, ["data.root=x", "optim.total_steps=200", "optim.warmup_steps=0"])
    assert Schedules.build(flat, steps_per_epoch).lr.argmax() == 0


def test_step_defaults():
    o, lo = load_config(None, ["data.root=x"]).optim, load_config(None, ["data.root=x"]).loss
    assert (o.total_steps, o.epochs) == (100_000, None)
    assert (o.warmup_steps, o.freeze_last_layer_steps, lo.warmup_teacher_temp_steps) == (1000, 1000, 1000)


@pytest.mark.parametrize("epochs, steps_per_epoch, total",
                         [(3, 4, 12), (2.5, 7, 18), (1.1, 4, 5), (0.01, 5, 1), (50, 8, 400)])
def test_epochs_length_is_converted_to_steps_once(epochs, steps_per_epoch, total, tmp_path):
    cfg = load_config(None, ["data.root=x", f"optim.epochs={epochs}", "optim.warmup_steps=3"])
    assert cfg.optim.total_steps is None and cfg.optim.epochs == epochs
    s = Schedules.build(cfg, steps_per_epoch)
    assert s.total_steps == total == max(1, math.ceil(epochs * steps_per_epoch))
    assert s.warmup_steps == min(3, total)  # warm-ups stay steps whatever the epochs
    assert f"optim.epochs {epochs:g} x {steps_per_epoch} steps per epoch = {total} steps" in s.describe(cfg)
    save_config(cfg, tmp_path / "config.yaml")  # the run folder's config reads back (total_steps: null)
    assert config_to_dict(load_config(tmp_path / "config.yaml")) == config_to_dict(cfg)


def test_training_logs_the_epochs_conversion(images, tmp_path, capsys):  # noqa: F811
    from uniap_train.trainer import train

    out = tmp_path / "run"
    summary = train(load_config(None, small(images, out, "optim.epochs=3.5", "optim.max_steps=1")))
    log = capsys.readouterr().out
    # 8 images, batch 4: 2 steps per epoch, 3.5 epochs = 7 steps
    assert "schedules: optim.epochs 3.5 x 2 steps per epoch = 7 steps" in log
    assert "lr warm-up 2 steps, teacher temperature warm-up 0 steps, prototypes frozen for 2 steps" in log
    assert summary["total_steps"] == 7
    assert torch.load(out / "checkpoint_last.pt", map_location="cpu", weights_only=True)["total_steps"] == 7


@pytest.mark.parametrize("where", ["file", "override"])
def test_both_lengths_is_an_error_naming_both_keys(tmp_path, where):
    if where == "file":
        path = tmp_path / "c.yaml"
        path.write_text(yaml.safe_dump({"data": {"root": "x"}, "optim": {"epochs": 3, "total_steps": 50}}))
        args = (path, [])
    else:
        args = (None, ["data.root=x", "optim.total_steps=50", "optim.epochs=3"])
    with pytest.raises(ConfigError, match=r"optim.total_steps \(50\) and optim.epochs \(3\) both give") as info:
        load_config(*args)
    assert "\n" not in str(info.value)


def test_length_overrides_of_an_example_config(vitb8, monkeypatch):
    with pytest.raises(ConfigError, match="optim.total_steps .* and optim.epochs .* both give"):
        load_config(PAPER_VITB8, ["optim.epochs=2"])
    cfg = load_config(PAPER_VITB8, ["optim.epochs=2", "optim.total_steps=null"])
    assert (cfg.optim.total_steps, cfg.optim.epochs) == (None, 2.0)
    with pytest.raises(ConfigError, match="optim.total_steps and optim.epochs are both null"):
        load_config(None, ["data.root=x", "optim.total_steps=null"])
    with pytest.raises(ConfigError, match="optim.total_steps: must be >= 1, or null"):
        load_config(None, ["data.root=x", "optim.total_steps=0"])
    with pytest.raises(ConfigError, match="optim.epochs: must be > 0"):
        load_config(None, ["data.root=x", "optim.epochs=0"])


REMOVED = [
    ("optim", "freeze_last_layer", "optim.freeze_last_layer_steps"),
    ("optim", "warmup_epochs", "optim.warmup_steps"),
    ("loss", "warmup_teacher_temp_epochs", "loss.warmup_teacher_temp_steps"),
]


@pytest.mark.parametrize("section, key, new", REMOVED)
def test_removed_epoch_keys_name_the_step_key(tmp_path, capsys, section, key, new):
    expected = f"{section}.{key} was counted in epochs; use {new}"
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"data": {"root": "x"}, section: {key: 1}}))
    for args in ((path, []), (None, ["data.root=x", f"{section}.{key}=1"])):
        with pytest.raises(ConfigError) as info:
            load_config(*args)
        assert str(info.value).startswith(expected) and "\n" not in str(info.value)
        assert "unknown key" not in str(info.value)
    assert main([str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"uniap-train: error: {expected}") and "\n" not in err


def old_style(config: dict, *, epochs=4.0, total_steps=0, warmup_steps=0, warmup_epochs=1.0, freeze=1.0,
              temp_epochs=0.5) -> dict:
    """A configuration dict as checkpoints stored it before schedules were counted in steps."""
    optim, loss = dict(config["optim"]), dict(config["loss"])
    optim.pop("freeze_last_layer_steps")
    loss.pop("warmup_teacher_temp_steps")
    optim.update(epochs=epochs, total_steps=total_steps, warmup_steps=warmup_steps, warmup_epochs=warmup_epochs,
                 freeze_last_layer=freeze)
    loss["warmup_teacher_temp_epochs"] = temp_epochs
    return {**config, "optim": optim, "loss": loss}


def test_old_checkpoint_config_is_converted(images, tmp_path):  # noqa: F811
    current = load_config(None, paper_small(images, tmp_path))
    new = config_to_dict(current)
    old = old_style(new)
    with pytest.raises(ConfigError, match="was counted in epochs"):  # as stored: no longer a valid config
        config_from_dict(old)
    # the checkpoint's own steps per epoch and total steps convert the schedules as its run had them
    cfg = checkpoint_config({"config": old, "sampler": {"steps_per_epoch": 2}, "total_steps": 8})
    o = cfg.optim
    assert (o.total_steps, o.epochs, o.warmup_steps, o.freeze_last_layer_steps) == (8, None, 2, 2)
    assert cfg.loss.warmup_teacher_temp_steps == 1
    assert (cfg.model, cfg.backbone, cfg.uniap, cfg.crops) == (current.model, current.backbone, current.uniap,
                                                               current.crops)
    # total_steps > 0 decided the length then; warmup_steps > 0 decided the warm-up
    kept = upgrade_schedule_keys(old_style(new, total_steps=50, warmup_steps=5), 2, 50)["optim"]
    assert (kept["total_steps"], kept["epochs"], kept["warmup_steps"]) == (50, None, 5)
    # without the checkpoint's step counts the epoch keys are dropped: the config still loads
    bare = checkpoint_config({"config": old})
    assert (bare.optim.total_steps, bare.optim.epochs) == (None, 4.0)
    assert bare.optim.freeze_last_layer_steps == 1000 and bare.loss.warmup_teacher_temp_steps == 1000
    assert upgrade_schedule_keys(new) is new  # a new configuration passes untouched


def test_prediction_from_an_old_checkpoint(images, tmp_path):  # noqa: F811
    from uniap_train import Predictor
    from uniap_train.trainer import train

    out = tmp_path / "run"
    train(load_config(None, paper_small(images, out, "optim.max_steps=1")))
    ckpt = torch.load(out / "checkpoint_last.pt", map_location="cpu", weights_only=True)
    ckpt["config"] = old_style(ckpt["config"])
    old = tmp_path / "old.pt"
    torch.save(ckpt, old)
    predictor = Predictor.from_checkpoint(old, device="cpu", min_area=4)
    assert predictor.cfg.optim.freeze_last_layer_steps == 2 and predictor.cfg.optim.total_steps == 8
    img = np.zeros((40, 60, 3), np.uint8)
    img[10:30, 10:40] = (200, 30, 30)
    pred = predictor(img)
    assert pred.masks.shape[1:] == img.shape[:2]
