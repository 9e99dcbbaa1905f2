"""SAE checkpoints on the Hugging Face Hub: ``hf://ORG/REPO[@REVISION]/PATH`` fetched once into
huggingface_hub's own cache, then read from there as a local folder.

PATH is the checkpoint's folder in the repository (empty for its root), or a file in that folder.
Only the checkpoint is fetched: the files directly in its folder, and of its ``checkpoints/``
folder the file named (a training run's checkpoint) or else Llama Scope's weights; never the
checkpoints beside or below it.
huggingface_hub (nact's ``remote`` extra) answers to its own environment: ``HF_TOKEN`` (or its
token file), ``HF_HOME`` / ``HF_HUB_CACHE``, ``HF_ENDPOINT``, ``HF_HUB_OFFLINE``. With
``HF_HUB_OFFLINE`` set, or when the Hub cannot be reached, a checkpoint already in the cache is
read from it.
"""

from __future__ import annotations

import glob
import importlib.util
import posixpath
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

from .._version import __version__
from ..errors import BadInput, first_line
from .llama_scope import WEIGHTS as LLAMA_SCOPE_WEIGHTS

PREFIX = "hf://"
RUN_CHECKPOINTS = "checkpoints"  # a training run's folder of checkpoints, beside the run's configuration
_FORM = "expected hf://ORG/REPO[@REVISION]/PATH"


@dataclass(frozen=True)
class _Location:
    """Where a checkpoint is on the Hub: ``path`` has no slash at either end ("" is the root)."""

    repo_id: str
    revision: str | None  # None: the default branch
    path: str

    def __str__(self) -> str:
        at = f" at revision {self.revision!r}" if self.revision is not None else ""
        return f"{self.repo_id}{at}"


def fetch(url: str, *, progress: bool = True) -> Path:
    """The local copy of what ``url`` (``hf://ORG/REPO[@REVISION]/PATH``) names, a checkpoint's
    folder or a file of it, with the checkpoint fetched into the Hugging Face cache unless it is
    there already. ``progress=False`` silences huggingface_hub's progress bars (on stderr)."""
    where = _parse(url)
    try:
        import huggingface_hub  # noqa: F401  # the remote extra, and 150-170 ms with its HTTP client: hf:// only
    except ImportError:
        raise BadInput(url, "reading SAEs from the Hub needs huggingface_hub: pip install 'nact[remote]'") from None
    from huggingface_hub.utils.tqdm import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    quiet = not progress and not are_progress_bars_disabled()
    if quiet:
        disable_progress_bars()
    try:
        return _fetch(url, where)
    except Exception as error:
        refusal = _refusal(url, where, error)
        if refusal is None:
            raise
        raise refusal from None
    finally:
        if quiet:
            enable_progress_bars()


def _parse(url: str) -> _Location:
    if url[: len(PREFIX)].lower() != PREFIX:
        raise BadInput(url, _FORM)
    parts = url[len(PREFIX) :].split("/")
    if "@" in parts[0]:  # user:token@...: credentials are never shown
        raise BadInput(f"{PREFIX}...@{url.partition('@')[2]}", "credentials in the URL are not read: set HF_TOKEN")
    if parts[0] in ("datasets", "spaces"):
        raise BadInput(url, f"SAEs are read from model repositories, not {parts[0]}: {_FORM}")
    if len(parts) < 2 or not parts[0] or not parts[1]:
        raise BadInput(url, _FORM)
    name, at, revision = parts[1].partition("@")
    if not name or (at and not revision):
        raise BadInput(url, _FORM)
    path = parts[2:]
    while path and not path[-1]:
        path.pop()  # a trailing slash
    if any(part in ("", ".", "..") for part in path):
        raise BadInput(url, f"not a path in a repository: {_FORM}")
    return _Location(f"{parts[0]}/{name}", unquote(revision) if at else None, "/".join(path))


def _fetch(url: str, where: _Location) -> Path:
    from huggingface_hub import HfApi, constants, snapshot_download  # imported by fetch

    if constants.HF_HUB_OFFLINE:
        return _from_cache(url, where, "HF_HUB_OFFLINE is set")
    try:
        api = HfApi(library_name="nact", library_version=__version__)
        info = api.model_info(where.repo_id, revision=where.revision)
        files = _checkpoint_files(url, where, [s.rfilename for s in info.siblings or ()])
        root = Path(
            snapshot_download(
                where.repo_id,
                revision=where.revision,
                allow_patterns=[glob.escape(f) for f in files],  # fnmatch patterns: each file's name, exactly
                library_name="nact",
                library_version=__version__,
            )
        )
    except Exception as error:
        why = _no_answer(error)
        if why is None:
            raise
        return _from_cache(url, where, why)
    missing = [f for f in files if not (root / f).is_file()]
    if missing:
        raise BadInput(url, f"{len(missing)} of its {len(files)} files did not arrive ({missing[0]}, ...): try again")
    return Path(root, where.path)


def _checkpoint_files(url: str, where: _Location, names: list[str]) -> list[str]:
    """The files of the checkpoint ``where`` names, among the repository's ``names``: those directly
    in its folder, and of its ``checkpoints/`` folder the file named (a checkpoint of a training
    run, whose folder is the run's) or else Llama Scope's weights."""
    if where.path in names:
        folder = posixpath.dirname(where.path)
    elif not where.path or any(name.startswith(where.path + "/") for name in names):
        folder = where.path
    else:
        raise BadInput(url, f"no file or folder {where.path!r} in {where}")
    weights = posixpath.join(folder, LLAMA_SCOPE_WEIGHTS)
    if where.path in names and posixpath.basename(folder) == RUN_CHECKPOINTS:
        folder, weights = posixpath.dirname(folder), where.path  # a checkpoint of a run: the run's files too
    files = sorted(name for name in names if posixpath.dirname(name) == folder)
    if weights in names and weights not in files:
        files.append(weights)
    if not files:
        prefix = folder + "/" if folder else ""
        inside = sorted({name[len(prefix) :].split("/")[0] for name in names if name.startswith(prefix)})
        listed = ", ".join(inside[:4]) + (", ..." if len(inside) > 4 else "")
        raise BadInput(url, f"holds no files, only {len(inside)} folder(s) ({listed}): give one of them")
    return files


def _from_cache(url: str, where: _Location, why: str) -> Path:
    """What ``where`` names, as the cache holds it, for a Hub that is not asked."""
    from huggingface_hub import constants, snapshot_download  # imported by fetch

    try:
        # allow_patterns=[]: the revision's snapshot folder, whatever else of the repository it lacks
        root = snapshot_download(where.repo_id, revision=where.revision, local_files_only=True, allow_patterns=[])
    except FileNotFoundError:  # LocalEntryNotFoundError is one in every version
        raise BadInput(url, f"not in the Hugging Face cache ({constants.HF_HUB_CACHE}), and {why}") from None
    target = Path(root, where.path)
    if not (target.is_file() or target.is_dir() and any(p.is_file() for p in target.iterdir())):
        raise BadInput(url, f"not in the Hugging Face cache ({constants.HF_HUB_CACHE}), and {why}")
    return target


def _no_answer(error: Exception) -> str | None:
    """Why the Hub gave no answer to go by (None if it did): a server error (the Hub is down), or
    none at all: offline mode, a timeout, the HTTP client's own error (requests' in
    huggingface_hub 0.x, httpx's in 1.x, httpx2's in 2.x)."""
    status = getattr(getattr(error, "response", None), "status_code", None)
    if isinstance(status, int) and status >= 500:
        return f"the Hub is down ({first_line(error)})"
    client = type(error).__module__.partition(".")[0]
    if isinstance(error, (ConnectionError, TimeoutError)) or client in ("requests", "urllib3", "httpx", "httpx2"):
        cause = _innermost(error)
        return f"the Hub cannot be reached ({type(cause).__name__}: {first_line(cause)})"
    return None


def _innermost(error: BaseException) -> BaseException:
    """The first cause of an error: what the system said (``Connection refused``) under what the
    HTTP client made of it."""
    seen = {id(error)}
    while (cause := error.__cause__ or error.__context__) is not None and id(cause) not in seen:
        seen.add(id(cause))
        error = cause
    return error


def _refusal(url: str, where: _Location, error: Exception) -> BadInput | None:
    """The Hub's refusal, or huggingface_hub's, as one line naming the URL (None for another error)."""
    # imported by fetch; huggingface_hub.utils has them in every version (2.x re-exports them
    # lazily, unseen by mypy), huggingface_hub.errors is missing in 0.20
    from huggingface_hub.utils import (  # type: ignore[attr-defined]
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    login = "hf auth login" if importlib.util.find_spec("huggingface_hub.cli") else "huggingface-cli login"
    access = f"set HF_TOKEN to a token that can read it (or run `{login}`)"
    status = getattr(getattr(error, "response", None), "status_code", None)
    if isinstance(error, LocalEntryNotFoundError):  # before EntryNotFoundError: its subclass in 0.x
        problem = f"not in the Hugging Face cache, and the Hub did not give it: {first_line(error)}"
    elif isinstance(error, GatedRepoError):
        problem = f"{where.repo_id} is gated: accept its conditions on the Hub, then {access}"
    elif isinstance(error, RepositoryNotFoundError):
        problem = f"no repository {where.repo_id} on the Hub, or it is private: if you may read it, {access}"
    elif isinstance(error, RevisionNotFoundError):
        problem = f"no revision {where.revision!r} in {where.repo_id}"
    elif isinstance(error, EntryNotFoundError):
        problem = f"a file of it is gone from {where}: {first_line(error)}"
    elif isinstance(error, HFValidationError):
        problem = f"not a repository name: {first_line(error)}"
    elif isinstance(error, HfHubHTTPError) and status in (401, 403):
        problem = f"the Hub refused access to {where.repo_id} (HTTP {status}): {access}"
    elif isinstance(error, HfHubHTTPError):
        problem = f"the Hub answered: {first_line(error)}"
    else:
        return None
    return BadInput(url, problem)
