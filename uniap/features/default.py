"""The embedded default features: per-patch colour and texture histograms, no weights.

Each patch is described by how its pixels distribute over a small per-image vocabulary of
colours and of local textures ("textons", as in Malik et al. 2001 and the gPb detector of
Arbelaez et al. 2011), plus a weak position term.  The choice is driven by how UniAP uses
features: it merges neighbouring nodes whose *summed* features have cosine similarity above a
threshold.  A histogram is exactly what summing does well (the sum of the patch histograms of a
region is the region's histogram), cosine between histograms is a natural region similarity,
and a textured region (stripes, foliage) has the same mixed histogram in every patch, so it
merges although its pixels differ.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import ClassVar, Iterable

import numpy as np

from .base import FeatureGrid, working_shape
from .image import ImageLike, load_image

__all__ = ["DefaultFeatures", "Vocabulary"]

_EPS = 1e-12
_CHUNK_PIXELS = 1 << 20  # soft assignment is done in bands of patch rows of about this many pixels
_TEXTURE_SIGMAS = (1.0, 2.0)  # scales (pixels) of the Gaussian-derivative filter bank


@dataclass(frozen=True)
class DefaultFeatures:
    """Colour and texture histograms per patch: the embedded default extractor (no weights).

    For an image padded (symmetric reflection) at the bottom and right to multiples of
    ``patch_size``:

    1. **Colour words.**  Pixels in CIELab (D65, as ``skimage.color.rgb2lab``; lightness scaled by
       ``lightness_scale`` so shading counts less than hue) are clustered into ``n_colors`` words
       by k-means on ``sample_size`` pixels drawn with a fixed seed.
    2. **Texture words.**  Gaussian-derivative responses of the lightness (d/dx, d/dy and the
       Laplacian of Gaussian at sigma 1 and 2 pixels, six per pixel), contrast-normalised as
       ``r * log(1 + |r| / 3) / |r|``, are clustered into ``n_textures`` words the same way.
    3. **Soft histograms.**  Every pixel is softly assigned to the words
       (``exp(-d^2 / tau)``, normalised; ``tau`` is ``softness`` times the median gap between a
       sampled pixel's nearest and second-nearest word), and the assignments are averaged over
       each patch: one colour and one texture histogram per patch.
    4. **Normalisation per image.**  From each histogram, ``centering`` times the image's mean
       histogram is subtracted (so the common words of an image count less and different
       regions get low or negative cosine), then each patch's colour part and texture part are
       scaled to unit length and weighted by ``color_weight`` and ``texture_weight``.
    5. **Position.**  The patch's row and column, standardised over the grid (zero mean, unit
       variance) and weighted by ``position_weight / sqrt(2)``, are appended.  The term is weak:
       neighbours have nearly the same position, but a region's summed feature remembers where
       its centroid is, which keeps large regions from chaining through the whole image.

    Parameters
    ----------
    patch_size : int, default 8
        Pixels per patch side ``p``.
    n_colors, n_textures : int, default 16
        Vocabulary sizes; the feature dimension is ``C = n_colors + n_textures + 2`` (34 by
        default; the position term's 2 are left out when ``position_weight`` is 0).
    color_weight, texture_weight : float, default 1.0
        Length of each patch's colour and texture part (0 drops the part).
    position_weight : float, default 0.3
        Weight of the positional term (0 drops it).
    centering : float, default 0.5
        Fraction of the image's mean histogram subtracted, in [0, 1].  0 leaves histograms
        non-negative (every cosine >= 0, so merging runs away at low thresholds); 1 centres
        them fully (unusual regions dominate, the rest fragments).
    lightness_scale : float, default 0.7
        Factor on L* before clustering colours.
    color_softness, texture_softness : float, default 2.0 and 1.0
        Softness of the assignment of pixels to words (larger: smoother histograms).
    sample_size : int, default 3000
        Pixels sampled per image to fit the vocabularies.
    seed : int, default 0
        Seed of the sampling and of k-means++; the output is a deterministic function of the
        image and the parameters.
    max_side : int, optional
        If given and the image's longer side exceeds it, the image is first downscaled
        (antialiased bilinear) by ``max_side / max(H, W)``, each side rounded down to a
        multiple of ``patch_size``; the grid's ``fit`` is then ``"resize"`` instead of ``"pad"``.

    Raises
    ------
    ValueError
        If a parameter is out of range (``patch_size``, ``n_colors``, ``n_textures``,
        ``sample_size``, ``max_side`` < 1; negative weights or ``lightness_scale``; softness
        not > 0; ``centering`` outside [0, 1]; every weight 0).

    Notes
    -----
    Quality: with UniAP at the default thresholds (0.8 .. 0.4), segmentation covering of
    BSDS500 val (100 images, best level for the whole set) is 0.541 (best level per image:
    0.578), against 0.527 (0.573) for Felzenszwalb and 0.483 (0.532) for SLIC + RAG merging,
    each given six scales.  Per-channel z-scores of linear statistics (Lab means and spreads,
    gradient energies), the first design, reached about 0.46 (0.51 with the position term):
    with centred linear features the cosine of two patches depends on where they lie relative
    to the image mean, so patches near the mean (often the largest region) get unstable
    directions and two different colours on the same side of the mean look alike.

    Cost: about 35 ms of CPU time for a 481x321 image on one core, linear in the pixel count;
    the soft assignment runs in bands of patch rows, so memory stays bounded on big images.

    References
    ----------
    .. [1] J. Malik, S. Belongie, T. Leung, J. Shi, "Contour and texture analysis for image
       segmentation", IJCV 43(1), 2001.  https://doi.org/10.1023/A:1011174803800
    .. [2] P. Arbelaez, M. Maire, C. Fowlkes, J. Malik, "Contour detection and hierarchical
       image segmentation", IEEE TPAMI 33(5), 2011.  https://doi.org/10.1109/TPAMI.2010.161

    Examples
    --------
    >>> from skimage import data
    >>> from uniap.features import DefaultFeatures
    >>> grid = DefaultFeatures()(data.astronaut())
    >>> grid.features.shape, grid.features.dtype, grid.patch_size, grid.image_shape
    ((64, 64, 34), dtype('float32'), 8, (512, 512))
    """

    patch_size: int = 8
    n_colors: int = 16
    n_textures: int = 16
    color_weight: float = 1.0
    texture_weight: float = 1.0
    position_weight: float = 0.3
    centering: float = 0.5
    lightness_scale: float = 0.7
    color_softness: float = 2.0
    texture_softness: float = 1.0
    sample_size: int = 3000
    seed: int = 0
    max_side: int | None = None
    vocabulary: Vocabulary | None = None

    name = "default"

    def __post_init__(self) -> None:
        for key in ("patch_size", "n_colors", "n_textures", "sample_size"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{key} must be an integer >= 1, got {value!r}")
        if self.max_side is not None and (
            isinstance(self.max_side, bool) or not isinstance(self.max_side, (int, np.integer))
            or self.max_side < 1
        ):
            raise ValueError(f"max_side must be None or an integer >= 1, got {self.max_side!r}")
        for key in ("color_weight", "texture_weight", "position_weight", "lightness_scale"):
            value = getattr(self, key)
            if not np.isfinite(value) or value < 0:
                raise ValueError(f"{key} must be a finite number >= 0, got {value!r}")
        for key in ("color_softness", "texture_softness"):
            value = getattr(self, key)
            if not np.isfinite(value) or value <= 0:
                raise ValueError(f"{key} must be a finite number > 0, got {value!r}")
        if not 0.0 <= self.centering <= 1.0:
            raise ValueError(f"centering must lie in [0, 1], got {self.centering!r}")
        if self.color_weight == 0 and self.texture_weight == 0 and self.position_weight == 0:
            raise ValueError("color_weight, texture_weight and position_weight are all 0")
        if self.vocabulary is not None:
            if not isinstance(self.vocabulary, Vocabulary):
                raise TypeError(f"vocabulary must be a Vocabulary, got {type(self.vocabulary).__name__}")
            self.vocabulary.check(self)

    def fit(self, images: Iterable[ImageLike], *, max_points: int = 200_000,
            progress: bool = False) -> DefaultFeatures:
        """A copy of this extractor whose words are fitted on ``images`` and shared by all images.

        Without a vocabulary each image gets its own colour and texture words, so channel ``k``
        is a different colour in every image: fine for segmenting one image, useless for
        comparing regions *across* images (training, semantic clustering).  ``fit`` samples
        ``sample_size`` pixels from every image (after the same resizing and padding as
        :meth:`__call__`), keeps at most ``max_points`` of them, and clusters them once; the
        copy then assigns every image's pixels to these words.  The mean-histogram centring
        (``centering``) stays per image.

        Parameters
        ----------
        images : iterable of str, path-like or ndarray
            Anything :func:`uniap.features.load_image` accepts.
        max_points : int, default 200000
            Most sampled pixels clustered (a uniform subsample of the pooled samples).
        progress : bool, default False
            Show a progress bar over the images.

        Returns
        -------
        DefaultFeatures
            Equal to this extractor except for :attr:`vocabulary`.

        Raises
        ------
        ValueError
            If ``images`` is empty or ``max_points`` < 1.

        Examples
        --------
        >>> from skimage import data
        >>> shared = DefaultFeatures().fit([data.astronaut(), data.coffee()])
        >>> shared.vocabulary
        Vocabulary(16 colour words, 16 texture words, fitted on 2 images)
        >>> shared(data.chelsea()).features.shape
        (38, 57, 34)
        """
        if isinstance(max_points, bool) or not isinstance(max_points, (int, np.integer)) or max_points < 1:
            raise ValueError(f"max_points must be an integer >= 1, got {max_points!r}")
        from tqdm.auto import tqdm

        rng = np.random.default_rng(self.seed)
        pooled: dict[str, list[np.ndarray]] = {}
        count = 0
        for image in tqdm(images, desc="vocabulary", unit="image", disable=not progress):
            rgb = self._working_image(load_image(image))
            for kind, desc in _descriptors(rgb, self).items():
                flat = desc.reshape(desc.shape[0], -1)
                take = rng.choice(flat.shape[1], size=min(self.sample_size, flat.shape[1]), replace=False)
                pooled.setdefault(kind, []).append(flat[:, take].T)
            count += 1
        if count == 0:
            raise ValueError("fit needs at least one image")
        words = {}
        for kind, parts in pooled.items():
            pts = np.concatenate(parts)
            if len(pts) > max_points:
                pts = pts[rng.choice(len(pts), size=max_points, replace=False)]
            k, _, _ = _WORD_SETTINGS[kind](self)
            words[kind] = _fit_words(pts, k, rng, iters=20)
        color, color_gap = words.get("color", (None, 1.0))
        texture, texture_gap = words.get("texture", (None, 1.0))
        vocab = Vocabulary(color=color, color_gap=color_gap, texture=texture, texture_gap=texture_gap,
                           lightness_scale=self.lightness_scale, images=count)
        return replace(self, vocabulary=vocab)

    @property
    def dim(self) -> int:
        """``C``, the length of each patch's feature vector."""
        return (
            (self.n_colors if self.color_weight else 0)
            + (self.n_textures if self.texture_weight else 0)
            + (2 if self.position_weight else 0)
        )

    def __call__(self, image: ImageLike) -> FeatureGrid:
        """Compute the feature grid of one image.

        Parameters
        ----------
        image : str, path-like or ndarray
            Anything :func:`uniap.features.load_image` accepts.

        Returns
        -------
        FeatureGrid
            ``features`` of shape (ceil(H / p), ceil(W / p), C), float32, or of the working
            image's shape over ``p`` when ``max_side`` shrinks the image.
        """
        rgb = load_image(image)
        original = rgb.shape[:2]
        shape = working_shape(original, self.patch_size, self.max_side)
        resized = original if shape is None else tuple(shape)
        rgb = self._working_image(rgb)
        feats = _histogram_features(rgb, self)
        return FeatureGrid(
            feats, self.patch_size, rgb.shape[:2], name=self.name, original_shape=original,
            resized_shape=resized,
        )

    def _working_image(self, rgb: np.ndarray) -> np.ndarray:
        """``rgb`` resized for ``max_side`` and padded to multiples of the patch size."""
        p = self.patch_size
        shape = working_shape(rgb.shape[:2], p, self.max_side)
        if shape is not None:
            rgb = _resize_rgb(rgb, shape)
        return np.pad(rgb, ((0, -rgb.shape[0] % p), (0, -rgb.shape[1] % p), (0, 0)), mode="symmetric")


@dataclass(frozen=True, eq=False, repr=False)
class Vocabulary:
    """Colour and texture words shared by every image a :class:`DefaultFeatures` describes.

    Made by :meth:`DefaultFeatures.fit`; saved and loaded as ``.npz`` files
    (:meth:`save`, :meth:`load`).  Equal vocabularies hold equal words.

    Attributes
    ----------
    color : ndarray (n_colors, 3) or None
        Colour words in CIELab with L* scaled by ``lightness_scale``.
    texture : ndarray (n_textures, 6) or None
        Texture words (contrast-normalised filter responses).
    color_gap, texture_gap : float
        Median gap between a sampled pixel's squared distances to its nearest and second-nearest
        word; the assignment's ``tau`` is the extractor's softness times this gap.
    lightness_scale : float
        The L* factor the colour words were fitted with (an extractor must use the same).
    images : int
        How many images the words were fitted on.
    """

    color: np.ndarray | None = None
    color_gap: float = 1.0
    texture: np.ndarray | None = None
    texture_gap: float = 1.0
    lightness_scale: float = 0.7
    images: int = 0

    _DIMS: ClassVar[dict[str, int]] = {"color": 3, "texture": 6}  # descriptor length per kind

    def __post_init__(self) -> None:
        for kind, d in self._DIMS.items():
            words = getattr(self, kind)
            if words is None:
                continue
            words = np.array(words, dtype=np.float64)
            if words.ndim != 2 or words.shape[0] < 1 or words.shape[1] != d or not np.isfinite(words).all():
                raise ValueError(f"vocabulary: {kind} words must be a finite (k, {d}) array, got shape "
                                 f"{words.shape}")
            words.setflags(write=False)
            object.__setattr__(self, kind, words)
            gap = float(getattr(self, f"{kind}_gap"))
            if not np.isfinite(gap) or gap < 0:
                raise ValueError(f"vocabulary: {kind}_gap must be a finite number >= 0, got {gap!r}")
            object.__setattr__(self, f"{kind}_gap", gap)

    def words(self, kind: str, softness: float) -> tuple[np.ndarray, float]:
        """The words of ``kind`` ("color" or "texture") and the assignment's ``tau``."""
        return getattr(self, kind), _tau(softness, getattr(self, f"{kind}_gap"))

    def check(self, extractor: DefaultFeatures) -> None:
        """Raise ValueError unless ``extractor``'s settings match these words."""
        for kind, (k, _, weight) in ((kind, f(extractor)) for kind, f in _WORD_SETTINGS.items()):
            if not weight:
                continue
            words = getattr(self, kind)
            if words is None:
                raise ValueError(f"vocabulary has no {kind} words but {kind}_weight is {weight}")
            if words.shape[0] != k:
                name = "n_colors" if kind == "color" else "n_textures"
                raise ValueError(f"vocabulary has {words.shape[0]} {kind} words but {name} is {k}")
        if extractor.color_weight and not np.isclose(extractor.lightness_scale, self.lightness_scale):
            raise ValueError(f"vocabulary was fitted with lightness_scale {self.lightness_scale} but the "
                             f"extractor uses {extractor.lightness_scale}")

    def _key(self) -> tuple:
        arrays = tuple(None if a is None else (a.shape, a.tobytes()) for a in (self.color, self.texture))
        return arrays + (self.color_gap, self.texture_gap, self.lightness_scale, self.images)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocabulary) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        parts = [f"{len(w)} {name} words" for w, name in ((self.color, "colour"), (self.texture, "texture"))
                 if w is not None]
        return f"Vocabulary({', '.join(parts)}, fitted on {self.images} images)"

    def save(self, path: str | os.PathLike) -> None:
        """Write the words to ``path`` (``.npz``), atomically."""
        from ..io import atomic_path

        arrays = {"lightness_scale": np.float64(self.lightness_scale), "images": np.int64(self.images)}
        for kind in self._DIMS:
            if getattr(self, kind) is not None:
                arrays[kind] = getattr(self, kind)
                arrays[f"{kind}_gap"] = np.float64(getattr(self, f"{kind}_gap"))
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, **arrays)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Vocabulary:
        """Read words written by :meth:`save`.

        Raises
        ------
        FileNotFoundError
            If ``path`` does not exist.
        ValueError
            If the file is not a saved vocabulary.
        """
        if not os.path.isfile(path):
            raise FileNotFoundError(f"vocabulary file not found: {path}")
        try:
            data = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError) as err:
            raise ValueError(f"{path} is not a saved vocabulary: {err}") from None
        if not isinstance(data, np.lib.npyio.NpzFile):  # a plain .npy array
            raise ValueError(f"{path} is not a saved vocabulary (an .npy array, not an .npz archive)")
        try:
            with data:
                fields = {key: data[key] for key in data.files}
        except (OSError, ValueError, EOFError) as err:
            raise ValueError(f"{path} is not a saved vocabulary: {err}") from None
        if "lightness_scale" not in fields or not any(kind in fields for kind in cls._DIMS):
            raise ValueError(f"{path} is not a saved vocabulary (no words in it)")
        kwargs = {"lightness_scale": float(fields["lightness_scale"]), "images": int(fields.get("images", 0))}
        for kind in cls._DIMS:
            if kind in fields:
                kwargs[kind] = fields[kind]
                kwargs[f"{kind}_gap"] = float(fields.get(f"{kind}_gap", 1.0))
        return cls(**kwargs)


def _resize_rgb(rgb: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Antialiased bilinear resize of a uint8 RGB image."""
    from skimage.transform import resize

    out = resize(rgb, shape, order=1, anti_aliasing=True, preserve_range=True)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _histogram_features(rgb: np.ndarray, opts: DefaultFeatures) -> np.ndarray:
    """Features of an image whose sides are multiples of the patch size (steps of the class doc)."""
    p = opts.patch_size
    H, W = rgb.shape[:2]
    h, w = H // p, W // p
    stride = _stride(p)
    descriptors = _descriptors(rgb, opts)
    vocab = opts.vocabulary
    if vocab is None:
        rng = np.random.default_rng(opts.seed)
        n_sampled = (H // stride) * (W // stride)
        sample = rng.choice(n_sampled, size=min(opts.sample_size, n_sampled), replace=False)
    parts = []
    for kind, desc in descriptors.items():
        k, softness, weight = _WORD_SETTINGS[kind](opts)
        if vocab is None:
            centres, gap = _fit_words(desc.reshape(desc.shape[0], -1)[:, sample].T, k, rng)
            tau = _tau(softness, gap)
        else:
            centres, tau = vocab.words(kind, softness)
        hist = _soft_histograms(desc, centres, tau, p // stride)
        parts.append(_normalise(hist, opts.centering, weight))
    if opts.position_weight:
        parts.append(_position(h, w, opts.position_weight))
    return np.ascontiguousarray(np.concatenate(parts, axis=-1), dtype=np.float32)


_WORD_SETTINGS = {  # kind -> (vocabulary size, softness, weight) of an extractor
    "color": lambda o: (o.n_colors, o.color_softness, o.color_weight),
    "texture": lambda o: (o.n_textures, o.texture_softness, o.texture_weight),
}


def _descriptors(rgb: np.ndarray, opts: DefaultFeatures) -> dict[str, np.ndarray]:
    """Per-pixel colour and texture descriptors (d, H / s, W / s) of the parts in use (s: stride)."""
    stride = _stride(opts.patch_size)
    lab = _rgb2lab(rgb)  # (3, H, W) float32
    out = {}
    if opts.color_weight:
        out["color"] = lab * np.array([opts.lightness_scale, 1.0, 1.0], np.float32)[:, None, None]
    if opts.texture_weight:
        tex = _texture_responses(lab[0])
        norm = np.sqrt(np.einsum("kij,kij->ij", tex, tex))
        tex *= np.log1p(norm / np.float32(3.0)) / np.maximum(norm, np.float32(1e-6))
        out["texture"] = tex
    if stride > 1:
        out = {kind: np.ascontiguousarray(d[:, ::stride, ::stride]) for kind, d in out.items()}
    return out


_SAMPLES_PER_SIDE = 8  # 8 x 8 pixels per patch in the histograms; 4 x 4 lost 0.03 covering


def _texture_responses(light: np.ndarray) -> np.ndarray:
    """d/dx, d/dy and Laplacian of Gaussian of ``light`` (H, W) at each sigma: (3 * S, H, W).

    Separable, sharing passes: the x-derivatives reuse the smoothing along y and vice versa, so
    each sigma costs six 1-D passes instead of eight (same values as ``gaussian_filter`` with
    ``order`` and ``gaussian_laplace``, up to rounding).
    """
    from scipy.ndimage import gaussian_filter1d

    out = np.empty((3 * len(_TEXTURE_SIGMAS),) + light.shape, np.float32)
    tmp = np.empty(light.shape, np.float32)
    for i, sigma in enumerate(_TEXTURE_SIGMAS):
        dx, dy, log = out[3 * i], out[3 * i + 1], out[3 * i + 2]
        smooth_y = gaussian_filter1d(light, sigma, axis=0)
        gaussian_filter1d(smooth_y, sigma, axis=1, order=1, output=dx)
        gaussian_filter1d(smooth_y, sigma, axis=1, order=2, output=log)
        smooth_x = gaussian_filter1d(light, sigma, axis=1)
        gaussian_filter1d(smooth_x, sigma, axis=0, order=1, output=dy)
        gaussian_filter1d(smooth_x, sigma, axis=0, order=2, output=tmp)
        log += tmp
    return out


def _stride(p: int) -> int:
    """Pixel stride of the histograms (1, i.e. every pixel, for patches up to 8 x 8)."""
    stride = max(1, p // _SAMPLES_PER_SIDE)
    return stride if p % stride == 0 else 1


# sRGB (D65) to CIELab, as skimage.color.rgb2lab, in float32 with a lookup table for the gamma
_SRGB_TO_XYZ = np.array([[0.412453, 0.357580, 0.180423],
                         [0.212671, 0.715160, 0.072169],
                         [0.019334, 0.119193, 0.950227]])
_D65 = np.array([0.95047, 1.0, 1.08883])
_XYZ_NORMALISED = (_SRGB_TO_XYZ / _D65[:, None]).astype(np.float32)


def _linear_srgb_table() -> np.ndarray:
    c = np.arange(256) / 255.0
    return np.where(c > 0.04045, ((c + 0.055) / 1.055) ** 2.4, c / 12.92).astype(np.float32)


_LINEAR_SRGB = _linear_srgb_table()


def _rgb2lab(rgb: np.ndarray) -> np.ndarray:
    """CIELab (D65, 2 degrees) of a uint8 RGB image, channels first: (3, H, W) float32."""
    H, W = rgb.shape[:2]
    linear = _LINEAR_SRGB[rgb.reshape(-1, 3)]  # (N, 3)
    xyz = _XYZ_NORMALISED @ linear.T  # (3, N): X/Xn, Y/Yn, Z/Zn
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


def _fit_words(pts: np.ndarray, k: int, rng: np.random.Generator,
               iters: int = 8) -> tuple[np.ndarray, float]:
    """``k`` k-means words of sampled descriptors ``pts`` (n, d) and their gap.

    The gap is the median, over the points, of the difference between the squared distances to
    the nearest and the second-nearest word (1 with a single word).
    """
    pts = np.asarray(pts, np.float64)
    centres = _kmeans(pts, k, rng, iters)
    if k == 1:
        return centres, 1.0
    two = np.partition(_sq_dist(pts, centres), 1, axis=1)[:, :2]
    return centres, float(np.median(two[:, 1] - two[:, 0]))


def _tau(softness: float, gap: float) -> float:
    """Temperature of the soft assignment: ``softness`` times the gap."""
    return softness * gap if gap > 1e-6 else 1.0  # no gap: (nearly) one colour, any tau will do


def _soft_histograms(desc: np.ndarray, centres: np.ndarray, tau: float, p: int) -> np.ndarray:
    """Per-patch mean of each pixel's soft assignment ``exp(-|x - c|^2 / tau)`` to the words.

    ``desc`` is (d, H, W) float32 with H, W multiples of ``p``, ``centres`` (k, d); returns
    (H/p, W/p, k) float32.  Channels-first throughout: reductions over the k words then run
    across rows, which NumPy does several times faster than along a short last axis.
    """
    d, H, W = desc.shape
    h, w = H // p, W // p
    k = centres.shape[0]
    flat = desc.reshape(d, H * W)
    # logit = -|x - c|^2 / tau up to a per-pixel constant (|x|^2 cancels in the normalisation)
    weight = (2.0 / tau * centres).astype(np.float32)  # (k, d)
    bias = ((centres * centres).sum(1) / tau).astype(np.float32)[:, None]
    out = np.empty((k, h, w), np.float32)
    band = max(1, _CHUNK_PIXELS // (p * W))  # patch rows per band: bounds memory on big images
    for r0 in range(0, h, band):
        r1 = min(h, r0 + band)
        a = weight @ flat[:, r0 * p * W: r1 * p * W]
        a -= bias
        a -= a.max(axis=0)
        np.exp(a, out=a)
        a *= np.float32(1.0) / a.sum(axis=0)
        a = a.reshape(k * (r1 - r0), p, W).sum(axis=1)  # sum the p rows of each patch
        out[:, r0:r1] = a.reshape(k, r1 - r0, w, p).sum(axis=3)  # and its p columns
    out *= np.float32(1.0 / (p * p))
    return out.transpose(1, 2, 0)


def _kmeans(pts: np.ndarray, k: int, rng: np.random.Generator, iters: int = 8) -> np.ndarray:
    """Lloyd's k-means with k-means++ seeding on a small sample (float64, deterministic)."""
    n, d = pts.shape
    centres = np.empty((k, d))
    centres[0] = pts[rng.integers(n)]
    closest = ((pts - centres[0]) ** 2).sum(1)
    for j in range(1, k):
        total = closest.sum()
        i = rng.choice(n, p=closest / total) if total > 0 else rng.integers(n)
        centres[j] = pts[i]
        np.minimum(closest, ((pts - pts[i]) ** 2).sum(1), out=closest)
    for _ in range(iters):
        label = ((centres * centres).sum(1) - 2.0 * (pts @ centres.T)).argmin(1)
        count = np.bincount(label, minlength=k)
        sums = np.stack([np.bincount(label, pts[:, c], minlength=k) for c in range(d)], axis=1)
        filled = count > 0  # an empty cluster keeps its centre
        centres[filled] = sums[filled] / count[filled, None]
    return centres


def _sq_dist(x: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances (n, k) between rows of ``x`` and of ``c``."""
    d = (x * x).sum(1)[:, None] - 2.0 * (x @ c.T) + (c * c).sum(1)[None, :]
    return np.maximum(d, 0.0)


def _normalise(hist: np.ndarray, centering: float, weight: float) -> np.ndarray:
    """Subtract ``centering`` x the mean histogram, scale each patch to length ``weight``."""
    k = hist.shape[-1]
    x = hist - np.float32(centering) * hist.reshape(-1, k).mean(0)
    norm = np.sqrt(np.einsum("ijk,ijk->ij", x, x))[..., None]
    return x * (np.float32(weight) / np.maximum(norm, np.float32(_EPS)))


def _position(h: int, w: int, weight: float) -> np.ndarray:
    """Row and column of each cell, standardised over the grid, times ``weight / sqrt(2)``."""
    out = np.zeros((h, w, 2), np.float32)
    for axis, n in ((0, h), (1, w)):
        if n > 1:
            coord = np.arange(n, dtype=np.float64)
            z = (coord - coord.mean()) / coord.std()
            out[..., axis] = (z[:, None] if axis == 0 else z[None, :]) * (weight / np.sqrt(2.0))
    return out
