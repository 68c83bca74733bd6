"""UniAP backends on ViT-sized grids (default levels), and peers on the same inputs.

Run: ``python -m pytest bench/ --benchmark-only --benchmark-group-by=param:grid``
(see docs/benchmarks.md).  Numba runs single-threaded; peers run as shipped.
"""

from __future__ import annotations

import numpy as np
import pytest

import uniap

LEVELS = uniap.DEFAULT_LEVELS


@pytest.mark.parametrize("backend", ["numba", "numpy"])
def test_uniap(benchmark, grid, backend):
    uniap.segment(grid, backend=backend)  # compile / warm caches outside the timing
    h = benchmark(uniap.segment, grid, backend=backend)
    benchmark.extra_info["clusters"] = [lv.num_clusters for lv in h.levels]


def test_uniap_numba_with_queries(benchmark, grid):
    """Partitions plus every level's cluster means (what a trainer reads)."""

    def run():
        h = uniap.segment(grid, backend="numba")
        return h.queries()

    run()
    benchmark(run)


def _unit_edges(x, edges):
    flat = x.reshape(-1, x.shape[-1]).astype(np.float64)
    unit = flat / np.maximum(np.linalg.norm(flat, axis=1, keepdims=True), 1e-10)
    return 1.0 - np.einsum("ij,ij->i", unit[edges[0]], unit[edges[1]])


def _higra_cuts(graph, weights, linkage):
    import higra as hg

    if linkage == "average":
        tree, altitudes = hg.binary_partition_tree_average_linkage(graph, weights)
    else:
        tree, altitudes = hg.bpt_canonical(graph, weights)
    explorer = hg.HorizontalCutExplorer(tree, altitudes)
    return [explorer.horizontal_cut_from_altitude(1.0 - t).labelisation_leaves(tree) for t in LEVELS]


@pytest.mark.parametrize("linkage", ["average", "single"])
def test_peer_higra(benchmark, grid, linkage):
    """The tree and its five cuts; the 1 - cosine edge weights are computed untimed."""
    hg = pytest.importorskip("higra")
    graph = hg.get_4_adjacency_graph(grid.shape[:2])
    weights = _unit_edges(grid, graph.edge_list())
    benchmark(_higra_cuts, graph, weights, linkage)


@pytest.mark.parametrize("linkage", ["average", "single"])
def test_peer_higra_from_features(benchmark, grid, linkage):
    """Features to partitions, as uniap is timed: edge weights (NumPy), tree, five cuts."""
    hg = pytest.importorskip("higra")

    def run():
        graph = hg.get_4_adjacency_graph(grid.shape[:2])
        return _higra_cuts(graph, _unit_edges(grid, graph.edge_list()), linkage)

    benchmark(run)


def _sklearn_levels(x):
    from sklearn.cluster import AgglomerativeClustering
    from sklearn.feature_extraction.image import grid_to_graph

    h, w, c = x.shape
    connectivity = grid_to_graph(h, w)
    flat = x.reshape(-1, c)
    return [
        AgglomerativeClustering(
            n_clusters=None, distance_threshold=1.0 - t, connectivity=connectivity,
            linkage="average", metric="cosine",
        ).fit(flat).labels_
        for t in LEVELS
    ]


def test_peer_sklearn_agglomerative(benchmark, grid):
    pytest.importorskip("sklearn")
    if grid.shape[0] > 64:
        pytest.skip("minutes per call at 128x128; compared on the smaller grids")
    benchmark.pedantic(_sklearn_levels, args=(grid,), rounds=3, iterations=1)


def _skimage_rag_levels(x):
    from skimage import graph

    h, w, c = x.shape
    flat = x.reshape(-1, c).astype(np.float64)
    labels = np.arange(h * w).reshape(h, w)
    rag = graph.RAG(labels, connectivity=1)
    for n in rag.nodes:
        rag.nodes[n]["sum"] = flat[n].copy()
        rag.nodes[n]["labels"] = [n]

    def cosine_distance(g, src, dst, n):
        u, v = g.nodes[dst]["sum"], g.nodes[n]["sum"]
        return {"weight": 1.0 - float(u @ v / (max(np.linalg.norm(u), 1e-10) * max(np.linalg.norm(v), 1e-10)))}

    def merge_sums(g, src, dst):
        g.nodes[dst]["sum"] += g.nodes[src]["sum"]

    for a, b in rag.edges:
        rag.edges[a, b]["weight"] = cosine_distance(rag, a, a, b)["weight"]
    # The RAG keeps merging from level to level; each call maps the original cells.
    return [
        graph.merge_hierarchical(
            labels, rag, thresh=1.0 - t, rag_copy=False, in_place_merge=True,
            merge_func=merge_sums, weight_func=cosine_distance,
        )
        for t in LEVELS
    ]


def test_peer_skimage_rag_merging(benchmark, grid):
    if grid.shape[0] > 64:
        pytest.skip("tens of seconds per call at 128x128; compared on the smaller grids")
    benchmark.pedantic(_skimage_rag_levels, args=(grid,), rounds=3, iterations=1)
