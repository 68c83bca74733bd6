"""``--shard auto``: scheduler variables give disjoint shares that together cover every input."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from uniap.cli import main
from uniap.pipeline.shards import shard_from_environment


@pytest.mark.parametrize(
    "env, shard, local_rank",
    [
        ({}, None, None),
        ({"SLURM_ARRAY_TASK_ID": "2", "SLURM_ARRAY_TASK_COUNT": "5"}, (2, 5), None),
        ({"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_COUNT": "4", "SLURM_ARRAY_TASK_MIN": "1"}, (2, 4), None),
        ({"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "3"}, (3, 8), 3),
        ({"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0"}, None, 0),
        ({"SLURM_PROCID": "5", "SLURM_NTASKS": "6", "SLURM_LOCALID": "1"}, (5, 6), 1),
        ({"SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_TASK_COUNT": "3", "RANK": "1", "WORLD_SIZE": "2"}, (3, 6), None),
        ({"SLURM_ARRAY_TASK_ID": "0", "SLURM_ARRAY_TASK_COUNT": "1"}, None, None),
    ],
)
def test_variables(env, shard, local_rank):
    info = shard_from_environment(env)
    assert info.shard == shard and info.local_rank == local_rank


@pytest.mark.parametrize("env", [{"RANK": "x", "WORLD_SIZE": "2"},
                                 {"SLURM_ARRAY_TASK_ID": "4", "SLURM_ARRAY_TASK_COUNT": "4"}])
def test_bad_variables(env):
    with pytest.raises(ValueError, match="--shard auto"):
        shard_from_environment(env)


def test_array_times_ranks_is_a_partition():
    seen = []
    for task in range(3):
        for rank in range(4):
            env = {"SLURM_ARRAY_TASK_ID": str(task), "SLURM_ARRAY_TASK_COUNT": "3",
                   "RANK": str(rank), "WORLD_SIZE": "4"}
            index, count = shard_from_environment(env).shard
            assert count == 12
            seen += list(range(100))[index::count]
    assert sorted(seen) == list(range(100))


def test_cli_shard_auto_covers_every_image_once(tmp_path, monkeypatch):
    import numpy as np
    import skimage.data

    base = skimage.data.astronaut()[::8, ::8]
    folder = tmp_path / "in"
    for i in range(5):
        (folder / f"d{i % 2}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.roll(base, 7 * i, axis=0)).save(folder / f"d{i % 2}" / f"{i}.png")
    out = tmp_path / "out"
    for rank in range(2):
        for name in ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT", "SLURM_PROCID", "SLURM_NTASKS"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        assert main([str(folder), "--out", str(out), "--shard", "auto", "--quiet"]) == 0
        written = sorted(str(p.relative_to(out)) for p in out.rglob("*.json"))
        assert len(written) == (3 if rank == 0 else 5)
    names = sorted(json.loads(p.read_text())["image"]["file_name"] for p in out.rglob("*.json"))
    assert names == sorted(f"d{i % 2}/{i}.png" for i in range(5))
