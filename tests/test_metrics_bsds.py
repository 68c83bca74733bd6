"""BSDS500 benchmark reproduction (uniap.metrics.bsds) against the official outputs.

``reference/bench5`` is the benchmark's own worked example (``bench/data`` of
BSR_bsds500, 5 test images); ``reference/gpb_owt_ucm_test`` the official
per-image rows for gPb-owt-ucm.  Expected values are printed by the benchmark
with ``%10g`` (6 significant digits), so "exact" means within half a unit of
the last printed digit.

Boundary numbers cannot be reproduced bit-for-bit: the benchmark's CSA
matching adds *random* outlier edges and publishes different numbers for the
same input (compare its ``test_3`` and ``test_4``, both boundary benchmarks
of the same segmentations); we solve the underlying assignment problem
exactly.  Data-set boundary F (ODS, OIS, per threshold) agrees to 1e-3 and AP
to 1e-4; per-image F to ~1.1e-3.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest

from uniap.metrics import bsds
from uniap.metrics.bsds import (
    collect,
    collect_boundary,
    evaluate_boundary_maps,
    evaluate_hierarchies,
    evaluate_image,
    evaluate_ucms,
    ucm_boundaries,
    ucm_segmentation,
    ucm_thresholds,
)
from uniap.metrics.region import RegionCounts

BENCH5_IDS = ["2018", "3063", "5096", "6046", "8068"]


def _data_root() -> Path:
    env = os.environ.get("UNIAP_DATA")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[1].parent / "shared" / "data"


BSDS = _data_root() / "bsds500"


def _require_data():
    if not (BSDS / "reference" / "bench5").is_dir():
        pytest.skip(f"BSDS500 data not found under {BSDS} (set UNIAP_DATA to the shared data folder)")


def _png(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.array(im)


def _humans(iid: str, split: str = "test"):
    segs, bdry = [], []
    k = 1
    while (BSDS / "groundTruth" / split / f"{iid}_gt{k}.png").exists():
        segs.append(_png(BSDS / "groundTruth" / split / f"{iid}_gt{k}.png"))
        bdry.append(_png(BSDS / "boundaries" / split / f"{iid}_gt{k}.png"))
        k += 1
    assert segs, f"no ground truth for {iid}"
    return segs, bdry


def _ucm2(iid: str) -> np.ndarray:
    z = np.load(BSDS / "ucm2" / "test" / f"{iid}.npz")
    return z["levels"][z["index"]]


def _expected(test: str, name: str) -> np.ndarray:
    return np.loadtxt(BSDS / "reference" / "bench5" / "expected" / test / name, ndmin=2)


def _printed_tol(expected) -> np.ndarray:
    """Half a unit of the 6th significant digit (the benchmark prints with %10g)."""
    e = np.abs(np.asarray(expected, dtype=np.float64))
    mag = np.floor(np.log10(np.where(e > 0, e, 1.0)))
    return 0.5 * 10.0 ** (mag - 5) * (1 + 1e-9) + 1e-12


def _assert_printed(ours, expected, what):
    ours = np.asarray(ours, dtype=np.float64).ravel()
    expected = np.asarray(expected, dtype=np.float64).ravel()
    assert ours.shape == expected.shape, what
    bad = np.abs(ours - expected) > _printed_tol(expected)
    assert not bad.any(), f"{what}: ours {ours[bad]} expected {expected[bad]}"


@pytest.fixture(scope="module")
def bench5():
    _require_data()
    humans = {i: _humans(i) for i in BENCH5_IDS}
    gseg = [humans[i][0] for i in BENCH5_IDS]
    gbd = [humans[i][1] for i in BENCH5_IDS]
    segs = [[_png(BSDS / "reference" / "bench5" / "segs" / f"{i}_seg{k}.png") for k in range(1, 6)] for i in BENCH5_IDS]
    pbs = [_png(BSDS / "reference" / "bench5" / "pb" / f"{i}.png") for i in BENCH5_IDS]
    return {
        "ucm": evaluate_ucms([_ucm2(i) for i in BENCH5_IDS], gseg, gbd, n_thresholds=5),  # test_1
        "pb": evaluate_boundary_maps(pbs, gbd, n_thresholds=5),  # test_2
        "segs": evaluate_hierarchies(segs, gseg, gbd),  # test_3, test_4, test_5
    }


def _check_region(res, test):
    """Region outputs: exact (to the printed digits) with the benchmark's %10g round trip,
    and within 1e-5 (printed precision of VI ~ 5e-6) without it."""
    emulated = collect(res.images, emulate_text_files=True).region
    exact = res.region
    for reg, check in ((emulated, _assert_printed), (exact, None)):
        rows = {
            "eval_cover.txt": reg.covering_row(),
            "eval_cover_th.txt": np.c_[reg.thresholds, reg.covering],
            "eval_cover_img.txt": np.c_[np.arange(1, 6), reg.per_image],
            "eval_RI_VOI.txt": reg.ri_voi_row(),
            "eval_RI_VOI_thr.txt": np.c_[reg.thresholds, reg.pri, reg.vi],
        }
        for name, ours in rows.items():
            exp = _expected(test, name)
            if check is not None:
                check(ours, exp, f"{test}/{name}")
            else:
                np.testing.assert_allclose(np.ravel(ours), exp.ravel(), rtol=0, atol=1e-5, err_msg=f"{test}/{name}")


def _check_boundary(res, test):
    b = collect(res.images, emulate_text_files=True).boundary
    exp = _expected(test, "eval_bdry.txt").ravel()
    ours = np.array(b.summary_row())
    _assert_printed(ours[0], exp[0], f"{test} ODS threshold")
    # ODS R, P, F; OIS R, P, F; AP
    np.testing.assert_allclose(ours[1:7], exp[1:7], rtol=0, atol=1e-3, err_msg=f"{test}/eval_bdry.txt")
    assert abs(ours[7] - exp[7]) < 2e-4, (test, "AP", ours[7], exp[7])
    thr = _expected(test, "eval_bdry_thr.txt")
    _assert_printed(b.thresholds, thr[:, 0], f"{test} thresholds")
    np.testing.assert_allclose(np.c_[b.recall, b.precision, b.f], thr[:, 1:], rtol=0, atol=1e-3,
                               err_msg=f"{test}/eval_bdry_thr.txt")
    img = _expected(test, "eval_bdry_img.txt")
    _assert_printed(b.per_image[:, 0], img[:, 1], f"{test} per-image thresholds")
    np.testing.assert_allclose(b.per_image[:, 1:3], img[:, 2:4], rtol=0, atol=2e-3, err_msg=f"{test} per-image R, P")
    np.testing.assert_allclose(b.per_image[:, 3], img[:, 4], rtol=0, atol=1.5e-3, err_msg=f"{test} per-image F")


def test_bench5_ucm_region(bench5):  # test_1, region part
    _check_region(bench5["ucm"], "test_1")


def test_bench5_ucm_boundary(bench5):  # test_1, boundary part
    _check_boundary(bench5["ucm"], "test_1")


def test_bench5_pb_boundary(bench5):  # test_2
    _check_boundary(bench5["pb"], "test_2")


@pytest.mark.parametrize("test", ["test_3", "test_4"])
def test_bench5_segs_boundary(bench5, test):
    _check_boundary(bench5["segs"], test)


@pytest.mark.parametrize("test", ["test_4", "test_5"])
def test_bench5_segs_region(bench5, test):
    _check_region(bench5["segs"], test)


def test_bench5_headline_numbers(bench5):
    """The numbers a user reads: ODS/OIS/AP boundary F, covering, PRI, VI (test_4)."""
    s = bench5["segs"].summary()
    assert s["boundary_ods"] == pytest.approx(0.704614, abs=1e-3)
    assert s["boundary_ois"] == pytest.approx(0.708571, abs=1e-3)
    assert s["boundary_ap"] == pytest.approx(0.307579, abs=1e-3)
    assert s["covering_ods"] == pytest.approx(0.654023, abs=1e-6)
    assert s["covering_ois"] == pytest.approx(0.725074, abs=1e-6)
    assert s["covering_best"] == pytest.approx(0.749811, abs=1e-6)
    assert s["pri_ods"] == pytest.approx(0.826926, abs=1e-6)
    assert s["pri_ois"] == pytest.approx(0.898299, abs=1e-6)
    assert s["vi_ods"] == pytest.approx(1.36877, abs=1e-5)
    assert s["vi_ois"] == pytest.approx(1.11563, abs=1e-5)


def test_bench5_ucm_levels_equal_segs(bench5):
    """The example's segs are its ucm2 cut at 1/6..5/6 (region numbers identical)."""
    a = bench5["ucm"].region
    b = bench5["segs"].region
    np.testing.assert_allclose(a.covering, b.covering, rtol=1e-12)
    np.testing.assert_allclose(a.vi, b.vi, rtol=1e-12)


# --------------------------------------------------------------------------- gPb-owt-ucm rows


def _gpb_rows(name):
    with open(BSDS / "reference" / "gpb_owt_ucm_test" / name) as fh:
        return {r["id"]: r for r in csv.DictReader(fh)}


GPB_REGION_IDS = ["2018", "3063", "5096", "103029", "196027", "281017"]
GPB_BOUNDARY_IDS = ["8068", "196062"]


@pytest.fixture(scope="module")
def gpb_rows():
    _require_data()
    return _gpb_rows("eval_cover_img.csv"), _gpb_rows("eval_bdry_img.csv")


@pytest.mark.parametrize("iid", GPB_REGION_IDS)
def test_gpb_ucm_covering_rows(gpb_rows, iid):
    cover, _ = gpb_rows
    gseg, _ = _humans(iid)
    im = evaluate_image(ucm2=_ucm2(iid), gt_segmentations=gseg, boundary=False)
    t, r, p = collect([im], emulate_text_files=True).region.per_image[0]
    row = cover[iid]
    assert t == pytest.approx(float(row["best_threshold"]), abs=1e-9)
    _assert_printed([r, p], [float(row["covering_gt_by_seg"]), float(row["covering_seg_by_gt"])], iid)


@pytest.mark.parametrize("iid", GPB_BOUNDARY_IDS)
def test_gpb_ucm_boundary_rows(gpb_rows, iid):
    _, bdry = gpb_rows
    _, gbd = _humans(iid)
    im = evaluate_image(ucm2=_ucm2(iid), gt_boundaries=gbd, region=False)
    t, r, p, f = collect([im]).boundary.per_image[0]
    row = bdry[iid]
    assert f == pytest.approx(float(row["f"]), abs=1e-3)
    assert r == pytest.approx(float(row["recall"]), abs=2e-3)
    assert p == pytest.approx(float(row["precision"]), abs=2e-3)


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("UNIAP_FULL_BSDS"), reason="set UNIAP_FULL_BSDS=1 (about 3 CPU-minutes)")
def test_gpb_all_staged_images(gpb_rows):
    cover, bdry = gpb_rows
    ids = json.loads((BSDS / "manifest.json").read_text())["ucm2_test_ids"]
    f_diff = []
    for iid in ids:
        gseg, gbd = _humans(iid)
        im = evaluate_image(ucm2=_ucm2(iid), gt_segmentations=gseg, gt_boundaries=gbd)
        res = collect([im], emulate_text_files=True)
        t, r, p = res.region.per_image[0]
        assert t == pytest.approx(float(cover[iid]["best_threshold"]), abs=1e-9)
        _assert_printed([r, p], [float(cover[iid]["covering_gt_by_seg"]), float(cover[iid]["covering_seg_by_gt"])], iid)
        f_diff.append(res.boundary.per_image[0, 3] - float(bdry[iid]["f"]))
    f_diff = np.abs(f_diff)
    assert f_diff.max() < 1.5e-3 and np.median(f_diff) < 5e-4, f_diff


# --------------------------------------------------------------------------- units


def test_thresholds_and_ucm_cuts():
    t = ucm_thresholds(99)
    assert t.shape == (99,) and t[0] == pytest.approx(0.01) and t[-1] == 0.99
    assert np.all(np.diff(t) > 0)
    # MATLAB linspace arithmetic: 85/255 lies just below the second of 5 thresholds
    assert not (85 / 255 >= ucm_thresholds(5)[1])
    # 2 x 3 image, regions split by a weak vertical and a strong horizontal contour
    ucm2 = np.zeros((5, 7))
    ucm2[:, 2] = 0.2
    ucm2[2, :] = 0.6
    np.testing.assert_array_equal(ucm_segmentation(ucm2, 0.1), [[1, 2, 2], [3, 4, 4]])
    np.testing.assert_array_equal(ucm_segmentation(ucm2, 0.5), [[1, 1, 1], [2, 2, 2]])
    np.testing.assert_array_equal(ucm_segmentation(ucm2, 0.7), np.ones((2, 3)))
    # the contour between pixel rows 0 and 1 is drawn on row 0 (upper/left pixel, like seg2bdry)
    np.testing.assert_array_equal(ucm_boundaries(ucm2, 0.5), [[True, True, True], [False, False, False]])
    with pytest.raises(ValueError):
        ucm_segmentation(np.zeros((4, 4)), 0.5)


def test_collect_boundary_interpolated_ods_and_ap():
    # one image, 2 thresholds: (R, P) = (1, 0.5) and (0.5, 1) -> best F on the segment at d = 0.5
    counts = np.array([[10, 10, 5, 10], [5, 10, 10, 10]])
    res = collect_boundary([1.0, 2.0], [counts])
    assert res.ods_f == pytest.approx(0.75, abs=1e-4)
    assert res.ods_recall == pytest.approx(0.75, abs=1e-2)
    assert 1.0 < res.ods_threshold < 2.0
    # OIS uses the un-interpolated curve; both ends tie at F = 2/3 -> last one (ff(end))
    assert res.ois_f == pytest.approx(2 / 3)
    assert (res.ois_recall, res.ois_precision) == (0.5, 1.0)
    # AP: P interpolated on R in [0.5, 1], 0 below -> sum over r = .50 ... 1.00 x 0.01
    r = np.arange(50, 101) / 100
    assert res.ap == pytest.approx(np.sum(1.5 - r) * 0.01)


def test_collect_ties_pick_lowest_threshold():
    rc = RegionCounts(cnt_r=np.array([5.0, 8.0, 8.0]), sum_r=np.full(3, 10.0), cnt_p=np.array([1.0, 2.0, 3.0]),
                      sum_p=np.full(3, 4.0), ri=np.array([0.5, 0.9, 0.9]), vi=np.array([2.0, 1.0, 1.0]),
                      cnt_r_best=9.0)
    reg = bsds.collect_region([1, 2, 3], [rc])
    assert reg.covering_ods_threshold == 2 and reg.covering_ods == 0.8
    assert reg.pri_ods_threshold == 2 and reg.vi_ods_threshold == 2
    assert reg.per_image[0].tolist() == [2.0, 0.8, 0.5]
    assert reg.covering_best == 0.9


def test_evaluate_hierarchies_perfect_and_parallel():
    rng = np.random.default_rng(0)
    gts, hiers = [], []
    for _ in range(3):
        gt = np.ones((60, 90), int)
        gt[:, 40:] = 2
        gt[30:, int(rng.integers(10, 30)):40] = 3
        gts.append([gt, gt])
        hiers.append([np.arange(5400).reshape(60, 90) % 7 + 1, gt, np.ones_like(gt)])
    res = evaluate_hierarchies(hiers, gts)
    assert res.region.covering_ods_threshold == 2.0
    assert res.region.covering_ods == 1.0 and res.region.covering_ois == 1.0
    assert res.region.covering_best == 1.0
    assert res.region.pri_ods == 1.0 and res.region.vi_ods == pytest.approx(0.0, abs=1e-12)
    assert res.boundary.ods_f == pytest.approx(1.0) and res.boundary.ois_f == pytest.approx(1.0)
    par = evaluate_hierarchies(hiers, gts, n_jobs=2)
    assert par.summary() == res.summary()
    for a, b in zip(par.images, res.images):
        np.testing.assert_array_equal(a.boundary, b.boundary)


def test_evaluate_image_argument_checks():
    gt = np.ones((4, 4), int)
    with pytest.raises(ValueError):
        evaluate_image(gt_segmentations=[gt])
    with pytest.raises(ValueError):
        evaluate_image(segmentations=[gt], ucm2=np.zeros((9, 9)), gt_segmentations=[gt])
    with pytest.raises(ValueError):
        evaluate_image(segmentations=[gt], gt_boundaries=[gt], region=True)


def test_hierarchy_objects_and_stacked_arrays():
    class FakeHierarchy:  # duck-typed like uniap.Hierarchy: stacked labels, finest first, 0-based
        def __init__(self, labels):
            self.labels = labels

        def numpy(self):
            return self

    gt = np.zeros((30, 40), int)
    gt[:, 20:] = 1
    stack = np.stack([np.arange(1200).reshape(30, 40) % 5, gt, np.zeros_like(gt)])
    a = evaluate_hierarchies([FakeHierarchy(stack)], [[gt + 1]])
    b = evaluate_hierarchies([stack], [[gt + 1]])
    c = evaluate_hierarchies([list(stack)], [[gt + 1]])
    assert a.summary() == b.summary() == c.summary()
    assert a.region.covering_ods == 1.0 and a.region.covering_ods_threshold == 2.0
