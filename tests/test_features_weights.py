"""ViT weights as users have them (issue #25, item 2): inferred models, refused mismatches,
Hugging Face ``transformers`` folders, the hub cache offline and the download path.

No test reaches the network: caches are prepared by the tests, and the download test replaces
``huggingface_hub.hf_hub_download``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")

from uniap.features import VitFeatures  # noqa: E402
from uniap.features.weights import architecture, from_transformers, infer_model  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _normalised(img: np.ndarray, ext: VitFeatures):
    x = torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255
    return (x - torch.tensor(ext.mean).view(1, 3, 1, 1)) / torch.tensor(ext.std).view(1, 3, 1, 1)


@pytest.fixture(scope="module")
def dinov2_small(tmp_path_factory):
    """A randomly initialised DINOv2 ViT-S/14 as Meta releases it (with its mask token)."""
    torch.manual_seed(0)
    net = timm.create_model("vit_small_patch14_dinov2", num_classes=0, dynamic_img_size=True).eval()
    state = {**net.state_dict(), "mask_token": torch.zeros(1, 384)}
    path = tmp_path_factory.mktemp("dinov2") / "dinov2_vits14_pretrain.pth"
    torch.save(state, path)
    return net, path


class TestArchitecture:
    def test_a_dinov2_checkpoint_without_model_is_a_dinov2(self, dinov2_small):
        """No --model: the ViT-S/14 with LayerScale is read from the file, not forced into ViT-S/8."""
        net, path = dinov2_small
        ext = VitFeatures(weights=path)
        assert ext.model_name == "vit_small_patch14_dinov2.lvd142m" and ext.patch_size == 14
        img = _image(56, 70)
        with torch.inference_mode():
            ref = net.forward_features(_normalised(img, ext))[:, 1:].reshape(4, 5, -1).numpy()
        np.testing.assert_allclose(ext(img).features, ref, rtol=1e-4, atol=1e-5)

    def test_a_named_model_that_does_not_fit_is_refused(self, dinov2_small):
        """--model vit_small_patch8_224.dino with DINOv2 weights: what differs, and the right --model."""
        _, path = dinov2_small
        with pytest.raises(ValueError) as info:
            VitFeatures("vit_small_patch8_224.dino", weights=path)
        msg = str(info.value)
        assert "patch size 14 (model: 8)" in msg and "LayerScale (model: none)" in msg
        assert "37x37 position grid" in msg
        assert "--model vit_small_patch14_dinov2.lvd142m" in msg
        assert "\n" not in msg

    @pytest.mark.parametrize("change, words", [
        (dict(depth=3), "depth 3 (model: 2)"),
        (dict(embed_dim=48), "width 48 (model: 32)"),
        (dict(patch_size=16), "patch size 16 (model: 8)"),
        (dict(init_values=1e-5), "LayerScale (model: none)"),
        (dict(reg_tokens=4), "registers 4 (model: 0)"),
        (dict(qkv_bias=False), "no qkv bias (model: qkv bias)"),
    ])
    def test_each_difference_is_named(self, tmp_path, change, words):
        kw = dict(depth=2, embed_dim=32, num_heads=2)
        other = timm.create_model("vit_small_patch8_224", num_classes=0, **{**kw, **change})
        path = tmp_path / "other.pth"
        torch.save(other.state_dict(), path)
        with pytest.raises(ValueError, match="do not fit") as info:
            VitFeatures("vit_small_patch8_224.dino", weights=path, **kw)
        assert words in str(info.value)

    def test_another_position_grid_builds_the_model_at_that_size(self, tmp_path):
        """A checkpoint trained at 64 px: the model is built at 64 px, its embedding not resampled."""
        kw = dict(depth=1, embed_dim=24, num_heads=2)
        net = timm.create_model("vit_tiny_patch16_224", num_classes=0, img_size=64, **kw).eval()
        path = tmp_path / "small.pth"
        torch.save(net.state_dict(), path)
        ext = VitFeatures("vit_tiny_patch16_224", weights=path, **kw)
        assert ext.model_kwargs["img_size"] == 64
        torch.testing.assert_close(ext.model.pos_embed, net.pos_embed)

    def test_inference_of_a_size_no_release_has(self):
        net = timm.create_model("vit_small_patch16_224", num_classes=0, depth=3, embed_dim=128, num_heads=2)
        name, kwargs = infer_model(net.state_dict())
        assert name == "vit_small_patch16_224"
        assert kwargs == {"patch_size": 16, "embed_dim": 128, "depth": 3, "num_heads": 2, "mlp_ratio": 4.0}


class TestDinov3:
    def test_dinov3_names_build_and_are_inferred(self, tmp_path):
        torch.manual_seed(0)
        net = timm.create_model("vit_small_patch16_dinov3", num_classes=0).eval()
        path = tmp_path / "dinov3_s16.pth"
        torch.save(net.state_dict(), path)
        arch = architecture(net.state_dict())
        assert arch.grid is None and arch.registers == 4 and arch.layerscale and arch.qkv_bias is False
        ext = VitFeatures(weights=path, layer_output="keys")
        assert ext.model_name == "vit_small_patch16_dinov3.lvd1689m"
        assert ext(_image(64, 48)).features.shape == (4, 3, 384)
        # the _qkvb variant (a bias on queries and values) is another architecture
        with pytest.raises(ValueError, match="no qkv bias"):
            VitFeatures("vit_small_patch16_dinov3_qkvb", weights=path)


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    """A tiny random transformers Dinov2Model saved with save_pretrained (3 heads, LayerScale)."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.Dinov2Config(hidden_size=48, num_hidden_layers=2, num_attention_heads=3,
                                    intermediate_size=192, patch_size=14, image_size=56,
                                    layerscale_value=0.5)
    model = transformers.Dinov2Model(cfg).eval()
    folder = tmp_path_factory.mktemp("hf") / "dinov2-tiny"
    model.save_pretrained(folder)
    return model, folder


class TestTransformers:
    @pytest.mark.parametrize("which", ["folder", "model.safetensors"])
    def test_a_transformers_dinov2_loads_and_gives_its_features(self, hf_folder, which):
        model, folder = hf_folder
        ext = VitFeatures(weights=folder if which == "folder" else folder / "model.safetensors")
        assert ext.model_kwargs["num_heads"] == 3  # from config.json beside the weights
        for shape, atol in (((56, 56), 1e-4), ((112, 84), 0.05)):  # native grid, interpolated
            img = _image(*shape, seed=shape[0])
            with torch.no_grad():
                ref = model(pixel_values=_normalised(img, ext)).last_hidden_state[0, 1:]
            ref = ref.reshape(shape[0] // 14, shape[1] // 14, -1).numpy()
            np.testing.assert_allclose(ext(img).features, ref, atol=atol)

    def test_transformers_4_names_map_too(self, hf_folder):
        """Checkpoints saved by transformers 4.x name the projections attention.attention.query."""
        model, _ = hf_folder
        old = {}
        for key, value in model.state_dict().items():
            key = (key.replace("attention.q_proj", "attention.attention.query")
                   .replace("attention.k_proj", "attention.attention.key")
                   .replace("attention.v_proj", "attention.attention.value")
                   .replace("attention.o_proj", "attention.output.dense"))
            old[f"dinov2.{key}"] = value  # as Dinov2ForImageClassification saves it
        new = from_transformers(model.state_dict())
        mapped = from_transformers(old)
        assert mapped.keys() == new.keys() and "mask_token" not in str(list(mapped))
        for key in new:
            torch.testing.assert_close(mapped[key], new[key])

    def test_a_folder_without_weights_is_refused(self, tmp_path):
        (tmp_path / "config.json").write_text(json.dumps({"model_type": "dinov2"}))
        with pytest.raises(ValueError, match="directory without a Hugging Face weights file"):
            VitFeatures(weights=tmp_path)


def _hf_cache(home: Path, repo: str, state: dict) -> Path:
    """``state`` as ``repo``'s model.safetensors in a Hugging Face cache under ``home``."""
    from safetensors.torch import save_file

    folder = home / "hub" / f"models--{repo.replace('/', '--')}"
    snapshot = folder / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text("0" * 40)
    save_file({k: v.contiguous() for k, v in state.items()}, str(snapshot / "model.safetensors"))
    return snapshot / "model.safetensors"


def _env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update(extra)
    return env


class TestHub:
    NAME = "vit_tiny_patch16_224.augreg_in21k"

    def test_cli_offline_from_a_prepared_cache(self, tmp_path):
        """`uniap-cli --features vit --model NAME` with HF_HUB_OFFLINE=1 and the weights cached."""
        pytest.importorskip("safetensors")
        from cli_helpers import save_image

        torch.manual_seed(0)
        net = timm.create_model(self.NAME, num_classes=0)
        _hf_cache(tmp_path / "hf", f"timm/{self.NAME}", net.state_dict())
        save_image(tmp_path / "in.png", _image(48, 64))
        cmd = [sys.executable, "-m", "uniap", str(tmp_path / "in.png"), "--features", "vit",
               "--model", self.NAME, "--out", str(tmp_path / "out.json"), "--quiet"]
        proc = subprocess.run(cmd, env=_env(HF_HOME=str(tmp_path / "hf"), HF_HUB_OFFLINE="1"),
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert json.loads((tmp_path / "out.json").read_text())["annotations"]
        # the same, with nothing cached: one line naming where the weights come from
        proc = subprocess.run(cmd, env=_env(HF_HOME=str(tmp_path / "empty"), HF_HUB_OFFLINE="1",
                                            TORCH_HOME=str(tmp_path / "torch")),
                              capture_output=True, text=True, timeout=300)
        last = proc.stderr.strip().splitlines()[-1]  # after argparse's usage lines
        assert proc.returncode == 2 and last.startswith("uniap-cli: error: no weights"), proc.stderr
        assert "HF_HUB_OFFLINE is set" in last and f"timm/{self.NAME}" in last

    def test_missing_dinov2_points_at_dinov2(self, tmp_path, monkeypatch):
        import huggingface_hub.constants

        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
        monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "torch"))
        with pytest.raises(ValueError) as info:
            VitFeatures("vit_small_patch14_dinov2.lvd142m", depth=1, embed_dim=24, num_heads=2)
        msg = str(info.value)
        assert "timm/vit_small_patch14_dinov2.lvd142m" in msg and "dinov2_vits14_pretrain.pth" in msg
        assert "dino_deitsmall8" not in msg

    def test_online_the_release_is_downloaded_through_huggingface_hub(self, tmp_path, monkeypatch):
        """Not cached and online: hf_hub_download fetches timm's repository (its cache keeps it)."""
        import huggingface_hub
        import huggingface_hub.constants
        from huggingface_hub.errors import LocalEntryNotFoundError

        kw = dict(depth=1, embed_dim=24, num_heads=2)
        torch.manual_seed(0)
        net = timm.create_model("vit_small_patch8_224", num_classes=0, **kw).eval()
        calls = []

        def fake_download(repo_id, filename, revision=None, local_files_only=False, **kwargs):
            calls.append((repo_id, filename, local_files_only))
            if local_files_only:
                raise LocalEntryNotFoundError("not in the cache")
            return str(_hf_cache(tmp_path / "hf", repo_id, net.state_dict()))

        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty"))
        monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "torch"))
        monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
        ext = VitFeatures("vit_small_patch8_224.dino", **kw)
        repo = "timm/vit_small_patch8_224.dino"
        assert calls == [(repo, "model.safetensors", True), (repo, "pytorch_model.bin", True),  # caches
                         (repo, "model.safetensors", False)]  # then the download
        torch.testing.assert_close(ext.model.blocks[0].attn.qkv.weight, net.blocks[0].attn.qkv.weight)
