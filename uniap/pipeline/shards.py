"""``--shard auto``: which part of the inputs this process takes, from the scheduler's variables.

A SLURM array job, a torchrun (or ``srun``) launch with one process per GPU, or both at once
(each array task running several processes) all give a disjoint share of the inputs, and the
shares of all processes together cover every input once.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Mapping


@dataclass(frozen=True)
class ShardInfo:
    """The shard (index, count) of this process, or None for all inputs, and the GPU to use."""

    shard: tuple[int, int] | None
    local_rank: int | None
    source: str  # which variables decided it, for messages


def _int(env: Mapping[str, str], name: str) -> int | None:
    value = env.get(name)
    if value is None or value.strip() == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"--shard auto: {name}={value!r} is not an integer") from None


def shard_from_environment(env: Mapping[str, str] | None = None) -> ShardInfo:
    """Read SLURM array variables and RANK / WORLD_SIZE / LOCAL_RANK.

    * ``SLURM_ARRAY_TASK_ID`` and ``SLURM_ARRAY_TASK_COUNT`` (with ``SLURM_ARRAY_TASK_MIN``
      when the array does not start at 0): one shard per array task.
    * ``RANK`` and ``WORLD_SIZE`` (torchrun; or ``SLURM_PROCID`` and ``SLURM_NTASKS`` under
      ``srun``): one shard per process; ``LOCAL_RANK`` (``SLURM_LOCALID``) picks its GPU.
    * both: array task ``a`` of ``A`` with process ``r`` of ``R`` takes shard ``a * R + r`` of
      ``A * R``.
    * none of them: every input (``shard`` is None).

    Raises
    ------
    ValueError
        A variable that is not an integer, or an index outside its count.

    Examples
    --------
    >>> shard_from_environment({"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_COUNT": "8"}).shard
    (3, 8)
    >>> shard_from_environment({"RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}).local_rank
    1
    >>> shard_from_environment({}).shard is None
    True
    """
    env = os.environ if env is None else env
    index, count, sources = 0, 1, []
    task, tasks = _int(env, "SLURM_ARRAY_TASK_ID"), _int(env, "SLURM_ARRAY_TASK_COUNT")
    if task is not None and tasks is not None:
        first = _int(env, "SLURM_ARRAY_TASK_MIN") or 0
        index, count = task - first, tasks
        sources.append("SLURM_ARRAY_TASK_ID/SLURM_ARRAY_TASK_COUNT")
    rank, world = _int(env, "RANK"), _int(env, "WORLD_SIZE")
    local = _int(env, "LOCAL_RANK")
    names = "RANK/WORLD_SIZE"
    if rank is None or world is None:
        rank, world = _int(env, "SLURM_PROCID"), _int(env, "SLURM_NTASKS")
        local = _int(env, "SLURM_LOCALID") if local is None else local
        names = "SLURM_PROCID/SLURM_NTASKS"
    if rank is not None and world is not None and world > 1:
        index, count = index * world + rank, count * world
        sources.append(names)
    if not 0 <= index < count:
        raise ValueError(f"--shard auto: shard {index} of {count} from {', '.join(sources)} is out of range")
    return ShardInfo(shard=(index, count) if count > 1 else None, local_rank=local,
                     source=", ".join(sources) or "no scheduler variables")
