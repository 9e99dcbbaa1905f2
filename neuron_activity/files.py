"""Writing files: every output checked before any work, nothing ever half-written, an output that
is not a regular file never replaced, and a state file locked while an audit uses it.

An output that is a regular file (or is not there yet) is written to a temporary file beside it
and renamed over it. One that is a device (``/dev/null``, a terminal, ``/dev/stdout``) or a FIFO
is written in place (from a temporary file in the temporary folder): renaming over it would
replace the device or pipe itself. Temporary files
are named ``.NAME.nact-PID-XXXXXXXX.tmp`` and locked while they live; a later write in the same
folder removes those whose process is gone (a run that was killed), see ``remove_stale``.

Inside ``staged()`` (how the command line runs a command) every output is written, but none is
put in place until the caller ``commit``s, after its result reached stdout: a run that fails to
print writes nothing. Renames are committed in order, a locked file (an audit's state) last.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import re
import shutil
import stat
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

if sys.platform != "win32":  # Windows has no advisory locks
    import fcntl

from .errors import BadOutput, NactError, StateLocked, first_line
from .remote.objects import RemotePath
from .remote.urls import shown

Writer = Callable[[Path], object]  # writes an output's content to the path it is given

TEMPORARY = re.compile(r"\..*\.nact-([0-9]+)-[A-Za-z0-9_]{8}\.tmp", re.DOTALL)
NAME_IN_TEMPORARY = 64  # characters of the output's name kept in its temporary's name (names stay short)


def _in_place(path: Path) -> bool:
    """Whether ``path`` names something other than a regular file or a folder (a device, a FIFO,
    a terminal, ``/dev/stdout``): written where it is, never replaced."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return not stat.S_ISREG(mode) and not stat.S_ISDIR(mode)


def check_outputs(outputs: list[Path], read_back: Sequence[Path] = ()) -> None:
    """Every output can be written: its folder exists and is writable, it is not a folder, and
    no two outputs are one file (symlinks followed); a device or FIFO is written in place (it
    needs only to be writable), a socket is refused. ``read_back`` (an audit's state) must be a
    regular file or not there yet. Nothing is created."""
    seen: dict[tuple[int, int] | str, Path] = {}
    regular_only = {os.path.realpath(p) for p in read_back}
    for path in outputs:
        if isinstance(path, RemotePath) or re.match(r"[A-Za-z][A-Za-z0-9+.-]*:/", str(path)):
            url = re.sub(r"^([A-Za-z][A-Za-z0-9+.-]*):/(?!/)", r"\1://", str(path))  # s3://... folds to s3:/...
            raise BadOutput(shown(url, remember=False), "outputs are local files: nact does not write to a URL")
        if _in_place(path):
            mode = os.stat(path).st_mode
            if stat.S_ISSOCK(mode):
                raise BadOutput(path, "is a socket: nact writes files, devices and FIFOs")
            if os.path.realpath(path) in regular_only:
                raise BadOutput(path, "is not a regular file (a device or FIFO): a state is read back and replaced")
            if not os.access(path, os.W_OK):
                raise BadOutput(path, "cannot write: permission denied")
            st = os.stat(path)
            if stat.S_ISCHR(mode):  # writing twice to /dev/null harms nothing
                continue
            identity: tuple[int, int] | str = (st.st_dev, st.st_ino)
        else:
            target = Path(os.path.realpath(path))
            if target.is_dir():
                raise BadOutput(path, "is a folder, not a file")
            folder = target.parent
            if not folder.is_dir():
                raise BadOutput(path, f"cannot write: folder {folder} does not exist")
            if not os.access(folder, os.W_OK | os.X_OK):
                raise BadOutput(path, f"cannot write: folder {folder} is not writable")
            identity = str(target)
        if identity in seen:
            raise BadOutput(path, f"is the same file as {seen[identity]}: each output needs its own")
        seen[identity] = path


def check_not_inputs(outputs: list[Path], inputs: Sequence[Path | RemotePath]) -> None:
    """No output may overwrite an input (the same file, whatever path names it)."""
    existing = [p for p in outputs if os.path.exists(p) and not _in_place(p)]
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


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # it is there, someone else's
        return True
    return True


def remove_stale(folder: Path) -> None:
    """Remove the temporary files in ``folder`` that runs which are gone left behind (killed
    before they could clean up): named as nact names them, of a process that is not running,
    and not locked (a live writer holds its lock, whatever process namespace it runs in)."""
    if sys.platform == "win32":
        return
    try:
        names = [e.name for e in os.scandir(folder) if e.name.startswith(".") and e.name.endswith(".tmp")]
    except OSError:
        return
    for name in names:
        found = TEMPORARY.fullmatch(name)
        if found is None or int(found.group(1)) == os.getpid() or _alive(int(found.group(1))):
            continue
        try:
            fd = os.open(folder / name, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.unlink(folder / name)
        except OSError:  # locked by its writer, or gone already
            pass
        finally:
            os.close(fd)


class _Temporary:
    """A temporary file for ``target``, locked while it lives: beside it, or, for an output
    written in place (a device or FIFO, whose folder may not be writable), in the temporary folder."""

    def __init__(self, target: Path, in_place: bool = False) -> None:
        folder = Path(tempfile.gettempdir()) if in_place else target.parent
        remove_stale(folder)
        prefix = f".{target.name[:NAME_IN_TEMPORARY]}.nact-{os.getpid()}-"
        try:
            self.fd, name = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=folder)
        except OSError as e:
            raise BadOutput(target, f"cannot write: {e.strerror or e}") from None
        self.path, self.target, self.in_place = Path(name), target, in_place
        if sys.platform != "win32":
            fcntl.flock(self.fd, fcntl.LOCK_EX)

    def put_in_place(self) -> None:
        """Rename it over its target, or copy it into the device or FIFO its target is."""
        try:
            if self.in_place:
                with open(self.path, "rb") as source, open(self.target, "wb") as target:
                    shutil.copyfileobj(source, target)
                self.remove()
            else:
                os.replace(self.path, self.target)
                self.close()
        except OSError as e:
            raise BadOutput(self.target, f"cannot write: {e.strerror or e}") from None

    def remove(self) -> None:
        with contextlib.suppress(OSError):
            self.path.unlink()
        self.close()

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class Staging:
    """Outputs written and waiting to be put in place, and the locks held until then (see the
    module's docstring)."""

    def __init__(self) -> None:
        self.written: list[_Temporary] = []
        self.locks: list[tuple[Path, int]] = []

    def commit(self) -> None:
        """Put every output in place: devices and FIFOs first (a write there can fail), then
        renames, locked files (an audit's state) last; release the locks."""
        try:
            locked_paths = {p for p, _ in self.locks}
            for temporary in sorted(self.written, key=lambda t: (not t.in_place, t.target in locked_paths)):
                temporary.put_in_place()
            self.written.clear()
        finally:
            self.discard()

    def discard(self) -> None:
        """Remove every temporary not put in place; release the locks."""
        for temporary in self.written:
            temporary.remove()
        self.written.clear()
        for _, fd in self.locks:
            os.close(fd)
        self.locks.clear()


_STAGING: contextvars.ContextVar[Staging | None] = contextvars.ContextVar("nact_staging", default=None)


@contextlib.contextmanager
def staged() -> Iterator[Staging]:
    """Outputs written inside are put in place only by ``commit()`` (also on leaving normally);
    an exception discards them. The command line runs each command inside one."""
    staging = Staging()
    token = _STAGING.set(staging)
    try:
        yield staging
    except BaseException:
        staging.discard()
        raise
    else:
        staging.commit()
    finally:
        _STAGING.reset(token)


def write_atomic(path: Path, write: Writer) -> None:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it over ``path``.

    If anything fails or the process is interrupted, ``path`` keeps its previous content and no
    temporary file is left. Symlinks are followed (the file they name is replaced, the link
    stays); a new file gets the umask's mode, an existing one keeps its mode. A device or FIFO
    is never replaced: what ``write`` wrote is copied into it (writers such as safetensors'
    replace the path they are given). Inside ``staged()``, nothing is put in place before the
    commit.
    """
    in_place = _in_place(path)
    temporary = _Temporary(Path(path) if in_place else Path(os.path.realpath(path)), in_place)
    try:
        write(temporary.path)
        if not in_place:
            os.chmod(temporary.path, _mode_for(temporary.target))
            os.fsync(temporary.fd)  # the temporary's own descriptor sees what the writer wrote
        staging = _STAGING.get()
        if staging is not None:
            staging.written.append(temporary)
            return
        temporary.put_in_place()
    except BaseException as e:
        temporary.remove()
        if isinstance(e, OSError):
            raise BadOutput(temporary.target, f"cannot write: {e.strerror or e}") from None
        if isinstance(e, Exception) and not isinstance(e, NactError):  # a writer's own error (safetensors)
            raise BadOutput(temporary.target, f"cannot write: {first_line(e)}") from None
        raise


def write_text_atomic(path: Path, text: str) -> None:
    write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8", errors="backslashreplace"))


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path``'s lock file (``path.lock``), or fail at once. Inside
    ``staged()`` the lock is held until the outputs are committed (or discarded), so that what
    it guards is replaced while it is held."""
    path = Path(os.path.realpath(path))  # two names of one state take one lock
    lock_path = Path(f"{path}.lock")
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise BadOutput(lock_path, f"cannot create the lock file: {e.strerror or e}") from None
    if sys.platform != "win32":
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StateLocked(path, lock_path) from None
    try:
        yield
    except BaseException:
        os.close(fd)
        raise
    staging = _STAGING.get()
    if staging is not None:
        staging.locks.append((path, fd))
    else:
        os.close(fd)
