"""Writing outputs without destroying anything: one rule for every command that writes.

- An existing output is refused unless the user passed ``--overwrite``.
- An input is never overwritten (nor a folder holding one deleted), with or without it.
- A folder is replaced only when it is one we wrote; the caller says how to tell.
- A file is written under a temporary name and renamed into place; a folder is built
  in a hidden staging folder beside it and swapped in at the end, under a lock on the
  folder that holds it (flock), after checking the target again: two runs racing into one
  output never replace each other's work unless ``--overwrite`` asks for it.
- A staging folder's name carries the host and the pid of the process that made it, so a
  later run can remove those of processes that died (SIGKILL) on this host without
  touching a running one's; on a folder that several hosts share, another host's staging
  folders are never removed (their process cannot be seen from here).
- SIGTERM is handled like Ctrl-C (``sigterm_as_interrupt``), so the clean-up above
  also runs when a job is terminated.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import tempfile
import threading
from pathlib import Path
from typing import Callable, Iterable

from mobilegen.errors import OutputError

OVERWRITE_HINT = "pass --overwrite to replace it, or choose another path"
# .<name>.staging-<host>-<pid>-<8 chars> (tempfile.mkdtemp's suffix) and .<name>.old-<host>-<pid>-<8 hex>;
# <host> is this host's name with every character but letters and digits made "_".
LEFTOVER = re.compile(r"^\.(?P<name>.+)\.(?P<kind>staging|old)-(?P<host>[A-Za-z0-9_]+)-(?P<pid>\d+)-[a-z0-9_]{8}$")


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _forms(path: Path) -> tuple[Path, Path]:
    """The path made absolute as written and with every symlink resolved (a symlink loop is
    left as it is: os.path.realpath, unlike Path.resolve on Python 3.11, does not raise)."""
    return Path(os.path.abspath(path)), Path(os.path.realpath(path))


def check_parents(path: Path) -> None:
    """Refuse an output whose parent path runs through a file (mkdir would say only 'File exists')."""
    for parent in Path(os.path.abspath(path)).parents:
        if parent.exists():
            if not parent.is_dir():
                raise OutputError(f"cannot write {path}: its parent {parent} is a file, not a folder; choose another path")
            return


def same_file(a: Path, b: Path) -> bool:
    if a.exists() and b.exists():
        return os.path.samefile(a, b)  # hard links and symlinks included
    return bool(set(_forms(a)) & set(_forms(b)))


def contains(folder: Path, path: Path) -> bool:
    """True when path is folder or lies inside it, as written or through symlinks."""
    return any(p == f or f in p.parents for f in _forms(folder) for p in _forms(path))


def check_output_file(path: Path, overwrite: bool, inputs: Iterable[Path | None] = (), hint: str = OVERWRITE_HINT) -> Path:
    """Refuse an output file that is an input (always) or exists (unless overwrite)."""
    path = Path(path)
    check_parents(path)
    for source in filter(None, inputs):
        if same_file(path, Path(source)):
            raise OutputError(
                f"{path} is an input of this command ({source}); it is never overwritten, "
                "with or without --overwrite: choose another output path"
            )
    if path.is_dir():
        raise OutputError(f"{path} is a folder; expected a file path")
    if (path.exists() or path.is_symlink()) and not overwrite:
        raise OutputError(f"{path} already exists; {hint}")
    return path


def check_output_folder(
    folder: Path, overwrite: bool, inputs: Iterable[Path | None], what: str, problem: Callable[[Path], str | None]
) -> None:
    """Refuse an output folder that holds an input (always), that exists (unless overwrite),
    or that is not `what` we write (problem(folder) says why not; None when it is)."""
    folder = Path(folder)
    check_parents(folder)
    for source in filter(None, inputs):
        if contains(folder, Path(source)):
            raise OutputError(f"output folder {folder} contains the input {source}; it is never replaced: choose another -o")
    if not (folder.exists() or folder.is_symlink()):
        return
    if contains(folder, Path.cwd()):
        raise OutputError(
            f"output folder {folder} is the current folder or holds it; a folder is replaced whole, "
            "so run the command from outside it"
        )
    if folder.is_symlink():
        raise OutputError(f"output folder {folder} is a symbolic link; give the folder it points to, or another -o")
    if not folder.is_dir():
        raise OutputError(f"output path {folder} exists and is not a folder; choose another -o")
    if not any(folder.iterdir()):
        return  # an empty folder holds nothing to lose
    if not overwrite:
        raise OutputError(f"output folder {folder} already exists; {OVERWRITE_HINT}")
    why = problem(folder)
    if why is not None:
        raise OutputError(
            f"refusing to replace {folder}: it is not {what} ({why}); --overwrite only replaces "
            f"{what}: remove it yourself or choose another -o"
        )


def atomic_write(path: str | Path, write: Callable[[Path], object]) -> Path:
    """Call write(tmp_path), then rename into place: a reader never sees a half file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~umask())  # mkstemp makes 0600; published files get normal permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


class DuplicateKey(ValueError):
    """A JSON object that names one key twice: parsers disagree on which value counts."""

    def __init__(self, key: str):
        shown = key if len(key) <= 60 else key[:57] + "..."
        super().__init__(f"duplicate key {shown!r} in one JSON object")
        self.key = key


def unique_keys(pairs: list[tuple[str, object]]) -> dict:
    """json's object_pairs_hook: a dict, or DuplicateKey. Python keeps the last value of a
    repeated key and other parsers the first; for a manifest or a request that is two readings."""
    out: dict = {}
    for key, value in pairs:
        if key in out:
            raise DuplicateKey(key)
        out[key] = value
    return out


def loads_strict(text: str | bytes, **kwargs) -> object:
    """json.loads that refuses a repeated key in any object (DuplicateKey, a ValueError)."""
    return json.loads(text, object_pairs_hook=unique_keys, **kwargs)


def write_json(path: Path, data: dict) -> Path:
    """Strict JSON only: NaN or Infinity raise ValueError instead of writing invalid JSON."""
    text = json.dumps(data, indent=2, allow_nan=False) + "\n"
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def host_tag() -> str:
    """This host's name as it appears in staging folder names."""
    return re.sub(r"[^A-Za-z0-9]", "_", socket.gethostname()) or "_"


def remove_leftovers(parent: Path) -> list[Path]:
    """Remove the staging and swap folders that dead processes of this host left in parent.

    A folder of another host is kept: whether its process is alive cannot be known from
    here. A swap folder (.NAME.old-HOST-PID-*) holds the previous export; if NAME itself is
    gone (killed between the two renames of a swap) it is put back instead of removed."""
    removed = []
    if not parent.is_dir():
        return removed
    host = host_tag()
    for entry in parent.iterdir():
        match = LEFTOVER.match(entry.name)
        if not match or match["host"] != host or entry.is_symlink() or not entry.is_dir():
            continue
        if pid_alive(int(match["pid"])):
            continue
        target = parent / match["name"]
        if match["kind"] == "old" and not (target.exists() or target.is_symlink()):
            os.rename(entry, target)
            continue
        shutil.rmtree(entry, ignore_errors=True)
        removed.append(entry)
    return removed


def make_staging(target: Path) -> Path:
    """A fresh hidden folder beside target, after removing dead processes' leftovers."""
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(target.parent)
    return Path(tempfile.mkdtemp(prefix=f".{target.name}.staging-{host_tag()}-{os.getpid()}-", dir=target.parent))


@contextlib.contextmanager
def publish_lock(target: Path):
    """An exclusive lock on the folder that holds target while a folder is checked and swapped
    in. Locking the parent leaves no lock file behind (one would race if it were removed)."""
    import fcntl

    fd = os.open(target.parent, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


@contextlib.contextmanager
def deferred_signals():
    """Hold SIGINT/SIGTERM until the block is done (a swap must not stop halfway)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = {s: signal.signal(s, lambda signum, _frame: caught.append(signum)) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if caught:
            raise KeyboardInterrupt(signal.Signals(caught[0]).name)


def publish_folder(stage: Path, target: Path, check: Callable[[], None] = lambda: None) -> Path:
    """Move stage into place as target. Under the target's lock, check() runs first (it raises
    when the target may not be replaced: another run may have published there meanwhile); an
    existing target is swapped out only then."""
    os.chmod(stage, 0o777 & ~umask())  # mkdtemp makes 0700
    for path in stage.rglob("*"):
        os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~umask())
    old = target.with_name(f".{target.name}.old-{host_tag()}-{os.getpid()}-{secrets.token_hex(4)}")
    with publish_lock(target), deferred_signals():
        check()
        if not target.exists():
            os.rename(stage, target)
            return target
        os.rename(target, old)
        try:
            os.rename(stage, target)
        except BaseException:
            os.rename(old, target)
            raise
        shutil.rmtree(old, ignore_errors=True)  # if this process is killed here, the next run removes it
    return target


@contextlib.contextmanager
def sigterm_as_interrupt():
    """SIGTERM raises KeyboardInterrupt('SIGTERM'), like Ctrl-C, so clean-up code runs."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, _frame):
        raise KeyboardInterrupt("SIGTERM")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
