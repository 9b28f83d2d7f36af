"""One writer per run folder: an exclusive OS file lock on `RUN/.lock`.

Every command that writes into a run folder holds this lock while it works: `vaelab train`
(a new run, `--force`, `--resume`), `eval` (RUN/eval.json), `import-weights`, and `export` /
`report` / `translate` when their output lies inside the run. A second writer is refused at once (the lock
is taken without waiting) with one line and exit code 4, before it changes anything:

    vaelab: error: RUN is in use by another vaelab process (pid 4242, vaelab train, started 2026-12-01 10:02:13)

Readers (`vaelab sample`, `reconstruct`, `explore`, `vaelab.load`, ...) take no lock: every file
in a run folder is replaced by an atomic rename (vaelab.checkpoint.atomic_write_bytes), so a
reader sees the old file or the new one, never half of one.

The lock is `fcntl.flock(LOCK_EX | LOCK_NB)` on an open file, so the operating system drops it
when the process ends in any way, SIGKILL included: a dead run never leaves a stale lock. The
file itself stays behind and only records who took the lock last (pid, command, start time,
host) for the message above; whether it exists means nothing, so it is never deleted (a
deleted-and-recreated lock file would let two processes lock two different files). Where the
filesystem cannot lock (some network or FUSE filesystems answer ENOLCK, EOPNOTSUPP or ENOSYS),
the command goes on with a one-line warning on stderr instead of failing or hanging. Under
torchrun only rank 0 (the one process that writes) takes the lock.

Taking the lock in a new command that writes into a run (fit-sampler, anomaly maps, ...):

    from vaelab.runlock import run_lock, run_lock_for_output

    # ... check every input first (flags, model, data): a refused lock should be the only failure left
    with run_lock(run_dir, "vaelab fit-sampler"):
        atomic_write_text(run_dir / "sampler.json", ...)

    # output that may or may not lie inside the run (an --out option):
    with run_lock_for_output(run_dir, out_path, "vaelab anomaly"):
        ...

The lock is re-entrant within one process (a writer that calls another writer on the same run
folder does not lock itself out) and released when the `with` block ends.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any, Optional

from vaelab.errors import RunError, RunInUseError

LOCK_FILE = ".lock"
# flock errors that mean "this filesystem cannot lock", not "someone else holds it".
UNSUPPORTED_ERRNOS = frozenset(e for e in (errno.ENOLCK, errno.EOPNOTSUPP, getattr(errno, "ENOTSUP", None),
                                           errno.ENOSYS) if e is not None)
HELD_ERRNOS = frozenset((errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES))

_held: dict[str, int] = {}  # resolved run folder -> nesting depth, for locks this process holds
_held_guard = threading.Lock()


def _flock(fd: int) -> None:
    """`fcntl.flock(fd, LOCK_EX | LOCK_NB)` (a seam for tests that simulate odd filesystems)."""
    import fcntl

    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)


def _unlock(fd: int) -> None:
    import fcntl

    fcntl.flock(fd, fcntl.LOCK_UN)


def lock_holder(run_dir: str | Path) -> Optional[dict[str, Any]]:
    """What `RUN/.lock` says about the process that took the lock last (None if nothing readable).

    This is bookkeeping only: whether the lock is held is known only by trying to take it.
    """
    path = Path(run_dir) / LOCK_FILE
    for _ in range(20):  # the holder writes its details just after locking: wait a moment for them
        try:
            text = path.read_text()
        except OSError:
            return None
        if text.strip():
            try:
                info = json.loads(text)
            except json.JSONDecodeError:
                info = None
            return info if isinstance(info, dict) else None
        time.sleep(0.01)
    return None


def in_use_message(run_dir: str | Path, holder: Optional[dict[str, Any]]) -> str:
    """The refusal line (without `vaelab: error: `)."""
    holder = holder or {}
    pid = holder.get("pid", "unknown")
    command = holder.get("command", "vaelab")
    started = holder.get("started", "at an unknown time")
    host = holder.get("host")
    where = f" on {host}" if host and host != socket.gethostname() else ""
    return f"{run_dir} is in use by another vaelab process (pid {pid}{where}, {command}, started {started})"


@contextmanager
def run_lock(run_dir: str | Path, command: str) -> Iterator[bool]:
    """Hold the one-writer lock of `run_dir` (an existing folder) for the `with` block.

    `command` names the holder in the refusal message of a second writer (e.g. "vaelab eval").
    Yields True when the lock is held, False when the filesystem cannot lock (a warning was
    printed). Raises `RunInUseError` (exit code 4) if another process holds it, `RunError` if
    the folder cannot be written.
    """
    run_dir = Path(run_dir)
    key = str(run_dir.resolve())
    with _held_guard:
        if _held.get(key):
            _held[key] += 1
            reentered = True
        else:
            reentered = False
    if reentered:
        try:
            yield True
        finally:
            with _held_guard:
                _held[key] -= 1
        return
    fd = _open_lock_file(run_dir)
    locked = False
    try:
        locked = _try_lock(fd, run_dir)
        if locked:
            _record_holder(fd, command)
        with _held_guard:
            _held[key] = 1
        try:
            yield locked
        finally:
            with _held_guard:
                _held.pop(key, None)
    finally:
        if locked:
            try:
                _unlock(fd)
            except OSError:
                pass  # closing the file drops the lock in any case
        os.close(fd)


def run_lock_for_output(run_dir: str | Path, out: str | Path, command: str) -> AbstractContextManager[bool]:
    """`run_lock(run_dir, command)` when `out` (a file or folder to be written) lies inside the
    run folder `run_dir`; otherwise nothing is locked (writing elsewhere is reading the run). A
    folder without config.json is no run folder: nothing is locked (nor created) in it, and the
    command fails on it by itself."""
    if is_run_folder(run_dir) and is_inside(out, run_dir):
        return run_lock(run_dir, command)
    return nullcontext(False)


def is_run_folder(run_dir: str | Path) -> bool:
    """Whether `run_dir` holds a config.json (the mark of a run folder)."""
    return (Path(run_dir) / "config.json").is_file()


def file_stamp(path: str | Path) -> tuple[int, int, int]:
    """(inode, mtime in ns, size) of a file, (0, 0, 0) if absent: an atomic rename changes it.

    A writer that reads a run before it takes the lock compares stamps once it holds it, to
    notice a writer that came and went in between."""
    try:
        stat = os.stat(path)
    except OSError:
        return (0, 0, 0)
    return (stat.st_ino, stat.st_mtime_ns, stat.st_size)


def is_inside(path: str | Path, folder: str | Path) -> bool:
    """Whether `path` is `folder` or lies below it (after resolving links and `..`)."""
    try:
        Path(path).resolve().relative_to(Path(folder).resolve())
    except ValueError:
        return False
    return True


def _open_lock_file(run_dir: Path) -> int:
    try:
        # O_CLOEXEC (Python's default): a subprocess never inherits the lock.
        return os.open(run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
    except OSError as exc:
        if not run_dir.is_dir():
            raise RunError(f"run folder not found: {run_dir}") from None
        raise RunError(f"cannot write to run folder {run_dir}: {exc.strerror or exc}") from None


def _try_lock(fd: int, run_dir: Path) -> bool:
    """True: locked. False: the filesystem cannot lock (warned). RunInUseError: someone holds it."""
    try:
        _flock(fd)
        return True
    except OSError as exc:
        if exc.errno in HELD_ERRNOS:
            raise RunInUseError(in_use_message(run_dir, lock_holder(run_dir))) from None
        if exc.errno in UNSUPPORTED_ERRNOS:
            print(f"vaelab: warning: cannot lock {run_dir / LOCK_FILE} ({exc.strerror or exc}: this filesystem "
                  f"does not support file locks); going on without the one-writer guard, so make sure no other "
                  f"vaelab process writes to {run_dir} meanwhile", file=sys.stderr, flush=True)
            return False
        raise RunError(f"cannot lock {run_dir / LOCK_FILE}: {exc.strerror or exc}") from None


def _record_holder(fd: int, command: str) -> None:
    """Write who holds the lock into the lock file itself (in place: a rename would swap the
    locked file for another)."""
    info = {"pid": os.getpid(), "command": command, "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "host": socket.gethostname()}
    payload = (json.dumps(info) + "\n").encode()
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, payload, 0)
    except OSError:
        pass  # the lock is what counts; the details only improve the message others see
