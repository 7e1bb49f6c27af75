"""The published evidence is rebuilt from the committed raw data: every summary CSV under docs/study/results/ is
recomputed from its per-case CSV, and the tables in docs/results.md and the README headline are the ones the
report code renders from those CSVs (text compared), so published numbers cannot drift from the data."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

from nnunetv2_llm4seg.evidence import SUMMARY_HEADER, attention_table, curve_table, headline_table, read_summary, rebuild, \
    render_table

REPO = Path(__file__).resolve().parents[1]
STUDY_FILES = sorted(path for path in (REPO / "docs" / "study").glob("*.json")
                     if (path.parent / json.loads(path.read_text())["output"] / "study.csv").is_file())
EXPLAINED = sorted(path.parent for path in (REPO / "docs" / "study" / "results").glob("*/explain_per_case.csv"))
LONG_SCHEDULE = ("busbra-long", (1, 5, 10, 20, 30, 40, 50))  # results folder, epochs shown in docs/results.md
HEADLINE = (("BUS-BRA, 3 seeds", "busbra-seeds"), ("BUS-BRA, 1 seed", "busbra"), ("Kvasir-SEG", "kvasir"))  # README


def _folder(study_file: Path) -> Path:
    return study_file.parent / json.loads(study_file.read_text())["output"]


def _same(a: object, b: object) -> bool:
    try:
        x, y = float(a), float(b)
    except ValueError:
        return str(a) == str(b)
    return (math.isnan(x) and math.isnan(y)) or math.isclose(x, y, rel_tol=1e-9, abs_tol=1e-12)


def test_there_are_published_studies_to_check():
    assert {path.stem for path in STUDY_FILES} >= {"busbra", "kvasir"}
    assert {folder.name for folder in EXPLAINED} >= {"busbra-explain"}


@pytest.mark.parametrize("study_file", STUDY_FILES, ids=lambda path: path.stem)
def test_summary_csv_is_recomputed_from_the_per_case_csv(study_file):
    config = json.loads(study_file.read_text())
    subset_by = {entry["dataset"]: entry["split"]["by"] for entry in config["datasets"]
                 if isinstance(entry, dict) and "split" in entry}
    folder = _folder(study_file)
    recomputed = rebuild(folder, "study", config.get("baseline", "stock"), config.get("seed", 0), subset_by)
    committed = read_summary(folder / "study.csv")
    assert [(r["dataset"], r["subset"], r["row"]) for r in recomputed] == \
        [(r["dataset"], r["subset"], r["row"]) for r in committed]
    for new, old in zip(recomputed, committed):
        differing = [key for key in SUMMARY_HEADER if not _same(new[key], old[key])]
        assert not differing, f"{study_file.stem} {old['row']}: {[(k, new[k], old[k]) for k in differing]}"


@pytest.mark.parametrize("study_file", STUDY_FILES, ids=lambda path: path.stem)
def test_results_md_and_study_md_show_the_table_rendered_from_the_csv(study_file):
    table = render_table(read_summary(_folder(study_file) / "study.csv"))
    assert table in (REPO / "docs" / "results.md").read_text()
    assert table in (_folder(study_file) / "study.md").read_text()


def test_readme_headline_is_rendered_from_the_csvs():
    studies = [(label, read_summary(REPO / "docs" / "study" / "results" / name / "study.csv"))
               for label, name in HEADLINE]
    assert headline_table(studies) in (REPO / "README.md").read_text()


@pytest.mark.parametrize("folder", EXPLAINED, ids=lambda folder: folder.name)
def test_attention_tables_are_rendered_from_their_per_case_csv(folder):
    with (folder / "explain_per_case.csv").open(newline="") as handle:
        records = list(csv.DictReader(handle))
    table = attention_table(records, tuple(dict.fromkeys(record["row"] for record in records)))
    assert table in (REPO / "docs" / "results.md").read_text()
    assert table in (folder / "explain.md").read_text()


def test_long_schedule_curves_are_rendered_from_their_csv():
    name, epochs = LONG_SCHEDULE
    with (REPO / "docs" / "study" / "results" / name / "study_curves.csv").open(newline="") as handle:
        table = curve_table(list(csv.DictReader(handle)), epochs)
    assert table in (REPO / "docs" / "results.md").read_text()
