"""Every CPU backend gives the reference's partitions on many random inputs (DESIGN.md 1.5)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import uniap
import uniap.testing
from uniap.synthetic import piecewise_features

from conftest import cpu_backends

BACKENDS = cpu_backends()
# Two float64 summation orders differ by ~1e-15; below this margin they may decide differently.
MARGIN = 1e-9

pytestmark = pytest.mark.skipif(not BACKENDS, reason="no CPU backend besides the reference")


@st.composite
def grids(draw, max_side=64, max_channels=384):
    h = draw(st.integers(1, max_side))
    w = draw(st.integers(1, max_side))
    c = draw(st.integers(1, max_channels))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    regions = draw(st.lists(st.integers(1, 80), min_size=1, max_size=3))
    noise = draw(st.floats(0.0, 2.0))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    return piecewise_features((h, w), channels=c, regions=regions, noise=noise, seed=rng, dtype=dtype)


levels_strategy = st.lists(st.floats(-0.9, 0.99), min_size=1, max_size=6, unique=True).map(
    lambda v: tuple(sorted(v, reverse=True))
)


def _skip_close_call(far_enough: bool) -> None:
    if not far_enough:
        pytest.skip("a score within 1e-9 of a threshold: summation orders may decide differently")


def compare(x, backend, reject=assume, **options):
    ref = uniap.segment(x, backend="numpy", track_margin=True, **options)
    refs = ref if isinstance(ref, list) else [ref]
    reject(all(r.min_margin > MARGIN for r in refs))
    other = uniap.segment(x, backend=backend, **options)
    others = other if isinstance(other, list) else [other]
    for r, o in zip(refs, others):
        uniap.testing.assert_same_partitions(r, o, features_rtol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=250)
@given(x=grids(), levels=levels_strategy, connectivity=st.sampled_from([4, 8]),
       passes=st.sampled_from(["until_stable", "single"]))
def test_released_rule_agrees(backend, x, levels, connectivity, passes):
    compare(x, backend, levels=levels, connectivity=connectivity, passes=passes)


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=60)
@given(x=grids(max_side=20, max_channels=48), levels=levels_strategy,
       pooling=st.sampled_from(["sum", "attention"]), vote_weight=st.sampled_from([0.0, 0.4, 1.0]),
       semantic=st.booleans(), passes=st.sampled_from(["until_stable", "single"]))
def test_every_option_agrees(backend, x, levels, pooling, vote_weight, semantic, passes):
    compare(x, backend, levels=levels, pooling=pooling, vote_weight=vote_weight,
            semantic=semantic, passes=passes)


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=40)
@given(data=st.data())
def test_batches_agree(backend, data):
    n = data.draw(st.integers(1, 6))
    c = data.draw(st.integers(1, 64))
    shapes = [(data.draw(st.integers(1, 24)), data.draw(st.integers(1, 24))) for _ in range(n)]
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    batch = [piecewise_features(s, channels=c, noise=float(rng.uniform(0, 1.5)), seed=rng) for s in shapes]
    compare(batch, backend, semantic=data.draw(st.booleans()))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("seed", range(40))
def test_seeded_vit_sized_grids(backend, seed):
    rng = np.random.default_rng(1000 + seed)
    side = int(rng.choice([28, 37, 64]))
    x = piecewise_features((side, int(rng.integers(20, 65))), channels=int(rng.choice([64, 384])),
                           noise=float(rng.uniform(0.2, 1.4)), seed=rng)
    compare(x, backend, reject=_skip_close_call)


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=40)
@given(n=st.integers(1, 60), c=st.integers(1, 16), m=st.integers(0, 200), seed=st.integers(0, 2**32 - 1),
       levels=levels_strategy)
def test_graphs_agree(backend, n, c, m, seed, levels):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, c)) + rng.normal(size=(4, c))[rng.integers(0, 4, n)] * 2
    edges = rng.integers(0, n, size=(m, 2))
    ref = uniap.segment_graph(x, edges, levels=levels, backend="numpy", track_margin=True)
    assume(ref.min_margin > MARGIN)
    other = uniap.segment_graph(x, edges, levels=levels, backend=backend)
    uniap.testing.assert_same_partitions(ref, other, features_rtol=1e-12)
