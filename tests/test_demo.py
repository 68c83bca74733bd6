"""uniap-demo: the server's endpoints over HTTP, and the page in a real headless Chromium
(upload, slider, click, download, bad input, screenshot)."""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from uniap.demo import make_server
from uniap.demo.server import label_png
from uniap.records import decode_rle

LIMIT_PIXELS = 200_000


def blocks(height: int = 120, width: int = 180, seed: int = 5) -> np.ndarray:
    """A generated picture: four flat blocks and a disc, with mild noise."""
    rng = np.random.default_rng(seed)
    image = np.zeros((height, width, 3), np.float64)
    h2, w2 = height // 2, width // 2
    image[:h2, :w2] = (200, 40, 40)
    image[:h2, w2:] = (40, 180, 60)
    image[h2:, :w2] = (40, 60, 200)
    image[h2:, w2:] = (220, 210, 60)
    yy, xx = np.mgrid[:height, :width]
    image[(yy - h2) ** 2 + (xx - w2) ** 2 < (height // 5) ** 2] = (250, 250, 250)
    image += rng.normal(0, 6, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def png_bytes(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def server():
    srv = make_server(port=0, quiet=True, max_pixels=LIMIT_PIXELS, max_bytes=300_000)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join(10)


def post(url: str, data: bytes, name: str = "x.png") -> tuple[int, dict]:
    request = urllib.request.Request(f"{url}segment?name={name}", data=data, method="POST",
                                     headers={"Content-Type": "application/octet-stream"})
    try:
        with urllib.request.urlopen(request, timeout=300) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def labels_of(data_url: str) -> np.ndarray:
    rgb = np.asarray(Image.open(io.BytesIO(base64.b64decode(data_url.split(",", 1)[1]))), np.int64)
    return rgb[..., 0] + (rgb[..., 1] << 8) + (rgb[..., 2] << 16) - 1


def test_upload_gives_every_layer_with_its_records(server):
    status, payload = post(server.url, png_bytes(blocks()), "blocks.png")
    assert status == 200, payload
    doc = payload["document"]
    records = {r["id"]: r for r in doc["annotations"]}
    assert doc["image"]["file_name"] == "blocks.png" and (doc["image"]["height"], doc["image"]["width"]) == (120, 180)
    levels = len(doc["uniap"]["thresholds"])
    cuts = {lv for r in records.values() if r["kind"] == "contour" for lv in r["levels"]}
    assert [layer["name"] for layer in payload["layers"]] == \
        [f"level {i}" for i in range(levels)] + [f"contours {k}" for k in sorted(cuts)]
    assert (payload["display"]["width"], payload["display"]["height"]) == (180, 120)  # small: not shrunk
    for layer in payload["layers"]:
        labels = labels_of(layer["labels"])
        assert labels.shape == (120, 180) and labels.min() >= 0
        assert len(layer["colours"]) == len(layer["records"]) == labels.max() + 1
        mapped = [i for i in layer["records"] if i >= 0]
        # every record of the layer is found, once, under its own pixels
        expected = {r["id"] for r in records.values() if r["kind"] == layer["kind"] and layer["index"] in r["levels"]}
        assert sorted(mapped) == sorted(expected)
        for label, rid in enumerate(layer["records"]):
            if rid >= 0:
                assert np.array_equal(labels == label, decode_rle(records[rid]["segmentation"]))


def test_a_large_image_is_shown_shrunk_with_its_records_at_full_size():
    from uniap.demo.server import segment_upload

    payload = segment_upload(png_bytes(blocks(90, 150)), "big.png", display_side=60)
    assert (payload["display"]["width"], payload["display"]["height"]) == (60, 36)
    assert labels_of(payload["layers"][0]["labels"]).shape == (36, 60)
    assert payload["document"]["annotations"][0]["segmentation"]["size"] == [90, 150]


@pytest.mark.parametrize("body, name, status, words", [
    (b"just some text", "notes.txt", 400, "notes.txt is not an image file"),
    (b"", "empty.png", 400, "empty.png is empty"),
    (png_bytes(blocks())[:200], "cut.png", 400, "cut.png could not be decoded"),
    (png_bytes(np.zeros((500, 500, 3), np.uint8)), "wide.png", 413, "million pixels"),
    (b"\0" * 400_000, "huge.png", 413, "huge.png is 0.4 MB; this demo takes at most 0.3 MB"),
])
def test_bad_uploads_get_one_line_and_a_status(server, body, name, status, words):
    code, payload = post(server.url, body, name)
    assert code == status
    assert words in payload["error"] and "\n" not in payload["error"] and "Traceback" not in payload["error"]


def test_pages_and_limits(server):
    with urllib.request.urlopen(server.url, timeout=30) as response:
        assert response.headers["Content-Type"].startswith("text/html") and b'id="level"' in response.read()
    for name in ("app.js", "style.css"):
        with urllib.request.urlopen(server.url + name, timeout=30) as response:
            assert response.status == 200 and len(response.read()) > 500
    with urllib.request.urlopen(server.url + "config", timeout=30) as response:
        config = json.loads(response.read())
    assert config["max_pixels"] == LIMIT_PIXELS and config["max_bytes"] == 300_000
    for path, code in (("nothing-here", 404), ("segment", 405)):
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(server.url + path, timeout=30)
        assert err.value.code == code and "error" in json.loads(err.value.read())


def test_the_page_is_package_data():
    import fnmatch
    import re

    repo = Path(__file__).resolve().parents[1]
    line = re.search(r"^uniap = (\[[^\]\n]*\])", (repo / "pyproject.toml").read_text(), re.M)
    patterns = json.loads(line.group(1))
    static = [p.relative_to(repo / "uniap").as_posix() for p in (repo / "uniap" / "demo" / "static").iterdir()]
    assert {"demo/static/index.html", "demo/static/app.js", "demo/static/style.css"} <= set(static)
    assert all(any(fnmatch.fnmatch(name, pattern) for pattern in patterns) for name in static)


def test_label_png_round_trips_large_labels():
    labels = np.array([[0, 255, 256], [65535, 65536, 1 << 20]])
    rgb = label_png(labels).astype(np.int64)
    assert np.array_equal(rgb[..., 0] + (rgb[..., 1] << 8) + (rgb[..., 2] << 16) - 1, labels)


def test_command_refuses_a_port_in_use_in_one_line(server):
    port = server.server_address[1]
    res = subprocess.run([sys.executable, "-m", "uniap.demo", "--port", str(port)], capture_output=True,
                         text=True, timeout=120, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert res.returncode == 2
    assert res.stderr.startswith(f"uniap-demo: error: cannot listen on 127.0.0.1:{port}")
    assert "Traceback" not in res.stderr


# --- in a real browser ----------------------------------------------------------------------

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def chromium_path() -> str | None:
    """The system's Chromium ($UNIAP_CHROMIUM, or chromium / chromium-browser on PATH)."""
    wanted = os.environ.get("UNIAP_CHROMIUM")
    if wanted:
        return wanted if os.path.exists(wanted) else None
    return next(filter(None, map(shutil.which, ("chromium", "chromium-browser"))), None)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
    executable = chromium_path()
    if executable is None:
        pytest.skip("no Chromium found (apt-get install chromium, or set UNIAP_CHROMIUM)")
    with sync_api.sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")), executable_path=executable, headless=True,
            args=CHROMIUM_ARGS, accept_downloads=True, viewport={"width": 1100, "height": 700})
        try:
            yield context
        finally:
            context.close()


@pytest.fixture
def page(browser, server):
    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    page.goto(server.url)
    page.wait_for_selector("body[data-state=idle]")
    yield page
    page.close()
    assert not errors, f"the page raised: {errors}"


def record_shown(page) -> dict[str, str]:
    rows = page.locator("#record tr")
    return {rows.nth(i).locator("th").inner_text(): rows.nth(i).locator("td").inner_text()
            for i in range(rows.count())}


def test_the_page_segments_an_upload_moves_through_levels_shows_records_and_downloads(page, tmp_path):
    image = blocks()
    source = tmp_path / "blocks.png"
    Image.fromarray(image).save(source)
    page.set_input_files("#file", str(source))
    page.wait_for_selector("body[data-state=ready]", timeout=300_000)
    assert page.is_hidden("#message")
    assert "blocks.png: 180 × 120 pixels" in page.inner_text("#status")
    assert page.inner_text("#level-name") == "level 0"

    # the JSON the page offers is the document of the masks
    with page.expect_download() as download:
        page.click("#download")
    assert download.value.suggested_filename == "blocks.json"
    saved = tmp_path / "downloaded.json"
    download.value.save_as(saved)
    doc = json.loads(saved.read_text())
    assert doc["image"]["file_name"] == "blocks.png" and (doc["image"]["height"], doc["image"]["width"]) == (120, 180)
    records = {r["id"]: r for r in doc["annotations"]}
    assert records and all(decode_rle(r["segmentation"]).sum() == r["area"] for r in records.values())

    # a click shows the record of the region under it, at the level shown
    x, y = 30, 20  # inside the top-left block
    before = page.screenshot()
    page.click("#view", position={"x": x, "y": y})
    page.wait_for_selector("#record:not([hidden])")
    shown = record_shown(page)
    for key in ("id", "area", "bbox", "score", "level", "kind"):
        assert key in shown, f"{key} is not shown: {shown}"
    record = records[int(shown["id"])]
    assert decode_rle(record["segmentation"])[y, x] and 0 in record["levels"]
    assert int(shown["area"]) == record["area"] and json.loads(shown["bbox"]) == record["bbox"]
    assert page.screenshot() != before  # the clicked region is highlighted

    # the slider moves to the coarsest level: the record shown is the region there
    page.focus("#level")
    layers = int(page.get_attribute("#level", "max")) + 1
    levels = len(doc["uniap"]["thresholds"])
    for _ in range(levels - 1):
        page.keyboard.press("ArrowRight")
    assert page.inner_text("#level-name") == f"level {levels - 1}"
    assert page.get_attribute("#view", "data-layer") == str(levels - 1)
    coarse = records[int(record_shown(page)["id"])]
    assert decode_rle(coarse["segmentation"])[y, x] and levels - 1 in coarse["levels"]
    assert coarse["area"] >= record["area"]
    page.screenshot(path=str(tmp_path / "demo.png"), full_page=True)
    if layers > levels:  # the contour cuts follow the levels
        page.keyboard.press("ArrowRight")
        assert page.inner_text("#level-name") == "contours 0"
        assert records[int(record_shown(page)["id"])]["kind"] == "contour"
    shot = np.asarray(Image.open(tmp_path / "demo.png").convert("RGB"))
    assert shot.shape[0] > 300 and shot.std() > 20

    # a bad file next: its message, and the previous image's masks gone
    (tmp_path / "notes.txt").write_text("not an image")
    page.set_input_files("#file", str(tmp_path / "notes.txt"))
    page.wait_for_selector("body[data-state=error]", timeout=120_000)
    assert "notes.txt is not an image file" in page.inner_text("#message") and page.is_hidden("#result")


@pytest.mark.parametrize("make, name, words", [
    (lambda: b"not an image at all", "notes.txt", "notes.txt is not an image file"),
    (lambda: png_bytes(np.zeros((600, 600, 3), np.uint8)), "wide.png", "million pixels"),
    (lambda: b"\0" * 400_000, "huge.png", "this demo takes at most 0.3 MB"),
])
def test_the_page_explains_bad_input(page, tmp_path, make, name, words):
    path = tmp_path / name
    path.write_bytes(make())
    page.set_input_files("#file", str(path))
    page.wait_for_selector("body[data-state=error]", timeout=120_000)
    message = page.inner_text("#message")
    assert words in message and "Traceback" not in message
    assert page.is_hidden("#result")


def test_ctrl_c_stops_the_command_quietly():
    import signal

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    # Ctrl-C as a terminal delivers it: a test run started in the background by a shell without
    # job control ignores SIGINT, and the child would inherit that and never stop
    proc = subprocess.Popen([sys.executable, "-m", "uniap.demo", "--port", "0", "--quiet"],
                            stderr=subprocess.PIPE, text=True, env=env,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        first = proc.stderr.readline()
        assert first.startswith("uniap-demo: serving on http://127.0.0.1:")
        url = first.split()[3]
        with urllib.request.urlopen(url + "config", timeout=30) as response:
            assert response.status == 200
        proc.send_signal(signal.SIGINT)
        rest = proc.communicate(timeout=60)[1]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()  # reaped and its pipe closed, not left to a later test's warnings
    assert proc.returncode == 0 and rest == "uniap-demo: stopped\n"
