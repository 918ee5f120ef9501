"""ferrum_core.cache_trust: ownership and mode checks, content hashes that a
``cp -p`` cannot fool, and temporaries cleaned only when their writer is dead."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ferrum_core.cache_trust import (
    file_sha256,
    make_temp_dir,
    remembered_sha256,
    remove_stale_temps,
    secure_dir,
    temp_name,
    trust_problem,
)


def test_trust_problem_names_what_is_wrong(tmp_path: Path) -> None:
    mine = tmp_path / "mine.bin"
    mine.write_bytes(b"x")
    mine.chmod(0o644)
    assert trust_problem(mine) is None
    mine.chmod(0o664)
    assert "group/world-writable (mode 664)" in str(trust_problem(mine))
    mine.chmod(0o644)
    link = tmp_path / "link.bin"
    link.symlink_to(mine)
    assert "symbolic link" in str(trust_problem(link))
    assert "not a directory" in str(trust_problem(mine, directory=True))
    assert "missing" in str(trust_problem(tmp_path / "none"))
    if os.getuid() == 0:
        os.chown(mine, 65534, 65534)
        assert "owned by uid 65534, not by you" in str(trust_problem(mine))


def test_secure_dir_creates_private_dirs_and_tightens_ours(tmp_path: Path) -> None:
    old = os.umask(0o002)  # a umask that would make everything group-writable
    try:
        made = tmp_path / "a" / "b"
        assert secure_dir(made) is None
        assert (made.stat().st_mode & 0o777, made.parent.stat().st_mode & 0o777) == (0o755,) * 2
        made.chmod(0o777)
        assert secure_dir(made) is None and made.stat().st_mode & 0o777 == 0o755
    finally:
        os.umask(old)
    open_parent = tmp_path / "open"
    open_parent.mkdir()
    open_parent.chmod(0o777)  # no sticky bit: anyone could swap what is inside
    assert "group/world-writable" in str(secure_dir(open_parent / "cache"))


def test_remembered_hash_sees_a_cp_p_over_the_file(tmp_path: Path) -> None:
    memo = tmp_path / "hashes"
    first, other = tmp_path / "model.gguf", tmp_path / "other" / "model.gguf"
    other.parent.mkdir()
    first.write_bytes(b"A" * 4096)
    other.write_bytes(b"B" * 4096)
    os.utime(first, ns=(10**18, 10**18))
    os.utime(other, ns=(10**18, 10**18))
    assert remembered_sha256(first, memo) == file_sha256(first)
    (record,) = memo.iterdir()
    before = record.stat()
    assert remembered_sha256(first, memo) == file_sha256(first)
    assert record.stat().st_ino == before.st_ino  # remembered, not hashed and written again
    inode = first.stat().st_ino
    subprocess.run(["cp", "-p", str(other), str(first)], check=True)
    assert first.stat().st_ino == inode and first.stat().st_mtime_ns == 10**18  # same stamps
    assert remembered_sha256(first, memo) == file_sha256(other)


def test_a_memo_not_ours_is_ignored(tmp_path: Path) -> None:
    memo = tmp_path / "hashes"
    path = tmp_path / "f"
    path.write_bytes(b"content")
    remembered_sha256(path, memo)
    (record,) = memo.iterdir()
    record.write_text(record.read_text().replace(file_sha256(path), "0" * 64))
    record.chmod(0o666)  # someone else could have written it
    assert remembered_sha256(path, memo) == file_sha256(path)


def _dead_pid() -> int:
    done = subprocess.Popen([sys.executable, "-c", "import os; print(os.getpid())"],
                            stdout=subprocess.PIPE, text=True)  # fmt: skip
    return int(done.communicate()[0])


def test_only_dead_writers_temporaries_are_removed(tmp_path: Path) -> None:
    live = make_temp_dir(tmp_path, "model")
    (live / "part").write_bytes(b"x")
    name = temp_name("model")
    host, boot, pid, start = name.split(".tmp-")[1].split("-")[:4]
    dead = tmp_path / f".model.tmp-{host}-{boot}-{_dead_pid()}-{start}-abcd"
    dead.mkdir()
    reused = tmp_path / f".model.tmp-{host}-{boot}-{pid}-{int(start) + 1}-abcd"  # pid reused
    reused.write_bytes(b"y")
    elsewhere = tmp_path / f".model.tmp-ffffff-{boot}-{_dead_pid()}-1-abcd"  # another host
    elsewhere.mkdir()
    rebooted = tmp_path / f".model.old-{host}-ffffff-{pid}-{start}-abcd"
    rebooted.mkdir()
    user_file = tmp_path / ".model.tmp-notours"
    user_file.write_bytes(b"z")
    removed = remove_stale_temps(tmp_path)
    assert sorted(removed) == sorted([dead, reused, rebooted])
    assert sorted(tmp_path.iterdir()) == sorted([live, elsewhere, user_file])
    assert remove_stale_temps(tmp_path, "other") == []
    shutil.rmtree(live)


@pytest.mark.skipif(os.getuid() != 0, reason="needs a file owned by another user")
def test_another_users_temporaries_are_left_alone(tmp_path: Path) -> None:
    name = temp_name("model").split(".tmp-")[1].split("-")
    theirs = tmp_path / f".model.tmp-{name[0]}-{name[1]}-{_dead_pid()}-{name[3]}-abcd"
    theirs.mkdir()
    os.chown(theirs, 65534, 65534)
    assert remove_stale_temps(tmp_path) == [] and theirs.exists()


def test_an_unwritable_home_is_a_reason_not_a_crash(tmp_path: Path) -> None:
    blocked = tmp_path / "a-file"  # a file where the cache directory should go: even root fails
    blocked.write_bytes(b"")
    assert "cannot create" in str(secure_dir(blocked / "kernels"))
    path = tmp_path / "f"
    path.write_bytes(b"x")
    assert remembered_sha256(path, blocked / "hashes") == file_sha256(path)
