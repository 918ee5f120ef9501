"""What a cache may trust: who owns it, who may write it, what its bytes hash to,
and which temporaries are left over by a writer that died.

* :func:`trust_problem` says why a file or directory must not be trusted
  (another owner, group/world-writable, a symbolic link), ``None`` when it may.
* :func:`secure_dir` creates a cache directory for this user only (and takes
  group/world write off one of ours).
* :func:`remembered_sha256` hashes a file once and remembers the digest against
  its full stat (device, inode, size, mtime_ns, ctime_ns).
* :func:`make_temp_dir` / :func:`temp_name` put the writer's host, boot, pid and
  process start in a temporary's name; :func:`remove_stale_temps` removes those
  whose writer is dead (never another host's).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import shutil
import socket
import stat
from pathlib import Path

__all__ = [
    "file_sha256",
    "make_temp_dir",
    "remembered_sha256",
    "remove_stale_temps",
    "secure_dir",
    "temp_name",
    "trust_problem",
    "write_private_file",
]


def trust_problem(path: Path, *, directory: bool = False) -> str | None:
    """Why ``path`` must not be trusted, or ``None``: it must be a real file (or
    directory), owned by this user and writable by nobody else."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return f"{path} is missing"
    except OSError as exc:
        return f"{path} cannot be read ({exc.strerror})"
    kind = "directory" if directory else "regular file"
    if stat.S_ISLNK(st.st_mode):
        return f"{path} is a symbolic link"
    if not (stat.S_ISDIR(st.st_mode) if directory else stat.S_ISREG(st.st_mode)):
        return f"{path} is not a {kind}"
    if st.st_uid != os.getuid():
        return f"{path} is owned by uid {st.st_uid}, not by you (uid {os.getuid()})"
    if st.st_mode & 0o022:
        return f"{path} is group/world-writable (mode {stat.S_IMODE(st.st_mode):o})"
    return None


def _ancestor_problem(path: Path) -> str | None:
    """Another user could swap ``path``: an ancestor that is neither ours nor
    root's, or writable by others without the sticky bit (``/tmp`` is fine)."""
    for parent in path.absolute().parents:
        st = os.stat(parent)
        if st.st_uid not in (0, os.getuid()):
            return f"{parent} is owned by uid {st.st_uid}"
        if st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX:
            return f"{parent} is group/world-writable"
    return None


def secure_dir(path: Path) -> str | None:
    """Create ``path`` (mode 755 for each new component); ``None`` when it is
    ours and writable by nobody else, else why the cache in it is refused."""
    path = path.absolute()
    missing = [p for p in (path, *path.parents) if not p.exists()]
    try:
        for new in reversed(missing):
            with contextlib.suppress(FileExistsError):
                new.mkdir(mode=0o755)
        st = os.lstat(path)
        if st.st_uid == os.getuid() and stat.S_ISDIR(st.st_mode) and st.st_mode & 0o022:
            path.chmod(stat.S_IMODE(st.st_mode) & ~0o022)
    except OSError as exc:
        return f"cannot create {exc.filename or path} ({exc.strerror})"
    return trust_problem(path, directory=True) or _ancestor_problem(path)


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file's content, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def write_private_file(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (a temporary renamed into place), mode 644."""
    tmp = path.with_name(temp_name(path.name))
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _stat_key(st: os.stat_result) -> list[int]:
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def remembered_sha256(path: Path, memo_dir: Path) -> str:
    """The sha256 of ``path``'s bytes, hashed once and remembered in ``memo_dir``
    against its full stat: any change (``cp -p`` over it keeps inode, size and
    mtime, not ctime) hashes it again. A memo this user does not own is ignored."""
    path = path.resolve()
    memo = memo_dir / (hashlib.sha256(str(path).encode()).hexdigest()[:32] + ".json")
    before = _stat_key(os.stat(path))
    if trust_problem(memo) is None:
        try:
            record = json.loads(memo.read_bytes())
            if record.get("path") == str(path) and record.get("stat") == before:
                return str(record["sha256"])
        except (OSError, ValueError, KeyError, AttributeError):
            pass
    digest = file_sha256(path)
    if _stat_key(os.stat(path)) == before and secure_dir(memo_dir) is None:
        record = {"path": str(path), "stat": before, "sha256": digest}
        with contextlib.suppress(OSError):  # a read-only FERRUM_HOME: hash again next time
            write_private_file(memo, json.dumps(record).encode())
    return digest


# --- temporaries named for their writer -------------------------------------

_TEMP = re.compile(r"\.(?:tmp|old)-([0-9a-f]{6})-([0-9a-f]{6})-(\d+)-(\d+)-")


def _short(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:6]


def _boot() -> str:
    try:
        return _short(Path("/proc/sys/kernel/random/boot_id").read_text().strip())
    except OSError:
        return "000000"


def _start(pid: int) -> int | None:
    """The process's start time in clock ticks (Linux), ``None`` if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except FileNotFoundError:
        return None
    except OSError:
        return 0
    return int(fields[19])


def _marker(kind: str) -> str:
    start = _start(os.getpid()) if Path("/proc/self/stat").exists() else 0
    return f"{kind}-{_short(socket.gethostname())}-{_boot()}-{os.getpid()}-{start or 0}-"


def temp_name(stem: str, kind: str = "tmp") -> str:
    """``.<stem>.<kind>-<host>-<boot>-<pid>-<start>-<random>``: a name this
    process alone writes, that :func:`remove_stale_temps` can judge later."""
    return f".{stem}.{_marker(kind)}{secrets.token_hex(4)}"


def make_temp_dir(parent: Path, stem: str) -> Path:
    """A new private (0700) directory under ``parent`` named for this writer
    (:func:`temp_name`), so :func:`remove_stale_temps` can clear it once the writer is dead."""
    path = parent / temp_name(stem)
    path.mkdir(mode=0o700)
    return path


def _writer_alive(host: str, boot: str, pid: int, start: int) -> bool:
    if host != _short(socket.gethostname()):
        return True  # another machine's writer: nothing here can tell
    if boot != _boot():
        return False  # written before this machine rebooted
    if Path("/proc/self/stat").exists():
        now = _start(pid)
        return now is not None and (start == 0 or now == start)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temps(parent: Path, stem: str | None = None) -> list[Path]:
    """Remove this user's temporaries in ``parent`` (of ``stem`` only, when given)
    whose writer is dead; the paths removed."""
    removed: list[Path] = []
    try:
        entries = list(parent.iterdir())
    except OSError:
        return removed
    for entry in entries:
        if stem is not None and not entry.name.startswith(f".{stem}."):
            continue
        found = _TEMP.search(entry.name)
        if found is None or not entry.name.startswith("."):
            continue
        host, boot, pid, start = found.group(1), found.group(2), found.group(3), found.group(4)
        try:
            if os.lstat(entry).st_uid != os.getuid():
                continue
        except FileNotFoundError:
            continue
        if _writer_alive(host, boot, int(pid), int(start)):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed
