"""The path policy: where what a user names may be read from and written to, checked before anything is touched.

* Datasets named by a user (`--data nnunet:NAME`) are folders directly inside nnUNet_raw.
* Plans identifiers (`-pl`, `-p`, a study's "plans") are plain names of plans files in the dataset's
  nnUNet_preprocessed folder: no folders, no '..'.
* Paths in a study file are relative to the study file, never to the current directory.
* Output folders (demo, ablate, study) are written only when new, empty, or marked as an earlier output of the
  same command (a marker file the command writes first), so files the package did not create are never overwritten.
"""
from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

from nnunetv2_llm4seg.errors import LLM4SegError

_PLANS_IDENTIFIER = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_DATASET_FOLDER = re.compile(r"Dataset\d{3}_[A-Za-z0-9_.-]+")


class PathPolicyError(LLM4SegError, ValueError):
    """A path a user gave lies outside where the package may read or write it."""


def plans_identifier(name: str, what: str) -> str:
    """`name` if it is a plain plans identifier (the stem of a plans file next to nnUNetPlans.json)."""
    if not isinstance(name, str) or not _PLANS_IDENTIFIER.fullmatch(name) or ".." in name:
        raise PathPolicyError(f"{what} {name!r} is not a plans identifier: give the plain name of plans in the "
                              "dataset's nnUNet_preprocessed folder (e.g. nnUNetPlans or nnUNetPlans_NAME), without "
                              "folders or '..'.")
    return name


def dataset_name(name: str, what: str) -> str:
    """`name` if it is a dataset folder name (DatasetNNN_Name, no separators: inside nnU-Net's folders it cannot
    lie elsewhere)."""
    if not _DATASET_FOLDER.fullmatch(name):
        raise PathPolicyError(f"{what}: {name!r} is not a dataset of nnUNet_raw; name one by its id (5, Dataset005) "
                              "or its folder name (Dataset005_Name), without folders or '..'.")
    return name


def find_dataset(reference: str) -> str | None:
    """The dataset folder name nnU-Net resolves an id (5) or name (Dataset005, Dataset005_Name) to, as
    nnUNetv2_train does, or None when nnU-Net finds no such dataset (the caller says what to do)."""
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return maybe_convert_to_dataset_name(int(reference) if reference.isdigit() else reference)
    except RuntimeError:
        return None


def raw_dataset_folder(name: str, raw: Path, what: str) -> Path:
    """The folder nnUNet_raw/NAME for a dataset folder name; whether it exists is the caller's question."""
    return raw / dataset_name(name, what)


def relative_to_file(value: object, file: Path, what: str) -> Path:
    """A path given in `file` (a study file): relative paths are taken from the file's folder, not the cwd."""
    if not isinstance(value, str) or not value.strip():
        raise PathPolicyError(f"{file}: {what} must be a path (a string, relative to the study file), got "
                              f"{value!r}.")
    return (file.parent / Path(value).expanduser()).resolve()


def output_marker(command: str) -> str:
    """The marker file that makes a folder an output of `llm4seg COMMAND`."""
    return f".llm4seg_{command}"


def check_output(folder: Path, command: str, option: str) -> None:
    """`folder` may be written by `llm4seg COMMAND`: new, empty, or an earlier output of it (its marker file)."""
    marker = output_marker(command)
    if folder.exists() and not folder.is_dir():
        raise PathPolicyError(f"cannot write to the output folder {folder} (a file of that name exists); choose "
                              f"another one with {option}.")
    if folder.is_dir() and any(folder.iterdir()) and not (folder / marker).is_file():
        raise PathPolicyError(f"the output folder {folder} is not empty and is not a previous llm4seg {command} "
                              f"output (no {marker} file): choose a new or empty folder with {option} (if it is an "
                              f"output of an earlier llm4seg version, create the empty file {folder / marker}).")


def claim_output(folder: Path, command: str, option: str) -> None:
    """Create the output folder and its marker (the first thing the command writes there)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / output_marker(command)).write_text(f"written by llm4seg {command}: it may write into this folder "
                                                      "again\n")
    except OSError as error:
        raise PathPolicyError(f"cannot write to the output folder {folder} ({error.strerror}); choose another one "
                              f"with {option}.") from None
