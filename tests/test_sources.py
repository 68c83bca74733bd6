"""uniap.pipeline.sources: inputs (files, folders, globs, file lists, tar shards) as items."""

from __future__ import annotations

import concurrent.futures
import io
import multiprocessing
import os
import pickle
import re
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage import data

from uniap.features import load_image
from uniap.features.image import load_image_bytes
from uniap.pipeline.sources import (
    IMAGE_SUFFIXES,
    InputError,
    Item,
    decode,
    expand_inputs,
    output_stem,
)

# ---------------------------------------------------------------------------------------------
# helpers


def encoded(fmt: str, kind: str = "rgb") -> bytes:
    """A small real image (from skimage.data) encoded by Pillow."""
    arr = data.astronaut()[::8, ::8] if kind == "rgb" else data.camera()[::8, ::8]
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()


JPEG = encoded("JPEG")
PNG = encoded("PNG")
GREY_PNG = encoded("PNG", "grey")


def touch(root: Path, *names: str, content: bytes = b"") -> list[Path]:
    paths = []
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        paths.append(path)
    return paths


def make_tar(path: Path, members: dict[str, bytes | None]) -> Path:
    """A plain tar; a member whose content is None is a folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tf:
        for name, content in members.items():
            info = tarfile.TarInfo(name)
            if content is None:
                info.type = tarfile.DIRTYPE
                tf.addfile(info)
            else:
                info.size = len(content)
                tf.addfile(info, io.BytesIO(content))
    return path


def keys(items: list[Item]) -> list[str]:
    return [it.key for it in items]


def err(text: str) -> str:
    """A literal fragment of an error message as a ``match`` pattern."""
    return re.escape(str(text))


# ---------------------------------------------------------------------------------------------
# folders


def test_folder_is_searched_recursively_keys_relative_to_it(tmp_path):
    touch(tmp_path / "in", "x.jpg", "sub/y.PNG", "sub/deep/z.tiff", "notes.txt", "sub/a.json")
    items = expand_inputs([str(tmp_path / "in")])
    assert keys(items) == ["sub/deep/z.tiff", "sub/y.PNG", "x.jpg"]
    assert items[2].path == str(tmp_path / "in" / "x.jpg")
    assert all(os.path.isabs(it.path) and it.member is None for it in items)


def test_folder_given_relatively_gives_absolute_paths(tmp_path, monkeypatch):
    touch(tmp_path, "imgs/a.jpg")
    monkeypatch.chdir(tmp_path)
    (item,) = expand_inputs(["imgs/"])
    assert (item.key, item.path) == ("a.jpg", str(tmp_path / "imgs" / "a.jpg"))


def test_hidden_files_and_folders_are_skipped(tmp_path):
    touch(tmp_path, "a.jpg", ".b.jpg", ".cache/c.jpg", "d/.uniap-tmp-1.png", "d/e.png")
    assert keys(expand_inputs([str(tmp_path)])) == ["a.jpg", "d/e.png"]


def test_a_hidden_root_folder_is_read(tmp_path):
    touch(tmp_path, ".data/a.jpg")
    assert keys(expand_inputs([str(tmp_path / ".data")])) == ["a.jpg"]


def test_tars_in_a_folder_are_not_opened_and_the_error_says_so(tmp_path):
    make_tar(tmp_path / "shards" / "sa_000000.tar", {"sa_1.jpg": JPEG})
    with pytest.raises(InputError, match=r"no images found in .*1 \.tar file.*\*\.tar"):
        expand_inputs([str(tmp_path / "shards")])


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="no symlinks")
def test_symlinked_folders_are_followed_once_without_loops(tmp_path):
    touch(tmp_path / "in", "real/a.jpg")
    (tmp_path / "in" / "alias").symlink_to(tmp_path / "in" / "real")  # same folder again
    (tmp_path / "in" / "real" / "loop").symlink_to(tmp_path / "in")  # an ancestor
    touch(tmp_path, "outside/b.jpg")
    (tmp_path / "in" / "ext").symlink_to(tmp_path / "outside")
    assert keys(expand_inputs([str(tmp_path / "in")])) == ["ext/b.jpg", "real/a.jpg"]


def test_an_empty_folder_is_an_error(tmp_path):
    touch(tmp_path, "readme.txt")
    with pytest.raises(InputError, match=err(f"no images found in {tmp_path}")):
        expand_inputs([str(tmp_path)])


# ---------------------------------------------------------------------------------------------
# files named directly


def test_named_files_share_one_root(tmp_path):
    a, b = touch(tmp_path, "a/img.jpg", "b/img.jpg")
    items = expand_inputs([str(b), str(a)])
    assert keys(items) == ["a/img.jpg", "b/img.jpg"]
    assert [it.path for it in items] == [str(a), str(b)]


def test_named_files_root_is_their_common_folder(tmp_path):
    paths = touch(tmp_path, "a/img.jpg", "a/s/t.jpg")
    assert keys(expand_inputs(map(str, paths))) == ["img.jpg", "s/t.jpg"]


def test_a_single_file_is_keyed_by_its_name(tmp_path, monkeypatch):
    (path,) = touch(tmp_path, "deep/er/photo.jpeg")
    assert keys(expand_inputs([str(path)])) == ["photo.jpeg"]
    monkeypatch.chdir(tmp_path / "deep")
    (item,) = expand_inputs(["er/../er/photo.jpeg"])
    assert (item.key, item.path) == ("photo.jpeg", str(path))


def test_a_named_file_with_any_suffix_is_an_input(tmp_path):
    (path,) = touch(tmp_path, "scan.raw")
    assert keys(expand_inputs([str(path)])) == ["scan.raw"]


def test_an_existing_path_is_not_read_as_a_glob(tmp_path):
    touch(tmp_path, "img[1].jpg", "img1.jpg")
    assert keys(expand_inputs([str(tmp_path / "img[1].jpg")])) == ["img[1].jpg"]


def test_a_missing_path_is_an_error(tmp_path):
    missing = tmp_path / "nope.jpg"
    with pytest.raises(InputError, match=err(f"no such file or folder: {missing}")):
        expand_inputs([str(missing)])


def test_no_inputs_is_an_error():
    with pytest.raises(InputError, match="no images found"):
        expand_inputs([])


# ---------------------------------------------------------------------------------------------
# globs


def test_glob_root_is_its_longest_plain_folder(tmp_path):
    touch(tmp_path / "data", "a/img.jpg", "b/img.jpg", "b/other.jpg")
    items = expand_inputs([str(tmp_path / "data" / "*" / "img.jpg")])
    assert keys(items) == ["a/img.jpg", "b/img.jpg"]


def test_glob_double_star_is_recursive(tmp_path):
    touch(tmp_path / "data", "x.jpg", "a/y.jpg", "a/b/z.jpg", "a/b/z.png", ".h/w.jpg")
    items = expand_inputs([str(tmp_path / "data" / "**" / "*.jpg")])
    assert keys(items) == ["a/b/z.jpg", "a/y.jpg", "x.jpg"]


def test_relative_glob_in_the_working_folder(tmp_path, monkeypatch):
    touch(tmp_path, "p.png", "q.png", "sub/r.png")
    monkeypatch.chdir(tmp_path)
    items = expand_inputs(["*.png"])
    assert keys(items) == ["p.png", "q.png"]
    assert items[0].path == str(tmp_path / "p.png")


def test_glob_matches_any_file_as_the_shell_does_but_no_folder(tmp_path):
    touch(tmp_path, "a.jpg", "b.dat", "c/d.jpg")
    assert keys(expand_inputs([str(tmp_path / "*")])) == ["a.jpg", "b.dat"]


def test_a_glob_matching_nothing_is_an_error(tmp_path):
    touch(tmp_path, "sub/a.txt")
    pattern = str(tmp_path / "*.jpg")
    with pytest.raises(InputError, match=err(f"no file matches {pattern!r}")):
        expand_inputs([pattern])
    with pytest.raises(InputError, match="no file matches"):  # folders are not files
        expand_inputs([str(tmp_path / "s*")])


def test_glob_matched_tars_are_shards(tmp_path):
    make_tar(tmp_path / "sa_000000.tar", {"sa_1.jpg": JPEG, "sa_1.json": b"{}"})
    make_tar(tmp_path / "sa_000001.tar", {"sa_2.jpg": JPEG, "sa_2.json": b"{}"})
    items = expand_inputs([str(tmp_path / "sa_*.tar")])
    assert keys(items) == ["sa_1.jpg", "sa_2.jpg"]
    assert [it.path for it in items] == [str(tmp_path / f"sa_00000{i}.tar") for i in (0, 1)]


# ---------------------------------------------------------------------------------------------
# file lists


def test_file_list_paths_are_relative_to_its_folder(tmp_path, monkeypatch):
    touch(tmp_path / "set", "imgs/a.jpg", "imgs/b.jpg", "c.png")
    touch(tmp_path, "elsewhere/d.jpg")
    listing = tmp_path / "set" / "list.txt"
    listing.write_text(
        "# my images\n"
        "imgs/a.jpg\n"
        "\n"
        f"  {tmp_path / 'set' / 'imgs' / 'b.jpg'}  \r\n"  # absolute, inside: relative key
        "./c.png\r\n"
        "   # indented comment\n"
        "../elsewhere/d.jpg\n"  # outside: the absolute path without its anchor
    )
    monkeypatch.chdir(tmp_path / "elsewhere")  # lists do not depend on the working folder
    items = expand_inputs([], [str(listing)])
    outside = str(tmp_path / "elsewhere" / "d.jpg").lstrip(os.sep).replace(os.sep, "/")
    assert keys(items) == sorted(["imgs/a.jpg", "imgs/b.jpg", "c.png", outside])
    assert {it.path for it in items} >= {str(tmp_path / "set" / "c.png")}


def test_file_list_from_stdin_is_relative_to_the_working_folder(tmp_path, monkeypatch):
    touch(tmp_path, "a.jpg", "sub/b.jpg")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "stdin", io.StringIO("a.jpg\n# b\nsub/b.jpg\n"))
    items = expand_inputs([], ["-"])
    assert keys(items) == ["a.jpg", "sub/b.jpg"]
    assert items[1].path == str(tmp_path / "sub" / "b.jpg")


def test_stdin_twice_is_an_error(monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    with pytest.raises(InputError, match="stdin.*twice"):
        expand_inputs([], ["-", "-"])


def test_file_list_missing_file_names_the_list_and_line(tmp_path):
    touch(tmp_path, "a.jpg")
    listing = tmp_path / "list.txt"
    listing.write_text("a.jpg\n\nmissing.jpg\n")
    with pytest.raises(InputError, match=err(f"file list {listing}") + r".*line 3: missing\.jpg"):
        expand_inputs([], [str(listing)])


def test_file_list_naming_a_folder_is_an_error(tmp_path):
    (tmp_path / "sub").mkdir()
    listing = tmp_path / "list.txt"
    listing.write_text("sub\n")
    with pytest.raises(InputError, match=r"line 1: sub is a folder"):
        expand_inputs([], [str(listing)])


def test_an_unreadable_file_list_is_an_error(tmp_path):
    with pytest.raises(InputError, match=err(f"cannot read file list {tmp_path / 'no.txt'}")):
        expand_inputs([], [str(tmp_path / "no.txt")])


def test_file_list_may_name_tar_shards(tmp_path):
    make_tar(tmp_path / "shards" / "s0.tar", {"x/a.jpg": JPEG})
    listing = tmp_path / "list.txt"
    listing.write_text("shards/s0.tar\n")
    (item,) = expand_inputs([], [str(listing)])
    assert (item.key, item.member) == ("x/a.jpg", "x/a.jpg")


# ---------------------------------------------------------------------------------------------
# tar shards


@pytest.fixture
def shard(tmp_path) -> Path:
    return make_tar(
        tmp_path / "shard.tar",
        {
            "a.jpg": JPEG,
            "a.json": b'{"annotations": []}',
            "sub": None,
            "sub/b.png": PNG,
            "./c.png": GREY_PNG,
            "._a.jpg": b"AppleDouble",
            "/abs/../d.PNG": PNG,
        },
    )


def test_tar_members_with_image_suffixes_are_items(shard):
    items = expand_inputs([str(shard)])
    assert keys(items) == ["a.jpg", "c.png", "d.PNG", "sub/b.png"]
    by_key = {it.key: it for it in items}
    assert by_key["c.png"].member == "./c.png"
    assert all(it.path == str(shard) for it in items)
    assert by_key["a.jpg"].describe() == f"{shard}:a.jpg"


def test_tar_member_offsets_give_its_bytes(shard):
    by_key = {it.key: it for it in expand_inputs([str(shard)])}
    assert by_key["a.jpg"].read_bytes() == JPEG
    assert by_key["sub/b.png"].read_bytes() == PNG
    assert by_key["sub/b.png"].size == len(PNG)
    with tarfile.open(shard) as tf:
        assert tf.extractfile("./c.png").read() == by_key["c.png"].read_bytes()


@pytest.mark.parametrize(
    ("key", "content"), [("a.jpg", JPEG), ("sub/b.png", PNG), ("c.png", GREY_PNG)]
)
def test_decoding_a_member_equals_decoding_the_file(shard, tmp_path, key, content):
    item = {it.key: it for it in expand_inputs([str(shard)])}[key]
    on_disk = tmp_path / "disk" / key
    on_disk.parent.mkdir(parents=True, exist_ok=True)
    on_disk.write_bytes(content)
    image = decode(item)
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    np.testing.assert_array_equal(image, load_image(on_disk))
    (file_item,) = expand_inputs([str(on_disk)])
    np.testing.assert_array_equal(decode(file_item), image)


def test_shards_with_many_members_and_subfolders(tmp_path):
    make_tar(tmp_path / "wds.tar", {f"{i:06d}/img.jpg": JPEG for i in range(50)})
    items = expand_inputs([str(tmp_path / "wds.tar")])
    assert keys(items) == [f"{i:06d}/img.jpg" for i in range(50)]
    assert len({it.offset for it in items}) == 50


@pytest.mark.parametrize("where", ["first data", "second header", "second data"])
def test_a_truncated_tar_is_an_error(tmp_path, where):
    full = make_tar(tmp_path / "full.tar", {"a.jpg": JPEG, "b.jpg": JPEG}).read_bytes()
    second = 512 + -(-len(JPEG) // 512) * 512  # where b.jpg's header starts
    end = {"first data": 700, "second header": second + 100, "second data": second + 600}[where]
    broken = tmp_path / "broken.tar"
    broken.write_bytes(full[:end])
    with pytest.raises(InputError, match=err(f"cannot read tar {broken}") + ".*truncated"):
        expand_inputs([str(broken)])


def test_a_tar_with_a_garbage_header_is_an_error(tmp_path):
    full = bytearray(make_tar(tmp_path / "t.tar", {"a.jpg": JPEG, "b.jpg": JPEG}).read_bytes())
    second = 512 + -(-len(JPEG) // 512) * 512
    full[second : second + 512] = b"\x07" * 512
    (tmp_path / "t.tar").write_bytes(bytes(full))
    with pytest.raises(InputError, match="corrupt"):
        expand_inputs([str(tmp_path / "t.tar")])


@pytest.mark.parametrize("content", [b"", b"not a tar at all" * 100])
def test_a_file_that_is_not_a_tar_is_an_error(tmp_path, content):
    (tmp_path / "x.tar").write_bytes(content)
    with pytest.raises(InputError, match="cannot read tar"):
        expand_inputs([str(tmp_path / "x.tar")])


def test_compressed_tars_are_refused(tmp_path):
    with tarfile.open(tmp_path / "s.tar.gz", "w:gz") as tf:
        info = tarfile.TarInfo("a.jpg")
        info.size = len(JPEG)
        tf.addfile(info, io.BytesIO(JPEG))
    with pytest.raises(InputError, match="compressed tar.*plain"):
        expand_inputs([str(tmp_path / "s.tar.gz")])
    (tmp_path / "s.tar").write_bytes((tmp_path / "s.tar.gz").read_bytes())  # gzip named .tar
    with pytest.raises(InputError, match="gzip-compressed tar.*plain"):
        expand_inputs([str(tmp_path / "s.tar")])


def test_a_tar_without_images_finds_nothing(tmp_path):
    make_tar(tmp_path / "t.tar", {"a.json": b"{}", "b.txt": b"x"})
    with pytest.raises(InputError, match="no images found"):
        expand_inputs([str(tmp_path / "t.tar")])


# ---------------------------------------------------------------------------------------------
# clashes, duplicates, order


def test_two_files_with_the_same_key_are_an_error(tmp_path):
    touch(tmp_path, "x/img.jpg", "y/img.jpg")
    x, y = tmp_path / "x" / "img.jpg", tmp_path / "y" / "img.jpg"
    with pytest.raises(InputError, match=err(f"img.jpg from {x} and from {y}")):
        expand_inputs([str(tmp_path / "x"), str(tmp_path / "y")])


def test_a_tar_member_and_a_file_with_the_same_key_are_an_error(tmp_path):
    make_tar(tmp_path / "s.tar", {"a.jpg": JPEG})
    touch(tmp_path, "f/a.jpg")
    both = f"a.jpg from {tmp_path / 'f' / 'a.jpg'} and from {tmp_path / 's.tar'}:a.jpg"
    with pytest.raises(InputError, match=err(both)):
        expand_inputs([str(tmp_path / "s.tar"), str(tmp_path / "f")])


def test_keys_writing_the_same_output_are_an_error(tmp_path):
    touch(tmp_path, "a/img.jpg", "a/img.png")
    with pytest.raises(InputError, match=r"a/img\.jpg from .* and a/img\.png from .*a/img\.\*"):
        expand_inputs([str(tmp_path)])


def test_suffix_case_does_not_hide_a_clash(tmp_path):
    touch(tmp_path, "img.JPG", "img.jpeg")
    with pytest.raises(InputError, match="would both be written as img"):
        expand_inputs([str(tmp_path)])


def test_the_same_file_named_twice_is_one_item(tmp_path, monkeypatch):
    (path,) = touch(tmp_path / "d", "a.jpg")
    monkeypatch.chdir(tmp_path)
    listing = tmp_path / "d" / "l.txt"
    listing.write_text("a.jpg\n")
    items = expand_inputs(
        ["d", str(tmp_path / "d"), "d/a.jpg", str(path), "d/*.jpg"], [str(listing), str(listing)]
    )
    assert items == [Item("a.jpg", str(path))]


def test_the_first_name_of_a_file_wins(tmp_path):
    touch(tmp_path, "top/sub/a.jpg")
    first = expand_inputs([str(tmp_path / "top"), str(tmp_path / "top" / "sub")])
    assert keys(first) == ["sub/a.jpg"]
    second = expand_inputs([str(tmp_path / "top" / "sub"), str(tmp_path / "top")])
    assert keys(second) == ["a.jpg"]


def test_the_same_tar_named_twice_is_read_once(shard, tmp_path):
    once = expand_inputs([str(shard)])
    assert expand_inputs([str(shard), str(tmp_path / "*.tar")]) == once


def test_items_are_sorted_by_key(tmp_path):
    touch(tmp_path / "f", "b/z.jpg", "a.jpg", "c.jpg", "b/a.jpg", "B.jpg")
    make_tar(tmp_path / "s.tar", {"bb.png": PNG, "0.png": PNG})
    got = keys(expand_inputs([str(tmp_path / "s.tar"), str(tmp_path / "f")]))
    assert got == sorted(got)
    assert got == ["0.png", "B.jpg", "a.jpg", "b/a.jpg", "b/z.jpg", "bb.png", "c.jpg"]


# ---------------------------------------------------------------------------------------------
# items and decoding


def test_items_pickle_and_hash(shard):
    items = expand_inputs([str(shard)])
    assert pickle.loads(pickle.dumps(items)) == items
    assert {it: i for i, it in enumerate(items)}[items[1]] == 1
    with pytest.raises(AttributeError):
        items[0].key = "x"


def test_items_decode_in_spawned_processes(shard):
    items = expand_inputs([str(shard)])
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=context) as pool:
        images = list(pool.map(decode, items))
    for item, image in zip(items, images):
        np.testing.assert_array_equal(image, decode(item))


def test_decode_errors_name_the_file(tmp_path):
    (bad,) = touch(tmp_path, "bad.jpg", content=b"not an image")
    (item,) = expand_inputs([str(bad)])
    with pytest.raises(ValueError, match=err(item.describe())):
        decode(item)
    bad.unlink()
    with pytest.raises(ValueError, match=err(item.describe())):
        decode(item)


def test_decode_errors_name_the_tar_member(tmp_path):
    shard = make_tar(tmp_path / "s.tar", {"x/bad.png": b"\x89PNG broken", "ok.jpg": JPEG})
    bad, ok = sorted(expand_inputs([str(shard)]), key=lambda it: it.key != "x/bad.png")
    with pytest.raises(ValueError, match=err(f"{shard}:x/bad.png")):
        decode(bad)
    shard.write_bytes(shard.read_bytes()[: ok.offset + 10])  # truncated after planning
    with pytest.raises(ValueError, match=err(f"{shard}:ok.jpg") + ".*truncated"):
        decode(ok)
    shard.unlink()
    with pytest.raises(ValueError, match=err(f"{shard}:ok.jpg")):
        decode(ok)


def test_load_image_bytes_matches_load_image(tmp_path):
    (path,) = touch(tmp_path, "a.jpg", content=JPEG)
    np.testing.assert_array_equal(load_image_bytes(JPEG, "a.jpg"), load_image(path))
    with pytest.raises(ValueError, match="cannot read image 'where'"):
        load_image_bytes(b"", "where")


def test_output_stem_drops_only_image_suffixes():
    assert output_stem("a/img.JPG") == "a/img"
    assert output_stem("a/x.jpg.png") == "a/x.jpg"
    assert output_stem("scan.raw") == "scan.raw"
    assert output_stem("a.b/c") == "a.b/c"
    assert all(output_stem("x" + s) == "x" for s in IMAGE_SUFFIXES)
