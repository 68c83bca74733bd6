"""Shared colour and texture words: DefaultFeatures.fit and Vocabulary."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from uniap.features import DefaultFeatures, Vocabulary, get_extractor


def _scene(seed: int, colours: np.ndarray, h: int = 64, w: int = 96) -> np.ndarray:
    """Noisy image of random rectangles painted with some of ``colours``."""
    rng = np.random.default_rng(seed)
    img = np.empty((h, w, 3))
    img[:] = colours[rng.integers(len(colours))]
    for _ in range(5):
        y, x = rng.integers(0, h - 16), rng.integers(0, w - 16)
        img[y:y + rng.integers(8, 40), x:x + rng.integers(8, 48)] = colours[rng.integers(len(colours))]
    img += rng.normal(0, 4, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


PALETTE = np.array([(200, 40, 40), (40, 60, 190), (30, 160, 50), (230, 220, 60), (90, 90, 90), (250, 250, 250)])


def _patch_colour_vectors(ex: DefaultFeatures, images: list[np.ndarray], colour: np.ndarray) -> list[np.ndarray]:
    """Each image's colour-histogram vectors at uniform patches of ``colour`` (centering off)."""
    out = []
    for img in images:
        f = ex(img).features[..., : ex.n_colors]
        cells = img.reshape(img.shape[0] // 8, 8, img.shape[1] // 8, 8, 3).astype(float)
        uniform = (np.abs(cells - colour).max(axis=(1, 3, 4)) < 20)
        if uniform.any():
            out.append(f[uniform].mean(0))
    return out


def test_shared_words_describe_a_colour_alike_in_every_image():
    images = [_scene(s, PALETTE) for s in range(6)]
    base = DefaultFeatures(n_colors=6, centering=0.0, texture_weight=0.0, position_weight=0.0)
    shared = base.fit(images)
    for colour in PALETTE[:3]:
        vecs = _patch_colour_vectors(shared, images, colour)
        assert len(vecs) >= 2
        for v in vecs[1:]:
            assert float(v @ vecs[0]) > 0.97  # unit vectors: the same words in every image
    # per-image words: channel k is a different colour in different images
    per_image = [_patch_colour_vectors(base, images, c) for c in PALETTE[:3]]
    assert min(float(v @ vs[0]) for vs in per_image for v in vs[1:]) < 0.5


def test_fit_is_deterministic_and_changes_only_the_vocabulary():
    images = [_scene(s, PALETTE) for s in range(3)]
    a = DefaultFeatures(sample_size=500).fit(images)
    b = DefaultFeatures(sample_size=500).fit(iter(images))  # any iterable, consumed once
    assert a.vocabulary == b.vocabulary and hash(a.vocabulary) == hash(b.vocabulary)
    assert a == b and a.vocabulary.images == 3
    assert DefaultFeatures(sample_size=500, vocabulary=a.vocabulary) == a
    assert a.vocabulary.color.shape == (16, 3) and a.vocabulary.texture.shape == (16, 6)
    np.testing.assert_array_equal(a(images[0]).features, b(images[0]).features)
    assert DefaultFeatures(sample_size=500, seed=1).fit(images).vocabulary != a.vocabulary


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**16), n_colors=st.integers(1, 8), n_textures=st.integers(1, 8),
       patch=st.sampled_from([4, 8, 16]), texture=st.booleans())
def test_shared_features_are_well_formed(seed, n_colors, n_textures, patch, texture):
    rng = np.random.default_rng(seed)
    images = [rng.integers(0, 256, (int(rng.integers(patch, 70)), int(rng.integers(patch, 70)), 3),
                           dtype=np.uint8) for _ in range(3)]
    ex = DefaultFeatures(patch_size=patch, n_colors=n_colors, n_textures=n_textures,
                         texture_weight=1.0 if texture else 0.0, sample_size=200).fit(images)
    for img in images + [np.full((24, 40, 3), 128, np.uint8)]:
        f = ex(img).features
        assert f.shape == (-(-img.shape[0] // patch), -(-img.shape[1] // patch), ex.dim)
        assert f.dtype == np.float32 and np.isfinite(f).all()
        parts = np.linalg.norm(f[..., :n_colors], axis=-1)
        assert np.all((np.abs(parts - 1) < 1e-4) | (parts < 1e-4))


def test_max_points_caps_the_clustered_sample():
    images = [_scene(s, PALETTE) for s in range(4)]
    small = DefaultFeatures(n_colors=4, n_textures=4).fit(images, max_points=50)
    assert small.vocabulary.color.shape == (4, 3)
    with pytest.raises(ValueError, match="max_points"):
        DefaultFeatures().fit(images, max_points=0)


def test_fit_needs_an_image():
    with pytest.raises(ValueError, match="at least one image"):
        DefaultFeatures().fit([])


def test_save_and_load_round_trip(tmp_path):
    ex = DefaultFeatures(sample_size=300).fit([_scene(0, PALETTE), _scene(1, PALETTE)])
    path = tmp_path / "words.npz"
    ex.vocabulary.save(path)
    assert [p.name for p in tmp_path.iterdir()] == ["words.npz"]  # no temporary file left
    loaded = Vocabulary.load(path)
    assert loaded == ex.vocabulary and repr(loaded) == "Vocabulary(16 colour words, 16 texture words, fitted on 2 images)"
    img = _scene(7, PALETTE)
    np.testing.assert_array_equal(DefaultFeatures(sample_size=300, vocabulary=loaded)(img).features,
                                  ex(img).features)
    assert get_extractor("default", vocabulary=loaded).vocabulary == loaded


def test_colour_only_vocabulary_round_trip(tmp_path):
    ex = DefaultFeatures(texture_weight=0.0, n_colors=5).fit([_scene(0, PALETTE)])
    assert ex.vocabulary.texture is None
    ex.vocabulary.save(tmp_path / "c.npz")
    assert Vocabulary.load(tmp_path / "c.npz").texture is None


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        Vocabulary.load(tmp_path / "missing.npz")
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not an npz file")
    with pytest.raises(ValueError, match="not a saved vocabulary"):
        Vocabulary.load(bad)
    other = tmp_path / "other.npz"
    np.savez(other, x=np.zeros(3))
    with pytest.raises(ValueError, match="not a saved vocabulary"):
        Vocabulary.load(other)
    plain = tmp_path / "plain.npy"
    np.save(plain, np.zeros((16, 3)))
    with pytest.raises(ValueError, match="not an .npz archive"):
        Vocabulary.load(plain)
    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, color=np.array([{"a": 1}], dtype=object), lightness_scale=0.7)
    with pytest.raises(ValueError, match="not a saved vocabulary"):
        Vocabulary.load(pickled)
    empty = tmp_path / "empty.npz"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match="not a saved vocabulary"):
        Vocabulary.load(empty)


def test_mismatched_settings_are_refused():
    vocab = DefaultFeatures(n_colors=4, n_textures=3, sample_size=300).fit([_scene(0, PALETTE)]).vocabulary
    with pytest.raises(ValueError, match="4 color words but n_colors is 16"):
        DefaultFeatures(n_textures=3, vocabulary=vocab)
    with pytest.raises(ValueError, match="3 texture words but n_textures is 5"):
        DefaultFeatures(n_colors=4, n_textures=5, vocabulary=vocab)
    with pytest.raises(ValueError, match="lightness_scale"):
        DefaultFeatures(n_colors=4, n_textures=3, lightness_scale=1.0, vocabulary=vocab)
    colour_only = Vocabulary(color=vocab.color, color_gap=vocab.color_gap)
    with pytest.raises(ValueError, match="no texture words"):
        DefaultFeatures(n_colors=4, vocabulary=colour_only)
    assert DefaultFeatures(n_colors=4, texture_weight=0.0, vocabulary=colour_only).dim == 6
    with pytest.raises(TypeError, match="Vocabulary"):
        DefaultFeatures(vocabulary={"color": vocab.color})
    with pytest.raises(ValueError, match=r"\(k, 3\)"):
        Vocabulary(color=np.zeros((4, 2)))
    with pytest.raises(ValueError, match="finite"):
        Vocabulary(color=np.full((4, 3), np.nan))
