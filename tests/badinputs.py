"""The bad-input matrix's machinery, shared by the tests/test_bad_inputs*.py files (one file per area).

Each case builds what it needs first (setup), then the folder is snapshotted, then the bad input runs. A case
passes when it ends with a non-zero exit code or an LLM4SegError, its message holds every expected fragment,
and every file that existed after setup is byte-identical afterwards (nothing the user had is lost).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from nnunetv2_llm4seg import cli
from nnunetv2_llm4seg.errors import LLM4SegError

Setup = Callable[[Path, Path], object]


@dataclass(frozen=True)
class BadInput:
    """run(tmp_path, small_model, capsys, monkeypatch) -> (exit code or exception name, message)."""

    run: Callable
    fragments: tuple[str, ...]
    setup: Setup | None = None


class OpensForWriting:
    """A pickle payload: unpickling it without weights_only opens `path` for writing (creating or emptying it),
    so a test sees whether pickled code ran."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return open, (str(self.path), "w")


def snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and not p.is_symlink()}


def spec_file(folder: Path, data: dict, name: str = "spec.json") -> str:
    path = folder / name
    path.write_text(json.dumps(data))
    return str(path)


def small_spec_dict(model: Path, **changes) -> dict:
    return {"source": str(model), "layer": 1, "config": json.loads((model / "config.json").read_text()), **changes}


def run_llm4seg(args: list[str], capsys) -> tuple[int, str]:
    """`llm4seg ARGS` in this process: its exit code and everything it printed."""
    try:
        code = cli.main(args)
    except SystemExit as exit_:  # argparse errors
        code = exit_.code
    captured = capsys.readouterr()
    return code, captured.err + captured.out


def cli_run(args: Callable[[Path, Path], list[str]]) -> Callable:
    """A case body: `llm4seg args(tmp_path, small_model)`, expected to exit non-zero."""
    def run(tmp_path, small_model, capsys, monkeypatch):
        return run_llm4seg(args(tmp_path, small_model), capsys)
    return run


def raises_run(action: Callable) -> Callable:
    """A case body: action(tmp_path, small_model, monkeypatch), expected to raise an LLM4SegError."""
    def run(tmp_path, small_model, capsys, monkeypatch):
        try:
            action(tmp_path, small_model, monkeypatch)
        except LLM4SegError as error:
            return type(error).__name__, str(error)
        raise AssertionError("no error was raised")
    return run


def cli_case(args: Callable[[Path, Path], list[str]], fragments: list[str], setup: Setup | None = None) -> BadInput:
    """`llm4seg args(tmp_path, small_model)` must exit non-zero with a message holding `fragments`."""
    return BadInput(cli_run(args), tuple(fragments), setup)


def raises_case(action: Callable, fragments: list[str], setup: Setup | None = None) -> BadInput:
    """action(tmp_path, small_model, monkeypatch) must raise an LLM4SegError holding `fragments`."""
    return BadInput(raises_run(action), tuple(fragments), setup)


def one_line(case: BadInput) -> BadInput:
    """`case`, also asserting that its message is one line: one `error:` line of the command (argparse's usage
    lines aside), or an exception text without line breaks; never a traceback."""
    def run(tmp_path, small_model, capsys, monkeypatch):
        outcome, message = case.run(tmp_path, small_model, capsys, monkeypatch)
        single = message.count("error:") == 1 if isinstance(outcome, int) else "\n" not in message.strip()
        assert single and "Traceback" not in message, f"not one line: {message!r}"
        return outcome, message
    return BadInput(run, case.fragments, case.setup)


def check_bad_input(name: str, case: BadInput, tmp_path: Path, small_model: Path, capsys, monkeypatch) -> None:
    """Run one case in isolated nnU-Net folders and check outcome, message and untouched files."""
    monkeypatch.setenv("nnUNet_raw", str(tmp_path / "nnunet_raw"))
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path / "nnunet_preprocessed"))
    monkeypatch.setenv("nnUNet_results", str(tmp_path / "nnunet_results"))
    for variable, value in (("nnUNet_n_proc_DA", "1"), ("nnUNet_def_n_proc", "1"), ("nnUNet_compile", "f")):
        monkeypatch.setenv(variable, value)
    (tmp_path / "existing").mkdir()
    (tmp_path / "existing" / "keep.txt").write_text("results that must survive")
    model_before = snapshot(small_model)
    if case.setup is not None:
        case.setup(tmp_path, small_model)
    before = snapshot(tmp_path)
    outcome, message = case.run(tmp_path, small_model, capsys, monkeypatch)
    assert outcome not in (0, None), f"{name}: succeeded"
    for fragment in case.fragments:
        assert fragment in message, f"{name}: {fragment!r} not in {message!r}"
    after = snapshot(tmp_path)
    assert {k: v for k, v in after.items() if k in before} == before, f"{name}: existing files changed"
    assert snapshot(small_model) == model_before, f"{name}: the model folder changed"
