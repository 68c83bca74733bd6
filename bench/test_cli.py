"""uniap-cli end to end on 481x321 BSDS500 images with the default features.

Per image in a folder run (features, pooling, records, writing), and a whole single-image
process (start, imports and compiled-code loading included).
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np

import uniap
from uniap import io
from uniap.features import get_extractor

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "bsds500" / "images" / "val"



def test_cli_per_image(benchmark, bsds_images, tmp_path):
    """One more image of a folder run: features + UniAP + records + JSON write."""
    extractor = get_extractor("default")
    state = {"i": 0, "split": []}

    def one_image():
        image = bsds_images[state["i"] % len(bsds_images)]
        state["i"] += 1
        result = uniap.segment_image(image, extractor)
        t0 = time.perf_counter()
        info = {"file_name": "x.jpg", "height": image.shape[0], "width": image.shape[1]}
        io.write_json(tmp_path / "masks.json", io.sam_document(info, result.uniap_info(), result.records))
        state["split"].append(dict(result.timings, writing=time.perf_counter() - t0))

    one_image()
    benchmark.pedantic(one_image, rounds=16, iterations=1)
    for key in state["split"][0]:
        benchmark.extra_info[f"median_{key}_s"] = float(np.median([s[key] for s in state["split"][1:]]))


def test_cli_single_image_process(benchmark, bsds_images, tmp_path):
    """``uniap-cli image.jpg --out masks.json`` as a new process (compile cache warm)."""
    image = sorted(DATA.glob("*.jpg"))[0]
    command = [sys.executable, "-m", "uniap", str(image), "--out", str(tmp_path / "m.json"), "--overwrite", "--quiet"]
    subprocess.run(command, check=True)
    benchmark.pedantic(subprocess.run, args=(command,), kwargs={"check": True}, rounds=5, iterations=1)
