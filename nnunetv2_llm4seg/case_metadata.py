"""Per-case metadata of an nnU-Net raw dataset: `case_metadata.csv` next to its dataset.json.

One row per training case (imagesTr): `case` (the nnU-Net case id) and the columns the source records, among
`patient` (several images of one patient are correlated: statistics resample patients, folds keep them
together), `device` (the scanner or centre that acquired the image: a domain for cross-device studies) and
`category` (the source's own class of the image). `llm4seg convert` writes it; columns the source does not
have are left out, and a source with none of them gets no file (Kvasir-SEG has no patient ids).
"""
from __future__ import annotations

import csv
import io
from pathlib import Path

from nnunetv2_llm4seg.errors import LLM4SegError

FILE_NAME = "case_metadata.csv"
COLUMNS = ("patient", "device", "category")


class MetadataError(LLM4SegError, ValueError):
    """A dataset's case_metadata.csv is missing, unreadable or lacks a column that was asked for."""


def metadata_text(rows: dict[str, dict[str, str | None]]) -> str | None:
    """CSV text of case id -> {column: value} with the COLUMNS any case has a value for; None when none has."""
    present = [column for column in COLUMNS if any(values.get(column) for values in rows.values())]
    if not present:
        return None
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer)
    writer.writerow(["case", *present])
    writer.writerows([case, *(values.get(column) or "" for column in present)] for case, values in sorted(rows.items()))
    return buffer.getvalue()


def read_case_metadata(dataset_folder: Path) -> dict[str, dict[str, str]]:
    """case id -> {column: value} from DATASET/case_metadata.csv; {} when the dataset has no such file."""
    path = Path(dataset_folder) / FILE_NAME
    if not path.is_file():
        return {}
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if "case" not in (reader.fieldnames or ()):
            raise MetadataError(f"{path} has no 'case' column (found {reader.fieldnames}): convert the dataset "
                                "again with `llm4seg convert --force`.")
        return {row["case"]: {k: v for k, v in row.items() if k != "case"} for row in reader}


def column_values(metadata: dict[str, dict[str, str]], column: str, where: str) -> dict[str, str]:
    """case id -> value of `column`, refusing a column the metadata lacks or cases without a value."""
    if not metadata:
        raise MetadataError(f"{where}: no {FILE_NAME} in the raw dataset folder; datasets converted with "
                            "`llm4seg convert` (from a source that records patients or devices) have one.")
    missing = [case for case, values in metadata.items() if not values.get(column)]
    if missing:
        available = sorted({key for values in metadata.values() for key, value in values.items() if value})
        raise MetadataError(f"{where}: {len(missing)} case(s) have no {column!r} in {FILE_NAME} (columns with "
                            f"values: {', '.join(available) or 'none'}).")
    return {case: values[column] for case, values in metadata.items()}
