"""Two "nodes" on this machine: two ``torchrun --nnodes 2`` launches over loopback (Gloo, one
process each) train the same weights as one process with the same global batch."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from uniap_train.config import load_config, save_config  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _images(folder: Path) -> Path:
    from PIL import Image

    folder.mkdir()
    rng = np.random.default_rng(1)
    for i in range(8):
        img = np.zeros((48, 64, 3), np.uint8)
        img[:] = rng.integers(0, 255, 3)
        y, x = rng.integers(0, 30), rng.integers(0, 40)
        img[y:y + 16, x:x + 20] = rng.integers(0, 255, 3)
        Image.fromarray(img).save(folder / f"img{i}.png")
    return folder


def _overrides(images: Path, out: Path) -> list[str]:
    return [
        f"data.root={images}", "data.batch_size=4", "data.max_side=64", "crops.global_size=32",
        "crops.local_size=16", "crops.num_local=2", "model.hidden_dim=32", "model.bottleneck_dim=32",
        "model.out_dim=32", "loss.region_size=3", "loss.warmup_teacher_temp_steps=0", "optim.total_steps=4",
        "optim.lr=0.2", "optim.warmup_steps=1", "optim.freeze_last_layer_steps=1", "log.every_steps=1",
        "log.progress=false", "log.tensorboard=false", "device=cpu", "threads=1", "dist.backend=gloo",
        f"output_dir={out}",
    ]


def test_two_nodes_over_loopback_match_one_process(tmp_path):
    from uniap_train.trainer import train

    images = _images(tmp_path / "images")
    one = tmp_path / "one"
    train(load_config(None, _overrides(images, one)))

    two = tmp_path / "two"
    config = tmp_path / "two.yaml"
    save_config(load_config(None, _overrides(images, two)), config)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1")
    if Path("/sys/class/net/lo").exists():  # Gloo on the loopback device, whatever the host name resolves to
        env["GLOO_SOCKET_IFNAME"] = "lo"
    port = _free_port()
    nodes = [subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1",
         f"--node_rank={rank}", "--master_addr=127.0.0.1", f"--master_port={port}",
         "-m", "uniap_train", str(config)],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for rank in (0, 1)]
    logs = []
    for node in nodes:
        try:
            logs.append(node.communicate(timeout=240)[0])
        finally:
            if node.poll() is None:
                node.kill()
    assert [n.returncode for n in nodes] == [0, 0], logs[0][-3000:] + logs[1][-3000:]
    assert "2 process(es)" in logs[0]

    a = torch.load(one / "checkpoint_last.pt", map_location="cpu", weights_only=True)
    b = torch.load(two / "checkpoint_last.pt", map_location="cpu", weights_only=True)
    assert b["world_size"] == 2 and a["step"] == b["step"] == 4
    for key in ("student", "teacher"):
        for name, ta in a[key].items():
            torch.testing.assert_close(b[key][name], ta, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(b["loss"]["center"], a["loss"]["center"], rtol=1e-4, atol=1e-6)
