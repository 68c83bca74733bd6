"""DefaultFeatures on big images: banded, bounded in memory, and bit-identical to the whole-image code.

``uniap.features.default`` computes the per-pixel descriptors of a big image band by band (with
halos for the texture filters), fits the words on descriptors computed at the sampled pixels
only, and never pads the image into a copy.  The reference below is the whole-image pipeline as
it was before that change, copied verbatim (only renamed, and with the band size of the soft
assignment as an argument), except k-means, which banding did not change and which is checked
on its own against independent references: every feature must equal it bit for bit.
"""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from uniap.features import DefaultFeatures, default
from uniap.features.base import working_shape
from uniap.features.image import load_image

# --------------------------------------------------------------------------------------------
# Reference: the whole-image implementation (uniap/features/default.py before banding).
# --------------------------------------------------------------------------------------------

_REF_EPS = 1e-12
_REF_TEXTURE_SIGMAS = (1.0, 2.0)
_REF_SAMPLES_PER_SIDE = 8
_REF_SRGB_TO_XYZ = np.array([[0.412453, 0.357580, 0.180423],
                             [0.212671, 0.715160, 0.072169],
                             [0.019334, 0.119193, 0.950227]])
_REF_D65 = np.array([0.95047, 1.0, 1.08883])
_REF_XYZ_NORMALISED = (_REF_SRGB_TO_XYZ / _REF_D65[:, None]).astype(np.float32)


def _ref_linear_srgb_table():
    c = np.arange(256) / 255.0
    return np.where(c > 0.04045, ((c + 0.055) / 1.055) ** 2.4, c / 12.92).astype(np.float32)


_REF_LINEAR_SRGB = _ref_linear_srgb_table()
_REF_WORD_SETTINGS = {
    "color": lambda o: (o.n_colors, o.color_softness, o.color_weight),
    "texture": lambda o: (o.n_textures, o.texture_softness, o.texture_weight),
}


def _ref_resize_rgb(rgb, shape):
    from skimage.transform import resize

    out = resize(rgb, shape, order=1, anti_aliasing=True, preserve_range=True)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _ref_working_image(opts, rgb):
    p = opts.patch_size
    shape = working_shape(rgb.shape[:2], p, opts.max_side)
    if shape is not None:
        rgb = _ref_resize_rgb(rgb, shape)
    return np.pad(rgb, ((0, -rgb.shape[0] % p), (0, -rgb.shape[1] % p), (0, 0)), mode="symmetric")


def _ref_features(opts, image, chunk=1 << 20):
    """``DefaultFeatures(...)(image).features`` as computed before banding."""
    rgb = _ref_working_image(opts, load_image(image))
    p = opts.patch_size
    H, W = rgb.shape[:2]
    h, w = H // p, W // p
    stride = _ref_stride(p)
    descriptors = _ref_descriptors(rgb, opts)
    vocab = opts.vocabulary
    if vocab is None:
        rng = np.random.default_rng(opts.seed)
        n_sampled = (H // stride) * (W // stride)
        sample = rng.choice(n_sampled, size=min(opts.sample_size, n_sampled), replace=False)
    parts = []
    for kind, desc in descriptors.items():
        k, softness, weight = _REF_WORD_SETTINGS[kind](opts)
        if vocab is None:
            centres, gap = _ref_fit_words(desc.reshape(desc.shape[0], -1)[:, sample].T, k, rng)
            tau = _ref_tau(softness, gap)
        else:
            centres, tau = getattr(vocab, kind), _ref_tau(softness, getattr(vocab, f"{kind}_gap"))
        hist = _ref_soft_histograms(desc, centres, tau, p // stride, chunk)
        parts.append(_ref_normalise(hist, opts.centering, weight))
    if opts.position_weight:
        parts.append(_ref_position(h, w, opts.position_weight))
    return np.ascontiguousarray(np.concatenate(parts, axis=-1), dtype=np.float32)


def _ref_fit(opts, images, max_points=200_000):
    """The words ``DefaultFeatures.fit`` found before banding: {kind: (words, gap)}."""
    rng = np.random.default_rng(opts.seed)
    pooled = {}
    for image in images:
        rgb = _ref_working_image(opts, load_image(image))
        for kind, desc in _ref_descriptors(rgb, opts).items():
            flat = desc.reshape(desc.shape[0], -1)
            take = rng.choice(flat.shape[1], size=min(opts.sample_size, flat.shape[1]), replace=False)
            pooled.setdefault(kind, []).append(flat[:, take].T)
    words = {}
    for kind, parts in pooled.items():
        pts = np.concatenate(parts)
        if len(pts) > max_points:
            pts = pts[rng.choice(len(pts), size=max_points, replace=False)]
        k, _, _ = _REF_WORD_SETTINGS[kind](opts)
        words[kind] = _ref_fit_words(pts, k, rng, iters=20)
    return words


def _ref_descriptors(rgb, opts):
    stride = _ref_stride(opts.patch_size)
    lab = _ref_rgb2lab(rgb)
    out = {}
    if opts.color_weight:
        out["color"] = lab * np.array([opts.lightness_scale, 1.0, 1.0], np.float32)[:, None, None]
    if opts.texture_weight:
        tex = _ref_texture_responses(lab[0])
        norm = np.sqrt(np.einsum("kij,kij->ij", tex, tex))
        tex *= np.log1p(norm / np.float32(3.0)) / np.maximum(norm, np.float32(1e-6))
        out["texture"] = tex
    if stride > 1:
        out = {kind: np.ascontiguousarray(d[:, ::stride, ::stride]) for kind, d in out.items()}
    return out


def _ref_texture_responses(light):
    from scipy.ndimage import gaussian_filter1d

    out = np.empty((3 * len(_REF_TEXTURE_SIGMAS),) + light.shape, np.float32)
    tmp = np.empty(light.shape, np.float32)
    for i, sigma in enumerate(_REF_TEXTURE_SIGMAS):
        dx, dy, log = out[3 * i], out[3 * i + 1], out[3 * i + 2]
        smooth_y = gaussian_filter1d(light, sigma, axis=0)
        gaussian_filter1d(smooth_y, sigma, axis=1, order=1, output=dx)
        gaussian_filter1d(smooth_y, sigma, axis=1, order=2, output=log)
        smooth_x = gaussian_filter1d(light, sigma, axis=1)
        gaussian_filter1d(smooth_x, sigma, axis=0, order=1, output=dy)
        gaussian_filter1d(smooth_x, sigma, axis=0, order=2, output=tmp)
        log += tmp
    return out


def _ref_stride(p):
    stride = max(1, p // _REF_SAMPLES_PER_SIDE)
    return stride if p % stride == 0 else 1


def _ref_rgb2lab(rgb):
    H, W = rgb.shape[:2]
    linear = _REF_LINEAR_SRGB[rgb.reshape(-1, 3)]
    xyz = _REF_XYZ_NORMALISED @ linear.T
    small = xyz <= np.float32(0.008856)
    f = np.cbrt(xyz)
    if small.any():
        f[small] = xyz[small] * np.float32(7.787) + np.float32(16.0 / 116.0)
    lab = np.empty((3, H * W), np.float32)
    np.multiply(f[1], np.float32(116.0), out=lab[0])
    lab[0] -= np.float32(16.0)
    np.subtract(f[0], f[1], out=lab[1])
    lab[1] *= np.float32(500.0)
    np.subtract(f[1], f[2], out=lab[2])
    lab[2] *= np.float32(200.0)
    return lab.reshape(3, H, W)


def _ref_fit_words(pts, k, rng, iters=8):
    pts = np.asarray(pts, np.float64)
    centres = _ref_kmeans(pts, k, rng, iters)
    if k == 1:
        return centres, 1.0
    two = np.partition(_ref_sq_dist(pts, centres), 1, axis=1)[:, :2]
    return centres, float(np.median(two[:, 1] - two[:, 0]))


def _ref_tau(softness, gap):
    return softness * gap if gap > 1e-6 else 1.0


def _ref_soft_histograms(desc, centres, tau, p, chunk):
    d, H, W = desc.shape
    h, w = H // p, W // p
    k = centres.shape[0]
    flat = desc.reshape(d, H * W)
    weight = (2.0 / tau * centres).astype(np.float32)
    bias = ((centres * centres).sum(1) / tau).astype(np.float32)[:, None]
    out = np.empty((k, h, w), np.float32)
    band = max(1, chunk // (p * W))
    for r0 in range(0, h, band):
        r1 = min(h, r0 + band)
        a = weight @ flat[:, r0 * p * W: r1 * p * W]
        a -= bias
        a -= a.max(axis=0)
        np.exp(a, out=a)
        a *= np.float32(1.0) / a.sum(axis=0)
        a = a.reshape(k * (r1 - r0), p, W).sum(axis=1)
        out[:, r0:r1] = a.reshape(k, r1 - r0, w, p).sum(axis=3)
    out *= np.float32(1.0 / (p * p))
    return out.transpose(1, 2, 0)


def _ref_kmeans(pts, k, rng, iters=8):
    # Not copied: the library's own k-means, which banding did not touch.  A copy of it here
    # would compare the code with itself; test_kmeans_is_kmeans_plus_plus_then_lloyd checks it
    # against independent references (a brute-force seeding, SciPy's Lloyd iterations).
    return default._kmeans(pts, k, rng, iters)


def _ref_sq_dist(x, c):
    d = (x * x).sum(1)[:, None] - 2.0 * (x @ c.T) + (c * c).sum(1)[None, :]
    return np.maximum(d, 0.0)


def _ref_normalise(hist, centering, weight):
    k = hist.shape[-1]
    x = hist - np.float32(centering) * hist.reshape(-1, k).mean(0)
    norm = np.sqrt(np.einsum("ijk,ijk->ij", x, x))[..., None]
    return x * (np.float32(weight) / np.maximum(norm, np.float32(_REF_EPS)))


def _ref_position(h, w, weight):
    out = np.zeros((h, w, 2), np.float32)
    for axis, n in ((0, h), (1, w)):
        if n > 1:
            coord = np.arange(n, dtype=np.float64)
            z = (coord - coord.mean()) / coord.std()
            out[..., axis] = (z[:, None] if axis == 0 else z[None, :]) * (weight / np.sqrt(2.0))
    return out


# --------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------


def _structured(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A natural image (astronaut) resized to h x w, with a little noise: colours and texture."""
    from PIL import Image
    from skimage import data

    img = np.asarray(Image.fromarray(data.astronaut()).resize((w, h), Image.BILINEAR), np.int16)
    img = img + np.random.default_rng(seed).integers(-6, 7, img.shape, dtype=np.int16)
    return np.clip(img, 0, 255).astype(np.uint8)


def _small_images() -> dict[str, np.ndarray]:
    from skimage import data

    rng = np.random.default_rng(3)
    return {
        "coffee": data.coffee(),  # 400 x 600
        "astronaut": data.astronaut(),  # 512 x 512
        "camera": data.camera(),  # gray 512 x 512
        "odd": data.chelsea()[:301, :77],  # padded on both sides
        "row": rng.integers(0, 256, (1, 97, 3), dtype=np.uint8),
        "column": rng.integers(0, 256, (203, 1, 3), dtype=np.uint8),
        "tiny": rng.integers(0, 256, (3, 5, 3), dtype=np.uint8),
    }


SMALL = _small_images()

CONFIGS = [
    {},
    {"patch_size": 16},
    {"patch_size": 32},
    {"patch_size": 4},
    {"max_side": 200},
    {"texture_weight": 0.0},
    {"color_weight": 0.0, "position_weight": 0.0},
    {"n_colors": 5, "n_textures": 3, "sample_size": 50, "seed": 7, "centering": 1.0},
    {"sample_size": 1, "n_colors": 1, "n_textures": 1},
]


def _config_id(kwargs: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in kwargs.items()) or "defaults"


def _assert_identical(got: np.ndarray, want: np.ndarray) -> None:
    assert got.shape == want.shape and got.dtype == want.dtype == np.float32
    assert got.flags.c_contiguous
    # bit for bit: same bytes (NaN never occurs, but would compare equal here too)
    assert got.tobytes() == want.tobytes(), f"max |diff| {np.abs(got - want).max()}"


@pytest.fixture
def chunk(monkeypatch):
    """Set the band size (pixels) of the module under test; the reference gets the same."""
    def set_chunk(pixels: int) -> int:
        monkeypatch.setattr(default, "_CHUNK_PIXELS", pixels)
        return pixels
    return set_chunk


# --------------------------------------------------------------------------------------------
# Bit-identity
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(SMALL))
@pytest.mark.parametrize("kwargs", CONFIGS, ids=_config_id)
def test_small_images_match_the_whole_image_code(name, kwargs):
    ex = DefaultFeatures(**kwargs)
    _assert_identical(ex(SMALL[name]).features, _ref_features(ex, SMALL[name]))


@pytest.mark.parametrize("name", ["coffee", "odd", "row", "column", "tiny"])
@pytest.mark.parametrize("kwargs", CONFIGS, ids=_config_id)
@pytest.mark.parametrize("pixels", [8 * 608 * 3, 5000, 64])
def test_many_bands_match_the_whole_image_code(name, kwargs, pixels, chunk):
    """Small bands: descriptors by bands with halos, words from the sampled pixels' windows."""
    chunk(pixels)
    ex = DefaultFeatures(**kwargs)
    _assert_identical(ex(SMALL[name]).features, _ref_features(ex, SMALL[name], chunk=pixels))


@pytest.mark.parametrize("shape", [(1025, 1024), (1040, 1024), (1024, 1024), (2100, 500)])
def test_band_boundaries_at_the_default_band_size(shape):
    """1024 wide: 128 patch rows (1024 pixel rows) per band; one row of patches over it, and more."""
    img = _structured(*shape, seed=shape[0])
    ex = DefaultFeatures()
    _assert_identical(ex(img).features, _ref_features(ex, img))


@settings(max_examples=40)
@given(h=st.integers(1, 90), w=st.integers(1, 90), p=st.sampled_from([1, 2, 4, 8, 16]),
       pixels=st.integers(1, 3000), seed=st.integers(0, 3))
def test_random_shapes_and_bands_match(h, w, p, pixels, seed):
    img = _structured(h, w, seed)
    old = default._CHUNK_PIXELS
    default._CHUNK_PIXELS = pixels
    try:
        ex = DefaultFeatures(patch_size=p, sample_size=200, seed=seed)
        got = ex(img).features
    finally:
        default._CHUNK_PIXELS = old
    _assert_identical(got, _ref_features(ex, img, chunk=pixels))


@pytest.mark.parametrize("pixels", [None, 8 * 608 * 3, 64])
@pytest.mark.parametrize("kwargs", [{}, {"patch_size": 16, "sample_size": 400}])
def test_shared_vocabulary_matches(pixels, kwargs, chunk):
    if pixels is not None:
        chunk(pixels)
    images = [SMALL["coffee"], SMALL["astronaut"], SMALL["odd"], SMALL["tiny"]]
    ex = DefaultFeatures(**kwargs)
    shared = ex.fit(images)
    want = _ref_fit(ex, images)
    vocab = shared.vocabulary
    for kind in ("color", "texture"):
        words, gap = want[kind]
        assert getattr(vocab, kind).tobytes() == words.tobytes()
        assert getattr(vocab, f"{kind}_gap") == gap
    for name in ("coffee", "camera", "row"):
        _assert_identical(shared(SMALL[name]).features,
                          _ref_features(shared, SMALL[name], chunk=pixels or 1 << 20))


def test_shared_vocabulary_on_a_big_image():
    img = _structured(1100, 1024, seed=1)
    shared = DefaultFeatures().fit([img, SMALL["coffee"]])
    want = _ref_fit(DefaultFeatures(), [img, SMALL["coffee"]])
    assert shared.vocabulary.color.tobytes() == want["color"][0].tobytes()
    assert shared.vocabulary.texture.tobytes() == want["texture"][0].tobytes()
    _assert_identical(shared(img).features, _ref_features(shared, img))


# --------------------------------------------------------------------------------------------
# Memory
# --------------------------------------------------------------------------------------------


def _peak_bytes(fn):
    tracemalloc.start()
    try:
        result = fn()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_memory_is_bounded_by_the_image_not_by_whole_image_temporaries(chunk):
    """No float copy of the whole image: the peak is a small multiple of its uint8 bytes.

    With bands of 64 Ki pixels the temporaries of a band are small; what is left is the
    histograms and the output (about 5 MB at 1500 x 1500), the sampled pixels' windows and
    rounding.  The whole-image code needs Lab (12 bytes a pixel), six texture responses (24)
    and more: over 20 times the image's 6.75 MB.
    """
    chunk(1 << 16)
    img = _structured(1500, 1500)
    ex = DefaultFeatures()
    ex(img[:64, :64])  # imports and first-call allocations outside the measurement
    grid, peak = _peak_bytes(lambda: ex(img))
    bound = 3 * img.nbytes + 3 * grid.features.nbytes
    assert peak < bound, f"peak {peak / 1e6:.1f} MB, bound {bound / 1e6:.1f} MB"
    _, ref_peak = _peak_bytes(lambda: _ref_features(ex, img, chunk=1 << 16))
    assert ref_peak > bound  # the bound does tell the two apart

    shared = ex.fit([img[:64, :64]])
    grid, peak = _peak_bytes(lambda: shared(img))
    assert peak < bound, f"with shared words: peak {peak / 1e6:.1f} MB, bound {bound / 1e6:.1f} MB"
    _, peak = _peak_bytes(lambda: ex.fit([img]))
    assert peak < 3 * img.nbytes, f"fit: peak {peak / 1e6:.1f} MB"


def _brute_force_seeds(pts, k, rng):
    """k-means++ seeding by its definition, point by point: the first centre uniform, each next
    one drawn with probability proportional to D(x)^2, the squared distance to the nearest
    centre chosen so far (Arthur & Vassilvitskii, 2007), drawing from ``rng`` as uniap does."""
    n = len(pts)
    chosen = [int(rng.integers(n))]
    for _ in range(1, k):
        d2 = np.array([min(float(np.sum((x - pts[c]) ** 2)) for c in chosen) for x in pts])
        chosen.append(int(rng.choice(n, p=d2 / d2.sum())) if d2.sum() > 0 else int(rng.integers(n)))
    return pts[chosen].copy()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kmeans_is_kmeans_plus_plus_then_lloyd(seed):
    """``default._kmeans`` against independent references: the brute-force seeding above, then
    SciPy's Lloyd iterations (``kmeans2`` from those seeds; an empty cluster keeps its centre in
    both), on points in well-separated blobs where no assignment is a near tie."""
    from scipy.cluster.vq import kmeans2

    data_rng = np.random.default_rng(100 + seed)
    k, iters = 5, 20
    blobs = data_rng.normal(scale=20.0, size=(k + 2, 3))
    pts = (blobs[data_rng.integers(k + 2, size=300)] + data_rng.normal(size=(300, 3))).astype(np.float64)
    got = default._kmeans(pts, k, np.random.default_rng(seed), iters)
    seeds = _brute_force_seeds(pts, k, np.random.default_rng(seed))
    with np.errstate(all="ignore"):
        want, _ = kmeans2(pts, seeds, iter=iters, minit="matrix", missing="warn")
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9)
    # and Lloyd's fixed point: each centre is the mean of the points nearest to it
    label = np.argmin(((pts[:, None, :] - got[None]) ** 2).sum(-1), axis=1)
    for j in np.unique(label):
        np.testing.assert_allclose(got[j], pts[label == j].mean(0), rtol=1e-9, atol=1e-9)
