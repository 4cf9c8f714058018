"""Atomic writes: a failed write (an exception mid-way, a full disk) leaves the old file as it was and no
half-written or temporary file behind."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from esr_local.atomic import atomic_path, atomic_write, write_text
from esr_local.errors import UserInputError, WriteError
from esr_local.vectors import ControlVector, read_gguf, write_gguf


def test_success_replaces_the_file_and_keeps_its_mode(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    os.chmod(target, 0o640)
    write_text(target, "new")
    assert target.read_text() == "new"
    assert oct(target.stat().st_mode & 0o777) == oct(0o640)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def test_exception_mid_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old contents")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_write(target) as fh:
            fh.write(b"x" * 100_000)
            raise RuntimeError("boom")
    assert target.read_bytes() == b"old contents"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]


def test_interrupt_mid_write_leaves_no_new_file(tmp_path):
    target = tmp_path / "new.bin"
    with pytest.raises(KeyboardInterrupt):
        with atomic_write(target) as fh:
            fh.write(b"partial")
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_vector_writer_failing_mid_way_leaves_nothing(tmp_path):
    """gguf-py fails after the header is written (a tensor of a dtype it cannot store): no file appears."""
    target = tmp_path / "v.gguf"
    bad = ControlVector({3: np.ones(8, np.float32), 4: np.ones(8, np.float32)})
    bad.provenance["latents"] = [1, 2]
    bad.provenance["scales"] = ["not", "numbers"]  # add_array of scales fails after the file is opened
    with pytest.raises(Exception):
        write_gguf(bad, target)
    assert list(tmp_path.iterdir()) == []


def test_output_path_checks(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserInputError, match="is a folder"):
        write_text(tmp_path, "x")
    with pytest.raises(UserInputError, match="is a file, not a folder"):
        write_text(tmp_path / "file" / "out.txt", "x")
    with pytest.raises(UserInputError, match="empty"):
        with atomic_path(""):
            pass
    write_text(tmp_path / "new" / "deeper" / "out.txt", "made")  # missing folders are created
    assert (tmp_path / "new" / "deeper" / "out.txt").read_text() == "made"


def test_full_disk_keeps_the_old_vector(tmp_path):
    """A real full disk (a 1 MiB tmpfs) while exporting: the previous vector stays intact and readable."""
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a tmpfs")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if p.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {p.stderr.strip()}")
    try:
        target = mnt / "v.gguf"
        write_gguf(ControlVector({3: np.full(576, 2.0, np.float32)}), target)
        before = target.read_bytes()
        huge = ControlVector({layer: np.ones(576, np.float32) for layer in range(1, 1000)})  # ~2.3 MB: does not fit
        with pytest.raises(WriteError, match="could not write"):
            write_gguf(huge, target)
        assert target.read_bytes() == before
        assert np.array_equal(read_gguf(target).directions[3], np.full(576, 2.0, np.float32))
        assert sorted(p.name for p in mnt.iterdir()) == ["v.gguf"]
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)
