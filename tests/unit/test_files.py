"""Atomic writes (jointstats/_files.py): old or new file, never half of one, no temporary left."""
from __future__ import annotations

import os
import stat

import pytest

from jointstats._files import atomic_path, atomic_write, is_temp_name


def test_atomic_write_replaces_whole_file_with_mode(tmp_path):
    path = tmp_path / "sub" / "key.pem"
    atomic_write(path, "first")
    assert path.read_text() == "first"
    atomic_write(path, b"second", mode=0o600)
    assert path.read_bytes() == b"second"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    atomic_write(path, "third", mode=0o644, fsync=False)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert os.listdir(path.parent) == ["key.pem"]


def test_a_failed_writer_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(path) as tmp:
            tmp.write_text("half")
            assert is_temp_name(tmp.name) and tmp.parent == path.parent
            raise RuntimeError("crash")
    assert path.read_text() == "old"
    assert os.listdir(tmp_path) == ["data.csv"]


def test_temporary_names_are_unique_and_recognised(tmp_path):
    names = set()
    for _ in range(3):
        with atomic_path(tmp_path / "x.json") as tmp:
            names.add(tmp.name)
            tmp.write_text("{}")
    assert len(names) == 3
    assert not is_temp_name("x.json") and not is_temp_name(".hidden")
