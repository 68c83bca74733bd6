"""uniap.features.VitFeatures on tiny random timm ViTs saved by the tests (no downloads)."""

from __future__ import annotations

import argparse
import socket

import numpy as np
import pytest

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")

from uniap.features import (
    FeatureGrid,
    MissingFileError,
    VitFeatures,
    get_extractor,
    load_state_dict,
)

MODEL = "vit_small_patch8_224.dino"  # the default name, shrunk by the kwargs below
TINY = dict(depth=2, embed_dim=32, num_heads=2)
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny random ViT with patch 8 (and its weights as .pt), built once for the module."""
    torch.manual_seed(0)
    model = timm.create_model(MODEL, pretrained=False, num_classes=0, dynamic_img_size=True,
                              **TINY).eval()
    path = tmp_path_factory.mktemp("weights") / "tiny.pt"
    torch.save(model.state_dict(), path)
    return model, path


def _reference(model, img: np.ndarray, shape: tuple[int, int], keys: bool) -> np.ndarray:
    """Tokens or keys computed by hand from the in-memory model (no hooks)."""
    x = torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255
    if tuple(shape) != img.shape[:2]:
        x = torch.nn.functional.interpolate(x, size=shape, mode="bilinear", align_corners=False,
                                            antialias=True).clamp(0, 1)
    x = (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    with torch.inference_mode():
        t = model._pos_embed(model.patch_embed(x))
        t = model.norm_pre(t)
        if keys:
            for blk in model.blocks[:-1]:
                t = blk(t)
            last = model.blocks[-1]
            qkv = last.attn.qkv(last.norm1(t))
            out = qkv.reshape(1, t.shape[1], 3, -1)[:, :, 1]
        else:
            out = model.norm(model.blocks(t))
    p = 8
    return out[0, model.num_prefix_tokens:].reshape(shape[0] // p, shape[1] // p, -1).numpy()


class TestVitFeatures:
    @pytest.mark.parametrize("layer", ["tokens", "keys"])
    def test_odd_size_matches_in_memory_model(self, tiny, layer):
        model, path = tiny
        ext = VitFeatures(MODEL, weights=path, layer_output=layer, **TINY)
        img = _image(481, 321)
        g = ext(img)
        assert isinstance(g, FeatureGrid)
        assert g.features.shape == (60, 40, 32) and g.features.dtype == np.float32
        assert g.patch_size == 8 and g.image_shape == (480, 320)
        assert g.original_shape == (481, 321) and g.fit == "resize"
        assert g.name == f"vit:{MODEL}:{layer}"
        ref = _reference(model, img, (480, 320), keys=layer == "keys")
        np.testing.assert_allclose(g.features, ref, rtol=1e-4, atol=1e-5)

    def test_weights_are_really_used(self, tiny, tmp_path):
        model, path = tiny
        img = _image(64, 48)
        loaded = VitFeatures(MODEL, weights=path, **TINY)(img).features
        torch.manual_seed(1)
        other = timm.create_model(MODEL, num_classes=0, **TINY)
        other_path = tmp_path / "other.pt"
        torch.save(other.state_dict(), other_path)
        different = VitFeatures(MODEL, weights=other_path, **TINY)(img).features
        assert not np.allclose(loaded, different, atol=1e-3)
        np.testing.assert_allclose(loaded, _reference(model, img, (64, 48), False),
                                   rtol=1e-4, atol=1e-5)

    @pytest.mark.parametrize("shape, grid", [((64, 96), (8, 12)), ((100, 37), (12, 4)),
                                             ((5, 3), (1, 1)), ((224, 224), (28, 28))])
    def test_sizes(self, tiny, shape, grid):
        _, path = tiny
        g = VitFeatures(MODEL, weights=path, **TINY)(_image(*shape))
        assert g.features.shape == grid + (32,)
        assert g.to_image(np.zeros(grid)).shape == shape
        if shape[0] % 8 == 0 and shape[1] % 8 == 0:
            assert g.fit == "pad" and g.image_shape == shape  # nothing resized or padded

    def test_gray_and_rgba_inputs(self, tiny):
        _, path = tiny
        ext = VitFeatures(MODEL, weights=path, **TINY)
        gray = _image(32, 40)[..., 0]
        a = ext(gray).features
        b = ext(np.dstack([gray, gray, gray, np.zeros_like(gray)])).features
        np.testing.assert_array_equal(a, b)

    def test_read_only_arrays_and_files(self, tiny, tmp_path):
        from PIL import Image

        _, path = tiny
        ext = VitFeatures(MODEL, weights=path, **TINY)
        img = _image(40, 48)
        frozen = img.copy()
        frozen.flags.writeable = False
        Image.fromarray(img).save(tmp_path / "img.png")
        a = ext(img).features
        np.testing.assert_array_equal(ext(frozen).features, a)
        np.testing.assert_array_equal(ext(tmp_path / "img.png").features, a)

    def test_deterministic(self, tiny):
        _, path = tiny
        ext = VitFeatures(MODEL, weights=path, layer_output="keys", **TINY)
        img = _image(40, 56)
        np.testing.assert_array_equal(ext(img).features, ext(img).features)

    def test_max_side(self, tiny):
        _, path = tiny
        g = VitFeatures(MODEL, weights=path, max_side=120, **TINY)(_image(481, 321))
        assert g.image_shape == (120, 80) and g.features.shape[:2] == (15, 10)
        assert g.to_image(np.zeros((15, 10))).shape == (481, 321)

    def test_patch16_model_and_factory(self, tmp_path):
        kw = dict(depth=1, embed_dim=24, num_heads=2)
        model = timm.create_model("vit_tiny_patch16_224", num_classes=0, **kw)
        path = tmp_path / "t16.pth"
        torch.save(model.state_dict(), path)
        ext = get_extractor("vit", model="vit_tiny_patch16_224", weights=str(path),
                            layer_output="keys", device=None, **kw)
        g = ext(_image(100, 70))
        assert ext.patch_size == 16 and g.features.shape == (6, 4, 24)

    def test_register_tokens_are_dropped(self, tmp_path):
        kw = dict(depth=1, embed_dim=24, num_heads=2, reg_tokens=4, no_embed_class=True)
        model = timm.create_model("vit_small_patch16_224", num_classes=0, **kw)
        path = tmp_path / "reg.pth"
        torch.save(model.state_dict(), path)
        g = VitFeatures("vit_small_patch16_224", weights=path, **kw)(_image(64, 80))
        assert g.features.shape == (4, 5, 24)


class TestBatchFeatures:
    @pytest.mark.parametrize("layer", ["tokens", "keys"])
    def test_equals_one_image_at_a_time(self, tiny, layer):
        _, path = tiny
        ext = VitFeatures(MODEL, weights=path, layer_output=layer, **TINY)
        images = np.stack([_image(48, 64, seed) for seed in range(3)])
        batch = ext.batch_features(torch.from_numpy(images))
        assert batch.shape == (3, 6, 8, 32) and batch.dtype == torch.float32
        assert not batch.is_inference()
        for i in range(3):
            np.testing.assert_allclose(batch[i].numpy(), ext(images[i]).features, rtol=1e-4, atol=1e-5)

    def test_rejects_bad_batches(self, tiny):
        _, path = tiny
        ext = VitFeatures(MODEL, weights=path, **TINY)
        with pytest.raises(TypeError, match="uint8 torch.Tensor"):
            ext.batch_features(np.zeros((1, 8, 8, 3), np.uint8))
        with pytest.raises(TypeError, match="float32"):
            ext.batch_features(torch.zeros(1, 8, 8, 3))
        with pytest.raises(ValueError, match="multiples of 8"):
            ext.batch_features(torch.zeros(1, 12, 8, 3, dtype=torch.uint8))
        with pytest.raises(ValueError, match=r"\(B, H, W, 3\)"):
            ext.batch_features(torch.zeros(8, 8, 3, dtype=torch.uint8))


class TestCheckpointFiles:
    def test_safetensors(self, tiny, tmp_path):
        safetensors = pytest.importorskip("safetensors.torch")
        model, path = tiny
        st = tmp_path / "tiny.safetensors"
        safetensors.save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(st))
        img = _image(48, 40)
        a = VitFeatures(MODEL, weights=st, **TINY)(img).features
        b = VitFeatures(MODEL, weights=path, **TINY)(img).features
        np.testing.assert_array_equal(a, b)

    def test_dino_training_checkpoint(self, tiny, tmp_path):
        """{"teacher": {"backbone.*", "head.*"}, "args": Namespace, ...} with module. prefixes."""
        model, _ = tiny
        sd = model.state_dict()
        teacher = {f"module.backbone.{k}": v for k, v in sd.items()}
        teacher["module.head.mlp.0.weight"] = torch.zeros(8, 32)
        student = {f"module.backbone.{k}": torch.zeros_like(v) for k, v in sd.items()}
        ckpt = {"student": student, "teacher": teacher, "epoch": 3,
                "args": argparse.Namespace(arch="vit_small", patch_size=8)}
        path = tmp_path / "checkpoint.pth"
        torch.save(ckpt, path)
        state = load_state_dict(path)
        assert set(state) == set(sd)
        img = _image(32, 32)
        np.testing.assert_array_equal(
            VitFeatures(MODEL, weights=path, **TINY)(img).features,
            _reference(model, img, (32, 32), False),
        )

    @pytest.mark.parametrize("wrap", ["model", "state_dict"])
    def test_wrappers(self, tiny, tmp_path, wrap):
        model, _ = tiny
        path = tmp_path / f"{wrap}.pth"
        torch.save({wrap: {f"module.{k}": v for k, v in model.state_dict().items()},
                    "optimizer": {}}, path)
        assert set(load_state_dict(path)) == set(model.state_dict())

    def test_classifier_head_is_ignored(self, tmp_path):
        kw = dict(depth=1, embed_dim=24, num_heads=2)
        model = timm.create_model("vit_tiny_patch16_224", num_classes=10, **kw)
        path = tmp_path / "cls.pth"
        torch.save(model.state_dict(), path)
        g = VitFeatures("vit_tiny_patch16_224", weights=path, **kw)(_image(32, 32))
        assert g.features.shape == (2, 2, 24)

    def test_position_embedding_is_resampled(self, tmp_path):
        """Weights trained at another resolution load (timm's filter resamples pos_embed)."""
        kw = dict(depth=1, embed_dim=24, num_heads=2)
        model = timm.create_model("vit_tiny_patch16_224", num_classes=0, img_size=64, **kw)
        path = tmp_path / "small.pth"
        torch.save(model.state_dict(), path)
        g = VitFeatures("vit_tiny_patch16_224", weights=path, **kw)(_image(48, 48))
        assert g.features.shape == (3, 3, 24)


class TestErrors:
    def test_missing_weights_file(self, tmp_path):
        path = tmp_path / "missing.pth"
        with pytest.raises(MissingFileError, match="missing.pth"):
            VitFeatures(MODEL, weights=path, **TINY)
        with pytest.raises(FileNotFoundError):
            VitFeatures(MODEL, weights=str(path), **TINY)

    def test_garbage_weights_file(self, tmp_path):
        path = tmp_path / "garbage.pth"
        path.write_bytes(b"definitely not a checkpoint")
        with pytest.raises(ValueError, match="garbage.pth"):
            VitFeatures(MODEL, weights=path, **TINY)
        st = tmp_path / "garbage.safetensors"
        st.write_bytes(b"\x00" * 16)
        with pytest.raises(ValueError, match="garbage.safetensors"):
            VitFeatures(MODEL, weights=st, **TINY)

    def test_pickled_code_is_refused(self, tmp_path):
        path = tmp_path / "evil.pth"
        torch.save({"model": {"w": torch.zeros(1)}, "thing": socket.AddressFamily}, path)
        with pytest.raises(ValueError, match="evil.pth"):
            load_state_dict(path)

    def test_weights_of_another_model(self, tiny, tmp_path):
        other = timm.create_model(MODEL, num_classes=0, depth=2, embed_dim=48, num_heads=2)
        path = tmp_path / "wide.pth"
        torch.save(other.state_dict(), path)
        with pytest.raises(ValueError, match="do not fit"):
            VitFeatures(MODEL, weights=path, **TINY)

    def test_weights_with_missing_parameters(self, tiny, tmp_path):
        model, _ = tiny
        sd = {k: v for k, v in model.state_dict().items() if not k.startswith("blocks.1.attn.")}
        path = tmp_path / "partial.pth"
        torch.save(sd, path)
        with pytest.raises(ValueError, match=r"parameters missing, e\.g\. blocks\.1\.attn\."):
            VitFeatures(MODEL, weights=path, **TINY)

    def test_unknown_model(self, tiny):
        with pytest.raises(ValueError, match="unknown timm model 'vit_nonexistent_patch3'"):
            VitFeatures("vit_nonexistent_patch3", weights=tiny[1])

    def test_not_a_vit(self, tmp_path):
        model = timm.create_model("resnet18", num_classes=0)
        path = tmp_path / "r18.pth"
        torch.save(model.state_dict(), path)
        with pytest.raises(ValueError, match="not a Vision Transformer"):
            VitFeatures("resnet18", weights=path)

    @pytest.mark.parametrize("kwargs, match", [(dict(layer_output="values"), "layer_output"),
                                               (dict(dtype="float64"), "dtype"),
                                               (dict(max_side=0), "max_side"),
                                               (dict(device="potato"), "device")])
    def test_bad_options(self, tiny, kwargs, match):
        with pytest.raises(ValueError, match=match):
            VitFeatures(MODEL, weights=tiny[1], **TINY, **kwargs)

    def test_cuda_without_cuda(self, tiny):
        if torch.cuda.is_available():
            pytest.skip("a CUDA device is present")
        with pytest.raises(ValueError, match="no CUDA device"):
            VitFeatures(MODEL, weights=tiny[1], device="cuda", **TINY)

    def test_no_weights_and_nothing_cached(self, tmp_path, monkeypatch):
        """Offline (HF_HUB_OFFLINE): a clear error naming --weights; the network is never touched."""
        import huggingface_hub.constants

        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
        monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "torch"))

        def no_network(*args, **kwargs):
            raise AssertionError("VitFeatures tried to open a network connection")

        monkeypatch.setattr(socket, "socket", no_network)
        monkeypatch.setattr(socket, "create_connection", no_network)
        with pytest.raises(ValueError, match="--weights FILE") as info:
            VitFeatures(MODEL, **TINY)
        assert "HF_HUB_OFFLINE is set" in str(info.value)
        assert "timm/vit_small_patch8_224.dino" in str(info.value)  # where they come from


class TestCaches:
    def test_hugging_face_cache(self, tiny, tmp_path, monkeypatch):
        """Weights already in the HF cache are found offline."""
        import huggingface_hub.constants
        safetensors = pytest.importorskip("safetensors.torch")

        model, _ = tiny
        repo = tmp_path / "hf" / "models--timm--vit_small_patch8_224.dino"
        snap = repo / "snapshots" / "0123abcd"
        snap.mkdir(parents=True)
        (repo / "refs").mkdir()
        (repo / "refs" / "main").write_text("0123abcd")
        safetensors.save_file({k: v.contiguous() for k, v in model.state_dict().items()},
                              str(snap / "model.safetensors"))
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)  # online, yet cached: no download
        monkeypatch.setattr(socket, "socket", None)  # any network use would fail loudly
        ext = VitFeatures(MODEL, **TINY)
        assert ext.weights.endswith("model.safetensors")
        img = _image(32, 48)
        np.testing.assert_allclose(ext(img).features, _reference(model, img, (32, 48), False),
                                   rtol=1e-4, atol=1e-5)

    def test_torch_hub_cache(self, tiny, tmp_path, monkeypatch):
        import huggingface_hub.constants

        monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # found in a cache: nothing is downloaded

        model, _ = tiny
        ckpt = tmp_path / "torch" / "checkpoints" / "dino_deitsmall8_pretrain.pth"
        ckpt.parent.mkdir(parents=True)
        torch.save(model.state_dict(), ckpt)
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
        monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "torch"))
        ext = VitFeatures(MODEL, **TINY)
        assert ext.weights == str(ckpt)


@pytest.mark.gpu
def test_cuda_matches_cpu(tiny):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    _, path = tiny
    img = _image(481, 321)
    cpu = VitFeatures(MODEL, weights=path, layer_output="keys", **TINY)(img).features
    gpu = VitFeatures(MODEL, weights=path, layer_output="keys", device="cuda", **TINY)(img).features
    np.testing.assert_allclose(gpu, cpu, rtol=1e-3, atol=1e-3)
    half = VitFeatures(MODEL, weights=path, device="cuda", dtype="float16", **TINY)(img)
    assert half.features.dtype == np.float32 and np.isfinite(half.features).all()
