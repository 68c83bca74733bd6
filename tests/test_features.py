"""uniap.features: image loading, FeatureGrid, the default extractor and the factory."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from uniap.features import (
    DefaultFeatures,
    FeatureExtractor,
    FeatureGrid,
    MissingFileError,
    extract,
    get_extractor,
    load_image,
    working_shape,
)

REPO = Path(__file__).resolve().parents[1]


def _data_dir() -> Path:
    path = Path(os.environ.get("UNIAP_DATA", REPO.parent / "shared" / "data"))
    if not path.is_dir():
        pytest.skip(f"real images not found at {path} (set UNIAP_DATA)")
    return path


def _bsds_image() -> Path:
    images = sorted((_data_dir() / "bsds500" / "images" / "val").glob("*.jpg"))
    if not images:
        pytest.skip("no BSDS500 val images in the data folder")
    return images[0]


def _cos(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return (u * v).sum(-1) / (np.linalg.norm(u, axis=-1) * np.linalg.norm(v, axis=-1) + 1e-12)


def _two_colour(h: int = 64, w: int = 96, seed: int = 0) -> np.ndarray:
    """Left half noisy red, right half noisy blue; the boundary at x = 48 (a patch boundary)."""
    rng = np.random.default_rng(seed)
    img = np.empty((h, w, 3), np.float64)
    img[:, : w // 2] = (200, 40, 40)
    img[:, w // 2:] = (40, 60, 190)
    img += rng.normal(0, 8, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


# -- load_image ---------------------------------------------------------------------------


class TestLoadImage:
    def test_uint8_rgb_passes_through(self):
        img = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
        out = load_image(img)
        assert out.dtype == np.uint8 and out.shape == (2, 3, 3)
        np.testing.assert_array_equal(out, img)

    @pytest.mark.parametrize("shape", [(5, 7), (5, 7, 1)])
    def test_gray_becomes_rgb(self, shape):
        img = np.arange(35, dtype=np.uint8).reshape(shape)
        out = load_image(img)
        assert out.shape == (5, 7, 3)
        np.testing.assert_array_equal(out[..., 0], out[..., 2])

    def test_rgba_drops_alpha(self):
        img = np.zeros((4, 4, 4), np.uint8)
        img[..., 1] = 9
        img[..., 3] = 0
        out = load_image(img)
        assert out.shape == (4, 4, 3) and (out[..., 1] == 9).all()

    def test_float_in_unit_range_is_scaled(self):
        out = load_image(np.array([[0.0, 0.5, 1.0]]))
        np.testing.assert_array_equal(out[0, :, 0], [0, 128, 255])

    def test_pil_image(self):
        from PIL import Image

        rgb = _two_colour(6, 8)
        np.testing.assert_array_equal(load_image(Image.fromarray(rgb).convert("RGBA")), rgb)

    def test_file_arrays_are_writable(self, tmp_path):
        from PIL import Image

        Image.fromarray(_two_colour(6, 8)).save(tmp_path / "a.png")
        assert load_image(tmp_path / "a.png").flags.writeable

    def test_bool_is_black_and_white(self):
        out = load_image(np.array([[True, False]]))
        np.testing.assert_array_equal(out[0, :, 0], [255, 0])

    @pytest.mark.parametrize(
        "bad, match",
        [
            (np.zeros((4, 4, 2), np.uint8), "shape"),
            (np.zeros(5, np.uint8), "shape"),
            (np.zeros((1, 4, 4, 3), np.uint8), "shape"),
            (np.zeros((0, 4, 3), np.uint8), "empty"),
            (np.full((2, 2), 1.5), r"\[0, 1\]"),
            (np.full((2, 2), np.nan), "NaN"),
        ],
    )
    def test_bad_arrays_raise_value_error(self, bad, match):
        with pytest.raises(ValueError, match=match):
            load_image(bad)

    def test_bad_dtype_and_type_raise_type_error(self):
        with pytest.raises(TypeError, match="dtype"):
            load_image(np.zeros((2, 2), np.uint16))
        with pytest.raises(TypeError, match="file path or a numpy array"):
            load_image([[0, 1]])

    @pytest.mark.parametrize("mode", ["RGB", "L", "RGBA", "P", "I;16", "1"])
    def test_files_of_every_mode(self, tmp_path, mode):
        from PIL import Image

        rgb = _two_colour(20, 30)
        img = Image.fromarray(rgb)
        if mode == "I;16":
            img = Image.fromarray(rgb[..., 0].astype(np.uint16) * 257)
        elif mode == "P":
            img = img.convert("P", palette=Image.Palette.ADAPTIVE, colors=8)
            img.info["transparency"] = 0
        else:
            img = img.convert(mode)
        path = tmp_path / "img.png"
        img.save(path)
        out = load_image(path)
        assert out.shape == (20, 30, 3) and out.dtype == np.uint8
        if mode == "I;16":
            np.testing.assert_array_equal(out[..., 0], rgb[..., 0])
        if mode == "RGB":
            np.testing.assert_array_equal(out, rgb)

    def test_exif_orientation_is_applied(self, tmp_path):
        from PIL import Image

        img = Image.fromarray(np.zeros((10, 20, 3), np.uint8))
        exif = Image.Exif()
        exif[0x0112] = 6  # rotate 90 degrees clockwise on display
        path = tmp_path / "rot.jpg"
        img.save(path, exif=exif.tobytes())
        assert load_image(str(path)).shape == (20, 10, 3)

    def test_missing_file(self, tmp_path):
        path = tmp_path / "nope.png"
        with pytest.raises(MissingFileError, match="nope.png"):
            load_image(path)
        with pytest.raises(FileNotFoundError):
            load_image(path)
        with pytest.raises(ValueError):
            load_image(str(path))

    def test_non_image_file(self, tmp_path):
        path = tmp_path / "notes.jpg"
        path.write_text("this is not an image")
        with pytest.raises(ValueError, match="notes.jpg") as info:
            load_image(path)
        assert type(info.value) is ValueError  # never a raw PIL error type

    def test_truncated_file(self, tmp_path):
        from PIL import Image

        path = tmp_path / "cut.png"
        Image.fromarray(_two_colour(40, 40)).save(path)
        path.write_bytes(path.read_bytes()[:200])
        with pytest.raises(ValueError, match="cut.png"):
            load_image(path)

    def test_directory(self, tmp_path):
        with pytest.raises(ValueError, match="directory"):
            load_image(tmp_path)

    def test_real_jpeg(self):
        path = _bsds_image()
        out = load_image(path)
        assert out.dtype == np.uint8 and out.ndim == 3 and out.shape[2] == 3
        assert sorted(out.shape[:2]) == [321, 481]


# -- FeatureGrid --------------------------------------------------------------------------


class TestFeatureGrid:
    def test_pad_mapping_is_exact(self):
        g = FeatureGrid(np.zeros((2, 3, 1), np.float32), 4, (8, 12), original_shape=(7, 10))
        assert g.fit == "pad" and g.grid_shape == (2, 3)
        cells = np.arange(6).reshape(2, 3)
        pix = g.to_image(cells)
        assert pix.shape == (7, 10)
        ys, xs = np.mgrid[0:7, 0:10]
        np.testing.assert_array_equal(pix, cells[ys // 4, xs // 4])

    def test_resize_mapping_samples_pixel_centres(self):
        g = FeatureGrid(np.zeros((3, 2, 1), np.float32), 8, (24, 16), original_shape=(25, 17),
                        resized_shape=(24, 16))
        assert g.fit == "resize"
        rows, cols = g.cell_index()
        np.testing.assert_array_equal(rows, np.floor((np.arange(25) + 0.5) * 3 / 25))
        np.testing.assert_array_equal(cols, np.floor((np.arange(17) + 0.5) * 2 / 17))
        stacked = g.to_image(np.ones((4, 3, 2)))
        assert stacked.shape == (4, 25, 17)

    def test_every_cell_reached(self):
        g = FeatureGrid(np.zeros((61, 41, 1), np.float32), 8, (488, 328), original_shape=(481, 321))
        pix = g.to_image(np.arange(61 * 41).reshape(61, 41))
        assert len(np.unique(pix)) == 61 * 41

    @pytest.mark.parametrize(
        "kwargs, match",
        [
            (dict(features=np.zeros((2, 2)), patch_size=4, image_shape=(8, 8)), "shape"),
            (dict(features=np.zeros((2, 2, 1)), patch_size=0, image_shape=(0, 0)), "patch_size"),
            (dict(features=np.zeros((2, 2, 1)), patch_size=4, image_shape=(8, 9)), "image_shape"),
            (dict(features=np.zeros((2, 2, 1)), patch_size=4, image_shape=(8, 8),
                  resized_shape=(3, 8)), "resized_shape"),
        ],
    )
    def test_validation(self, kwargs, match):
        with pytest.raises(ValueError, match=match):
            FeatureGrid(**kwargs)

    @given(h=st.integers(1, 9), w=st.integers(1, 9), p=st.integers(1, 9),
           dh=st.integers(0, 8), dw=st.integers(0, 8), resize=st.booleans())
    def test_mapping_properties(self, h, w, p, dh, dw, resize):
        """Every pixel lands in a valid cell; padding maps exactly; resizing to fewer pixels
        reaches every cell and keeps the order of rows and columns."""
        if resize:  # an original of any size resized to exactly the grid
            original = (max(h * p + dh * 3 - 4, 1), w * p + dw * 5)
            g = FeatureGrid(np.zeros((h, w, 1), np.float32), p, (h * p, w * p),
                            original_shape=original, resized_shape=(h * p, w * p))
        else:  # padded by less than a patch
            original = (h * p - min(dh, p - 1), w * p - min(dw, p - 1))
            g = FeatureGrid(np.zeros((h, w, 1), np.float32), p, (h * p, w * p),
                            original_shape=original)
        rows, cols = g.cell_index()
        assert rows.shape == (original[0],) and cols.shape == (original[1],)
        for idx, n in ((rows, h), (cols, w)):
            assert idx.min() >= 0 and idx.max() < n and (np.diff(idx) >= 0).all()
        if not resize:
            np.testing.assert_array_equal(rows, np.arange(original[0]) // p)
            assert rows[-1] == h - 1 and cols[-1] == w - 1  # less than a patch of padding
        elif original[0] >= h * p:
            assert len(np.unique(rows)) == h

    def test_to_image_checks_shape(self):
        g = FeatureGrid(np.zeros((2, 3, 1), np.float32), 4, (8, 12))
        with pytest.raises(ValueError, match="grid shape"):
            g.to_image(np.zeros((3, 2)))

    def test_working_shape(self):
        assert working_shape((481, 321), 8) is None
        assert working_shape((481, 321), 8, always=True) == (480, 320)
        assert working_shape((481, 321), 8, max_side=240) == (240, 160)
        assert working_shape((5, 3), 16, always=True) == (16, 16)
        assert working_shape((64, 32), 16, always=True) is None
        assert working_shape((100, 37), 8, always=True) == (96, 32)
        assert working_shape((1000, 10), 8, max_side=100) == (96, 8)


# -- DefaultFeatures ----------------------------------------------------------------------


class TestDefaultFeatures:
    def test_is_an_extractor(self):
        ext = DefaultFeatures()
        assert isinstance(ext, FeatureExtractor)
        assert ext.name == "default" and ext.patch_size == 8 and ext.dim == 34

    @pytest.mark.parametrize(
        "shape, grid",
        [((481, 321, 3), (61, 41)), ((100, 37, 3), (13, 5)), ((100, 37), (13, 5)),
         ((16, 24, 4), (2, 3)), ((5, 3, 3), (1, 1)), ((8, 8, 3), (1, 1))],
    )
    def test_shapes(self, shape, grid):
        rng = np.random.default_rng(1)
        img = rng.integers(0, 256, shape, dtype=np.uint8)
        g = DefaultFeatures()(img)
        assert g.features.shape == grid + (34,)
        assert g.features.dtype == np.float32 and g.features.flags.c_contiguous
        assert np.isfinite(g.features).all()
        assert g.image_shape == (grid[0] * 8, grid[1] * 8)
        assert g.original_shape == shape[:2] and g.fit == "pad"
        assert g.to_image(np.zeros(grid)).shape == shape[:2]

    def test_deterministic(self):
        img = _two_colour()
        a = DefaultFeatures()(img).features
        b = DefaultFeatures()(img.copy()).features
        np.testing.assert_array_equal(a, b)

    def test_deterministic_in_a_fresh_process(self, tmp_path):
        img = _two_colour()
        np.save(tmp_path / "img.npy", img)
        code = (
            "import sys, numpy as np; from uniap.features import DefaultFeatures; "
            "img = np.load(sys.argv[1]); np.save(sys.argv[2], DefaultFeatures()(img).features)"
        )
        subprocess.run([sys.executable, "-c", code, str(tmp_path / "img.npy"),
                        str(tmp_path / "out.npy")], check=True, cwd=REPO)
        fresh = np.load(tmp_path / "out.npy")
        np.testing.assert_array_equal(fresh, DefaultFeatures()(img).features)

    def test_normalisation(self):
        """Colour and texture parts have length = their weights; position is standardised."""
        ext = DefaultFeatures(color_weight=1.0, texture_weight=0.5, position_weight=0.3)
        f = ext(_two_colour(120, 80, seed=3)).features
        colour, texture, pos = f[..., :16], f[..., 16:32], f[..., 32:]
        np.testing.assert_allclose(np.linalg.norm(colour, axis=-1), 1.0, rtol=1e-5)
        np.testing.assert_allclose(np.linalg.norm(texture, axis=-1), 0.5, rtol=1e-5)
        flat = pos.reshape(-1, 2)
        np.testing.assert_allclose(flat.mean(0), 0.0, atol=1e-6)
        np.testing.assert_allclose(flat.std(0), 0.3 / np.sqrt(2), rtol=1e-5)

    def test_centering_removes_part_of_the_mean_histogram(self):
        """With centering c, the patches' mean direction keeps 1 - c of the mean histogram."""
        img = _two_colour(64, 64, seed=2)
        raw = DefaultFeatures(centering=0.0, texture_weight=0, position_weight=0)(img).features
        full = DefaultFeatures(centering=1.0, texture_weight=0, position_weight=0)(img).features
        assert (raw >= 0).all()  # plain histograms (scaled)
        assert (full < 0).any()
        # Fully centred, the red half and the blue half point in opposite directions.
        left, right = full[:, :4].reshape(-1, 16), full[:, 4:].reshape(-1, 16)
        # Colour parts are opposite, texture parts (the same noise) alike: about orthogonal.
        assert _cos(left.sum(0), right.sum(0)) < 0.2

    def test_two_regions_separate(self):
        """Same region: cosine near 1; across the boundary: low or negative."""
        f = DefaultFeatures()(_two_colour()).features  # grid 8 x 12, boundary after column 5
        c = f.shape[-1]
        left, right = f[:, :6].reshape(-1, c), f[:, 6:].reshape(-1, c)
        within = np.concatenate([_cos(left[:, None], left[None]).ravel(),
                                 _cos(right[:, None], right[None]).ravel()])
        assert np.median(within) > 0.8
        assert _cos(left[:, None], right[None]).max() < 0.3
        horiz, vert = _cos(f[:, :-1], f[:, 1:]), _cos(f[:-1], f[1:])
        inside = np.concatenate([horiz[:, :5].ravel(), horiz[:, 6:].ravel(), vert.ravel()])
        assert np.percentile(inside, 5) > 0.5  # noise textures make single patches differ a bit
        assert horiz[:, 5].max() < 0.0  # neighbours across the boundary
        # Pooled, each region is one direction: sums of a region's halves agree.
        assert _cos(left[::2].sum(0), left[1::2].sum(0)) > 0.95
        # Colour parts are opposite, texture parts (the same noise) alike: about orthogonal.
        assert _cos(left.sum(0), right.sum(0)) < 0.2

    def test_uniap_finds_the_two_regions(self):
        import uniap

        f = DefaultFeatures()(_two_colour()).features
        labels = uniap.segment(f).labels[-1]
        expected = np.zeros(labels.shape, labels.dtype)
        expected[:, 6:] = 1
        np.testing.assert_array_equal(labels, expected)

    def test_texture_separates_equal_colours(self):
        """Stripes and a flat area of the same mean colour differ in texture."""
        img = np.full((64, 128), 128, np.uint8)
        img[:, :64] = np.where((np.arange(64) // 2) % 2 == 0, 60, 196)[:, None]
        f = DefaultFeatures(color_weight=0.0, position_weight=0.0)(img).features
        left, right = f[1:-1, 1:7].reshape(-1, 16), f[1:-1, 9:15].reshape(-1, 16)
        assert _cos(left.sum(0), right.sum(0)) < 0.3
        assert np.median(_cos(left[:, None], left[None])) > 0.9

    def test_constant_image_is_finite(self):
        f = DefaultFeatures()(np.full((32, 40, 3), 77, np.uint8)).features
        assert np.isfinite(f).all()
        colour = f[..., :16].reshape(-1, 16)
        np.testing.assert_allclose(colour, colour[:1].repeat(len(colour), 0), atol=1e-6)

    def test_weights_drop_parts(self):
        img = _two_colour(32, 32)
        assert DefaultFeatures(texture_weight=0)(img).features.shape[-1] == 18
        assert DefaultFeatures(position_weight=0, n_colors=8)(img).features.shape[-1] == 24
        assert DefaultFeatures(color_weight=0, position_weight=0).dim == 16

    def test_patch_size(self):
        g = DefaultFeatures(patch_size=16)(np.zeros((50, 33, 3), np.uint8))
        assert g.features.shape[:2] == (4, 3) and g.image_shape == (64, 48)

    def test_max_side_resizes(self):
        g = DefaultFeatures(max_side=100)(np.zeros((481, 321, 3), np.uint8))
        assert g.fit == "resize" and g.image_shape == (96, 64)  # rounded down to multiples of 8
        assert g.features.shape[:2] == (12, 8) and g.original_shape == (481, 321)
        assert g.to_image(np.zeros((12, 8))).shape == (481, 321)

    def test_big_image_in_bands(self):
        """Images over the band size are processed in bands, with the same result per patch."""
        from uniap.features import default

        img = np.random.default_rng(5).integers(0, 256, (96, 64, 3), dtype=np.uint8)
        whole = DefaultFeatures()(img).features
        old = default._CHUNK_PIXELS
        try:
            default._CHUNK_PIXELS = 8 * 64 * 3  # three patch rows per band
            banded = DefaultFeatures()(img).features
        finally:
            default._CHUNK_PIXELS = old
        np.testing.assert_allclose(banded, whole, rtol=1e-5, atol=1e-6)

    @pytest.mark.parametrize(
        "kwargs, match",
        [
            (dict(patch_size=0), "patch_size"),
            (dict(patch_size=2.5), "patch_size"),
            (dict(n_colors=0), "n_colors"),
            (dict(centering=1.5), "centering"),
            (dict(color_weight=-1), "color_weight"),
            (dict(texture_softness=float("nan")), "texture_softness"),
            (dict(color_softness=0), "color_softness"),
            (dict(max_side=0), "max_side"),
            (dict(color_weight=0, texture_weight=0, position_weight=0), "all 0"),
        ],
    )
    def test_bad_parameters(self, kwargs, match):
        with pytest.raises(ValueError, match=match):
            DefaultFeatures(**kwargs)

    def test_reads_files_and_reports_bad_ones(self, tmp_path):
        g = DefaultFeatures()(_bsds_image())
        assert g.features.shape in ((61, 41, 34), (41, 61, 34))
        bad = tmp_path / "bad.png"
        bad.write_bytes(b"\x89PNG not really")
        with pytest.raises(ValueError, match="bad.png"):
            DefaultFeatures()(bad)

    def test_real_image_regions(self):
        """On a real photograph, neighbours agree more often than random pairs."""
        f = DefaultFeatures()(_bsds_image()).features
        neighbours = np.concatenate([_cos(f[:, :-1], f[:, 1:]).ravel(),
                                     _cos(f[:-1], f[1:]).ravel()])
        flat = f.reshape(-1, f.shape[-1])
        rng = np.random.default_rng(0)
        i, j = rng.integers(0, len(flat), (2, 2000))
        assert np.median(neighbours) > np.median(_cos(flat[i], flat[j])) + 0.3


# -- factory ------------------------------------------------------------------------------


class TestFactory:
    def test_get_extractor_default(self):
        ext = get_extractor("default", patch_size=4, max_side=None)
        assert isinstance(ext, DefaultFeatures) and ext.patch_size == 4

    def test_get_extractor_unknown(self):
        with pytest.raises(ValueError, match="unknown feature extractor 'sift'"):
            get_extractor("sift")

    def test_get_extractor_unknown_parameter(self):
        with pytest.raises(TypeError):
            get_extractor("default", layer_output="keys")

    def test_extract(self):
        img = _two_colour(16, 16)
        g = extract(img)
        np.testing.assert_array_equal(g.features, DefaultFeatures()(img).features)
        assert extract(img, "default").name == "default"
        assert extract(img, DefaultFeatures(patch_size=4)).features.shape[:2] == (4, 4)

    def test_import_is_light(self):
        code = (
            "import sys, uniap.features; "
            "bad = [m for m in ('torch', 'timm') if m in sys.modules]; "
            "print(','.join(bad))"
        )
        out = subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO,
                             capture_output=True, text=True).stdout.strip()
        assert out == "", f"importing uniap.features loaded {out}"
