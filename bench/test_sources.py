"""Planning a run (uniap.pipeline.sources.expand_inputs) over 20k inputs.

Empty files in 20 folders, the same as a glob, a file list and named paths, and a tar shard
of 20k members: the time is spent walking folders, reading tar headers and building items,
never in reading images.  Planning should scale linearly, about 5 µs per file.
"""

from __future__ import annotations

import io
import tarfile

import pytest

from uniap.pipeline.sources import expand_inputs

N = 20_000
FOLDERS = 20


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("sources") / "images"
    names = []
    for d in range(FOLDERS):
        folder = root / f"d{d:02d}"
        folder.mkdir(parents=True)
        for i in range(N // FOLDERS):
            (folder / f"img{i:05d}.jpg").touch()
            names.append(f"d{d:02d}/img{i:05d}.jpg")
    (root / "list.txt").write_text("\n".join(names) + "\n")
    with tarfile.open(root.parent / "shard.tar", "w") as tf:
        for name in names:
            tf.addfile(tarfile.TarInfo(name), io.BytesIO(b""))
    return root


@pytest.mark.parametrize("kind", ["folder", "glob", "file_list", "named", "tar"])
def test_expand_inputs(benchmark, tree, kind):
    args = {
        "folder": ([str(tree)], ()),
        "glob": ([str(tree / "**" / "*.jpg")], ()),
        "file_list": ([], [str(tree / "list.txt")]),
        "named": ([str(p) for p in sorted(tree.glob("*/*.jpg"))], ()),
        "tar": ([str(tree.parent / "shard.tar")], ()),
    }[kind]
    items = benchmark(expand_inputs, *args)
    assert len(items) == N
