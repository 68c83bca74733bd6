"""The paper's rule at matrix-product speed (#22): the profile fast path gives the partitions
of the chunked products it replaced, on every CPU backend, with and without semantic groups.

Both profile modes are checked: float32 profiles (the default: scores within their error
bound of a threshold are re-scored exactly) and float64 profile sums (what ``track_margin``
uses).  The oracle is the engine with ``PROFILE_BYTES = 0``: no profile is kept, every vote is
``(mu_a - mu_b) F^T`` and every attention logit ``mu F^T`` (the implementation before #22,
still the fallback for graphs whose profiles would not fit), on the NumPy reference with
``track_margin``.  Draws whose smallest |s - t| is within 1e-9 of a threshold are rejected:
two float64 summation orders may decide those differently (DESIGN.md 1.5).
"""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import uniap
import uniap.core.levels
import uniap.testing
from uniap.synthetic import piecewise_features

from test_backends_agree import MARGIN, grids, levels_strategy

BACKENDS = [name for name in ("numpy", "numba", "torch") if uniap.backends.available().get(name) is None]
if "torch" in BACKENDS:
    # CPU tensors run the engine on NumPy views (Numba's primitives); "torch-engine" runs it
    # on the tensors themselves, the code path of CUDA.
    BACKENDS.append("torch-engine")


@contextlib.contextmanager
def profiles_in(mode):
    """Run the fast path with "float32" (the default) or "float64" profiles."""
    saved = uniap.core.levels.FLOAT32_PROFILES
    uniap.core.levels.FLOAT32_PROFILES = mode == "float32"
    try:
        yield
    finally:
        uniap.core.levels.FLOAT32_PROFILES = saved


@contextlib.contextmanager
def chunked_products():
    """Run the engine without profiles (the previous implementation)."""
    saved = uniap.core.levels.PROFILE_BYTES
    uniap.core.levels.PROFILE_BYTES = 0
    try:
        yield
    finally:
        uniap.core.levels.PROFILE_BYTES = saved


def _convert(backend):
    if backend.startswith("torch"):
        import torch

        return torch.from_numpy
    return lambda a: a


@contextlib.contextmanager
def _running(backend):
    """The backend name to pass, with the torch engine on CPU tensors for "torch-engine"."""
    if backend != "torch-engine":
        yield backend
        return
    from uniap.backends.torch_backend import TorchBackend

    saved = TorchBackend.numba_on_cpu
    TorchBackend.numba_on_cpu = False
    try:
        yield "torch"
    finally:
        TorchBackend.numba_on_cpu = saved


def compare(x, backend, reject=assume, mode="float32", **options):
    with chunked_products():
        ref = uniap.segment(x, backend="numpy", track_margin=True, **options)
    refs = ref if isinstance(ref, list) else [ref]
    reject(all(r.min_margin > MARGIN for r in refs))
    convert = _convert(backend)
    inputs = [convert(g) for g in x] if isinstance(x, list) else convert(x)
    with _running(backend) as name, profiles_in(mode):
        fast = uniap.segment(inputs, backend=name, **options)
    fasts = fast if isinstance(fast, list) else [fast]
    for r, f in zip(refs, fasts):
        uniap.testing.assert_same_partitions(r, f, features_rtol=1e-9)
    return refs


def _skip_close_call(far_enough: bool) -> None:
    if not far_enough:
        pytest.skip("a score within 1e-9 of a threshold: summation orders may decide differently")


@pytest.mark.parametrize("mode", ["float32", "float64"])
@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=60)
@given(x=grids(max_side=24, max_channels=64), levels=levels_strategy, semantic=st.booleans())
def test_paper_preset_agrees(backend, mode, x, levels, semantic):
    compare(x, backend, mode=mode, levels=levels, preset="paper", semantic=semantic)


@pytest.mark.parametrize("mode", ["float32", "float64"])
@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=40)
@given(x=grids(max_side=20, max_channels=48), levels=levels_strategy,
       pooling=st.sampled_from(["sum", "attention"]), vote_weight=st.sampled_from([0.0, 0.4, 0.7, 1.0]),
       temperature=st.sampled_from([0.07, 0.5]), semantic=st.booleans(),
       passes=st.sampled_from(["until_stable", "single"]))
def test_every_profile_option_agrees(backend, mode, x, levels, pooling, vote_weight, temperature, semantic, passes):
    compare(x, backend, mode=mode, levels=levels, pooling=pooling, vote_weight=vote_weight,
            temperature=temperature, semantic=semantic, passes=passes)


@settings(max_examples=30)
@given(x=grids(max_side=16, max_channels=32), levels=levels_strategy, semantic=st.booleans())
def test_scores_near_a_threshold_are_rescored_exactly(x, levels, semantic):
    # A wide tolerance sends most scores through the exact re-scoring (edges and pairs).
    saved = uniap.core.levels.float32_profile_tolerance
    uniap.core.levels.float32_profile_tolerance = lambda options, channels: 0.5
    try:
        compare(x, "numba" if "numba" in BACKENDS else "numpy", levels=levels, preset="paper", semantic=semantic)
    finally:
        uniap.core.levels.float32_profile_tolerance = saved


def test_float32_tolerance_bounds_the_profile_error(rng):
    # The bound of float32_profile_tolerance against the actual error of float32 F F^T.
    from uniap.core.levels import float32_profile_tolerance
    from uniap.options import resolve_options

    for c in (3, 64, 384):
        f = rng.normal(size=(300, c)) + rng.normal(size=c) * 3
        f /= np.linalg.norm(f, axis=1, keepdims=True)
        f32 = f.astype(np.float32)
        err = np.abs((f32 @ f32.T).astype(np.float64) - f @ f.T).max()
        tol = float32_profile_tolerance(resolve_options(preset="paper"), c)
        assert 0.4 * 2 * err < tol / 2  # a vote errs by at most twice an entry's error
    assert float32_profile_tolerance(resolve_options(), 384) == 0.0


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=25)
@given(data=st.data())
def test_batches_agree(backend, data):
    # Each image keeps its own profile matrix; parts of very different sizes share one run.
    n = data.draw(st.integers(1, 5))
    c = data.draw(st.integers(1, 48))
    shapes = [(data.draw(st.integers(1, 20)), data.draw(st.integers(1, 20))) for _ in range(n)]
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    batch = [piecewise_features(s, channels=c, noise=float(rng.uniform(0, 1.5)), seed=rng) for s in shapes]
    compare(batch, backend, preset="paper", semantic=data.draw(st.booleans()),
            passes=data.draw(st.sampled_from(["until_stable", "single"])))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("seed", range(6))
def test_seeded_vit_sized_grids(backend, seed):
    # Hundreds of clusters at the first level: the semantic complete graph's bounds decide
    # most pairs, and the exact L1 distances the rest.
    rng = np.random.default_rng(2200 + seed)
    x = piecewise_features((int(rng.integers(24, 41)), int(rng.integers(24, 41))), channels=384,
                           regions=[int(rng.integers(20, 120))], noise=float(rng.uniform(0.6, 1.6)), seed=rng)
    compare(x, backend, reject=_skip_close_call, preset="paper", semantic=True)


def test_margins_match_the_chunked_products(rng):
    # track_margin scores every decision exactly on the fast path too (no bounds).
    x = piecewise_features((18, 15), channels=32, noise=1.2, seed=rng)
    fast = uniap.segment(x, backend="numpy", track_margin=True, preset="paper", semantic=True)
    with chunked_products():
        ref = uniap.segment(x, backend="numpy", track_margin=True, preset="paper", semantic=True)
    assert fast.min_margin == pytest.approx(ref.min_margin, rel=1e-6, abs=1e-12)


def test_profiles_are_kept_within_the_budget(monkeypatch, rng):
    from uniap.core.levels import _Context, _initial_profiles
    from uniap.options import resolve_options

    be = uniap.backends.get("numpy")
    unit = rng.normal(size=(30, 4))
    ctx = _Context(be=be, xp=np, options=resolve_options(preset="paper"), unit=unit)
    offsets = np.array([0, 10, 30])
    profiles = _initial_profiles(ctx, offsets)
    assert [p.shape for p in profiles] == [(10, 10), (20, 20)]
    np.testing.assert_allclose(profiles[1], unit[10:] @ unit[10:].T)
    ctx.profile_tol = 1e-4
    assert [p.dtype for p in _initial_profiles(ctx, offsets)] == [np.float32, np.float32]
    ctx.profile_tol = 0.0
    monkeypatch.setattr(uniap.core.levels, "PROFILE_BYTES", (10 * 10 + 20 * 20) * 8 - 1)
    assert _initial_profiles(ctx, offsets) is None
    ctx = _Context(be=be, xp=np, options=resolve_options(), unit=unit)
    assert _initial_profiles(ctx, offsets) is None  # the released rule needs none


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("seed", range(4))
def test_many_unlike_clusters(backend, seed):
    # Noisy features: nearly every cell stays a cluster at the first levels, so the semantic
    # complete graph has ~N nodes and most pairs are ruled out by their cosine alone.
    rng = np.random.default_rng(2300 + seed)
    x = piecewise_features((int(rng.integers(20, 33)), int(rng.integers(20, 33))), channels=int(rng.choice([16, 64])),
                           noise=float(rng.uniform(1.8, 2.5)), seed=rng)
    levels = tuple(sorted(rng.uniform(-0.2, 0.9, size=4), reverse=True))
    compare(x, backend, reject=_skip_close_call, preset="paper", semantic=True, levels=levels)


@pytest.mark.parametrize("semantic", [False, True])
def test_a_batch_too_large_for_its_profiles_runs_group_by_group(monkeypatch, semantic):
    """A batch whose profiles would not fit together is run in groups that fit, each on the
    profile path (not the whole batch on the chunked products), with each image's partitions."""
    rng = np.random.default_rng(7)
    grids_ = [piecewise_features((h, w), 16, (3, 9), noise=0.4, seed=int(rng.integers(1 << 30)))
              for h, w in ((12, 10), (9, 14), (11, 11))]
    alone = [uniap.segment(g, preset="paper", semantic=semantic, backend="numpy") for g in grids_]
    largest = max(g.shape[0] * g.shape[1] for g in grids_)
    monkeypatch.setattr(uniap.core.levels, "PROFILE_BYTES", 4 * (largest**2 + 50))  # one image's, not two
    kept = []
    real = uniap.core.levels._initial_profiles
    monkeypatch.setattr(uniap.core.levels, "_initial_profiles",
                        lambda *args: kept.append(real(*args)) or kept[-1])
    batch = uniap.segment(grids_, preset="paper", semantic=semantic, backend="numpy")
    assert len(kept) == 3 and all(p is not None for p in kept)  # three runs, each with profiles
    for h, ref in zip(batch, alone):
        uniap.testing.assert_same_partitions(ref, h)
    assert uniap.core.levels.profile_groups([120, 126, 121], uniap.options.resolve_options(preset="released")) \
        == [range(3)]  # no profiles needed: one run


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b in ("numba", "torch")])
@settings(max_examples=30)
@given(x=grids(max_side=24, max_channels=64), levels=levels_strategy, semantic=st.booleans())
def test_the_syrk_gram_gives_the_same_partitions(backend, x, levels, semantic):
    """The profiles' Gram through SciPy's syrk and the tiled copy (taken for large profiles
    only, so forced here on every size) gives the reference's partitions."""
    import uniap.backends.numba_backend as numba_backend

    saved = numba_backend._SYRK_MIN_ROWS
    numba_backend._SYRK_MIN_ROWS = 1
    try:
        compare(x, backend, levels=levels, preset="paper", semantic=semantic)
    finally:
        numba_backend._SYRK_MIN_ROWS = saved


def _blas_threads() -> list[int]:
    from threadpoolctl import threadpool_info

    return sorted({pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"})


@pytest.mark.parametrize("bands", [True, False])
@pytest.mark.parametrize("backend", [b for b in BACKENDS if b in ("numba", "torch")])
def test_passes_run_on_one_blas_thread_and_the_gram_on_all(monkeypatch, backend, bands):
    """The passes' products run on one BLAS thread, the Gram on the caller's count (as that
    many bands on Python threads, each BLAS call on one thread; or on the BLAS library's
    threads), which is restored afterwards, also when the run fails."""
    pytest.importorskip("threadpoolctl")
    import uniap.backends.numba_backend as numba_backend
    from threadpoolctl import threadpool_limits

    seen = {"gram": [], "pass": [], "bands": [], "band": []}
    real_gram, real_contract = numba_backend.symmetric_gram, uniap.core.levels._contract
    real_banded, real_lower = numba_backend.banded_gram, numba_backend._lower_gram

    def gram(unit, min_rows=None, **kwargs):
        seen["gram"].append(_blas_threads())
        return real_gram(unit, min_rows, **kwargs)

    def banded(unit, threads, **kwargs):
        seen["bands"].append(threads)
        return real_banded(unit, threads, **kwargs)

    def lower(block):
        seen["band"].append(_blas_threads())
        return real_lower(block)

    def contract(*args, **kwargs):
        seen["pass"].append(_blas_threads())
        return real_contract(*args, **kwargs)

    monkeypatch.setattr(numba_backend, "GRAM_BANDS", bands)
    monkeypatch.setattr(numba_backend, "symmetric_gram", gram)
    monkeypatch.setattr(numba_backend, "banded_gram", banded)
    monkeypatch.setattr(numba_backend, "_lower_gram", lower)
    monkeypatch.setattr(uniap.core.levels, "_contract", contract)
    x = _convert(backend)(piecewise_features((16, 12), channels=16, noise=0.3, seed=3))
    with threadpool_limits(limits=2, user_api="blas"):
        ref = uniap.segment(x, preset="paper", semantic=True)
        if bands:
            assert seen["bands"] == [2] and seen["band"] == [[1], [1]] and seen["gram"] == []
        else:
            assert seen["gram"] == [[2]] and seen["bands"] == []
        assert seen["pass"] and all(s == [1] for s in seen["pass"])
        assert _blas_threads() == [2]

        def fail(*args, **kwargs):
            raise RuntimeError("stop")

        monkeypatch.setattr(uniap.core.levels, "_contract", fail)
        with pytest.raises(RuntimeError, match="stop"):
            uniap.segment(x, preset="paper")
        assert _blas_threads() == [2]
    monkeypatch.setattr(uniap.core.levels, "_contract", real_contract)
    with chunked_products():  # the same partitions without any of it
        uniap.testing.assert_same_partitions(uniap.segment(x, preset="paper", semantic=True, backend="numpy"), ref,
                                             features_rtol=1e-9)


@pytest.mark.parametrize("profile_tol", [0.0, 1e-4])
def test_both_factorisations_of_the_profile_gram_agree(rng, profile_tol):
    """(mu F^T F, mu) and (P, P): the same Gram of the profile means, whichever is cheaper."""
    from uniap.core.levels import _Context, _profile_gram, _State
    from uniap.options import resolve_options

    n, c, k = 40, 30, 4  # few nodes, many channels: the profiles are cheaper than F^T F
    unit = rng.normal(size=(n, c))
    unit /= np.linalg.norm(unit, axis=1, keepdims=True)
    members = np.arange(n) % k
    sums = np.stack([unit[members == i].sum(axis=0) for i in range(k)])
    sizes = np.bincount(members, minlength=k).astype(np.int64)
    prof = (sums @ unit.T) / (sizes[:, None] if profile_tol else 1.0)
    st_ = _State(sums=sums, sizes=sizes, unit_sums=sums, feats=sums, norms=np.ones(k), roots=np.arange(k),
                 pos=np.arange(k), row_offsets=np.array([0, k]), cell_offsets=np.array([0, n]),
                 profiles=[prof.astype(np.float32) if profile_tol else prof])
    rows = np.arange(k)
    expected = (sums[rows] / sizes[rows, None]) @ unit.T
    gram = expected @ expected.T
    results = []
    for cached in (False, True):  # F^T F cached: always the feature factorisation
        ctx = _Context(be=uniap.backends.get("numpy"), xp=np, options=resolve_options(preset="paper"), unit=unit)
        ctx.profile_tol = profile_tol
        if cached:
            ctx.feature_grams[0] = unit.T @ unit
        left, right, sq, means = _profile_gram(ctx, st_, 0, rows)
        results.append(left.shape[1])
        np.testing.assert_allclose(left @ right.T, gram, atol=1e-12)
        np.testing.assert_allclose(sq, np.diag(gram), atol=1e-12)
        np.testing.assert_allclose(means, expected.mean(axis=1), atol=1e-12)
    assert results == [n, c]  # few nodes: the profiles themselves; cached: mu F^T F


def test_the_last_pass_profiles_are_read_not_recomputed(rng):
    """The exact profiles a pass computed for the nodes it formed are the semantic Gram's rows
    for those nodes (only the others are multiplied out), and the Gram is the same."""
    from uniap.core.levels import _Context, _profile_gram, _State
    from uniap.options import resolve_options

    n, c, k = 40, 30, 5
    unit = rng.normal(size=(n, c))
    unit /= np.linalg.norm(unit, axis=1, keepdims=True)
    members = np.arange(n) % k
    sums = np.stack([unit[members == i].sum(axis=0) for i in range(k)])
    sizes = np.bincount(members, minlength=k).astype(np.int64)
    expected = (sums / sizes[:, None]) @ unit.T
    known_rows = np.array([1, 3])
    for marked in (False, True):
        known = expected[known_rows] + (0.5 if marked else 0.0)  # marked: tells read rows apart
        st_ = _State(sums=sums, sizes=sizes, unit_sums=sums, feats=sums, norms=np.ones(k), roots=np.arange(k),
                     pos=np.arange(k), row_offsets=np.array([0, k]), cell_offsets=np.array([0, n]),
                     profiles=[expected.astype(np.float32)], exact_profiles={0: (known_rows, known)})
        ctx = _Context(be=uniap.backends.get("numpy"), xp=np, options=resolve_options(preset="paper"), unit=unit)
        ctx.profile_tol = 1e-4
        left, right, sq, _ = _profile_gram(ctx, st_, 0, np.arange(k))
        want = expected.copy()
        want[known_rows] = known
        np.testing.assert_allclose(left, want, atol=1e-12)
        np.testing.assert_allclose(sq, np.sum(want * want, axis=1), atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_semantic_groups_reuse_the_pass_profiles(monkeypatch, backend):
    """A real run hands the first level's formed nodes' profiles to the semantic groups, and
    gives the reference's partitions."""
    import uniap.core.levels as levels

    known = []
    real = levels._profile_gram

    def spy(ctx, st_, p, rows):
        entry = st_.exact_profiles.get(p)
        known.append(0 if entry is None else int(entry[0].shape[0]))
        return real(ctx, st_, p, rows)

    monkeypatch.setattr(levels, "_profile_gram", spy)
    monkeypatch.setattr(levels, "DIRECT_RATIO", 1 << 40)  # the Gram's bounds, not direct votes
    x = piecewise_features((20, 18), channels=48, regions=[40], noise=0.8, seed=11)
    compare(x, backend, reject=_skip_close_call, preset="paper", semantic=True)
    assert known and known[0] > 0


@pytest.mark.parametrize("ratio", [0, 1 << 40])
@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=30)
@given(x=grids(max_side=24, max_channels=64), levels=levels_strategy)
def test_direct_and_bounded_semantic_votes_agree(backend, ratio, x, levels):
    """The semantic pairs all scored by their own L1 distances (ratio 0: always direct) or
    decided by the Gram's bounds (a huge ratio: never direct while a tile has a candidate)
    give the reference's partitions."""
    saved = uniap.core.levels.DIRECT_RATIO
    uniap.core.levels.DIRECT_RATIO = ratio
    try:
        compare(x, backend, levels=levels, preset="paper", semantic=True)
    finally:
        uniap.core.levels.DIRECT_RATIO = saved


@pytest.mark.parametrize("ratio", [0, 1 << 40])
@pytest.mark.parametrize("mode", ["float32", "float64"])
def test_direct_and_bounded_paths_are_taken(monkeypatch, ratio, mode):
    """Each DIRECT_RATIO setting takes its path on a grid with many clusters (the Gram's
    factors are made only on the bounded one), with the reference's partitions."""
    import uniap.core.levels as levels

    grams = []
    real = levels._profile_gram
    monkeypatch.setattr(levels, "_profile_gram", lambda *args: grams.append(1) or real(*args))
    monkeypatch.setattr(levels, "DIRECT_RATIO", ratio)
    x = piecewise_features((24, 22), channels=48, regions=[60], noise=0.9, seed=5)
    compare(x, "numba" if "numba" in BACKENDS else "numpy", reject=_skip_close_call, mode=mode, preset="paper",
            semantic=True)
    assert bool(grams) == (ratio != 0)


@pytest.mark.parametrize("syrk", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [1, 63, 128, 301, 1000])
@pytest.mark.parametrize("threads", [2, 3, 7])
def test_banded_gram_is_the_symmetric_gram(monkeypatch, rng, n, threads, dtype, syrk):
    """Bands on Python threads give every entry of unit @ unit.T (within the bound the
    float32 profiles assume), exactly symmetric, for any thread count and row count (few
    rows: fewer bands, or the one-call Gram), with NumPy's or SciPy's syrk for the blocks."""
    import uniap.backends.numba_backend as numba_backend

    if syrk:
        monkeypatch.setattr(numba_backend, "_SYRK_MIN_ROWS", 1)
    banded_gram = numba_backend.banded_gram
    c = 24
    unit = rng.normal(size=(n, c))
    unit /= np.linalg.norm(unit, axis=1, keepdims=True)
    g = banded_gram(unit.astype(dtype), threads)
    assert g.dtype == dtype and g.shape == (n, n) and np.array_equal(g, g.T)
    bound = (c + 2) * np.finfo(dtype).eps / 2  # (C + 2) u, u the unit roundoff
    assert np.abs(g.astype(np.float64) - unit @ unit.T).max() <= bound


def test_banded_gram_raises_a_band_error(monkeypatch, rng):
    """An error in a band (memory, say) is the caller's error, not a silently unfilled band."""
    import uniap.backends.numba_backend as numba_backend

    def fail(block):
        raise MemoryError("band")

    monkeypatch.setattr(numba_backend, "_lower_gram", fail)
    with pytest.raises(MemoryError, match="band"):
        numba_backend.banded_gram(rng.normal(size=(256, 8)).astype(np.float32), 2)


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b in ("numba", "torch")])
@settings(max_examples=30)
@given(x=grids(max_side=24, max_channels=64), levels=levels_strategy, semantic=st.booleans(),
       threads=st.integers(2, 5))
def test_the_banded_gram_gives_the_same_partitions(backend, x, levels, semantic, threads):
    """The profiles' Gram as bands on Python threads (forced on every size here) gives the
    reference's partitions."""
    pytest.importorskip("threadpoolctl")
    import uniap.backends.numba_backend as numba_backend
    from threadpoolctl import threadpool_limits

    saved = numba_backend.GRAM_BAND_ROWS
    numba_backend.GRAM_BAND_ROWS = 1
    try:
        with threadpool_limits(limits=threads, user_api="blas"):
            compare(x, backend, levels=levels, preset="paper", semantic=semantic)
    finally:
        numba_backend.GRAM_BAND_ROWS = saved


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b in ("numba", "torch")])
@settings(max_examples=30)
@given(x=grids(max_side=24, max_channels=64), levels=levels_strategy, semantic=st.booleans(),
       threads=st.integers(2, 4), passes=st.sampled_from(["single", "until_stable"]))
def test_merged_rows_on_threads_give_the_same_partitions(backend, x, levels, semantic, threads, passes):
    """The merged nodes' products split between threads (forced on every size here: any work
    is enough for a thread) give the reference's partitions and pooled features."""
    pytest.importorskip("threadpoolctl")
    import uniap.backends.numba_backend as numba_backend
    from threadpoolctl import threadpool_limits

    calls = []
    real = numba_backend.on_threads
    saved = numba_backend.ROW_BLOCKS, numba_backend.ROW_BLOCK_WORK, numba_backend.on_threads
    numba_backend.ROW_BLOCKS, numba_backend.ROW_BLOCK_WORK = True, 1
    numba_backend.on_threads = lambda c: calls.append(len(c)) or real(c)
    try:
        with threadpool_limits(limits=threads, user_api="blas"):
            compare(x, backend, levels=levels, preset="paper", semantic=semantic, passes=passes)
    finally:
        numba_backend.ROW_BLOCKS, numba_backend.ROW_BLOCK_WORK, numba_backend.on_threads = saved
    assert all(n <= threads for n in calls)


def test_merged_rows_are_split_between_threads(monkeypatch):
    """With ROW_BLOCKS, a grid whose first pass merges many nodes runs their products on the
    caller's thread count of threads (one block each), and each row once; without, on one."""
    pytest.importorskip("threadpoolctl")
    import uniap.backends.numba_backend as numba_backend
    from threadpoolctl import threadpool_limits

    blocks = []
    real = numba_backend.on_threads
    monkeypatch.setattr(numba_backend, "ROW_BLOCKS", True)
    monkeypatch.setattr(numba_backend, "ROW_BLOCK_WORK", 1)
    monkeypatch.setattr(numba_backend, "on_threads", lambda c: blocks.append([args for _, args in c]) or real(c))
    x = piecewise_features((20, 18), channels=32, regions=[12], noise=0.5, seed=4)
    with threadpool_limits(limits=3, user_api="blas"):
        compare(x, "numba", reject=_skip_close_call, preset="paper", semantic=True)
    rows = [b for b in blocks if len(b) == 3 and all(len(args) == 2 for args in b)]
    assert rows, blocks
    for b in rows:  # contiguous blocks covering 0..m
        assert b[0][0] == 0 and all(b[i][1] == b[i + 1][0] for i in range(2))
    blocks.clear()
    monkeypatch.setattr(numba_backend, "ROW_BLOCKS", False)
    with threadpool_limits(limits=3, user_api="blas"):
        uniap.segment(x, preset="paper", semantic=True)
    assert not [b for b in blocks if all(len(args) == 2 for args in b)]


def test_on_threads_raises_a_thread_error():
    import uniap.backends.numba_backend as numba_backend

    done = []

    def fail():
        raise MemoryError("block")

    with pytest.raises(MemoryError, match="block"):
        numba_backend.on_threads([(done.append, (1,)), (fail, ()), (done.append, (2,))])
    assert sorted(done) == [1, 2]  # the other calls ran to the end
