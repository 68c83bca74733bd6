"""The torch backend on CPU tensors: the reference's partitions, results on torch, autograd.

Besides the CPU path (float64 scores, exact up to summation order), the GPU code path runs
here too, on CPU tensors: ``EmulatedDevice`` is the torch backend with the choices it makes
on CUDA (float32 scores, several propagation rounds per fetch, large blocks), and
``NumpyDeviceLoop`` runs the same fixed-shape loop on NumPy arrays, as the CuPy backend does
on CuPy arrays.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")

import uniap  # noqa: E402
import uniap.backends  # noqa: E402
import uniap.testing  # noqa: E402
from uniap.backends import _device  # noqa: E402
from uniap.backends.numpy_backend import NumpyBackend  # noqa: E402
from uniap.backends.torch_backend import TorchBackend  # noqa: E402
from uniap.synthetic import piecewise_features  # noqa: E402

from agreement import (  # noqa: E402
    FLOAT32_MARGIN, MARGIN, check, grids, levels_strategy, mixed_batches, option_sets, training_batch,
)


class EmulatedDevice(TorchBackend):
    """The CUDA code path of the torch backend, on CPU tensors."""

    name = "torch-emulated-device"

    def score_dtype(self, x):
        return torch.float32

    def is_async(self, x):
        return True

    def block_elements(self, x):
        return 1 << 24


class NumpyDeviceLoop(NumpyBackend):
    """The fixed-shape device loop (the CuPy backend's path) on NumPy arrays, float32 scores."""

    name = "numpy-device-loop"

    @property
    def xp(self):
        # The array-API wrappers the CuPy backend gets (array_api_compat.cupy shares them with
        # array_api_compat.numpy), not bare NumPy's own functions.
        from array_api_compat import numpy as xp

        return xp

    def score_dtype(self, x):
        return np.float32

    def is_async(self, x):
        return True

    def run(self, graph, options, track_margin=False, exact=False):
        if _device.wants_device_loop(options, track_margin):
            return _device.run_released(self, graph, options, exact=exact)
        return super().run(graph, options, track_margin=track_margin, exact=exact)


@pytest.fixture(autouse=True)
def device_loop_on_cpu(monkeypatch):
    """Run torch's own device loop on CPU tensors (by default they go to Numba's kernels)."""
    monkeypatch.setattr(TorchBackend, "numba_on_cpu", False)


def test_cpu_tensors_take_numba_kernels_with_the_same_partitions(monkeypatch, rng):
    pytest.importorskip("numba")
    monkeypatch.setattr(TorchBackend, "numba_on_cpu", True)
    x = piecewise_features((23, 31), channels=40, seed=rng)
    for semantic in (False, True):
        ref = uniap.segment(x, backend="numpy", semantic=semantic)
        h = uniap.segment(torch.from_numpy(x), semantic=semantic)
        assert isinstance(h.labels, torch.Tensor) and isinstance(h.level(0).sizes, torch.Tensor)
        uniap.testing.assert_same_partitions(ref, h)



@pytest.fixture(scope="module", autouse=True)
def single_thread_and_emulated_backends():
    # Small tensors: one thread is faster, and stable on a shared CI machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    extra = (EmulatedDevice(), NumpyDeviceLoop())
    for be in extra:
        uniap.backends._REGISTRY[be.name] = be
    yield
    for be in extra:
        uniap.backends._REGISTRY.pop(be.name, None)
    torch.set_num_threads(threads)


def tensor(x):
    return torch.from_numpy(np.asarray(x))


# -- the reference's partitions ------------------------------------------------------------


@settings(max_examples=150)
@given(x=grids(), levels=levels_strategy, connectivity=st.sampled_from([4, 8]),
       passes=st.sampled_from(["until_stable", "single"]))

def test_released_rule_agrees(x, levels, connectivity, passes):
    check(x, "torch", tensor, levels=levels, connectivity=connectivity, passes=passes)


@settings(max_examples=60)
@given(x=grids(max_side=16, max_channels=32), levels=levels_strategy, options=option_sets)
def test_every_option_agrees(x, levels, options):
    check(x, "torch", tensor, levels=levels, **options)


@settings(max_examples=30)
@given(batch=mixed_batches(), semantic=st.booleans(), connectivity=st.sampled_from([4, 8]),
       preset=st.sampled_from(["released", "paper"]))
def test_mixed_batches_agree(batch, semantic, connectivity, preset):
    check(batch, "torch", tensor, semantic=semantic, connectivity=connectivity, preset=preset)


@settings(max_examples=40)
@given(n=st.integers(1, 60), c=st.integers(1, 16), m=st.integers(0, 200), seed=st.integers(0, 2**32 - 1),
       levels=levels_strategy)
def test_graphs_agree(n, c, m, seed, levels):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, c)) + rng.normal(size=(4, c))[rng.integers(0, 4, n)] * 2
    edges = rng.integers(0, n, size=(m, 2))
    ref = uniap.segment_graph(x, edges, levels=levels, backend="numpy", track_margin=True)
    if ref.min_margin <= MARGIN:
        return
    other = uniap.segment_graph(tensor(x), torch.from_numpy(edges), levels=levels, backend="torch")
    uniap.testing.assert_same_partitions(ref, other, features_rtol=1e-12)


@pytest.mark.parametrize("seed", range(4))
def test_seeded_vit_sized_grids(seed):
    rng = np.random.default_rng(2000 + seed)
    x = piecewise_features((int(rng.choice([28, 64])), int(rng.integers(20, 65))), channels=384,
                           noise=float(rng.uniform(0.2, 1.4)), seed=rng)
    check(x, "torch", tensor, reject=lambda ok: ok or pytest.skip("a score within 1e-9 of a threshold"))


def test_training_shaped_batch_equals_per_image_runs():
    batch = training_batch(np.random.default_rng(7), images=2)
    together = uniap.segment([tensor(g) for g in batch], backend="torch", semantic=True)
    for grid, h in zip(batch, together):
        alone = uniap.segment(tensor(grid), backend="torch", semantic=True)
        uniap.testing.assert_same_partitions(alone, h, features_rtol=1e-12)


# -- the GPU code path, emulated on the CPU ------------------------------------------------


@pytest.mark.parametrize("backend", ["torch-emulated-device", "numpy-device-loop"])
@settings(max_examples=80)
@given(x=grids(max_side=40, max_channels=128), levels=levels_strategy,
       connectivity=st.sampled_from([4, 8]), semantic=st.booleans())
def test_float32_device_path_exact_agrees(backend, x, levels, connectivity, semantic):
    convert = tensor if backend.startswith("torch") else np.asarray
    check(x, backend, convert, exact=True, levels=levels, connectivity=connectivity, semantic=semantic)


@pytest.mark.parametrize("backend", ["torch-emulated-device", "numpy-device-loop"])
@settings(max_examples=80)
@given(x=grids(max_side=40, max_channels=128), levels=levels_strategy,
       passes=st.sampled_from(["until_stable", "single"]))
def test_float32_device_path_agrees_away_from_thresholds(backend, x, levels, passes):
    convert = tensor if backend.startswith("torch") else np.asarray
    check(x, backend, convert, margin=FLOAT32_MARGIN, levels=levels, passes=passes)


@settings(max_examples=20)
@given(batch=mixed_batches(max_images=8, max_side=28, max_channels=96))
def test_float32_device_path_batches(batch):
    check(batch, "torch-emulated-device", tensor, exact=True, features_rtol=1e-6)


@pytest.mark.parametrize("backend", ["torch", "torch-emulated-device", "numpy-device-loop"])
def test_long_snake_needs_more_propagation_rounds(backend, monkeypatch):
    # A boustrophedon path through a 48x48 grid, all alike: one component of diameter 2303,
    # whose min-label propagation needs more rounds than a pass does before its check.
    ids = np.arange(48 * 48).reshape(48, 48)
    path = np.concatenate([row if i % 2 == 0 else row[::-1] for i, row in enumerate(ids)])
    edges = np.stack([path[:-1], path[1:]], axis=1)
    x = 1.0 + 1e-3 * np.random.default_rng(0).standard_normal((48 * 48, 3))
    rounds = []
    propagate = _device._propagate
    monkeypatch.setattr(_device, "_propagate", lambda *args: rounds.append(args[-1]) or propagate(*args))
    convert = np.asarray if backend.startswith("numpy") else tensor
    h = uniap.segment_graph(convert(x), edges, levels=(0.5,), backend=backend)
    assert len(rounds) > 2  # the first batch of rounds did not converge
    np.testing.assert_array_equal(h.numpy().level(0).labels, np.zeros(48 * 48, dtype=np.int32))


@pytest.mark.parametrize("delta, merged", [(1e-8, True), (-1e-8, False)])
def test_exact_redecides_scores_next_to_the_threshold(delta, merged):
    # cos = 0.6 +- ~1e-8: float64 decides correctly, float32 rounds 0.6 + 1e-8 down to 0.6f.
    t = 0.6
    x = np.zeros((1, 2, 2))
    x[0, 0] = [1.0, 0.0]
    angle = np.arccos(t) - delta
    x[0, 1] = [np.cos(angle), np.sin(angle)]
    want = [[0, 0]] if merged else [[0, 1]]
    ref = uniap.segment(x, levels=(t,), min_size=1, backend="numpy")
    np.testing.assert_array_equal(ref.level(0).labels, want)
    exact = uniap.segment(tensor(x), levels=(t,), min_size=1, backend="torch-emulated-device", exact=True)
    np.testing.assert_array_equal(exact.numpy().level(0).labels, want)
    if merged:  # plain float32 scoring gets this one wrong: the reason exact=True exists
        fast = uniap.segment(tensor(x), levels=(t,), min_size=1, backend="torch-emulated-device")
        np.testing.assert_array_equal(fast.numpy().level(0).labels, [[0, 1]])


def test_device_loop_fetches_once_per_pass(monkeypatch):
    """The only host round trips of a released run: one per pass, one before (the
    finiteness check, from the row norms) and one after (the cluster counts)."""
    be = uniap.backends.get("torch-emulated-device")
    fetches, passes = [], []
    fetch, propagate = EmulatedDevice.fetch, _device._propagate

    def counting_fetch(self, *scalars):
        fetches.append(len(scalars))
        return fetch(self, *scalars)

    def counting_propagate(be_, xp, parent, a, b, rounds):
        passes.append(rounds)
        return propagate(be_, xp, parent, a, b, rounds)

    def no_host_reads(*args, **kwargs):
        raise AssertionError("a host read outside Backend.fetch")

    monkeypatch.setattr(EmulatedDevice, "fetch", counting_fetch)
    monkeypatch.setattr(_device, "_propagate", counting_propagate)
    x = tensor(piecewise_features((40, 40), channels=32, seed=1))
    graph_x = be.prepare_features(x.reshape(-1, 32))
    from uniap.graph import Graph, grid_edges

    graph = Graph(x=graph_x, edges=grid_edges((40, 40)), offsets=np.array([0, 1600]), shapes=[(40, 40)])
    options = uniap.options.resolve_options()
    with monkeypatch.context() as m:
        for name in ("__bool__", "__int__", "__float__", "__index__", "item", "numpy"):
            m.setattr(torch.Tensor, name, no_host_reads)
        result = be.run(graph, options)
    assert len(result.levels) == 5
    assert all(r == _device.CC_ROUNDS for r in passes)  # every pass converged in its rounds
    assert len(fetches) == len(passes) + 2
    assert fetches[0] == 1 and fetches[-1] == 5  # finiteness; the cluster counts of all levels


# -- results, conversions, autograd ----------------------------------------------------------


def test_results_stay_torch_and_numpy_brings_them_home():
    x = tensor(piecewise_features((9, 7), channels=12, seed=2))
    h = uniap.segment(x, min_size=1, semantic=True)  # backend="auto" follows the tensor
    lv = h.level(0)
    assert isinstance(lv.labels, torch.Tensor) and lv.labels.dtype == torch.int32
    assert lv.sizes.dtype == torch.int64 and lv.parents.dtype == torch.int64
    assert lv.semantic_labels.dtype == torch.int32
    assert isinstance(h.labels, torch.Tensor) and h.labels.shape == (5, 9, 7)
    assert h.masks(0).dtype == torch.bool and h.upsample((18, 14)).shape == (5, 18, 14)
    assert h.queries().dtype == x.dtype
    host = h.numpy()
    assert isinstance(host.level(0).labels, np.ndarray) and host.level(0).labels.dtype == np.int32
    ref = uniap.segment(x.numpy(), min_size=1, semantic=True, backend="numpy")
    uniap.testing.assert_same_partitions(ref, host, features_rtol=1e-12)
    assert h.to_records()


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_tensor_with_a_numpy_backend_is_converted(backend):
    if uniap.backends.available()[backend] is not None:
        pytest.skip(uniap.backends.available()[backend])
    x = piecewise_features((10, 11), channels=8, seed=3)
    h = uniap.segment(tensor(x).requires_grad_(True), backend=backend, min_size=1)
    assert isinstance(h.level(0).labels, np.ndarray)
    uniap.testing.assert_same_partitions(uniap.segment(x, backend="numpy", min_size=1), h)


def test_numpy_input_with_the_torch_backend_gives_tensors():
    x = piecewise_features((6, 5), channels=4, seed=4)
    h = uniap.segment(x, backend="torch", min_size=1)
    assert isinstance(h.level(0).labels, torch.Tensor)
    uniap.testing.assert_same_partitions(uniap.segment(x, backend="numpy", min_size=1), h)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cluster_means_are_differentiable(dtype):
    x = tensor(piecewise_features((8, 9), channels=6, seed=5)).to(dtype).requires_grad_(True)
    h = uniap.segment(x, min_size=1)
    lv = h.level(1)
    assert lv.features.requires_grad and lv.features.dtype == dtype
    lv.features.sum().backward()
    # d/dx_i of sum_k mean_k = 1 / |cluster of i|, in every channel
    per_cell = (1.0 / lv.sizes.to(torch.float64))[lv.labels.long()]
    torch.testing.assert_close(x.grad, per_cell[..., None].expand_as(x).to(dtype))


def test_batch_gradients_reach_every_image():
    x = tensor(np.stack([piecewise_features((6, 6), channels=5, seed=i) for i in range(3)]))
    x.requires_grad_(True)
    hs = uniap.segment(x, min_size=1)
    sum(h.queries().sum() for h in hs).backward()
    assert x.grad is not None and bool((x.grad > 0).all())


@pytest.mark.parametrize("backend", ["torch", "torch-emulated-device"])
@pytest.mark.parametrize("preset", ["released", "paper"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_features_are_an_error(backend, preset, bad):
    x = np.ones((5, 6, 3), np.float32)
    x[3, 2, 1] = bad
    # The same message as the reference's: the flat (cell, channel) index of the first one.
    with pytest.raises(ValueError, match=r"features must be finite: 1 value\(s\) are NaN or inf, first at index \(20, 1\)"):
        uniap.segment(tensor(x), backend=backend, preset=preset)


def test_unavailable_torch_says_why(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "torch" else real(name, *a)
    )
    assert uniap.backends.available()["torch"] == "torch is not installed (pip install 'uniap[torch]')"
    with pytest.raises(ValueError, match="backend 'torch' is not available: torch is not installed"):
        uniap.segment(np.ones((2, 2, 2)), backend="torch")


def test_cupy_without_a_device_says_why():
    reason = uniap.backends.available()["cupy"]
    if reason is None:
        pytest.skip("CuPy runs on this machine")
    assert reason.startswith(("CuPy is not installed", "no CUDA device"))
    why = "backend 'cupy' is not available: (CuPy is not installed|no CUDA device)"
    with pytest.raises(ValueError, match=why):
        uniap.segment(np.ones((2, 2, 2)), backend="cupy")
