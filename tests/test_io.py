"""rsbench.io helpers: the JSON-or-None reader, file digests, the cache root and the atomic
path / folder writers (what a crash or a racing writer leaves behind)."""

from __future__ import annotations

import hashlib
import os

import numpy as np
import pytest

from rsbench.io import (
    WriteError,
    atomic_dir,
    atomic_path,
    cache_root,
    read_json_object,
    remove_tree_atomically,
    sha256_file,
)


def test_read_json_object_is_none_for_missing_damaged_or_not_an_object(tmp_path):
    good = tmp_path / "good.json"
    good.write_text('{"a": [1, 2]}', encoding="utf-8")
    assert read_json_object(good) == {"a": [1, 2]}
    cases = {"missing.json": None, "cut.json": b'{"a": [1,', "list.json": b"[1, 2]", "latin1.json": b'{"a": "\xe9"}',
             "deep.json": b"[" * 100000}
    for name, data in cases.items():
        if data is not None:
            (tmp_path / name).write_bytes(data)
        assert read_json_object(tmp_path / name) is None, name
    (tmp_path / "folder.json").mkdir()
    assert read_json_object(tmp_path / "folder.json") is None


def test_sha256_file_matches_hashlib_across_chunks(tmp_path):
    data = os.urandom(10_000)
    p = tmp_path / "blob.bin"
    p.write_bytes(data)
    assert sha256_file(p, chunk=333) == hashlib.sha256(data).hexdigest() == sha256_file(p)


@pytest.mark.parametrize("value", ["", "  "])
def test_cache_root_blank_means_home_default(monkeypatch, tmp_path, value):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("RSBENCH_CACHE", value)
    assert cache_root() == tmp_path / "home" / ".cache" / "rsbench"


def test_atomic_path_renames_on_success_and_leaves_nothing_on_error(tmp_path):
    target = tmp_path / "sub" / "a.u8"
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp != target and not target.exists()
        mm = np.memmap(tmp, dtype=np.uint8, mode="w+", shape=(4,))
        mm[:] = [1, 2, 3, 4]
        mm.flush()
        del mm
    assert target.read_bytes() == bytes([1, 2, 3, 4])
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("boom")
    assert target.read_bytes() == bytes([1, 2, 3, 4])  # the old file is untouched
    assert sorted(p.name for p in target.parent.iterdir()) == ["a.u8"]


def test_atomic_dir_moves_a_complete_folder_into_place(tmp_path):
    target = tmp_path / "ds"
    with atomic_dir(target) as tmp:
        assert not target.exists()
        (tmp / "dataset.json").write_text("{}")
    assert (target / "dataset.json").read_text() == "{}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]


def test_atomic_dir_error_leaves_no_folder(tmp_path):
    with pytest.raises(RuntimeError), atomic_dir(tmp_path / "ds") as tmp:
        (tmp / "x").write_text("x")
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_atomic_dir_racing_writer_wins_only_when_complete(tmp_path):
    def complete(p):
        return (p / "done").is_file()

    target = tmp_path / "ds"
    with atomic_dir(target, is_complete=complete) as tmp:
        (tmp / "done").write_text("mine")
        target.mkdir()
        (target / "done").write_text("theirs")  # another process finished first
    assert (target / "done").read_text() == "theirs"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]

    (target / "done").unlink()
    (target / "half").write_text("")  # an incomplete leftover is replaced
    with atomic_dir(target, is_complete=complete) as tmp:
        (tmp / "done").write_text("mine")
    assert sorted(p.name for p in target.iterdir()) == ["done"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]


def test_atomic_dir_refuses_to_replace_a_non_empty_folder_without_a_rule(tmp_path):
    target = tmp_path / "ds"
    target.mkdir()
    (target / "keep").write_text("x")
    with pytest.raises(WriteError, match=f"^{target}: could not move the new folder into place"), \
            atomic_dir(target) as tmp:
        (tmp / "new").write_text("y")
    assert sorted(p.name for p in target.iterdir()) == ["keep"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]


def test_remove_tree_atomically_also_clears_trash_of_a_killed_call(tmp_path):
    cell = tmp_path / "seed0"
    (cell / "sub").mkdir(parents=True)
    (cell / "sub" / "f").write_text("x")
    leftover = tmp_path / ".seed0.trash-1-2"
    leftover.mkdir()
    (tmp_path / "seed01").mkdir()  # a sibling whose name starts alike is not touched
    remove_tree_atomically(cell)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seed01"]
    remove_tree_atomically(cell)  # nothing there: no error
