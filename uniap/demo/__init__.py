"""``uniap-demo``: a page to look at masks, served by the standard library (docs/demo.md).

Drop an image, move a slider through its levels, click a region to read its record, download
the JSON.  :mod:`uniap.demo.server` holds the server; the page is package data in ``static/``.
"""

from .server import DemoServer, UploadError, main, make_server, segment_upload

__all__ = ["DemoServer", "UploadError", "main", "make_server", "segment_upload"]
