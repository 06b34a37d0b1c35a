import os
import stat

import pytest

from chromify.io import atomic_write_bytes, atomic_write_json


def test_atomic_write_replaces_whole_and_leaves_no_temp_files(tmp_path):
    target = tmp_path / "sub" / "out.json"
    atomic_write_json(target, {"a": 1})
    atomic_write_json(target, {"a": 2})
    assert target.read_text().strip().replace(" ", "").replace("\n", "") == '{"a":2}'
    assert [p.name for p in target.parent.iterdir()] == ["out.json"]


def test_a_failed_write_keeps_the_previous_file(tmp_path):
    from chromify.io import atomic_write

    target = tmp_path / "out.bin"
    atomic_write_bytes(target, b"good")

    def boom(f):
        f.write(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(target, boom)
    assert target.read_bytes() == b"good"
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]


def test_outputs_get_the_ordinary_file_mode_not_mkstemps_0600(tmp_path):
    mask = os.umask(0o022)
    os.umask(mask)
    target = tmp_path / "photo.png"
    atomic_write_bytes(target, b"x")
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~mask


def test_a_reader_holding_the_old_file_keeps_reading_it_whole(tmp_path):
    """Replaced by a rename, not rewritten in place: an open reader (the API, dvc) never sees a half-written file."""
    target = tmp_path / "aliases.json"
    atomic_write_bytes(target, b"old contents " * 1000)
    with open(target, "rb") as old:
        atomic_write_bytes(target, b"new")
        assert os.stat(target).st_ino != os.fstat(old.fileno()).st_ino
        assert old.read() == b"old contents " * 1000
    assert target.read_bytes() == b"new"


def test_a_write_that_fails_without_naming_a_file_names_the_target(tmp_path):
    """A full disk fails in write() or fsync(), whose OSError names no file: the error names the output, and the
    previous file stays whole."""
    import errno

    from chromify.io import atomic_write

    target = tmp_path / "checkpoint.pt"
    atomic_write_bytes(target, b"good")

    def full(f):
        f.write(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError) as failed:
        atomic_write(target, full)
    assert (failed.value.errno, failed.value.filename) == (errno.ENOSPC, str(target))
    assert target.read_bytes() == b"good" and [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


def test_a_write_error_without_errno_keeps_its_message(tmp_path):
    """Pillow's encoder raises OSError("broken data stream when writing image file") with no errno: rewrapped as
    OSError(None, None, path) it read "[Errno None] None: '…'", the reason lost."""
    from chromify.io import atomic_write

    def encoder_fails(f):
        f.write(b"half")
        raise OSError("broken data stream when writing image file")

    with pytest.raises(OSError) as failed:
        atomic_write(tmp_path / "pano.jpg", encoder_fails)
    assert str(failed.value) == "broken data stream when writing image file"
    assert list(tmp_path.iterdir()) == []
