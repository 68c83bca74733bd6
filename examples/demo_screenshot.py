"""Take a screenshot of uniap-demo in a headless Chromium (docs/images/demo.png).

    pip install playwright && apt-get install chromium      # the system's browser, no download
    python examples/demo_screenshot.py [IMAGE] [--out docs/images/demo.png] [--level 4]

Starts the demo on a free port, uploads IMAGE (default: the bundled coffee.jpg), moves the
slider to --level, clicks the region at --click X,Y (display pixels) and saves the page.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import threading
from pathlib import Path

from uniap.demo import make_server

HERE = Path(__file__).resolve().parent
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("image", nargs="?", default=str(HERE / "images" / "coffee.jpg"))
    parser.add_argument("--out", default="demo.png", help="the screenshot (PNG)")
    parser.add_argument("--level", type=int, default=4, help="the slider's position")
    parser.add_argument("--click", default="300,130", help="X,Y in the shown picture's pixels")
    parser.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    args = parser.parse_args()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        print("demo_screenshot: needs playwright (pip install playwright)", file=sys.stderr)
        return 1
    x, y = (int(v) for v in args.click.split(","))
    server = make_server(port=0, quiet=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with sync_playwright() as p, tempfile.TemporaryDirectory() as profile:
            context = p.chromium.launch_persistent_context(
                profile, executable_path=args.chromium, headless=True, args=ARGS,
                viewport={"width": 1180, "height": 760})
            page = context.new_page()
            page.goto(server.url)
            page.set_input_files("#file", args.image)
            page.wait_for_selector("body[data-state=ready]", timeout=600_000)
            page.focus("#level")
            for _ in range(args.level):
                page.keyboard.press("ArrowRight")
            page.click("#view", position={"x": x, "y": y})
            page.screenshot(path=args.out, full_page=True)
            context.close()
    finally:
        server.shutdown()
        server.server_close()
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
