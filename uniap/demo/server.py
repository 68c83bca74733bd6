"""``uniap-demo``: a page, served by the standard library's ``http.server``, where a user drops
an image, moves a slider through its levels, clicks a region to read its record and downloads
the masks as JSON.

The server segments with the default pipeline (:func:`uniap.pipeline.image.segment_image`) and
sends the page, per level and contour cut, a PNG of the labels (``label + 1`` in its RGB bytes,
at display size), each label's colour (:func:`uniap.viz.follow_palettes`: a region keeps its
colour from level to level) and each label's record id; the page colours, outlines and looks up
regions itself.  Endpoints:

``GET /``, ``GET /app.js``, ``GET /style.css``
    The page (package data under ``uniap/demo/static``).
``GET /config``
    ``{"max_bytes", "max_pixels", "version"}``: the limits, so the page refuses a file too
    large before sending it.
``POST /segment?name=FILE``
    The image file's bytes as the body.  200: the payload of :func:`segment_upload`; 400 (not
    an image, empty), 413 (too many bytes or pixels) or 500: ``{"error": "one line"}``.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import sys
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any, Callable, Sequence
from urllib.parse import parse_qs, urlsplit

import numpy as np

# The most pixels (height x width) an upload may have: 2400 x 1600 (3.8 million) took 4.7 s on 2 CPU cores.
DEFAULT_MAX_PIXELS = 4_000_000
# The most bytes an upload may have.
DEFAULT_MAX_BYTES = 20 * 1024 * 1024
# The page shows images shrunk to at most this many pixels on their longer side.
DISPLAY_SIDE = 1024
DEFAULT_PORT = 8765
STATIC = {"/": ("index.html", "text/html; charset=utf-8"),
          "/index.html": ("index.html", "text/html; charset=utf-8"),
          "/app.js": ("app.js", "text/javascript; charset=utf-8"),
          "/style.css": ("style.css", "text/css; charset=utf-8")}


class UploadError(ValueError):
    """An upload the demo refuses; ``status`` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = HTTPStatus.BAD_REQUEST) -> None:
        super().__init__(message)
        self.status = int(status)


def decode_upload(data: bytes, name: str = "upload", max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """The uploaded file's image as RGB uint8 (H, W, 3), its size checked before decoding.

    Parameters
    ----------
    data : bytes
        The file's contents.
    name : str
        Its name, in messages.
    max_pixels : int
        The most pixels (height x width) it may have, read from its header (0: no limit).

    Returns
    -------
    ndarray of shape (H, W, 3), uint8
        As :func:`uniap.features.load_image` reads the same file (EXIF orientation applied,
        grey, palette and 16-bit images as RGB, alpha dropped).

    Raises
    ------
    UploadError
        Empty, not an image Pillow can read (400), or more than ``max_pixels`` pixels (413).

    Examples
    --------
    >>> from PIL import Image
    >>> buf = io.BytesIO(); Image.new("L", (5, 4)).save(buf, format="PNG")
    >>> decode_upload(buf.getvalue()).shape
    (4, 5, 3)
    >>> decode_upload(b"hello", "notes.txt")
    Traceback (most recent call last):
    ...
    uniap.demo.server.UploadError: notes.txt is not an image file (PNG, JPEG, WebP, TIFF, BMP, ...)
    """
    import warnings

    from PIL import Image

    from ..features import load_image

    if not data:
        raise UploadError(f"{name} is empty")
    with warnings.catch_warnings():  # the size check below is ours, stricter than Pillow's warning
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data))
        except Image.DecompressionBombError:
            raise UploadError(f"{name} is far too large: more than {2 * Image.MAX_IMAGE_PIXELS} pixels",
                              HTTPStatus.REQUEST_ENTITY_TOO_LARGE) from None
        except Exception:  # Pillow raises several types for bytes that are no image
            raise UploadError(f"{name} is not an image file (PNG, JPEG, WebP, TIFF, BMP, ...)") from None
        width, height = image.size
        if max_pixels and width * height > max_pixels:
            raise UploadError(f"{name} is {width} x {height} = {width * height / 1e6:.1f} million pixels; "
                              f"this demo takes at most {max_pixels / 1e6:.1f} million (uniap-demo --max-pixels N)",
                              HTTPStatus.REQUEST_ENTITY_TOO_LARGE)
        try:
            return load_image(image, max_pixels=0)
        except Exception as err:  # a truncated or corrupt file fails while decoding
            raise UploadError(f"{name} could not be decoded: {' '.join(str(err).split())}") from None


def _png_data_url(array: np.ndarray) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", compress_level=1)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _jpeg_data_url(array: np.ndarray) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="JPEG", quality=90)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def label_png(labels: np.ndarray) -> np.ndarray:
    """A label map as RGB bytes, ``label + 1`` little-endian (0 is never a label's value).

    Examples
    --------
    >>> label_png(np.array([[0, 256]]))[0].tolist()
    [[1, 0, 0], [1, 1, 0]]
    """
    value = np.asarray(labels, np.int64) + 1
    if value.size and int(value.max()) >= 1 << 24:
        raise ValueError("more than 16.7 million labels do not fit in a PNG's RGB bytes")
    return np.stack([value & 255, (value >> 8) & 255, (value >> 16) & 255], axis=-1).astype(np.uint8)


def _record_of_labels(labels: np.ndarray, records: Sequence[dict], layer: int, kind: str) -> list[int]:
    """The ``id`` of each label's record in ``layer`` (-1: none, e.g. a cluster below min_size).

    A record's label is read at its interior point; a record whose label there does not have
    its area (never expected) is found by decoding its mask.
    """
    from ..records import decode_rle

    area = np.bincount(labels.ravel(), minlength=int(labels.max()) + 1)
    out = np.full(len(area), -1, np.int64)
    for record in records:
        if record.get("kind") != kind or layer not in record.get("levels", [record.get("level")]):
            continue
        point = (record.get("point_coords") or [[-1, -1]])[0]
        x, y = (int(round(v)) for v in point)
        inside = 0 <= y < labels.shape[0] and 0 <= x < labels.shape[1]
        label = int(labels[y, x]) if inside else 0
        if not inside or area[label] != record.get("area"):
            label = int(np.bincount(labels[decode_rle(record["segmentation"])]).argmax())
        out[label] = int(record["id"])
    return out.tolist()


def segment_upload(data: bytes, name: str = "upload", *, max_pixels: int = DEFAULT_MAX_PIXELS,
                   display_side: int = DISPLAY_SIDE, **options: Any) -> dict:
    """What ``POST /segment`` answers: an uploaded image's masks, per layer, for the page.

    Parameters
    ----------
    data : bytes
        The image file's contents.
    name : str
        Its file name (in messages and in the document).
    max_pixels : int
        The most pixels it may have (0: no limit).
    display_side : int
        The page's pictures are shrunk to at most this many pixels on their longer side.
    **options
        Passed to :func:`uniap.pipeline.image.segment_image`.

    Returns
    -------
    dict
        ``file_name``, ``width``, ``height``; ``display`` (``width``, ``height``, ``image``: a
        data URL); ``layers``: one per level, then per contour cut, each with ``kind``,
        ``index``, ``name``, ``caption``, ``labels`` (a PNG data URL, :func:`label_png`),
        ``colours`` (RGB per label) and ``records`` (record id per label, -1 for none);
        ``document``: the ``--format sam`` document (:func:`uniap.io.sam_document`) the page
        offers for download; ``seconds``.

    Raises
    ------
    UploadError
        The bytes are not an image, or one too large.

    Examples
    --------
    >>> from PIL import Image
    >>> buf = io.BytesIO(); Image.fromarray(np.eye(32, dtype=np.uint8) * 255).save(buf, format="PNG")
    >>> payload = segment_upload(buf.getvalue(), "eye.png", levels=(0.8, 0.4))
    >>> [layer["name"] for layer in payload["layers"]][:2], payload["document"]["image"]["width"]
    (['level 0', 'level 1'], 32)
    """
    import time

    from ..formats.sam import sam_document
    from ..core.graph import nearest_index
    from ..pipeline.image import segment_image
    from ..viz import follow_palettes

    start = time.perf_counter()
    pixels = decode_upload(data, name, max_pixels)
    result = segment_image(pixels, **options)
    height, width = pixels.shape[:2]
    scale = min(1.0, display_side / max(height, width))
    dh, dw = max(1, round(height * scale)), max(1, round(width * scale))
    rows, cols = nearest_index(dh, height), nearest_index(dw, width)
    if scale < 1.0:
        from PIL import Image

        shown = np.asarray(Image.fromarray(pixels).resize((dw, dh), Image.Resampling.BILINEAR))
    else:
        shown = pixels
    records = result.records
    thresholds = list(result.hierarchy.thresholds)
    layers = []
    stacks = [("instance", result.pixel_labels)]
    if result.contour_labels is not None and len(result.contour_labels):
        stacks.append(("contour", result.contour_labels))
    for kind, stack in stacks:
        for index, (labels, colours) in enumerate(zip(stack, follow_palettes(stack))):
            ids = _record_of_labels(labels, records, index, kind)
            count = sum(i >= 0 for i in ids)
            masks = f"{count} mask" + ("" if count == 1 else "s")
            if kind == "instance":
                name_, caption = f"level {index}", f"threshold {thresholds[index]:g}, {masks}"
            else:
                altitude = next((r["threshold"] for r in records if r["kind"] == kind and r["level"] == index), None)
                name_ = f"contours {index}"
                caption = (f"altitude {altitude:.3g}, " if altitude is not None else "") + masks
            layers.append({"kind": kind, "index": index, "name": name_, "caption": caption,
                           "labels": _png_data_url(label_png(labels[rows][:, cols])),
                           "colours": np.round(colours).astype(int).tolist(), "records": ids})
    info = {"file_name": name, "height": int(height), "width": int(width)}
    return {"file_name": name, "width": int(width), "height": int(height),
            "display": {"width": dw, "height": dh, "image": _jpeg_data_url(shown)},
            "layers": layers, "document": sam_document(info, result.uniap_info(), records),
            "seconds": round(time.perf_counter() - start, 3)}


def _static(name: str) -> bytes:
    return resources.files("uniap.demo").joinpath("static", name).read_bytes()


class DemoServer(ThreadingHTTPServer):
    """The demo's HTTP server: :class:`http.server.ThreadingHTTPServer` with the limits, one
    segmentation at a time (each holds an image's label maps in memory).

    Parameters
    ----------
    address : (str, int)
        Host and port to listen on (port 0: any free port; :attr:`url` tells which).
    max_pixels : int
        The most pixels an upload may have (0: no limit).
    max_bytes : int
        The most bytes an upload may have.
    quiet : bool
        No line per request.
    segment_options : dict, optional
        Keyword arguments of :func:`uniap.pipeline.image.segment_image` (default: none, the
        default pipeline).
    log : callable, optional
        Where the server's lines go (default: standard error).
    """

    daemon_threads = True

    def __init__(self, address: tuple[str, int], *, max_pixels: int = DEFAULT_MAX_PIXELS,
                 max_bytes: int = DEFAULT_MAX_BYTES, quiet: bool = False,
                 segment_options: dict | None = None,
                 log: Callable[[str], None] | None = None) -> None:
        super().__init__(address, DemoHandler)
        self.max_pixels = int(max_pixels)
        self.max_bytes = int(max_bytes)
        self.quiet = quiet
        self.segment_options = dict(segment_options or {})
        self.busy = threading.Lock()
        self.log = log or (lambda line: print(line, file=sys.stderr, flush=True))

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{'127.0.0.1' if host in ('', '0.0.0.0') else host}:{port}/"


class DemoHandler(BaseHTTPRequestHandler):
    """``GET`` the page and its limits, ``POST /segment`` an image (module docstring)."""

    server: DemoServer
    server_version = "uniap-demo"

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        path = urlsplit(self.path).path
        if path == "/config":
            from .._version import __version__

            self._json(HTTPStatus.OK, {"max_bytes": self.server.max_bytes,
                                       "max_pixels": self.server.max_pixels, "version": __version__})
        elif path in STATIC:
            name, content_type = STATIC[path]
            self._send(HTTPStatus.OK, _static(name), content_type)
        elif path == "/segment":
            self._json(HTTPStatus.METHOD_NOT_ALLOWED, {"error": "POST an image file to /segment"})
        else:
            self._json(HTTPStatus.NOT_FOUND, {"error": f"no page {path}"})

    def do_POST(self) -> None:  # noqa: N802
        url = urlsplit(self.path)
        if url.path != "/segment":
            self._json(HTTPStatus.NOT_FOUND, {"error": f"no endpoint {url.path}"})
            return
        name = (parse_qs(url.query).get("name") or ["upload"])[0][:200] or "upload"
        try:
            data = self._body(name)
            with self.server.busy:
                payload = segment_upload(data, name, max_pixels=self.server.max_pixels,
                                         **self.server.segment_options)
        except UploadError as err:
            self._json(err.status, {"error": str(err)})
            return
        except Exception as err:  # a bug, not the user's mistake: one line here and in the page
            self.server.log(f"uniap-demo: segmenting {name} failed: {type(err).__name__}: {err}")
            self._json(HTTPStatus.INTERNAL_SERVER_ERROR,
                       {"error": f"segmenting {name} failed: {type(err).__name__}: {err}"})
            return
        self._json(HTTPStatus.OK, payload)

    def _body(self, name: str) -> bytes:
        """The request's body, refused (before reading it whole) when over ``max_bytes``."""
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            raise UploadError("the upload has no Content-Length", HTTPStatus.LENGTH_REQUIRED) from None
        limit = self.server.max_bytes
        if length > limit:
            self.close_connection = True
            if length <= 4 * limit:  # read it away, so that the client sees the answer
                remaining = length
                while remaining > 0:
                    chunk = self.rfile.read(min(remaining, 1 << 20))
                    if not chunk:
                        break
                    remaining -= len(chunk)
            raise UploadError(f"{name} is {length / 2**20:.1f} MB; this demo takes at most "
                              f"{limit / 2**20:.1f} MB (uniap-demo --max-mb N)",
                              HTTPStatus.REQUEST_ENTITY_TOO_LARGE)
        data = self.rfile.read(length)
        if len(data) < length:
            raise UploadError(f"{name} was cut short: {len(data)} of {length} bytes arrived")
        return data

    def _json(self, status: int, payload: dict) -> None:
        self._send(status, json.dumps(payload, separators=(",", ":")).encode(), "application/json")

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):  # the page was closed meanwhile
            self.close_connection = True

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (http.server's name)
        if not self.server.quiet:
            self.server.log(f"{self.address_string()} {format % args}")


def make_server(host: str = "127.0.0.1", port: int = DEFAULT_PORT, **kwargs: Any) -> DemoServer:
    """A :class:`DemoServer` listening on ``host:port`` (port 0: any free port); call its
    ``serve_forever()`` (and ``shutdown()`` from another thread).

    Parameters
    ----------
    host : str
        The address to listen on (default: this machine only).
    port : int
        The port.
    **kwargs
        :class:`DemoServer`'s limits and options.

    Returns
    -------
    DemoServer

    Raises
    ------
    OSError
        The address cannot be listened on (in use, not this machine's).

    Examples
    --------
    >>> server = make_server(port=0, quiet=True)
    >>> server.url.startswith("http://127.0.0.1:")
    True
    >>> server.server_close()
    """
    return DemoServer((host, port), **kwargs)


def build_parser() -> argparse.ArgumentParser:
    from .._version import __version__

    parser = argparse.ArgumentParser(
        prog="uniap-demo",
        description="A page to look at UniAP's masks: drop an image, move through its levels, "
        "click a region to read its record, download the JSON.",
        epilog="Example: uniap-demo --port 8765, then open http://127.0.0.1:8765/")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT}; 0: any free port)")
    parser.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, metavar="N",
                        help=f"refuse images of more than N pixels (default {DEFAULT_MAX_PIXELS}; 0: no limit)")
    parser.add_argument("--max-mb", type=float, default=DEFAULT_MAX_BYTES / 2**20, metavar="MB",
                        help=f"refuse files of more than MB megabytes (default {DEFAULT_MAX_BYTES / 2**20:g})")
    parser.add_argument("--open", action="store_true", help="open the page in the default browser")
    parser.add_argument("--quiet", action="store_true", help="no line per request")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``uniap-demo``: serve the page until Ctrl-C.

    Parameters
    ----------
    argv : sequence of str, optional
        The arguments (default: ``sys.argv[1:]``).

    Returns
    -------
    int
        The exit status: 0 after Ctrl-C, 2 when the address cannot be listened on.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if not 0 <= args.port <= 65535:
        parser.error(f"--port must be in 0..65535, got {args.port}")
    if args.max_pixels < 0 or args.max_mb <= 0:
        parser.error("--max-pixels must be >= 0 and --max-mb > 0")
    try:
        server = make_server(args.host, args.port, max_pixels=args.max_pixels,
                             max_bytes=int(args.max_mb * 2**20), quiet=args.quiet)
    except OSError as err:
        print(f"uniap-demo: error: cannot listen on {args.host}:{args.port}: {err.strerror or err}", file=sys.stderr)
        return 2
    try:  # Ctrl-C is how a user stops the page: from here on it ends the server quietly
        print(f"uniap-demo: serving on {server.url} (Ctrl-C to stop)", file=sys.stderr, flush=True)
        if args.open:
            import webbrowser

            webbrowser.open(server.url)
        server.serve_forever()
    except KeyboardInterrupt:
        print("uniap-demo: stopped", file=sys.stderr)
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
