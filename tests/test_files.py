"""Files written whole or not at all."""

from __future__ import annotations

from pathlib import Path

import pytest

from kdnas.files import atomic_write, file_sha256, write_json, write_text


def test_a_writer_that_fails_halfway_leaves_the_old_file_and_nothing_else(tmp_path: Path) -> None:
    path = tmp_path / "student.pt2"
    write_text(path, "old")

    def write_half_then_fail(tmp: Path) -> None:
        assert tmp.parent == path.parent and tmp.suffix == ".pt2"  # beside it, with its suffix
        tmp.write_text("ne")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, write_half_then_fail)
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["student.pt2"]


def test_write_json_replaces_the_file_whole(tmp_path: Path) -> None:
    path = tmp_path / "result.json"
    write_json(path, {"a": 1})
    write_json(path, {"b": [1, 2]})
    assert path.read_text() == '{\n  "b": [\n    1,\n    2\n  ]\n}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]


def test_file_sha256_is_that_of_the_bytes(tmp_path: Path) -> None:
    path = tmp_path / "teacher.pt"
    path.write_bytes(b"abc")
    assert file_sha256(path) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"  # SHA-256("abc")
