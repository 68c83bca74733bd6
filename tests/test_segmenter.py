"""One way from an image to masks: :class:`uniap.pipeline.image.UniapSegmenter` settles the
extractor, its nodes and the options once; ``segment_image`` and ``uniap-eval``'s ``uniap``
segmenter run it, and the refine rule is written once (:func:`uniap.features.regions.check_refine`)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

import uniap
from uniap.evaluation.segmenters import build_segmenter
from uniap.features.regions import check_refine
from uniap.pipeline.image import UniapSegmenter


def _image(seed: int = 0) -> np.ndarray:
    yy, xx = np.mgrid[:48, :64]
    image = np.zeros((48, 64, 3), np.uint8)
    image[yy < 24] = (200, 40, 40)
    image[(yy >= 24) & (xx < 32)] = (40, 200, 40)
    image[(yy >= 24) & (xx >= 32)] = (40, 40, 200)
    return image + np.random.default_rng(seed).integers(0, 12, image.shape, dtype=np.uint8)


@pytest.mark.parametrize("refine", ["superpixels", "none"])
def test_segment_image_is_one_call_of_the_segmenter(refine):
    segmenter = UniapSegmenter(refine=refine, semantic=True)
    for seed in (0, 1):  # the segmenter is reused: nothing of one image stays for the next
        a = segmenter(_image(seed))
        b = uniap.segment_image(_image(seed), refine=refine, semantic=True)
        np.testing.assert_array_equal(a.pixel_labels, b.pixel_labels)
        np.testing.assert_array_equal(a.semantic_labels, b.semantic_labels)
        assert a.records == b.records


def test_the_eval_segmenter_runs_the_same_segmenter():
    ours = build_segmenter("uniap", levels=[0.8, 0.5], min_size=2)
    direct = UniapSegmenter(levels=(0.8, 0.5), min_size=2)(_image())
    np.testing.assert_array_equal(ours.label_maps(_image()), direct.pixel_labels)
    assert isinstance(ours.segmenter, UniapSegmenter)


def test_the_nodes_are_decided_once_from_the_extractor():
    from uniap.features import DefaultFeatures, RegionFeatures

    assert UniapSegmenter(refine="superpixels")._segment.__name__ == "_segment_graph"
    assert UniapSegmenter(refine="none")._segment.__name__ == "_segment_grid"
    # an extractor that makes superpixels already is a graph whatever ``refine`` says
    assert UniapSegmenter(RegionFeatures(DefaultFeatures()), refine="none")._segment.__name__ == "_segment_graph"


@pytest.mark.parametrize("kwargs, flags, message", [
    ({"refine": "none", "superpixel_options": ["superpixel_size"]}, False,
     "superpixel_size applies to refine 'superpixels' only"),
    ({"refine": "none", "superpixel_options": ["superpixel_size"]}, True,
     "--superpixel-size applies to --refine superpixels only"),
    ({"refine": "superpixels", "upsampling": "bilinear"}, True,
     "--upsampling applies to --refine none only"),
    ({"refine": "superpixels", "connectivity": 8}, False, "connectivity applies to refine 'none' only"),
    ({"refine": "grid"}, False, "refine must be one of"),
])
def test_the_refine_rule_names_the_option(kwargs, flags, message):
    with pytest.raises(ValueError, match=message):
        check_refine(**kwargs, flags=flags)
    check_refine("none", upsampling="bilinear", connectivity=8)  # patches take both


def test_connectivity_with_superpixels_is_a_clear_error():
    # it reached segment_graph as an unexpected keyword (a TypeError) before the rule was shared
    with pytest.raises(ValueError, match="connectivity applies to refine 'none' only"):
        uniap.segment_image(_image(), connectivity=8)


# -- one protocol through the pipeline ------------------------------------------------------------

from pathlib import Path  # noqa: E402

from uniap.pipeline.segmenter import Segmenter  # noqa: E402


class Stripes(Segmenter):
    """A toy segmenter: vertical stripes of ``width`` pixels, then halves (nested), and every
    batch it was given (the engine hands it chunks)."""

    name = "stripes"

    def __init__(self, width: int = 8, fail_on: int | None = None) -> None:
        super().__init__()
        self.width, self.fail_on = width, fail_on
        self.batches: list[int] = []

    def params(self):
        return {"width": self.width, **super().params()}

    def level_names(self):
        return ["stripes", "halves"]

    def label_maps(self, image):
        if self.fail_on is not None and image.shape[0] == self.fail_on:
            raise ValueError(f"no stripes for {image.shape[0]} rows")
        xx = np.broadcast_to(np.arange(image.shape[1]), image.shape[:2])
        return np.stack([xx // self.width, xx >= image.shape[1] // 2]).astype(np.int32)

    def segment_batch(self, images):
        images = list(images)
        self.batches.append(len(images))
        return super().segment_batch(images)


def _save_images(root: Path, heights=(24, 32, 40)) -> Path:
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    for i, height in enumerate(heights):
        Image.fromarray(_image(i)[:height, :48]).save(root / f"img{i}.png")
    return root


def test_a_toy_segmenter_runs_through_the_pipeline_in_two_formats(tmp_path):
    """Any Segmenter, not only UniAP, goes decode -> segmenter -> sinks: its records, its
    provenance, the run's signature naming it; the engine batches it and resumes it."""
    import json

    from uniap.pipeline import LocalEngine, run
    from uniap.records import decode_rle

    images = _save_images(tmp_path / "in")
    stripes = Stripes()
    summary = run([str(images)], str(tmp_path / "sam"), segmenter=stripes, engine=LocalEngine(batch_size=2),
                  progress=False)
    assert summary.written == 3 and not summary.failures
    assert stripes.batches == [2, 1]  # the engine's chunks reach segment_batch whole
    assert list(summary.timings) == ["decode", "segment", "records", "writing"]
    doc = json.loads((tmp_path / "sam" / "img1.json").read_text())
    assert doc["uniap"]["features"] == "stripes" and doc["uniap"]["thresholds"] == [1.0, 0.0]
    masks = [decode_rle(r["segmentation"]) for r in doc["annotations"]]
    # 6 stripes of 8 pixels (3 in each half), then the two halves: 8 distinct masks
    assert len(masks) == 8 and sorted(int(m.sum()) for m in masks) == [256] * 6 + [768] * 2
    assert all(m[:, 8 * k:8 * k + 8].all() for k, m in enumerate(masks[:6]))
    assert doc["annotations"][6]["levels"] == [1] and doc["annotations"][0]["parent"] == doc["annotations"][6]["id"]

    coco = tmp_path / "masks.json"
    assert run([str(images)], str(coco), format="coco", segmenter=Stripes(), progress=False).written == 3
    data = json.loads(coco.read_text())
    by_name = {im["file_name"]: im["id"] for im in data["images"]}
    mine = [a for a in data["annotations"] if a["image_id"] == by_name["img1.png"]]
    assert [a["segmentation"] for a in mine] == [r["segmentation"] for r in doc["annotations"]]
    assert data["info"]["uniap"]["features"] == "stripes"

    # the signature names the segmenter and its parameters: a rerun skips, another width is refused
    assert run([str(images)], str(tmp_path / "sam"), segmenter=Stripes(), progress=False).skipped == 3
    from uniap.pipeline import PlanError

    with pytest.raises(PlanError, match="overwrite"):
        run([str(images)], str(tmp_path / "sam"), segmenter=Stripes(width=4), progress=False)


def test_a_segmenter_that_fails_on_one_image_fails_it_alone(tmp_path):
    from uniap.pipeline import LocalEngine, run

    images = _save_images(tmp_path / "in")
    summary = run([str(images)], str(tmp_path / "out"), segmenter=Stripes(fail_on=32),
                  engine=LocalEngine(batch_size=3), progress=False)
    assert summary.written == 2
    assert [(r.key, r.error) for r in summary.failures] == [("img1.png", "ValueError: no stripes for 32 rows")]
    assert sorted(p.name for p in (tmp_path / "out").glob("*.json")) == ["img0.json", "img2.json"]


class Fussy(Stripes):
    """Fails any batch of more than one image (as a batch too large for memory would)."""

    def segment_batch(self, images):
        images = list(images)
        if len(images) > 1:
            raise MemoryError("a batch of images does not fit")
        return super().segment_batch(images)


def test_a_segmenter_that_raises_for_its_batch_is_retried_image_by_image(tmp_path):
    from uniap.pipeline import LocalEngine, run

    summary = run([str(_save_images(tmp_path / "in"))], str(tmp_path / "out"), segmenter=Fussy(),
                  engine=LocalEngine(batch_size=3), progress=False)
    assert summary.written == 3 and not summary.failures


def test_uniap_runs_as_a_given_segmenter_with_the_same_files(tmp_path):
    """UniAP's own segmenter given as it is writes what the run builds from its settings."""
    from uniap.pipeline import run

    images = _save_images(tmp_path / "in")
    built = run([str(images)], str(tmp_path / "built"), progress=False, segment_options={"levels": (0.8, 0.5)})
    given = run([str(images)], str(tmp_path / "given"), progress=False, segment_options={"levels": (0.8, 0.5)},
                segmenter=UniapSegmenter(levels=(0.8, 0.5)), features="default", extractor_options={"x": 0})
    assert built.written == given.written == 3
    for name in ("img0.json", "img1.json", "img2.json"):
        a = json.loads((tmp_path / "built" / name).read_text())
        b = json.loads((tmp_path / "given" / name).read_text())
        assert a["annotations"] == b["annotations"]
        assert {k: v for k, v in a["uniap"].items() if k != "signature"} == \
            {k: v for k, v in b["uniap"].items() if k != "signature"}


def test_the_segmenter_batched_step_equals_one_image_at_a_time():
    """UniAP's batched step (one pooling call for a chunk) gives each image's own segmentation."""
    for refine in ("superpixels", "none"):
        segmenter = UniapSegmenter(refine=refine, semantic=True)
        pooled = segmenter.segment_batch([_image(0), _image(1)[:40]])
        for p, image in zip(pooled, [_image(0), _image(1)[:40]]):
            alone = segmenter(image)
            assert set(p.timings) == {"features", "pooling"}
            assert segmenter.encode(p, image).records == alone.records
            assert segmenter.provenance(p) == alone.uniap_info()


PROBES = re.compile(r"""(hasattr|getattr)\([^)]*["'](edges|regions|edge_strength|describe|grid|contour_maps)["']""")


def test_no_stage_or_engine_probes_a_grid_for_what_it_is():
    """Grid or superpixel graph is decided once, by the segmenter's constructor
    (``UniapSegmenter.graph``), not probed per call with hasattr / getattr."""
    root = Path(__file__).resolve().parents[1]
    files = sorted((root / "uniap" / "pipeline").glob("*.py")) + [root / "uniap_train" / "predict.py",
                                                                   root / "uniap" / "evaluation" / "segmenters.py"]
    found = [f"{path.name}:{n}" for path in files
             for n, line in enumerate(path.read_text().splitlines(), 1) if PROBES.search(line)]
    assert found == []
    assert PROBES.search('regions = getattr(grid, "regions", None)')  # the pattern finds what it was
    assert UniapSegmenter(refine="superpixels").graph and not UniapSegmenter(refine="none").graph


def test_uniap_predict_and_uniap_eval_run_the_one_predictor_segmenter(monkeypatch, tmp_path):
    """``uniap-predict`` hands the pipeline the same segmenter class that ``uniap-eval
    --segmenter checkpoint`` builds (no model is trained here: the predictor is a stand-in)."""
    pytest.importorskip("torch")
    import uniap.pipeline.runner
    import uniap_train.predict as predict
    from uniap.evaluation.segmenters import build_segmenter
    from uniap_train.segmenter import CheckpointSegmenter as Registered

    class FakePredictor:
        name = "uniap_train:paper:fake.pt@1:0"

        def __init__(self, *args, **kwargs):
            self.options_given = kwargs

        def options(self):
            return {"predictor": self.name, **self.options_given}

    monkeypatch.setattr(predict.Predictor, "from_checkpoint",
                        classmethod(lambda cls, path, device="cpu", weights=None, **kw: FakePredictor(**kw)))
    seen = {}

    def fake_run(*args, **kwargs):
        seen.update(kwargs)
        return uniap.pipeline.runner.RunSummary()

    monkeypatch.setattr(uniap.pipeline.runner, "run", fake_run)
    (tmp_path / "a.png").write_bytes(b"")
    assert predict.main(["model.pt", str(tmp_path / "a.png"), "--out", str(tmp_path / "o"), "--quiet",
                         "--device", "cpu", "--nms", "hard"]) == 0
    evaluated = build_segmenter("checkpoint", checkpoint="model.pt", device="cpu", nms="hard")
    assert type(seen["segmenter"]) is type(evaluated) is Registered is predict.CheckpointSegmenter
    assert isinstance(evaluated, Segmenter)
    assert seen["segmenter"].predictor.options_given == evaluated.predictor.options_given == {"nms": "hard"}
    assert seen["features"] == FakePredictor.name  # the outputs' signature, as before
    with pytest.warns(DeprecationWarning):
        engine = predict.PredictEngine(seen["segmenter"].predictor)
    assert engine.batch_size == 4


def test_a_failed_batch_from_a_list_retries_each_image_once():
    """Ray hands the engine's function a list: each image is retried alone, none twice."""
    from uniap.pipeline.engine import Report, segment_images
    from uniap.pipeline.stages import Settings, Stages

    stages = Stages(Settings(), segmenter=Fussy())
    images = [_image(i)[:24 + 8 * i] for i in range(3)]
    reports = [Report(f"k{i}", f"k{i}", i) for i in range(3)]
    done = segment_images(stages, [(i, image) for i, image in enumerate(images)], reports)
    assert [i for i, _, _ in done] == [0, 1, 2] and stages.segmenter.batches == [1, 1, 1]
    assert [p.hierarchy.shape for _, _, p in done] == [image.shape[:2] for image in images]
