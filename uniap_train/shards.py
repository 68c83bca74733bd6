"""Streaming tar shards (``data.kind: shards``): SA-1B and WebDataset tars read in place.

SA-1B ships as about 1,000 plain tars of about 11k images each (``sa_000000.tar`` holding
``sa_1.jpg`` + ``sa_1.json`` ...); WebDataset tars group a sample's files by key
(``000/abc.jpg`` + ``000/abc.json``).  Self-supervised training needs only the pictures, so
every regular, non-hidden member with an image suffix is one sample and the other members
(``.json``, ``.cls`` ...) are passed over.  Nothing is unpacked and no list of images is made:

* :func:`expand_shards` turns ``data.root`` (a tar, a folder of tars, a glob, or a brace list
  such as ``sa_{000000..000999}.tar``) into the sorted list of shard paths (1,000 strings).
* :func:`iter_members` walks one tar's headers, one member at a time (tarfile keeps every
  header it reads unless told otherwise: here it holds one).
* :class:`ShardStream` is the DataLoader's data set.  Each *pass* (the stream's epoch) permutes
  the shards with ``(seed, pass)`` and deals them to the ``world_size x num_workers`` streams:
  stream ``s`` reads units ``s, s + N, s + 2N ...`` of the permutation, so every image is read
  by exactly one stream per pass.  With fewer shards than streams each shard is split into
  parts by member number (a unit is one part of one shard) so that every stream has work.
  Within a pass a stream mixes its members in a shuffle buffer of ``data.shuffle_buffer``
  *references* (shard, offset, size: a few dozen bytes each, not images) seeded by
  ``(seed, pass, stream)`` and emptied at the pass's end.

Exact resume.  Everything a stream yields is a function of ``(seed, world_size, num_workers,
stream)``, so a stream's state is one number: how many references it has given out (corrupt
members included).  Every batch carries its stream and that count; the trainer keeps the last
count of each stream and saves them in checkpoints; a resumed stream replays its shuffle
buffer over the members' headers (no image is read) up to the count and goes on from there.
The DataLoader asks its workers for batches in turn (batch ``n`` of a process from worker
``n mod W``), so a run resumed at step ``k`` gives worker ``w`` the part of stream
``(w + k) mod W``: batch ``k + j`` comes from the stream that gave it in the uninterrupted run.

A member that cannot be read or decoded is skipped and reported (``Sample.skipped``: the
trainer prints it and writes it to ``log.jsonl``); a tar that is missing or damaged midway
loses the rest of that shard for the pass, reported the same way.  Neither stops training.
"""

from __future__ import annotations

import glob
import os
import re
import tarfile
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
from torch.utils.data import IterableDataset, get_worker_info

from .config import ConfigError, expand_path

__all__ = ["expand_shards", "iter_members", "count_images", "first_items", "Ref", "ShardStream",
           "sample_id", "split_sample_id"]

_COMPRESSED = (".tar.gz", ".tgz", ".tar.bz2", ".tbz", ".tbz2", ".tar.xz", ".txz", ".tar.zst", ".tar.zstd")
_BRACE = re.compile(r"\{([^{}]*)\}")
_RANGE = re.compile(r"^(-?\d+)\.\.(-?\d+)$")
# a sample's number: shard number x 2^24 + member number (SA-1B's shards hold ~11k members)
_MEMBER_BITS = 24


def _image_suffixes() -> frozenset[str]:
    from uniap.pipeline.sources import IMAGE_SUFFIXES

    return IMAGE_SUFFIXES


def brace_expand(pattern: str) -> list[str]:
    """Expand ``{a,b}`` lists and ``{000..012}`` numeric ranges (zero padding kept), as a shell.

    >>> brace_expand("sa_{00..02}.tar")
    ['sa_00.tar', 'sa_01.tar', 'sa_02.tar']
    >>> brace_expand("{a,b}/x.tar")
    ['a/x.tar', 'b/x.tar']
    """
    m = _BRACE.search(pattern)
    if m is None:
        return [pattern]
    head, body, tail = pattern[: m.start()], m.group(1), pattern[m.end():]
    r = _RANGE.match(body)
    if r:
        lo, hi = int(r.group(1)), int(r.group(2))
        width = len(r.group(1)) if r.group(1).lstrip("-").startswith("0") else 0
        step = 1 if hi >= lo else -1
        choices = [f"{i:0{width}d}" for i in range(lo, hi + step, step)]
    else:
        choices = body.split(",")
    return [out for c in choices for out in brace_expand(head + c + tail)]


def expand_shards(root: str) -> list[str]:
    """The tar shards ``data.root`` names, sorted, each once.

    ``root`` is a ``.tar`` file, a folder (its ``*.tar``, not searched below), a glob
    (``/data/sa1b/sa_*.tar``), a brace list (``/data/sa_{000000..000999}.tar``) or several of
    them separated by spaces.  ``$VAR`` and ``~`` are expanded.

    Raises
    ------
    ConfigError
        A named shard that does not exist, a glob matching no tar, a compressed tar, or no
        shard at all.
    """
    found: set[str] = set()
    specs = [s for s in str(root).split() if s]
    if not specs:
        raise ConfigError("data.root: name the tar shards (a .tar, a folder of tars, a glob or a brace list)")
    for spec in specs:
        for pattern in brace_expand(str(expand_path(spec))):
            if os.path.isdir(pattern):
                matches = sorted(glob.glob(os.path.join(glob.escape(pattern), "*.tar")))
                if not matches:
                    raise ConfigError(f"data.root: no .tar shard in the folder {pattern!r}")
            elif os.path.isfile(pattern):
                matches = [pattern]
            elif glob.has_magic(pattern):
                matches = sorted(p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p))
                if not matches:
                    raise ConfigError(f"data.root: the glob {pattern!r} matches no file")
            else:
                raise ConfigError(f"data.root: shard not found: {pattern!r}")
            for path in matches:
                if path.lower().endswith(_COMPRESSED):
                    raise ConfigError(f"data.root: {path} is a compressed tar: shards are read by seeking, "
                                      "use plain .tar files (as SA-1B and WebDataset ship them)")
                found.add(os.path.abspath(path))
    return sorted(found)


def iter_members(path: str) -> Iterator[tuple[str, int, int]]:
    """``(name, data offset, size)`` of each image member of one tar, in file order.

    Only one header is held at a time.  Raises ``OSError`` / ``tarfile.TarError`` when the tar
    cannot be opened or a header cannot be read, and ``ValueError`` when it is truncated or
    stops at a damaged header (tarfile would end there quietly), after the members before.
    """
    suffixes = _image_suffixes()
    size = os.path.getsize(path)
    with tarfile.open(path, mode="r:") as tf:
        while True:
            info = tf.next()
            tf.members.clear()  # tarfile keeps every header read: a shard's list, unless cleared
            if info is None:
                break
            if not info.isreg():
                continue
            name = info.name
            base = name.rsplit("/", 1)[-1]
            if not base or base.startswith(".") or os.path.splitext(base)[1].lower() not in suffixes:
                continue
            if info.offset_data + info.size > size:
                raise ValueError(f"the tar is truncated (member {name} needs {info.offset_data + info.size} "
                                 f"bytes, the file has {size})")
            yield name, info.offset_data, info.size
        end = tf.offset
    if 0 < size - end < 512:
        raise ValueError(f"the tar is truncated (a partial header at byte {end})")
    if size - end >= 512:
        with open(path, "rb") as f:
            f.seek(end)
            block = f.read(512)
        if block.count(0) != 512:
            raise ValueError(f"a damaged header at byte {end}: the rest of the shard is unreadable")


def count_images(shards: list[str], progress: bool = False, problems: list | None = None) -> int:
    """Image members in all shards (headers only, one shard at a time).

    A shard that cannot be read (or only in part) adds the members before the damage and
    ``(path, reason)`` to ``problems``: training skips the same and reports it again.
    """
    from uniap._progress import progress_bar

    total = 0
    bar = progress_bar(len(shards), "count shards", unit="shard", disable=not progress)
    for path in shards:
        try:
            for _ in iter_members(path):
                total += 1
        except (OSError, tarfile.TarError, ValueError, EOFError) as err:
            if problems is not None:
                problems.append((path, " ".join(str(err).split()) or type(err).__name__))
        bar.update(1)
    bar.close()
    return total


def first_items(shards: list[str], n: int) -> list[Any]:
    """The first ``n`` images of the sorted shards as :class:`uniap.pipeline.sources.Item` s
    (for the shared vocabulary and the feature size probe)."""
    from uniap.pipeline.sources import Item

    out: list[Any] = []
    for path in shards:
        try:
            for name, offset, size in iter_members(path):
                out.append(Item(name, path, name, offset, size))
                if len(out) >= n:
                    return out
        except (OSError, tarfile.TarError, ValueError, EOFError):
            continue  # reported when training reads it
    if not out:
        raise ConfigError(f"data.root: no image member in the {len(shards)} shard(s)")
    return out


def sample_id(shard: int, member: int) -> int:
    """A sample's number from its shard's and its member's (used to seed its crops)."""
    return (int(shard) << _MEMBER_BITS) | int(member)


def split_sample_id(index: int) -> tuple[int, int]:
    """``(shard, member)`` of a :func:`sample_id`."""
    return int(index) >> _MEMBER_BITS, int(index) & ((1 << _MEMBER_BITS) - 1)


@dataclass(frozen=True)
class Ref:
    """One image member: where it is (no pixels), and which pass of the stream reads it."""

    shard: int
    member: int
    name: str
    offset: int
    size: int
    epoch: int


class ShardStream(IterableDataset):
    """The samples of one training process, streamed from tar shards (see the module's notes).

    Parameters
    ----------
    shards : list of str
        Shard paths (:func:`expand_shards`).
    dataset : MultiCropDataset
        Turns an image into a sample (``dataset.sample_image``); its caches are turned off.
    seed : int
    rank, world_size : int
        This process and the number of processes.
    num_workers : int
        DataLoader workers per process (0: the stream runs in the process itself).
    shuffle_buffer : int
        References mixed at a time per stream (0 or 1: shards' own order).
    max_side : int
        Images are downscaled so that their longer side is at most this.
    start_step : int
        Batches this process has already trained on (a resumed run).
    positions : list of int, optional
        References each of this process's streams has given out (from a checkpoint).
    """

    def __init__(self, shards: list[str], dataset: Any, *, seed: int, rank: int = 0, world_size: int = 1,
                 num_workers: int = 0, shuffle_buffer: int = 1000, max_side: int = 512, start_step: int = 0,
                 positions: list[int] | None = None) -> None:
        self.shards = list(shards)
        self.dataset = dataset
        dataset.cache = False  # a stream meets an image once per pass: caching would only grow
        self.seed = int(seed)
        self.rank, self.world_size = int(rank), int(world_size)
        self.workers = max(1, int(num_workers))
        self.shuffle_buffer = int(shuffle_buffer)
        self.max_side = int(max_side)
        self.start_step = int(start_step)
        self.positions = [0] * self.workers if positions is None else [int(p) for p in positions]
        if len(self.positions) != self.workers:
            raise ValueError(f"positions: expected {self.workers} counts, got {len(self.positions)}")

    @property
    def num_streams(self) -> int:
        return self.world_size * self.workers

    @property
    def num_views(self) -> int:
        return self.dataset.num_views

    def units(self, epoch: int) -> list[tuple[int, int, int]]:
        """Pass ``epoch``'s units ``(shard, part, parts)`` in the order they are dealt."""
        parts = max(1, -(-self.num_streams // len(self.shards)))
        order = np.random.default_rng([self.seed, int(epoch), 0x5A4D]).permutation(len(self.shards) * parts)
        return [(int(u) // parts, int(u) % parts, parts) for u in order]

    def pass_refs(self, stream: int, epoch: int, report: list | None = None) -> Iterator[Ref]:
        """Stream ``stream``'s references of pass ``epoch``, shuffled in the buffer.

        ``report`` collects ``(where, reason)`` of shards that could not be read."""
        rng = np.random.default_rng([self.seed, int(epoch), int(stream), 0xB0FF])
        buffer: list[Ref] = []
        size = self.shuffle_buffer
        for shard, part, parts in self.units(epoch)[stream:: self.num_streams]:
            path = self.shards[shard]
            try:
                for member, (name, offset, nbytes) in enumerate(iter_members(path)):
                    if member % parts != part:
                        continue
                    ref = Ref(shard, member, name, offset, nbytes, epoch)
                    if size <= 1:
                        yield ref
                        continue
                    if len(buffer) < size:
                        buffer.append(ref)
                        continue
                    j = int(rng.integers(size))
                    buffer[j], ref = ref, buffer[j]
                    yield ref
            except (OSError, tarfile.TarError, ValueError, EOFError) as err:
                if report is not None:
                    report.append((path, f"shard unreadable from here on this pass: {err}"))
        while buffer:  # emptied at the pass's end: every member once per pass
            yield buffer.pop(int(rng.integers(len(buffer))))

    def refs(self, stream: int, start: int = 0, report: list | None = None) -> Iterator[tuple[Ref, int]]:
        """Stream ``stream``'s references over passes 0, 1, ... with their count (1-based),
        from reference ``start`` on (headers of the skipped ones are read, no image)."""
        count, epoch, empty = 0, 0, 0
        while True:
            got = False
            for ref in self.pass_refs(stream, epoch, report):
                got = True
                count += 1
                if count > start:
                    yield ref, count
            empty = 0 if got else empty + 1
            if empty >= 2:
                raise RuntimeError(f"data stream {stream}: its shards hold no readable image")
            epoch += 1

    def logical_worker(self, worker: int) -> int:
        """The stream (of this process's ``W``) that DataLoader worker ``worker`` continues."""
        return (worker + self.start_step) % self.workers

    def __iter__(self) -> Iterator[Any]:
        from uniap.pipeline.sources import Item, decode

        from .data import resize_max_side

        info = get_worker_info()
        worker = 0 if info is None else info.id
        if info is not None and info.num_workers != self.workers:
            raise RuntimeError(f"ShardStream: built for {self.workers} workers, run by {info.num_workers}")
        logical = self.logical_worker(worker)
        stream = self.rank * self.workers + logical
        report: list = []
        for ref, count in self.refs(stream, self.positions[logical], report):
            path = self.shards[ref.shard]
            where = f"{path}:{ref.name}"
            try:
                image = resize_max_side(decode(Item(ref.name, path, ref.name, ref.offset, ref.size)), self.max_side)
                sample = self.dataset.sample_image(image, ref.epoch, sample_id(ref.shard, ref.member))
            except Exception as err:  # a damaged member is the data's problem, not the run's
                report.append((where, " ".join(str(err).split()) or type(err).__name__))
                continue
            sample.stream = (logical, count)
            sample.skipped = list(report)  # the list itself stays the one the references report into
            report.clear()
            yield sample
