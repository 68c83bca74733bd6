"""Helpers for testing backends against the NumPy reference."""

from __future__ import annotations

import numpy as np

from .core.hierarchy import Hierarchy


def assert_same_partitions(reference: Hierarchy, other: Hierarchy, features_rtol: float = 1e-5) -> None:
    """Assert two hierarchies hold the same partitions level by level.

    Labels, sizes, parents and semantic labels must be equal (labels are canonical, so equal
    partitions give equal arrays); cluster features must agree within ``features_rtol``.
    """
    ref, oth = reference.numpy(), other.numpy()
    assert len(ref) == len(oth), f"{len(ref)} levels != {len(oth)} levels"
    for i, (a, b) in enumerate(zip(ref.levels, oth.levels)):
        where = f"level {i} (t={a.threshold})"
        assert a.threshold == b.threshold, f"{where}: thresholds differ"
        np.testing.assert_array_equal(a.labels, b.labels, err_msg=f"{where}: labels differ")
        np.testing.assert_array_equal(a.sizes, b.sizes, err_msg=f"{where}: sizes differ")
        np.testing.assert_array_equal(a.parents, b.parents, err_msg=f"{where}: parents differ")
        if a.semantic_labels is None:
            assert b.semantic_labels is None, f"{where}: unexpected semantic labels"
        else:
            np.testing.assert_array_equal(
                a.semantic_labels, b.semantic_labels, err_msg=f"{where}: semantic labels differ"
            )
        scale = max(1.0, float(np.abs(a.features).max(initial=0.0)))
        np.testing.assert_allclose(
            b.features, a.features, rtol=features_rtol, atol=features_rtol * scale,
            err_msg=f"{where}: features differ",
        )
