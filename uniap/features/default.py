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
from typing import Callable, ClassVar, Iterable, Sized

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
    vocabulary : Vocabulary, optional
        Colour and texture words shared by every image (:meth:`fit`, :meth:`Vocabulary.load`);
        without one each image gets its own words, so channels compare within an image only.

    Raises
    ------
    ValueError
        If a parameter is out of range (``patch_size``, ``n_colors``, ``n_textures``,
        ``sample_size``, ``max_side`` < 1; negative weights or ``lightness_scale``; softness
        not > 0; ``centering`` outside [0, 1]; every weight 0), or ``vocabulary`` was fitted
        with other settings.
    TypeError
        If ``vocabulary`` is not a :class:`Vocabulary`.

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

    Cost: about 30 ms of CPU time for a 481x321 image on one core, linear in the pixel count.
    Memory: an image of over about a million pixels is never converted whole: the words are
    fitted on descriptors computed at the sampled pixels only, and the descriptors and their
    soft assignment are computed in bands of patch rows (the texture filters with halos), with
    bit for bit the result of the whole-image computation.  Beyond the image itself, that
    takes about 120 MB for a band plus about 8 * C bytes a patch for the histograms and the
    output: about 200 MB in all at 4000x4000, 400 MB at 8000x8000.

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
        from .._progress import progress_bar

        rng = np.random.default_rng(self.seed)
        pooled: dict[str, list[np.ndarray]] = {}
        count = 0
        kinds = _kinds(self)
        bar = progress_bar(len(images) if isinstance(images, Sized) else None, "vocabulary", disable=not progress)
        for image in images:
            img = self._padded_image(load_image(image))
            n = img.sampled_pixels(_stride(self.patch_size))
            takes = {kind: rng.choice(n, size=min(self.sample_size, n), replace=False) for kind in kinds}
            for kind, desc in _sampled_descriptors(img, self, takes).items():
                pooled.setdefault(kind, []).append(desc.T)
            count += 1
            bar.update(1)
        bar.close()
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
        return self._grid_and_lab(load_image(image))[0]

    def _grid_and_lab(self, rgb: np.ndarray, on_lab: Callable[[np.ndarray | None], None] | None = None,
                      ) -> tuple[FeatureGrid, np.ndarray | None]:
        """:meth:`__call__`'s grid of the RGB array ``rgb``, and the CIELab it converted on the
        way, cut to ``rgb``'s own pixels: (3, H, W) float32 (``_rgb2lab(rgb)``, bit for bit),
        for the superpixels of :class:`~uniap.features.RegionFeatures`, which would convert
        the image again.  None when there is none to give: the image is resized for
        ``max_side`` or its descriptors are computed in bands.

        ``on_lab``, when given, is called once, as early as can be, so that a caller can start
        its own work on the image in a thread: with that CIELab as soon as it is converted
        (before the descriptors, the words and the histograms, most of the work), or with
        None before anything when there will be none.  It must not write to the CIELab: the
        features read it after the call.
        """
        original = rgb.shape[:2]
        shape = working_shape(original, self.patch_size, self.max_side)
        resized = original if shape is None else tuple(shape)
        img = self._padded_image(rgb)
        if on_lab is not None and (shape is not None or not _one_band(img, self)):
            on_lab(None)  # converted in bands, or resized: nothing to give
            on_lab = None
        labs: list[np.ndarray] = []

        def converted(lab: np.ndarray) -> None:
            labs.append(lab)
            if on_lab is not None:
                on_lab(lab[:, :original[0], :original[1]])

        feats = _histogram_features(img, self, converted)
        grid = FeatureGrid(
            feats, self.patch_size, img.shape, name=self.name, original_shape=original,
            resized_shape=resized,
        )
        lab = labs[0][:, :original[0], :original[1]] if labs and shape is None else None
        return grid, lab

    def region_features(self, image: ImageLike, regions: np.ndarray) -> np.ndarray:
        """Features of arbitrary regions, from their own pixels: pixel-accurate node features.

        Each region gets what a patch would get if it were that region: the colour and texture
        histograms of its pixels (the same words and soft assignment as :meth:`__call__`),
        normalised as patches are (the image's mean histogram being the mean over its
        pixels), the position term at its centroid, and the whole scaled by its area in
        patches, so that UniAP's sums weigh regions by their size as they weigh patches.

        Parameters
        ----------
        image : str, path-like or ndarray
            As for :meth:`__call__`.
        regions : ndarray of shape (H, W), integer
            A label map at the image's resolution, labels 0 .. N-1 (e.g.
            :func:`uniap.superpixels.superpixels`).

        Returns
        -------
        ndarray of shape (N, C), float32
            ``C`` is :attr:`dim`.  A region none of whose pixels the extractor samples (only
            possible when ``max_side`` shrinks the image) gets a row of NaN.

        Raises
        ------
        ValueError
            If ``regions`` is not (H, W) or holds negative labels.

        Examples
        --------
        >>> import numpy as np
        >>> from skimage import data
        >>> image = data.coffee()
        >>> halves = np.zeros(image.shape[:2], np.int64)
        >>> halves[:, 300:] = 1
        >>> x = DefaultFeatures().region_features(image, halves)
        >>> x.shape
        (2, 34)
        """
        rgb = load_image(image)
        regions = np.asarray(regions)
        if regions.shape != rgb.shape[:2] or not np.issubdtype(regions.dtype, np.integer):
            raise ValueError(f"regions must be an integer label map of shape {rgb.shape[:2]}, got "
                             f"{regions.dtype} of shape {regions.shape}")
        if regions.size and int(regions.min()) < 0:
            raise ValueError("regions must hold labels >= 0")
        shape = working_shape(rgb.shape[:2], self.patch_size, self.max_side)
        resized = rgb.shape[:2] if shape is None else tuple(shape)
        return _region_features(self._padded_image(rgb), self, regions, resized)

    def _padded_image(self, rgb: np.ndarray) -> _PaddedImage:
        """``rgb`` resized for ``max_side``, padded (lazily) to multiples of the patch size."""
        shape = working_shape(rgb.shape[:2], self.patch_size, self.max_side)
        if shape is not None:
            rgb = _resize_rgb(rgb, shape)
        return _PaddedImage(rgb, self.patch_size)


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
        from ..formats.files import atomic_path

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


class _PaddedImage:
    """A working image padded (symmetric reflection) at the bottom and right to multiples of ``p``.

    The padding is virtual: rows, bands of rows and single pixels of the padded image are read
    from the unpadded array through index maps (the same ones ``np.pad(..., mode="symmetric")``
    uses), so no padded copy of a big image is ever made.
    """

    def __init__(self, rgb: np.ndarray, p: int) -> None:
        self.rgb = rgb
        H, W = rgb.shape[:2]
        self.row_map = np.pad(np.arange(H), (0, -H % p), mode="symmetric")
        self.col_map = np.pad(np.arange(W), (0, -W % p), mode="symmetric")
        self.shape = (len(self.row_map), len(self.col_map))

    def sampled_pixels(self, stride: int) -> int:
        """How many pixels the descriptors keep at ``stride`` (the range of the sample draws)."""
        return (self.shape[0] // stride) * (self.shape[1] // stride)

    def whole(self) -> np.ndarray:
        """The padded image, (H, W, 3) uint8, C-contiguous (the unpadded array if no padding)."""
        return self.rows(0, self.shape[0])

    def rows(self, a: int, b: int) -> np.ndarray:
        """Rows ``[a, b)`` of the padded image, (b - a, W, 3) uint8, C-contiguous (may be a view)."""
        H, W = self.rgb.shape[:2]
        part = self.rgb[a:b] if b <= H else self.rgb[self.row_map[a:b]]
        if self.shape[1] > W:  # np.pad pads each axis on its own: the columns of any rows alike
            part = np.pad(part, ((0, 0), (0, self.shape[1] - W), (0, 0)), mode="symmetric")
        return part

    def pixels(self, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        """Pixels at padded coordinates ``y``, ``x`` (broadcast together): shape + (3,), uint8."""
        return self.rgb[self.row_map[y], self.col_map[x]]


def _histogram_features(img: _PaddedImage, opts: DefaultFeatures,
                        on_lab: Callable[[np.ndarray], None] | None = None) -> np.ndarray:
    """Features of a padded working image (steps of the class doc).

    The per-pixel descriptors of a big image are never held whole: the words are fitted on
    descriptors computed at the sampled pixels only (:func:`_sampled_descriptors`), then the
    descriptors are computed band by band (:func:`_band_descriptors`, with halos for the
    filters) and assigned to the words.  Both give bit for bit the values of the whole-image
    computation (:func:`_descriptors`), which an image of one band still uses; then its
    CIELab is given to ``on_lab`` when given.
    """
    p = opts.patch_size
    H, W = img.shape
    h, w = H // p, W // p
    stride = _stride(p)
    q = p // stride  # patch side in descriptor pixels
    kinds = _kinds(opts)
    band = _band_rows(q, W // stride)
    whole = _descriptors(img.whole(), opts, on_lab) if _one_band(img, opts) else None
    words = _image_words(img, opts, whole)
    hists = {kind: np.empty((words[kind][0].shape[0], h, w), np.float32) for kind in kinds}
    for r0 in range(0, h, band):
        r1 = min(h, r0 + band)
        desc = whole if whole is not None else _band_descriptors(img, opts, r0 * p, r1 * p)
        for kind in kinds:
            d = desc[kind]
            flat = d.reshape(d.shape[0], -1)
            if whole is not None:
                flat = flat[:, r0 * q * d.shape[2]: r1 * q * d.shape[2]]
            _soft_band(flat, *words[kind], q, hists[kind][:, r0:r1])
        del desc
    del whole
    dims = [hists[kind].shape[0] for kind in kinds] + ([2] if opts.position_weight else [])
    out = np.empty((h, w, sum(dims)), np.float32)
    c0 = 0
    for kind in kinds:
        hist = hists.pop(kind)
        hist *= np.float32(1.0 / (q * q))
        k = hist.shape[0]
        _normalise(hist.transpose(1, 2, 0), opts.centering, _WORD_SETTINGS[kind](opts)[2],
                   out=out[..., c0:c0 + k])
        del hist
        c0 += k
    if opts.position_weight:
        out[..., c0:] = _position(h, w, opts.position_weight)
    return out


def _image_words(img: _PaddedImage, opts: DefaultFeatures, whole: dict | None) -> dict:
    """kind -> (words, tau): the shared vocabulary's, or fitted on pixels sampled from the image."""
    kinds = _kinds(opts)
    words = {}
    if opts.vocabulary is not None:
        for kind in kinds:
            words[kind] = opts.vocabulary.words(kind, _WORD_SETTINGS[kind](opts)[1])
        return words
    rng = np.random.default_rng(opts.seed)
    n_sampled = img.sampled_pixels(_stride(opts.patch_size))
    sample = rng.choice(n_sampled, size=min(opts.sample_size, n_sampled), replace=False)
    if whole is not None:
        samples = {kind: d.reshape(d.shape[0], -1)[:, sample] for kind, d in whole.items()}
    else:
        samples = _sampled_descriptors(img, opts, {kind: sample for kind in kinds})
    for kind in kinds:  # in this order: the k-means draws share ``rng``
        k, softness, _ = _WORD_SETTINGS[kind](opts)
        centres, gap = _fit_words(samples.pop(kind).T, k, rng)
        words[kind] = centres, _tau(softness, gap)
    return words


def _region_features(img: _PaddedImage, opts: DefaultFeatures, regions: np.ndarray,
                     resized: tuple[int, int]) -> np.ndarray:
    """Features of the regions of an original-resolution label map (``region_features``).

    The descriptors are computed and softly assigned band by band exactly as for patches, but
    each pixel's assignment is added to its region (by ``bincount``) instead of its patch.
    """
    p = opts.patch_size
    H, W = img.shape
    height, width = regions.shape
    n = int(regions.max()) + 1
    stride = _stride(p)
    q = p // stride
    band = _band_rows(q, W // stride)
    whole = _descriptors(img.whole(), opts) if _one_band(img, opts) else None
    words = _image_words(img, opts, whole)
    # Original pixel of each descriptor pixel (working pixel ``stride * i``), -1 in the padding.
    maps = []
    for n_work, n_resized, n_orig in ((H, resized[0], height), (W, resized[1], width)):
        work = np.arange(0, n_work, stride)
        orig = np.floor((work + 0.5) * n_orig / n_resized).astype(np.int64)
        maps.append(np.where(work < n_resized, np.minimum(orig, n_orig - 1), -1))
    row_map, col_map = maps
    sums = {kind: np.zeros((n, words[kind][0].shape[0])) for kind in words}
    count = np.zeros(n)
    cols_ok = col_map >= 0
    for r0 in range(0, H // p, band):
        r1 = min(H // p, r0 + band)
        rows = row_map[r0 * q: r1 * q]
        ids = np.full((rows.size, col_map.size), -1, np.int64)
        ok_rows = rows >= 0
        ids[np.ix_(ok_rows, cols_ok)] = regions[rows[ok_rows]][:, col_map[cols_ok]]
        ids = ids.ravel()
        inside = ids >= 0
        if not inside.any():
            continue
        region = ids[inside]
        count += np.bincount(region, minlength=n)
        desc = whole if whole is not None else _band_descriptors(img, opts, r0 * p, r1 * p)
        for kind, (centres, tau) in words.items():
            d = desc[kind]
            flat = d.reshape(d.shape[0], -1)
            if whole is not None:
                flat = flat[:, r0 * q * d.shape[2]: r1 * q * d.shape[2]]
            a = _soft_assign(flat, centres, tau)[:, inside]
            for j in range(a.shape[0]):
                sums[kind][:, j] += np.bincount(region, a[j], minlength=n)
        del desc
    del whole
    covered = count > 0
    parts = []
    for kind, total in sums.items():
        hist = total / np.maximum(count, 1)[:, None]
        mean = total.sum(0) / max(count.sum(), 1.0)
        x = hist - opts.centering * mean
        x *= _WORD_SETTINGS[kind](opts)[2] / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), _EPS)
        parts.append(x)
    if opts.position_weight:
        parts.append(_region_position(regions, (H // p, W // p), resized, p, opts.position_weight))
    out = np.concatenate(parts, axis=1)
    # Each region counts as many patches as it covers, so UniAP's sums weigh it by its area.
    cell_area = p * p * (height / resized[0]) * (width / resized[1])
    out *= np.bincount(regions.ravel(), minlength=n)[:, None] / cell_area
    out[~covered] = np.nan
    return out.astype(np.float32)


def _region_position(regions: np.ndarray, grid: tuple[int, int], resized: tuple[int, int], p: int,
                     weight: float) -> np.ndarray:
    """Each region's centroid in grid cells, standardised as :func:`_position` does cells."""
    n = int(regions.max()) + 1
    height, width = regions.shape
    flat = regions.ravel()
    area = np.maximum(np.bincount(flat, minlength=n), 1)
    out = np.zeros((n, 2))
    for axis, (cells, n_resized, n_orig) in enumerate(zip(grid, resized, (height, width))):
        if cells < 2:
            continue
        coord = (np.arange(n_orig) + 0.5) * n_resized / n_orig / p - 0.5  # pixel centre, in cells
        along = np.broadcast_to(coord[:, None] if axis == 0 else coord[None, :], regions.shape)
        centroid = np.bincount(flat, along.ravel(), minlength=n) / area
        cell = np.arange(cells, dtype=np.float64)
        out[:, axis] = (centroid - cell.mean()) / cell.std() * (weight / np.sqrt(2.0))
    return out


_WORD_SETTINGS = {  # kind -> (vocabulary size, softness, weight) of an extractor
    "color": lambda o: (o.n_colors, o.color_softness, o.color_weight),
    "texture": lambda o: (o.n_textures, o.texture_softness, o.texture_weight),
}


def _kinds(opts: DefaultFeatures) -> list[str]:
    """The descriptor kinds in use, in feature order."""
    return [kind for kind, settings in _WORD_SETTINGS.items() if settings(opts)[2]]


def _band_rows(p: int, W: int) -> int:
    """Patch rows per band of the soft assignment (and of the descriptors of a big image)."""
    return max(1, _CHUNK_PIXELS // (p * W))


def _one_band(img: _PaddedImage, opts: DefaultFeatures) -> bool:
    """Whether the image is small enough for its descriptors to be computed whole."""
    p, (H, W) = opts.patch_size, img.shape
    stride = _stride(p)
    return H // p <= _band_rows(p // stride, W // stride) and H * W <= max(_CHUNK_PIXELS, p * W)


def _descriptors(rgb: np.ndarray, opts: DefaultFeatures,
                 on_lab: Callable[[np.ndarray], None] | None = None) -> dict[str, np.ndarray]:
    """Per-pixel colour and texture descriptors (d, H / s, W / s) of the parts in use (s: stride);
    the CIELab they come from is given to ``on_lab`` as soon as it is converted (nothing here
    writes to it)."""
    stride = _stride(opts.patch_size)
    lab = _rgb2lab(rgb)  # (3, H, W) float32
    if on_lab is not None:
        on_lab(lab)
    out = {}
    if opts.color_weight:
        out["color"] = lab * np.array([opts.lightness_scale, 1.0, 1.0], np.float32)[:, None, None]
    if opts.texture_weight:
        out["texture"] = _contrast_normalise(_texture_responses(lab[0]))
    if stride > 1:
        out = {kind: np.ascontiguousarray(d[:, ::stride, ::stride]) for kind, d in out.items()}
    return out


def _contrast_normalise(tex: np.ndarray) -> np.ndarray:
    """``r * log(1 + |r| / 3) / |r|`` of responses ``tex`` (6, H, W), in place."""
    norm = np.sqrt(np.einsum("kij,kij->ij", tex, tex))
    tex *= np.log1p(norm / np.float32(3.0)) / np.maximum(norm, np.float32(1e-6))
    return tex


def _contrast_normalise_part(tex: np.ndarray) -> np.ndarray:
    """:func:`_contrast_normalise` of the responses (6, ...) of a part of an image of several pixels.

    A lone pixel is normalised as a pair: with one pixel the einsum's loop runs over the six
    responses instead of across pixels and sums them in another order.
    """
    if tex[0].size == 1:
        return np.ascontiguousarray(_contrast_normalise(np.repeat(tex, 2, axis=-1))[..., :1])
    return _contrast_normalise(tex)


def _texture_halo() -> int:
    """Rows a texture response reads on each side: the radius of the widest Gaussian filter."""
    return int(4.0 * max(_TEXTURE_SIGMAS) + 0.5)  # gaussian_filter1d's radius at truncate=4


def _lab_pixels(rgb: np.ndarray) -> np.ndarray:
    """:func:`_rgb2lab` of a part of an image of several pixels, (3,) + rgb.shape[:-1].

    A lone pixel is converted as a pair: NumPy's 3 x 1 matrix product (matrix-vector, not the
    matrix-matrix kernel used for more pixels) rounds differently.
    """
    shape = rgb.shape[:-1]
    flat = np.ascontiguousarray(rgb.reshape(1, -1, 3))
    if flat.shape[1] == 1:
        return _rgb2lab(np.repeat(flat, 2, axis=1))[:, :, :1].reshape((3,) + shape)
    return _rgb2lab(flat).reshape((3,) + shape)


def _band_descriptors(img: _PaddedImage, opts: DefaultFeatures, y0: int, y1: int) -> dict[str, np.ndarray]:
    """:func:`_descriptors` of rows ``[y0, y1)`` of the padded image (``y0`` a multiple of the stride).

    The texture filters read ``_texture_halo()`` rows on each side; the band is converted with
    that many extra rows (fewer at the image's edges, where the filters reflect just as on the
    whole image), so its responses equal the whole image's exactly.
    """
    p, (H, W) = opts.patch_size, img.shape
    step = max(p, _CHUNK_PIXELS // W // p * p)  # rows at full resolution per piece
    if y1 - y0 > step:  # with a stride over 1: the band's pieces, each subsampled, stacked
        pieces = [_band_descriptors(img, opts, a, min(y1, a + step)) for a in range(y0, y1, step)]
        return {kind: np.concatenate([piece[kind] for piece in pieces], axis=1) for kind in pieces[0]}
    stride = _stride(p)
    halo = _texture_halo() if opts.texture_weight else 0
    a, b = max(0, y0 - halo), min(H, y1 + halo)
    lab = _lab_pixels(img.rows(a, b))  # (3, b - a, W)
    out = {}
    if opts.color_weight:
        out["color"] = lab[:, y0 - a: y1 - a] * np.array([opts.lightness_scale, 1.0, 1.0],
                                                         np.float32)[:, None, None]
    if opts.texture_weight:
        tex = _texture_responses(lab[0])
        del lab
        out["texture"] = _contrast_normalise_part(np.ascontiguousarray(tex[:, y0 - a: y1 - a]))
    if stride > 1:
        out = {kind: np.ascontiguousarray(d[:, ::stride, ::stride]) for kind, d in out.items()}
    return out


def _sampled_descriptors(img: _PaddedImage, opts: DefaultFeatures,
                         samples: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Descriptors (d, n) at the sampled pixels, per kind: ``samples[kind]`` indexes the pixels
    kept at the stride, row-major (as ``_descriptors(...)[kind].reshape(d, -1)[:, samples[kind]]``).

    An image of one band gets its whole descriptors; a bigger one only the pixels' own colours
    and, for the texture, a window of +-``_texture_halo()`` pixels around each (reflected at the
    image's edges as the filters do), which gives the same responses at its centre.
    """
    stride = _stride(opts.patch_size)
    H, W = img.shape
    if _one_band(img, opts):
        whole = _descriptors(img.whole(), opts)
        return {kind: whole[kind].reshape(whole[kind].shape[0], -1)[:, idx] for kind, idx in samples.items()}
    out = {}
    for kind, idx in samples.items():
        y, x = np.divmod(idx, W // stride)
        y, x = y * stride, x * stride
        if kind == "color":
            lab = _lab_pixels(img.pixels(y, x))  # (3, n)
            out[kind] = lab * np.array([opts.lightness_scale, 1.0, 1.0], np.float32)[:, None]
        else:
            r = _texture_halo()
            offsets = np.arange(-r, r + 1)
            tex = np.empty((3 * len(_TEXTURE_SIGMAS), 1, len(idx)), np.float32)
            for i in range(0, len(idx), _WINDOWS_PER_BATCH):  # batches bound the temporaries
                rows = _reflect(y[i:i + _WINDOWS_PER_BATCH, None] + offsets, H)  # (n, 2r + 1)
                cols = _reflect(x[i:i + _WINDOWS_PER_BATCH, None] + offsets, W)
                light = _lab_pixels(img.pixels(rows[:, :, None], cols[:, None, :]))[0]  # (n, 2r+1, 2r+1)
                tex[:, 0, i:i + _WINDOWS_PER_BATCH] = _window_texture_responses(light)
            out[kind] = _contrast_normalise_part(tex)[:, 0]
    return out


_WINDOWS_PER_BATCH = 512  # texture windows converted and filtered at once when sampling


def _reflect(i: np.ndarray, n: int) -> np.ndarray:
    """Indices ``i`` reflected into ``[0, n)`` as scipy.ndimage's mode "reflect" extends a line."""
    m = np.mod(i, 2 * n)
    return np.where(m < n, m, 2 * n - 1 - m)


def _window_texture_responses(light: np.ndarray) -> np.ndarray:
    """:func:`_texture_responses` at the centres of windows ``light`` (n, 2r + 1, 2r + 1): (6, n).

    The same 1-D passes as on the whole image, restricted to the centre's row and column, so
    each value is computed from the same inputs in the same order.
    """
    from scipy.ndimage import gaussian_filter1d

    n, size, _ = light.shape
    c = size // 2
    out = np.empty((3 * len(_TEXTURE_SIGMAS), n), np.float32)
    for i, sigma in enumerate(_TEXTURE_SIGMAS):
        smooth_y = gaussian_filter1d(light, sigma, axis=1)[:, c, :]  # (n, size): the centre row
        out[3 * i] = gaussian_filter1d(smooth_y, sigma, axis=1, order=1)[:, c]
        out[3 * i + 2] = gaussian_filter1d(smooth_y, sigma, axis=1, order=2)[:, c]
        smooth_x = gaussian_filter1d(light, sigma, axis=2)[:, :, c]  # (n, size): the centre column
        out[3 * i + 1] = gaussian_filter1d(smooth_x, sigma, axis=1, order=1)[:, c]
        out[3 * i + 2] += gaussian_filter1d(smooth_x, sigma, axis=1, order=2)[:, c]
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


def _soft_band(flat: np.ndarray, centres: np.ndarray, tau: float, p: int, out: np.ndarray) -> None:
    """Per-patch sums of each pixel's soft assignment ``exp(-|x - c|^2 / tau)`` to the words.

    For a band of patch rows: ``flat`` (d, rows * p * W) float32 holds its descriptors, row-major,
    ``centres`` is (k, d); the sums go to ``out`` (k, rows, W / p).  Channels-first throughout:
    reductions over the k words then run across rows, which NumPy does several times faster
    than along a short last axis.
    """
    k = centres.shape[0]
    rows, w = out.shape[1:]
    W = w * p
    a = _soft_assign(flat, centres, tau)
    a = a.reshape(k * rows, p, W).sum(axis=1)  # sum the p rows of each patch
    out[...] = a.reshape(k, rows, w, p).sum(axis=3)  # and its p columns


def _soft_assign(flat: np.ndarray, centres: np.ndarray, tau: float) -> np.ndarray:
    """Each pixel's soft assignment ``exp(-|x - c|^2 / tau)`` to the words, normalised: (k, n)."""
    # logit = -|x - c|^2 / tau up to a per-pixel constant (|x|^2 cancels in the normalisation)
    weight = (2.0 / tau * centres).astype(np.float32)  # (k, d)
    bias = ((centres * centres).sum(1) / tau).astype(np.float32)[:, None]
    a = weight @ flat
    a -= bias
    a -= a.max(axis=0)
    np.exp(a, out=a)
    a *= np.float32(1.0) / a.sum(axis=0)
    return a


def _kmeans(pts: np.ndarray, k: int, rng: np.random.Generator, iters: int = 8) -> np.ndarray:
    """Lloyd's k-means (SciPy's ``kmeans2``) from k-means++ seeds (float64, deterministic)."""
    import warnings

    from scipy.cluster.vq import kmeans2

    n, d = pts.shape
    # k-means++ seeding by hand: kmeans2(minit="++") draws its seeds differently from this
    # generator, which would change every default feature (and the quality figures measured
    # with them); from these seeds kmeans2 gives the same centres, its Lloyd steps 1.4-3x faster (docs/benchmarks.md).
    centres = np.empty((k, d))
    centres[0] = pts[rng.integers(n)]
    closest = ((pts - centres[0]) ** 2).sum(1)
    for j in range(1, k):
        total = closest.sum()
        i = rng.choice(n, p=closest / total) if total > 0 else rng.integers(n)
        centres[j] = pts[i]
        np.minimum(closest, ((pts - pts[i]) ** 2).sum(1), out=closest)
    if iters < 1:
        return centres
    with warnings.catch_warnings():  # an empty cluster keeps its centre, as it should: no warning
        warnings.filterwarnings("ignore", message="One of the clusters is empty", category=UserWarning)
        centres, _ = kmeans2(pts, centres, iter=int(iters), minit="matrix", missing="warn",
                             check_finite=False)
    return np.asarray(centres, np.float64)


def _sq_dist(x: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances (n, k) between rows of ``x`` and of ``c``."""
    d = (x * x).sum(1)[:, None] - 2.0 * (x @ c.T) + (c * c).sum(1)[None, :]
    return np.maximum(d, 0.0)


def _normalise(hist: np.ndarray, centering: float, weight: float,
               out: np.ndarray | None = None) -> np.ndarray:
    """Subtract ``centering`` x the mean histogram, scale each patch to length ``weight``."""
    k = hist.shape[-1]
    x = hist - np.float32(centering) * hist.reshape(-1, k).mean(0)
    norm = np.sqrt(np.einsum("ijk,ijk->ij", x, x))[..., None]
    return np.multiply(x, np.float32(weight) / np.maximum(norm, np.float32(_EPS)), out=out)


def _position(h: int, w: int, weight: float) -> np.ndarray:
    """Row and column of each cell, standardised over the grid, times ``weight / sqrt(2)``."""
    out = np.zeros((h, w, 2), np.float32)
    for axis, n in ((0, h), (1, w)):
        if n > 1:
            coord = np.arange(n, dtype=np.float64)
            z = (coord - coord.mean()) / coord.std()
            out[..., axis] = (z[:, None] if axis == 0 else z[None, :]) * (weight / np.sqrt(2.0))
    return out
