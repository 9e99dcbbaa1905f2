"""Writing files: every output checked before any work, nothing ever half-written, and a state
file locked while an audit uses it."""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

if sys.platform != "win32":  # Windows has no advisory locks
    import fcntl

from .errors import BadOutput, NactError, StateLocked, first_line
from .remote.objects import RemotePath


def check_outputs(outputs: list[Path]) -> None:
    """Every output can be written: its folder exists and is writable, it is not a folder, and
    no two outputs are one file (symlinks followed). Nothing is created."""
    seen: dict[str, Path] = {}
    for path in outputs:
        if isinstance(path, RemotePath) or re.match(
            r"[A-Za-z][A-Za-z0-9+.-]*:/", str(path)
        ):  # s3://... folds to s3:/...
            raise BadOutput(path, "outputs are local files: nact does not write to a URL")
        target = Path(os.path.realpath(path))
        if target.is_dir():
            raise BadOutput(path, "is a folder, not a file")
        folder = target.parent
        if not folder.is_dir():
            raise BadOutput(path, f"cannot write: folder {folder} does not exist")
        if not os.access(folder, os.W_OK | os.X_OK):
            raise BadOutput(path, f"cannot write: folder {folder} is not writable")
        if str(target) in seen:
            raise BadOutput(path, f"is the same file as {seen[str(target)]}: each output needs its own")
        seen[str(target)] = path


def check_not_inputs(outputs: list[Path], inputs: Sequence[Path | RemotePath]) -> None:
    """No output may overwrite an input (the same file, whatever path names it)."""
    existing = [p for p in outputs if os.path.exists(p)]
    if not existing:
        return
    identities = set()
    for path in inputs:
        if isinstance(path, RemotePath):  # an object in a store is never a local output
            continue
        try:
            st = os.stat(path)
        except OSError:
            continue
        identities.add((st.st_dev, st.st_ino))
    for path in existing:
        st = os.stat(path)
        if (st.st_dev, st.st_ino) in identities:
            raise BadOutput(path, "is one of the inputs: nact never writes over its input")


def _mode_for(path: Path) -> int:
    """The mode a new file gets from the umask, or the mode ``path`` already has."""
    try:
        return os.stat(path).st_mode & 0o7777
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def write_atomic(path: Path, write: Callable[[Path], object]) -> None:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it over ``path``.

    If anything fails or the process is interrupted, ``path`` keeps its previous content and no
    temporary file is left. Symlinks are followed (the file they name is replaced, the link
    stays); a new file gets the umask's mode, an existing one keeps its mode.
    """
    path = Path(os.path.realpath(path))
    folder = path.parent
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    except OSError as e:
        raise BadOutput(path, f"cannot write: {e.strerror or e}") from None
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        os.chmod(tmp, _mode_for(path))
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(e, OSError):
            raise BadOutput(path, f"cannot write: {e.strerror or e}") from None
        if isinstance(e, Exception) and not isinstance(e, NactError):  # a writer's own error (safetensors)
            raise BadOutput(path, f"cannot write: {first_line(e)}") from None
        raise


def write_text_atomic(path: Path, text: str) -> None:
    write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8", errors="backslashreplace"))


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path``'s lock file (``path.lock``), or fail at once."""
    path = Path(os.path.realpath(path))  # two names of one state take one lock
    lock_path = Path(f"{path}.lock")
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise BadOutput(lock_path, f"cannot create the lock file: {e.strerror or e}") from None
    try:
        if sys.platform == "win32":
            yield
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StateLocked(path, lock_path) from None
        yield
    finally:
        os.close(fd)
