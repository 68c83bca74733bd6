"""--viz pictures: colours that follow regions across levels, contour regions drawn, and the
one-picture overlay (uniap.viz, the viz sink and uniap-cli --viz-style)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage.color import rgb2hsv

from uniap import viz
from uniap.cli import main
from uniap.records import encode_rle

from cli_helpers import exit_status, save_image

PANEL_GAP, CAPTION = 4, 16
REPO = Path(__file__).resolve().parents[1]


def nested_maps() -> np.ndarray:
    """Three nested label maps of a 40 x 60 picture, finest first.

    Level 2: left half (0) and right half (1).  Level 1: the left half splits into a top
    (0) and a bottom (2); the right half survives unchanged (label 1).  Level 0: the right
    half still survives (label 4), the left top splits again into a large (0) and a small (3)
    part, the left bottom survives (label 2 -> 1).
    """
    coarse = np.zeros((40, 60), np.int32)
    coarse[:, 30:] = 1
    mid = coarse.copy()
    mid[20:, :30] = 2
    fine = np.full((40, 60), 4, np.int32)
    fine[:20, :30] = 0
    fine[:20, :8] = 3
    fine[20:, :30] = 1
    return np.stack([fine, mid, coarse])


def panel(sheet: np.ndarray, index: int, height: int, width: int, columns: int = 3, caption: int = 0,
          row0: int = 0) -> np.ndarray:
    """Panel ``index`` (0: the image) of a :func:`viz.hierarchy_panels` sheet."""
    r, c = divmod(index, columns)
    y0 = PANEL_GAP + (row0 + r) * (height + caption + PANEL_GAP) + caption
    x0 = PANEL_GAP + c * (width + PANEL_GAP)
    return sheet[y0:y0 + height, x0:x0 + width]


def test_a_region_keeps_its_colour_across_levels_and_its_parts_take_its_family():
    maps = nested_maps()
    image = np.full((40, 60, 3), 128, np.uint8)
    sheet = viz.hierarchy_panels(image, maps, columns=4)
    fine, mid, coarse = (panel(sheet, i, 40, 60, columns=4) for i in (1, 2, 3))
    # the right half is one region at all three levels: one colour in every panel
    assert (fine[10, 45] == mid[10, 45]).all() and (mid[10, 45] == coarse[10, 45]).all()
    # the left bottom survives from level 1 to level 0 under another label
    assert (fine[30, 15] == mid[30, 15]).all()
    # a region's largest part keeps its colour; its smaller part is a shade of it
    assert (mid[5, 15] == coarse[5, 15]).all() and (fine[5, 15] == mid[5, 15]).all()
    assert (fine[5, 3] != mid[5, 3]).any()
    palettes = viz.follow_palettes(maps)
    hue = [rgb2hsv(p[None] / 255.0)[0, :, 0] for p in palettes]
    step = abs(hue[0][3] - hue[1][0])
    assert min(step, 1 - step) <= 0.1, "a part's hue stays near its region's"
    roots = abs(hue[2][0] - hue[2][1])
    assert min(roots, 1 - roots) > 0.2, "the coarsest regions get well-separated hues"


def test_follow_palettes_refuses_what_is_not_a_stack_of_label_maps():
    with pytest.raises(ValueError, match=r"\(L, H, W\)"):
        viz.follow_palettes(np.zeros((4, 4), np.int32))
    with pytest.raises(ValueError, match=">= 0"):
        viz.follow_palettes(-np.ones((1, 2, 2), np.int32))


def test_contour_regions_get_their_own_panels():
    maps = nested_maps()
    image = np.full((40, 60, 3), 128, np.uint8)
    contours = np.zeros((2, 40, 60), np.int32)
    contours[0, :, 20:] = 1
    contours[0, :, 40:] = 2
    contours[1, :, 40:] = 1
    without = viz.hierarchy_panels(image, maps, columns=4)
    titles = ["image", "l0", "l1", "l2", "c0", "c1"]
    sheet = viz.hierarchy_panels(image, maps, titles, columns=4, contour_labels=contours)
    assert sheet.shape[0] == 2 * (40 + CAPTION + PANEL_GAP) + PANEL_GAP  # a second row of panels
    assert sheet.shape[0] > without.shape[0]
    c0 = panel(sheet, 0, 40, 60, columns=4, caption=CAPTION, row0=1)
    c1 = panel(sheet, 1, 40, 60, columns=4, caption=CAPTION, row0=1)
    assert (c0[:, 19] == 255).all() and (c0[:, 39] == 255).all()  # the cuts' boundaries, white
    assert (c1[:, 39] == 255).all() and not (c1[:, 19] == 255).all()
    assert (c0[5, 50] == c1[5, 50]).all()  # the region kept by the coarser cut keeps its colour


def masks_records() -> tuple[np.ndarray, list[dict]]:
    """A black 30 x 40 image: a big mask holding two smaller ones, and one mask on its own."""
    image = np.zeros((30, 40, 3), np.uint8)
    masks = np.zeros((4, 30, 40), bool)
    masks[0, :, :30] = True  # big
    masks[1, 5:15, 5:15] = True  # its largest part
    masks[2, 20:26, 5:11] = True  # its other part
    masks[3, 20:28, 32:39] = True  # alone
    records = [{"id": i, "area": int(m.sum()), "parent": -1, "segmentation": encode_rle(m[None])[0]}
               for i, m in enumerate(masks)]
    return image, records[::-1]  # smallest first: the drawing order is overlay's own


def test_overlay_draws_every_mask_largest_first_whatever_the_record_order():
    image, records = masks_records()
    picture = viz.overlay(image, records)
    assert picture.shape == image.shape
    assert (picture[0:3, 33:40] == 0).all()  # no mask: the image
    big, first, second, alone = picture[2, 25], picture[10, 10], picture[23, 8], picture[24, 35]
    assert (big != 0).any() and (alone != 0).any()
    # smaller masks lie over the big one, outlined: drawn after it
    assert (picture[5:15, 4] == 255).all() and (picture[19, 5:11] == 255).all()
    # the largest part keeps its region's colour, the other takes a shade of it
    assert (first == big).all() and (second != big).any()
    hues = rgb2hsv(np.stack([big, second, alone])[None] / 255.0)[0, :, 0]
    near, far = abs(hues[1] - hues[0]), abs(hues[2] - hues[0])
    assert min(near, 1 - near) < min(far, 1 - far)
    assert np.array_equal(viz.overlay(image, records[::-1]), picture)


def test_overlay_refuses_a_mask_of_another_size():
    image, records = masks_records()
    with pytest.raises(ValueError, match="30x40"):
        viz.overlay(np.zeros((31, 40, 3), np.uint8), records)


def blocks_image() -> np.ndarray:
    """A generated 72 x 96 picture: four flat blocks and a disc, with mild noise."""
    rng = np.random.default_rng(3)
    image = np.zeros((72, 96, 3), np.float64)
    image[:36, :48] = (200, 40, 40)
    image[:36, 48:] = (40, 180, 60)
    image[36:, :48] = (40, 60, 200)
    image[36:, 48:] = (220, 210, 60)
    yy, xx = np.mgrid[:72, :96]
    image[(yy - 36) ** 2 + (xx - 48) ** 2 < 15 ** 2] = (250, 250, 250)
    image += rng.normal(0, 6, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def test_cli_viz_draws_the_contour_cuts_and_overlay_writes_one_picture(tmp_path):
    source = save_image(tmp_path / "in" / "blocks.png", blocks_image())
    levels_png, overlay_png = tmp_path / "levels.png", tmp_path / "overlay.png"
    assert main([str(source), "--out", str(tmp_path / "a.json"), "--viz", str(levels_png), "--quiet"]) == 0
    doc = json.loads((tmp_path / "a.json").read_text())
    cuts = {lv for r in doc["annotations"] if r["kind"] == "contour" for lv in r["levels"]}
    assert cuts, "watershed superpixels give contour records"
    levels = len(doc["uniap"]["thresholds"])
    sheet = np.asarray(Image.open(levels_png))
    rows = -(-(levels + 1) // 3) + -(-len(cuts) // 3)  # the image and levels, then the cuts
    assert sheet.shape[0] == rows * (72 + CAPTION + PANEL_GAP) + PANEL_GAP

    assert main([str(source), "--out", str(tmp_path / "b.json"), "--viz", str(overlay_png),
                 "--viz-style", "overlay", "--quiet"]) == 0
    picture = Image.open(overlay_png)
    assert picture.size == (96, 72) and picture.mode == "RGB"
    assert picture.info["uniap-signature"].endswith("-overlay")
    assert (np.asarray(picture).astype(int) - blocks_image()).any()


def test_a_picture_drawn_in_another_style_is_not_taken_as_done(tmp_path, capsys):
    source = save_image(tmp_path / "in" / "blocks.png", blocks_image())
    out, picture = tmp_path / "m.json", tmp_path / "v.png"
    assert main([str(source), "--out", str(out), "--viz", str(picture), "--quiet"]) == 0
    first = picture.read_bytes()
    assert exit_status(main, [str(source), "--out", str(out), "--viz", str(picture), "--viz-style", "overlay",
                              "--quiet"]) == 2
    assert "other settings" in capsys.readouterr().err and picture.read_bytes() == first
    assert main([str(source), "--out", str(out), "--viz", str(picture), "--viz-style", "overlay",
                 "--overwrite", "--quiet"]) == 0
    drawn = picture.read_bytes()
    assert drawn != first
    assert main([str(source), "--out", str(out), "--viz", str(picture), "--viz-style", "overlay", "--quiet"]) == 0
    assert picture.read_bytes() == drawn  # the same style: done, skipped


def test_viz_style_without_viz_is_a_usage_error(tmp_path, capsys):
    source = save_image(tmp_path / "in" / "blocks.png", blocks_image())
    assert exit_status(main, [str(source), "--out", str(tmp_path / "m.json"), "--viz-style", "overlay"]) == 2
    assert "--viz-style applies with --viz only" in capsys.readouterr().err
    assert not (tmp_path / "m.json").exists()


def test_viz_style_is_checked():
    from uniap.pipeline import run

    with pytest.raises(ValueError, match="viz_style"):
        run(["x.png"], "out.json", viz="v.png", viz_style="sketch")


def test_panels_from_shrunk_superpixels_equal_those_of_the_full_size_maps():
    """The --viz sink shrinks a region graph's superpixels rather than its full-size maps."""
    from uniap.pipeline.image import segment_image
    from uniap.pipeline.sinks import _panel_maps
    from uniap.pipeline.stages import encode

    result = segment_image(REPO / "examples" / "images" / "coffee.jpg")  # 600 x 400: panels 480 x 320
    encoded = encode(result.grid, result.hierarchy)
    levels, contours = _panel_maps(encoded, *result.image.shape[:2])
    assert levels.shape[1:] == viz.panel_shape(400, 600) == (320, 480) and contours is not None
    full = viz.hierarchy_panels(result.image, result.pixel_labels, contour_labels=result.contour_labels)
    assert np.array_equal(viz.hierarchy_panels(result.image, levels, contour_labels=contours), full)


def test_overlay_reads_list_counts_and_refuses_corrupt_ones():
    image, records = masks_records()
    from pycocotools import mask as mask_utils

    as_lists = []
    for r in records:  # the uncompressed RLE of COCO files: counts as a list of runs
        m = mask_utils.decode({"size": r["segmentation"]["size"], "counts": r["segmentation"]["counts"].encode()})
        flat = m.ravel(order="F")
        runs = np.diff(np.concatenate([[0], np.flatnonzero(np.diff(flat)) + 1, [flat.size]])).tolist()
        counts = [0] + runs if flat[0] else runs  # COCO RLE counts zeros first
        as_lists.append({**r, "segmentation": {"size": [30, 40], "counts": counts}})
    assert np.array_equal(viz.overlay(image, as_lists), viz.overlay(image, records))
    broken = [{**records[0], "segmentation": {"size": [30, 40], "counts": [5, 3]}}]
    with pytest.raises(ValueError, match="does not cover"):
        viz.overlay(image, broken)
