"""The published evidence is rebuilt from the committed raw data: every summary CSV under docs/study/results/ is
recomputed from its per-case CSV, and the tables in docs/results.md and the README headline are the ones the
report code renders from those CSVs (text compared), so published numbers cannot drift from the data."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from nnunetv2_llm4seg.evidence import SUMMARY_HEADER, headline_table, read_summary, rebuild, render_table

REPO = Path(__file__).resolve().parents[1]
STUDY_FILES = sorted(path for path in (REPO / "docs" / "study").glob("*.json")
                     if (path.parent / json.loads(path.read_text())["output"] / "study.csv").is_file())
HEADLINE = (("BUS-BRA", "busbra"), ("Kvasir-SEG", "kvasir"))  # README: label, results folder


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
