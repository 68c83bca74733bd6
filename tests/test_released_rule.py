"""The released rule, implemented the slow and obvious way, pins the reference down."""

from __future__ import annotations

import numpy as np
import pytest

import uniap
from uniap.synthetic import piecewise_features


def cos(u, v):
    return float(np.dot(u, v) / (max(np.linalg.norm(u), 1e-10) * max(np.linalg.norm(v), 1e-10)))


def released_rule_slowly(x, edges, levels, until_stable=True):
    """Sequential Python over an edge set: the released code's loop, one step at a time."""
    members = {i: [i] for i in range(len(x))}
    feature = {i: np.asarray(x[i], dtype=np.float64) for i in range(len(x))}
    edge_set = {(min(a, b), max(a, b)) for a, b in edges if a != b}
    margin = np.inf
    out = []
    for t in levels:
        while True:
            scores = {e: cos(feature[e[0]], feature[e[1]]) for e in edge_set}
            margin = min([margin] + [abs(s - t) for s in scores.values()])
            chosen = [e for e, s in scores.items() if s > t]
            if not chosen:
                break
            parent = {k: k for k in members}

            def find(k):
                while parent[k] != k:
                    k = parent[k]
                return k

            for a, b in chosen:
                ra, rb = find(a), find(b)
                parent[max(ra, rb)] = min(ra, rb)
            new_members, new_feature = {}, {}
            for k in sorted(members):
                r = find(k)
                new_members.setdefault(r, []).extend(members[k])
                new_feature[r] = new_feature.get(r, 0.0) + feature[k]
            members, feature = new_members, new_feature
            edge_set = {
                (min(find(a), find(b)), max(find(a), find(b)))
                for a, b in edge_set
                if find(a) != find(b)
            }
            if not until_stable:
                break
        labels = np.empty(len(x), np.int64)
        for new_id, root in enumerate(sorted(members, key=lambda r: min(members[r]))):
            labels[members[root]] = new_id
        out.append(labels)
    return out, margin


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("passes", ["until_stable", "single"])
def test_reference_matches_the_released_rule(seed, passes):
    rng = np.random.default_rng(seed)
    shape = tuple(int(s) for s in rng.integers(1, 11, size=2))
    connectivity = int(rng.choice([4, 8]))
    x = piecewise_features(shape, channels=int(rng.integers(1, 12)), noise=float(rng.uniform(0.1, 1.5)), seed=rng)
    levels = tuple(sorted(rng.uniform(-0.5, 0.99, size=3), reverse=True))
    edges = uniap.grid_edges(shape, connectivity)
    expected, margin = released_rule_slowly(x.reshape(-1, x.shape[-1]), edges.tolist(), levels, passes == "until_stable")
    if margin < 1e-9:
        pytest.skip("a score within 1e-9 of a threshold: the two summation orders may disagree")
    for backend in ("numpy", "numba"):
        h = uniap.segment(x, levels=levels, connectivity=connectivity, passes=passes, backend=backend)
        for level, labels in zip(h.levels, expected):
            np.testing.assert_array_equal(level.labels.ravel(), labels, err_msg=backend)


def test_released_rule_on_a_random_graph():
    rng = np.random.default_rng(7)
    x = rng.normal(size=(40, 5)) + np.repeat(rng.normal(size=(4, 5)) * 3, 10, axis=0)
    edges = rng.integers(0, 40, size=(120, 2))
    levels = (0.9, 0.6, 0.2)
    expected, margin = released_rule_slowly(x, edges.tolist(), levels)
    assert margin > 1e-9
    for backend in ("numpy", "numba"):
        h = uniap.segment_graph(x, edges, levels=levels, backend=backend)
        for level, labels in zip(h.levels, expected):
            np.testing.assert_array_equal(level.labels, labels)
