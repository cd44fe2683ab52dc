"""Files written atomically, the one way every package writes what must never be seen half-written.

write_text_atomic replaces a small file (temp file, fsync, rename); atomic_directory builds a directory beside its
final name and renames it into place (checkpoints, exports). A temporary name holds the writer's host and pid, so one
a killed process left behind is known for stale and removed (remove_stale_temp_dirs), while another live writer's,
here or on a machine sharing the disk, is kept. data/prepare.py names its cache directories the same way.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path


def config_dir() -> Path:
    """The Hydra configs: nanoloom/configs in an installed package (the wheel ships the repository's configs/ there),
    else the checkout's configs/ beside the packages (an editable install, or running from the repository)."""
    installed = Path(__file__).resolve().parent / "configs"
    return installed if installed.is_dir() else Path(__file__).resolve().parent.parent / "configs"


@contextlib.contextmanager
def atomic_directory(final: str | Path) -> Iterator[Path]:
    """Yield a temporary directory next to `final`; on success, fsync it and rename it to `final`.

    If the body raises, the temporary directory is removed and `final` (if it existed) is untouched. The temporary
    directory is named .<name>.tmp@<host>-<pid>-<random>, so one a killed process left is known for stale (see
    remove_stale_temp_dirs).
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp@{host_name()}-{os.getpid()}-", dir=final.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp's 0700 would make checkpoints private to their writer
    try:
        yield tmp
        for f in tmp.iterdir():  # data on disk before the rename makes it visible
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        if final.exists():  # replacing a directory: move the old one aside first, delete it after (a crash in between
            old = final.with_name(f".{final.name}.old-{os.getpid()}")  # leaves it there: see restore_replaced)
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
        _fsync_dir(final.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def restore_replaced(directory: str | Path) -> None:
    """Undo a replacement atomic_directory was killed in: move .<name>.old-<pid> back to a missing <name>."""
    for old in Path(directory).glob(".*.old-*"):
        original = old.with_name(old.name[1:].rsplit(".old-", 1)[0])
        if old.is_dir() and not original.exists():
            os.replace(old, original)


_TEMP_DIR = re.compile(r"\.(?P<name>.+)\.tmp@(?P<host>[^@/]+)-(?P<pid>\d+)-[a-z0-9_]{8}")  # atomic_directory's
_UNNAMED_TEMP_DIR = re.compile(r"\.(?P<name>.+)\.tmp-[a-z0-9_]{8}")  # its names before they held host and pid
UNNAMED_TEMP_DIR_DAYS = 1  # such a directory untouched this long is stale: no write takes a day


def remove_stale_temp_dirs(directory: str | Path) -> None:
    """Delete the temporary directories atomic_directory left in `directory` when its process was killed (kill -9,
    power loss): those of a process of this host that is no longer running. Another process writing into the same
    directory, here or on another machine sharing the disk, keeps its own. (A name without host and pid, from an
    earlier nanoloom, goes when it is UNNAMED_TEMP_DIR_DAYS old.)"""
    for path in Path(directory).glob(".*.tmp[@-]*"):
        if _stale_temp_dir(path):
            shutil.rmtree(path, ignore_errors=True)


def _stale_temp_dir(path: Path) -> bool:
    """Whether path is a temporary directory of atomic_directory that nobody writes to anymore."""
    m = _TEMP_DIR.fullmatch(path.name)
    if m:
        return m["host"] == host_name() and not pid_alive(int(m["pid"])) and path.is_dir()
    if not _UNNAMED_TEMP_DIR.fullmatch(path.name):
        return False
    try:
        age = time.time() - path.stat().st_mtime
    except OSError:  # gone meanwhile
        return False
    return path.is_dir() and age > UNNAMED_TEMP_DIR_DAYS * 86400


@functools.cache
def host_name() -> str:
    """This machine's name as it appears in temporary names: letters, digits, '.' and '-' only."""
    return re.sub(r"[^A-Za-z0-9.-]+", "_", socket.gethostname()) or "localhost"


def pid_alive(pid: int) -> bool:
    """Whether a process with this id runs on this machine (when unsure, and always on Windows: True)."""
    if os.name == "nt":  # os.kill(pid, 0) would send CTRL_C_EVENT there
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it runs, as another user
        return True
    except (OverflowError, ValueError):  # no process has such an id
        return False
    return True


@functools.cache
def _umask() -> int:
    mask = os.umask(0)  # the only way to read it is to set it
    os.umask(mask)
    return mask


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # not every filesystem lets a directory be opened
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_text_atomic(path: str | Path, text: str) -> None:
    """Replace a small file atomically (write a temp file, fsync, rename)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 would make the file private to its writer
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
