"""The public entry points: :func:`segment` for grids and :func:`segment_graph` for graphs."""

from __future__ import annotations

from functools import partial
from typing import Any, Sequence

import numpy as np
from array_api_compat import array_namespace

from .. import backends
from ..backends.base import Backend
from .levels import RunResult, profile_groups
from .graph import Graph, batch_edges
from .hierarchy import Hierarchy, Level
from .options import DEFAULT_LEVELS, Options, resolve_options

_OPTION_DOCS: dict[str, str] = {
    "levels": """levels : sequence of float, default (0.8, 0.7, 0.6, 0.5, 0.4)
    Thresholds t_l, strictly decreasing, in [-1, 1]: one level each, finest first.""",
    "channel_axis": """channel_axis : int, default -1
    The axis of ``features`` (of each grid, for a list) that holds the channels C, as in
    scikit-image: -1 is channels-last, (H, W, C) and (B, H, W, C).  Backbone output
    (B, C, H, W) takes ``channel_axis=1`` (or -3), a (C, H, W) grid ``channel_axis=0``.
    The axis is moved by a view, never a copy; the backend's one conversion of the
    features to its working layout makes the copy it needs anyway.""",
    "min_size": """min_size : int, default 4
    Clusters with fewer cells are not reported as masks (label maps keep them).""",
    "connectivity": """connectivity : {4, 8}, default 4
    Grid adjacency: 4 = face neighbours, 8 = with diagonals.""",
    "preset": """preset : {"released", "paper"}, default "released"
    Sets ``passes``, ``pooling`` and ``vote_weight`` together: "released" is the authors'
    code (until_stable, sum, 0), "paper" the paper's wording (single, attention, 0.4).""",
    "passes": """passes : {"until_stable", "single"}, optional
    Passes per level: until a pass changes nothing, or exactly one.""",
    "pooling": """pooling : {"sum", "attention"}, optional
    Node feature v_k: the sum of member features, or the paper's attention pooling
    L2N(softmax_c(mean_{i in k} A_i / sigma) F) with A = F F^T.""",
    "vote_weight": """vote_weight : float, optional
    w_s of s_ab = (1 - w_s) cos(v_a, v_b) + w_s vote_ab, with
    vote_ab = 1 - mean_c |P_a[c] - P_b[c]| and P_k = mean_{i in k} A_i.""",
    "temperature": """temperature : float, default 0.07
    sigma of attention pooling.""",
    "semantic": """semantic : bool, default False
    Also group each level's clusters on the complete graph (alike clusters anywhere in
    the image join one semantic group).""",
    "backend": """backend : {"auto", "numpy", "numba", "torch", "cupy"}, default "auto"
    "auto" follows the array's library (Numba for NumPy arrays when installed).""",
    "spatial_ndim": """spatial_ndim : int, default 2
    Number of grid axes (besides the channel axis): 3 for (D, H, W, C) volumes.""",
    "track_margin": """track_margin : bool, default False
    Record the smallest |s - t| over every decision in ``Hierarchy.min_margin`` (runs
    the generic engine; for tests of exactness).""",
    "exact": """exact : bool, default False
    GPU backends score edges in float32 (node sums stay float64), so a score within
    about 1e-5 of a threshold may be decided differently than by the float64 reference.
    With ``exact=True`` every score within 1e-5 of its threshold is recomputed in
    float64 before the decision, and partitions equal the reference's on every input
    (one more wait for the device per pass).  CPU backends score in float64 and are
    exact already.""",
}


def _with_option_docs(func):
    """Fill the line ``{options}`` of ``func``'s docstring with its keyword options' entries.

    A docstring must be a literal to be a docstring: built as an expression, Python would
    leave ``__doc__`` None (``help()`` would show only the signature).
    """
    import inspect

    names = [n for n in inspect.signature(func).parameters if n in _OPTION_DOCS]
    text = "\n".join(_OPTION_DOCS[n] for n in names)
    block = "\n".join(("    " + line) if line else "" for line in text.splitlines())
    func.__doc__ = func.__doc__.replace("    {options}", block)
    return func


def _check_features(x: Any, name: str = "features") -> None:
    try:
        xp = array_namespace(x)
    except TypeError:
        raise TypeError(
            f"{name} must be a NumPy array, torch tensor or CuPy array, got {type(x).__name__}"
        ) from None
    dtype = x.dtype
    if not (xp.isdtype(dtype, "real floating") or xp.isdtype(dtype, "integral")):
        raise TypeError(f"{name} must hold real numbers, got dtype {dtype}")


def _choose_backend(name: str, x: Any) -> Backend:
    if not isinstance(name, str):
        raise TypeError(f"backend must be a string, got {name!r}")
    if name == "auto":
        return backends.for_array(x)
    return backends.get(name)


def _to_backend(be: Backend, x: Any) -> Any:
    if isinstance(x, np.ndarray) and not x.dtype.isnative:
        x = x.astype(x.dtype.newbyteorder("="))  # big-endian: torch and CuPy take native only
    return x if be.accepts(x) else be.from_any(x)


def _check_finite(be: Backend, x: Any, name: str) -> None:
    if not be.all_finite(x):
        bad = np.argwhere(~np.isfinite(be.to_numpy(x)))
        raise ValueError(
            f"{name} must be finite: {len(bad)} value(s) are NaN or inf, first at index "
            f"{tuple(int(i) for i in bad[0])}"
        )


@_with_option_docs
def segment(
    features: Any,
    levels: Sequence[float] = DEFAULT_LEVELS,
    *,
    channel_axis: int = -1,
    min_size: int = 4,
    connectivity: int = 4,
    preset: str = "released",
    passes: str | None = None,
    pooling: str | None = None,
    vote_weight: float | None = None,
    temperature: float = 0.07,
    semantic: bool = False,
    backend: str = "auto",
    spatial_ndim: int = 2,
    track_margin: bool = False,
    exact: bool = False,
) -> Hierarchy | list[Hierarchy]:
    """Multi-granular masks of a feature grid by UniAP agglomerative pooling.

    At each threshold t (finest first) every grid edge whose score exceeds t is contracted,
    all at once; contracted nodes pool their features and the pass repeats until nothing
    changes.  Each threshold's partition is a level; levels nest.

    Parameters
    ----------
    features : array of shape (H, W, C), (B, H, W, C), or a list of (H_i, W_i, C)
        Patch features (NumPy, torch or CuPy), channels last by default (see
        ``channel_axis``).  A 4-D array or a list is a batch, run as one disjoint graph in
        one pass; with ``spatial_ndim=3`` grids are (D, H, W, C) volumes and a batch is 5-D.
    {options}

    Returns
    -------
    Hierarchy, or list of Hierarchy for a batch

    Raises
    ------
    TypeError
        ``features`` is not an array of real numbers, a batch mixes array libraries, or an
        option has the wrong type (``levels`` a string, ``temperature`` not a number, ...).
    ValueError
        Wrong number of dimensions, ``channel_axis`` out of range, an empty grid or no
        channels, NaN or inf in ``features``, levels not strictly decreasing or outside
        [-1, 1], ``min_size`` < 1, an unknown option value, or an unknown or unavailable
        backend.

    Notes
    -----
    Symbols of the paper: t = ``levels``; v_k = pooled node feature (``pooling``);
    w_f, w_s = 1 - ``vote_weight``, ``vote_weight``; sigma = ``temperature``.  Labels are
    canonical: clusters are numbered in the order of their smallest cell (row-major).

    Cosine scores do not depend on the features' scale, and neither does the result:
    finite features so large that their squared norms would overflow float64 (above about
    1e150) are scaled by a power of two first, which changes no score.

    References
    ----------
    .. [1] Xu et al., "S2-UniSeg: Fast Universal Agglomerative Pooling for Scalable
       Segment Anything without Supervision", arXiv:2508.06995, 2025.

    Examples
    --------
    >>> import numpy as np, uniap
    >>> f = np.zeros((2, 3, 2)); f[:, :2, 0] = 1; f[:, 2, 1] = 1
    >>> h = uniap.segment(f, levels=(0.5,), min_size=1)
    >>> h.level(0).labels
    array([[0, 0, 1],
           [0, 0, 1]], dtype=int32)

    Channels-first input, such as a backbone's (B, C, H, W) output:

    >>> chw = np.moveaxis(f, -1, 0)                     # (C, H, W) = (2, 2, 3)
    >>> uniap.segment(chw[None], levels=(0.5,), min_size=1, channel_axis=1)[0].labels.shape
    (1, 2, 3)
    """
    options = resolve_options(
        levels=levels, preset=preset, passes=passes, pooling=pooling, vote_weight=vote_weight,
        temperature=temperature, semantic=semantic, min_size=min_size,
    )
    if isinstance(spatial_ndim, bool) or not isinstance(spatial_ndim, int) or spatial_ndim < 1:
        raise ValueError(f"spatial_ndim must be a positive integer, got {spatial_ndim!r}")
    grids, features, is_batch = _split_batch(features, spatial_ndim, channel_axis)
    be = _choose_backend(backend, grids[0])
    grids = [_to_backend(be, g) for g in grids]
    shapes = [tuple(int(s) for s in g.shape[:-1]) for g in grids]
    groups = profile_groups([int(np.prod(s)) for s in shapes], options, track_margin)
    if len(groups) > 1:  # the batch's affinity profiles would not fit together: group by group
        return [h for group in groups for h in _segment_batch(
            be, [grids[i] for i in group], None, connectivity, options, track_margin, exact)]
    hierarchies = _segment_batch(be, grids, None if isinstance(features, (list, tuple)) else features,
                                 connectivity, options, track_margin, exact)
    return hierarchies if is_batch else hierarchies[0]


def _segment_batch(be: Backend, grids: list, stacked: Any, connectivity: int, options: Options,
                   track_margin: bool, exact: bool) -> list[Hierarchy]:
    """One engine run over ``grids`` (channels last, on ``be``); ``stacked``: the same grids as
    one (B, ..., C) array when the caller has it (reshaped without a copy)."""
    shapes = [tuple(int(s) for s in g.shape[:-1]) for g in grids]
    edges, offsets = batch_edges(shapes, connectivity)
    flat = [be.xp.reshape(g, (-1, g.shape[-1])) for g in grids]
    if len(flat) == 1:
        x = flat[0]
    elif stacked is not None and be.accepts(stacked):
        x = be.xp.reshape(stacked, (-1, stacked.shape[-1]))  # a stacked batch: no copy
    else:
        x = be.xp.concat(flat, axis=0)
    _check_finite(be, x, "features")
    graph = Graph(x=be.prepare_features(x), edges=edges, offsets=offsets, shapes=shapes, name="features")
    result = be.run(graph, options, track_margin=track_margin, exact=bool(exact))
    return build_hierarchies(be, result, graph, options, flat)


def _channels_last(x: Any, channel_axis: int, name: str) -> Any:
    """``x`` with its channel axis moved last: a view (NumPy, torch and CuPy all give one)."""
    ndim = x.ndim
    if not -ndim <= channel_axis < ndim:
        raise ValueError(
            f"channel_axis {channel_axis} is out of range for {name} of shape {tuple(x.shape)} "
            f"({ndim} dimensions: use -{ndim} to {ndim - 1})"
        )
    if channel_axis % ndim == ndim - 1:
        return x
    return array_namespace(x).moveaxis(x, channel_axis, -1)


def _split_batch(features: Any, spatial_ndim: int, channel_axis: int = -1) -> tuple[list[Any], Any, bool]:
    """The grids of ``features`` (channels last), ``features`` itself (channels last), and
    whether it is a batch."""
    grid_ndim = spatial_ndim + 1
    if isinstance(channel_axis, bool) or not isinstance(channel_axis, (int, np.integer)):
        raise TypeError(f"channel_axis must be an integer axis, got {channel_axis!r}")
    channel_axis = int(channel_axis)
    if isinstance(features, (list, tuple)):
        if not features:
            raise ValueError("features is an empty list: give at least one grid")
        grids = []
        for i, g in enumerate(features):
            _check_features(g, f"features[{i}]")
            grids.append(_channels_last(g, channel_axis, f"features[{i}]"))
        is_batch = True
    else:
        _check_features(features)
        if features.ndim in (grid_ndim, grid_ndim + 1):
            features = _channels_last(features, channel_axis, "features")
        if features.ndim == grid_ndim:
            grids, is_batch = [features], False
        elif features.ndim == grid_ndim + 1:
            if features.shape[0] == 0:
                raise ValueError("features is an empty batch (B = 0)")
            grids, is_batch = [features[i] for i in range(features.shape[0])], True
        else:
            axes = ", ".join(["H", "W"] if spatial_ndim == 2 else [f"S{i}" for i in range(spatial_ndim)])
            raise ValueError(
                f"features must have shape ({axes}, C) or (B, {axes}, C): {grid_ndim} or "
                f"{grid_ndim + 1} dimensions, got {features.ndim} with shape {tuple(features.shape)}"
            )
    library = None
    channels = None
    for i, g in enumerate(grids):
        name = f"features[{i}]" if is_batch else "features"
        _check_features(g, name)
        if g.ndim != grid_ndim:
            raise ValueError(
                f"{name} must have {grid_ndim} dimensions (grid axes then channels), "
                f"got shape {tuple(g.shape)}"
            )
        if any(int(s) == 0 for s in g.shape[:-1]):
            raise ValueError(f"{name} is an empty grid: shape {tuple(g.shape)}")
        if int(g.shape[-1]) == 0:
            raise ValueError(f"{name} has no channels (C = 0): shape {tuple(g.shape)}")
        lib = type(g).__module__.split(".")[0]
        if library is None:
            library, channels = lib, int(g.shape[-1])
        elif lib != library:
            raise TypeError(f"a batch must use one array library, got {library} and {lib}")
        elif int(g.shape[-1]) != channels:
            raise ValueError(
                f"every grid of a batch needs the same channels C, got {channels} and "
                f"{int(g.shape[-1])} ({name})"
            )
    return grids, features, is_batch


@_with_option_docs
def segment_graph(
    x: Any,
    edges: Any,
    levels: Sequence[float] = DEFAULT_LEVELS,
    *,
    min_size: int = 4,
    preset: str = "released",
    passes: str | None = None,
    pooling: str | None = None,
    vote_weight: float | None = None,
    temperature: float = 0.07,
    semantic: bool = False,
    backend: str = "auto",
    track_margin: bool = False,
    exact: bool = False,
) -> Hierarchy:
    """UniAP on any graph: node features ``x`` (N, C) and undirected ``edges`` (E, 2).

    Parameters
    ----------
    x : array of shape (N, C)
        Node features.
    edges : array-like of shape (E, 2), integer
        Undirected edges between node ids in [0, N); direction, duplicates and self-loops
        do not matter.  No edges: an empty (0, 2) array, or ``[]``.
    {options}

    Returns
    -------
    Hierarchy
        Label maps of shape (N,) per level.

    Raises
    ------
    TypeError
        As :func:`segment`, and for ``edges`` that are not integers.
    ValueError
        As :func:`segment`, and for ``edges`` not of shape (E, 2) (a ragged list of pairs
        included), or naming a node outside [0, N).

    Examples
    --------
    >>> import numpy as np, uniap
    >>> x = np.array([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0]])
    >>> h = uniap.segment_graph(x, [[0, 1], [1, 2]], levels=(0.9,), min_size=1)
    >>> h.level(0).labels
    array([0, 0, 1], dtype=int32)
    """
    options = resolve_options(
        levels=levels, preset=preset, passes=passes, pooling=pooling, vote_weight=vote_weight,
        temperature=temperature, semantic=semantic, min_size=min_size,
    )
    _check_features(x, "x")
    if x.ndim != 2:
        raise ValueError(f"x must have shape (N, C), got {x.ndim} dimensions: {tuple(x.shape)}")
    n, c = (int(s) for s in x.shape)
    if n == 0 or c == 0:
        raise ValueError(f"x must have at least one node and one channel, got shape {(n, c)}")
    be = _choose_backend(backend, x)
    x = _to_backend(be, x)
    e = _check_edges(edges, n)
    _check_finite(be, x, "x")
    graph = Graph(x=be.prepare_features(x), edges=e, offsets=np.array([0, n]), shapes=[(n,)], name="x")
    result = be.run(graph, options, track_margin=track_margin, exact=bool(exact))
    return build_hierarchies(be, result, graph, options, [x])[0]


def _check_edges(edges: Any, n: int) -> np.ndarray:
    from .hierarchy import to_numpy

    try:
        e = np.asarray(to_numpy(edges))
    except (ValueError, TypeError):
        raise ValueError(_ragged_message(edges)) from None
    if e.dtype == object:
        raise ValueError(_ragged_message(edges))
    if e.shape == (0,):  # [] or an empty 1-D array: no edges
        return np.empty((0, 2), np.int64)
    if e.ndim != 2 or e.shape[1] != 2:
        raise ValueError(f"edges must have shape (E, 2), pairs of node ids, got shape {e.shape}")
    if e.dtype.kind not in "iu":
        raise TypeError(f"edges must be integers, got dtype {e.dtype}")
    if e.shape[0] == 0:
        return np.empty((0, 2), np.int64)
    lo, hi = int(e.min()), int(e.max())
    if lo < 0 or hi >= n:
        bad = lo if lo < 0 else hi
        raise ValueError(f"edges name node {bad}, outside [0, {n}) for x with N = {n} nodes")
    e = e.astype(np.int64)
    if (e[:, 0] < e[:, 1]).all():
        code = e[:, 0] * n + e[:, 1]  # < n**2: no overflow below 3e9 nodes
        if (code[1:] > code[:-1]).all():  # sorted and distinct already (uniap.superpixels.adjacency's)
            return e
    e = np.sort(e, axis=1)
    e = e[e[:, 0] != e[:, 1]]
    return np.unique(e, axis=0)


def _ragged_message(edges: Any) -> str:
    """Name the first entry of a list of edges that is not a pair."""
    try:
        for i, pair in enumerate(edges):
            if len(pair) != 2:
                return f"edges must be pairs of node ids, shape (E, 2), but edges[{i}] = {pair!r} has {len(pair)}"
    except TypeError:
        pass
    return f"edges must be an (E, 2) array of node ids, got {type(edges).__name__} that is not one"


def build_hierarchies(
    be: Backend, result: RunResult, graph: Graph, options: Options, inputs: list[Any]
) -> list[Hierarchy]:
    """Split a run over a disjoint union into one :class:`Hierarchy` per part.

    Each level is renumbered per part with a few whole-level operations; a part's arrays are
    then views (on a GPU, per-part arithmetic would cost kernel launches per image and level).
    """
    xp = be.xp
    offsets = graph.offsets
    out_dtype = inputs[0].dtype if xp.isdtype(inputs[0].dtype, "real floating") else xp.float64
    per_part: list[list[Level]] = [[] for _ in graph.shapes]
    levels = result.levels
    many = len(graph.shapes) > 1
    like = levels[0].cell_labels
    # Clusters of part p are numbered from the first cluster whose root lies in the part.
    bounds = [np.searchsorted(be.to_numpy(lv.roots), offsets) for lv in levels]
    part_of_cell = be.asarray_index(graph.part_of_node(), like=like) if many else None
    means = _LevelMeans(be, inputs, levels, bounds, offsets, out_dtype, result.scale)

    def per_part_start(values: Any, firsts: np.ndarray, part_of: Any) -> Any:
        """values - (the first value of each element's part), for every element at once."""
        if not many:
            return values - int(firsts[0]) if int(firsts[0]) else values
        return values - xp.take(be.asarray_index(firsts, like=like), part_of)

    for i, lv in enumerate(levels):
        last = i + 1 == len(levels)
        k = int(lv.sizes.shape[0])
        local = xp.astype(per_part_start(lv.cell_labels, bounds[i][:-1], part_of_cell), xp.int32)
        if last:
            parents = xp.full((k,), -1, dtype=xp.int64, device=_device(lv.sizes))
        else:
            part_of_cluster = None
            if many:
                counts = np.diff(bounds[i])
                part_of_cluster = be.asarray_index(np.repeat(np.arange(len(counts)), counts), like=like)
            nxt = xp.take(levels[i + 1].cell_labels, lv.roots)
            parents = xp.astype(per_part_start(nxt, bounds[i + 1][:-1], part_of_cluster), xp.int64)
        # The engine's own array: no copy when it has the output dtype already.
        features = None if lv.features is None else xp.astype(lv.features, out_dtype, copy=False)
        semantic = None
        if lv.semantic is not None:
            sem_cells = xp.take(lv.semantic, lv.cell_labels)
            # A part's groups are numbered from the group of its first cell (its smallest).
            firsts = be.to_numpy(xp.take(sem_cells, be.asarray_index(offsets[:-1], like=like)))
            semantic = xp.astype(per_part_start(sem_cells, firsts, part_of_cell), xp.int32)
        for p, shape in enumerate(graph.shapes):
            c0, c1 = int(offsets[p]), int(offsets[p + 1])
            k0, k1 = int(bounds[i][p]), int(bounds[i][p + 1])
            per_part[p].append(
                Level(
                    threshold=lv.threshold,
                    labels=xp.reshape(local[c0:c1], shape),
                    sizes=lv.sizes[k0:k1],
                    parents=parents[k0:k1],
                    semantic_labels=None if semantic is None else xp.reshape(semantic[c0:c1], shape),
                    _features=None if features is None else features[k0:k1],
                    _compute_features=None if features is not None else partial(means.get, i, k0, k1),
                )
            )
    opts = options.as_dict()
    return [
        Hierarchy(
            levels=levels, min_size=options.min_size, options=opts,
            min_margin=result.min_margin, input_features=inputs[p],
        )
        for p, levels in enumerate(per_part)
    ]


class _LevelMeans:
    """Cluster means of every level and part of a run, computed together on first access.

    Parts (images) are taken in groups of about a million values or more: each group is
    converted to float64 once and summed once, into the finest level's clusters; each
    coarser level then sums the finer level's cluster sums through the parents (K x C, not
    N x C), so the input is read once however many levels there are.  A batch costs a few
    large operations (a GPU's preference) and no float64 copy of the whole batch is made.
    Sums add in increasing cell (or cluster) order from zero whatever the grouping, so every
    backend reports the same bits.  The caller's arrays are read as given, so under torch
    the means carry their autograd history.  Features the run scaled (``RunResult.scale``,
    a power of two) are summed scaled too, so that huge values cannot overflow the sums.
    """

    def __init__(self, be: Backend, inputs: list[Any], levels: list[Any], bounds: list[np.ndarray],
                 offsets: np.ndarray, dtype: Any, scale: float = 1.0) -> None:
        self._work: tuple | None = (be, inputs, levels, bounds, offsets, dtype, scale)
        self._means: list[Any] = []

    def get(self, i: int, k0: int, k1: int) -> Any:
        if self._work is not None:
            self._means = self._compute(*self._work)
            self._work = None
        return self._means[i][k0:k1]

    @staticmethod
    def _compute(be, inputs, levels, bounds, offsets, dtype, scale) -> list[Any]:
        xp = be.xp
        # Rows per group: at least 8 MiB of float64, more where blocks are large (a GPU).
        rows = max(be.block_elements(inputs[0]), 1 << 20) // max(1, int(inputs[0].shape[-1]))
        groups, start = [], 0
        for p in range(len(inputs)):
            if p + 1 == len(inputs) or int(offsets[p + 1] - offsets[start]) >= rows:
                groups.append((start, p + 1))
                start = p + 1
        parts: list[list[Any]] = [[] for _ in levels]
        for p0, p1 in groups:
            x = inputs[p0] if p1 - p0 == 1 else xp.concat(inputs[p0:p1], axis=0)
            if scale != 1.0:
                x = xp.astype(x, be.sum_dtype) * scale
            c0, c1 = int(offsets[p0]), int(offsets[p1])
            k0, k1 = int(bounds[0][p0]), int(bounds[0][p1])
            labels = levels[0].cell_labels[c0:c1]
            sums = be.cluster_sums(x, labels - k0 if k0 else labels, k1 - k0)
            for i, lv in enumerate(levels):
                if i:
                    # Clusters of level i - 1 (rows of sums) into their parents at level i.
                    finer = levels[i - 1]
                    parents = xp.take(lv.cell_labels, finer.roots[int(bounds[i - 1][p0]) : int(bounds[i - 1][p1])])
                    k0, k1 = int(bounds[i][p0]), int(bounds[i][p1])
                    sums = be.segment_sum(sums, parents - k0 if k0 else parents, k1 - k0)
                sizes = xp.astype(lv.sizes[k0:k1], sums.dtype)
                means = sums / sizes[:, None]
                parts[i].append(xp.astype(means / scale if scale != 1.0 else means, dtype))
        return [ps[0] if len(ps) == 1 else xp.concat(ps, axis=0) for ps in parts]


def _device(a: Any) -> Any:
    from array_api_compat import device

    return device(a)
