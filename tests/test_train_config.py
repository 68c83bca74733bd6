"""uniap_train configuration: loading, validation messages, --set overrides, the CLI's exit 2."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("torch")
yaml = pytest.importorskip("yaml")

from uniap_train.cli import main  # noqa: E402
from uniap_train.config import (  # noqa: E402
    ConfigError,
    TrainConfig,
    apply_overrides,
    config_to_dict,
    load_config,
    save_config,
)

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "examples" / "configs"


def write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize("name", ["tiny_cpu.yaml", "single_gpu.yaml", "multi_node.yaml"])
def test_example_configs_load(name):
    cfg = load_config(CONFIGS / name)
    assert isinstance(cfg, TrainConfig)
    assert cfg.recipe == "released"


def test_defaults_and_types(tmp_path):
    cfg = load_config(write(tmp_path, {"data": {"root": "x"}, "optim": {"lr": "1e-4", "epochs": 3}}))
    assert cfg.optim.lr == pytest.approx(1e-4)  # PyYAML reads 1e-4 as a string; accepted
    assert cfg.optim.epochs == 3.0 and isinstance(cfg.optim.epochs, float)
    assert cfg.uniap.levels == (0.8, 0.7, 0.6, 0.5, 0.4)
    assert cfg.crops.local_scale == (0.05, 0.4)


@pytest.mark.parametrize(
    "data, match",
    [
        ({"data": {"root": "x"}, "optim": {"lrr": 1}}, r"unknown key 'optim.lrr' \(did you mean 'optim.lr'\?\)"),
        ({"data": {"root": "x"}, "bogus": 1}, r"unknown key 'bogus'"),
        ({"data": {"root": "x"}, "optim": {"lr": "fast"}}, r"optim.lr: expected a number, got 'fast'"),
        ({"data": {"root": "x", "batch_size": 2.5}}, r"data.batch_size: expected an integer, got 2.5"),
        ({"data": {"root": "x"}, "log": {"tensorboard": "yes"}}, r"log.tensorboard: expected true or false"),
        ({"data": {"root": "x", "kind": "tfrecord"}}, r"data.kind: expected one of 'folder', 'coco'"),
        ({"data": {"root": "x"}, "crops": {"local_scale": [0.5]}}, r"crops.local_scale: expected a list of 2"),
        ({"data": {"root": "x"}, "optim": 3}, r"optim: expected a mapping"),
        ({"data": {"root": "x"}, "optim": {"lr": -1}}, r"optim.lr: must be > 0, got -1"),
        ({"data": {"root": "x"}, "uniap": {"levels": [0.4, 0.8]}}, r"uniap.levels: must be strictly decreasing"),
        ({"data": {"root": "x"}, "crops": {"local_scale": [0.5, 0.1]}}, r"crops.local_scale: must be \[lo, hi\]"),
        ({"data": {"root": "x", "batch_size": 0}}, r"data.batch_size: must be >= 1"),
        ({"data": {"root": "x"}, "device": "tpu"}, r"device: must be auto, cpu, cuda or cuda:N"),
        ({"data": {"root": "x", "kind": "coco"}}, r"data.annotations: is required"),
        ({"data": {"root": "x"}, "eval": {"images": "a"}}, r"eval.labels: is required"),
        ({}, r"data.root: must name a folder"),
        ({"data": {"root": "x"}, "backbone": {"kind": "vit", "vocabulary": "shared"}},
         r"backbone.vocabulary: applies to kind default only"),
        ({"data": {"root": "x"}, "backbone": {"vocabulary_images": 0}}, r"backbone.vocabulary_images: must be >= 1"),
        ({"data": {"root": "x"}, "loss": {"centering": "mean"}}, r"loss.centering: expected one of 'ema', 'sinkhorn'"),
    ],
)
def test_validation_messages(tmp_path, data, match):
    with pytest.raises(ConfigError, match=match) as info:
        load_config(write(tmp_path, data))
    assert "\n" not in str(info.value)


def test_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(bad)
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(bad)


def test_overrides(tmp_path):
    path = write(tmp_path, {"data": {"root": "x"}, "optim": {"lr": 0.1}})
    cfg = load_config(path, ["optim.lr=0.5", "uniap.levels=[0.9, 0.5]", "eval.ignore_index=11",
                             "resume=null", "model.out_dim=16", "backbone.options.max_side=64"])
    assert cfg.optim.lr == 0.5
    assert cfg.uniap.levels == (0.9, 0.5)
    assert cfg.eval.ignore_index == 11
    assert cfg.model.out_dim == 16
    assert cfg.backbone.options == {"max_side": 64}
    assert apply_overrides({"a": {"b": 1}}, ["a.c=x"]) == {"a": {"b": 1, "c": "x"}}
    with pytest.raises(ConfigError, match="key=value"):
        load_config(path, ["optim.lr"])
    with pytest.raises(ConfigError, match="unknown key 'optim.nope'"):
        load_config(path, ["optim.nope=1"])
    with pytest.raises(ConfigError, match="is not a section"):
        load_config(path, ["optim.lr.x=1"])


def test_save_roundtrip(tmp_path):
    cfg = load_config(write(tmp_path, {"data": {"root": "x"}, "seed": 7}))
    save_config(cfg, tmp_path / "out" / "config.yaml")
    again = load_config(tmp_path / "out" / "config.yaml")
    assert config_to_dict(again) == config_to_dict(cfg)


def test_cli_exit_2_on_config_errors(tmp_path, capsys):
    path = write(tmp_path, {"data": {"root": "x"}, "optim": {"lrr": 1}})
    assert main([str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("uniap-train: error: unknown key 'optim.lrr'") and "\n" not in err
    assert main([str(CONFIGS / "tiny_cpu.yaml"), "--set", "optim.lr=fast"]) == 2
    assert "optim.lr: expected a number" in capsys.readouterr().err
    # a missing data folder is found when training starts: still a configuration error
    assert main([str(CONFIGS / "tiny_cpu.yaml"), "--set", f"data.root={tmp_path / 'none'}",
                 "--set", f"output_dir={tmp_path / 'run'}", "--set", "log.progress=false"]) == 2
    assert "data.root: image folder not found" in capsys.readouterr().err


def test_cli_print_config(capsys):
    assert main([str(CONFIGS / "tiny_cpu.yaml"), "--set", "seed=3", "--print-config"]) == 0
    out = yaml.safe_load(capsys.readouterr().out)
    assert out["seed"] == 3 and out["backbone"]["kind"] == "default"


def test_paper_recipe_defaults_to_two_local_crops():
    """The paper's student sees 2 local crops by default; the released recipe keeps 6."""
    from uniap_train.config import load_config

    assert load_config(None, ["data.root=x", "recipe=paper"]).crops.num_local == 2
    assert load_config(None, ["data.root=x"]).crops.num_local == 6
    assert load_config(None, ["data.root=x", "recipe=paper", "crops.num_local=3"]).crops.num_local == 3
    assert load_config(None, ["data.root=x", "recipe=paper", "crops.local_size=64"]).crops.num_local == 2
