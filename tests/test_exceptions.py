"""Errors follow the exception tree of pakit_stream.exceptions, and the CLI reports them once."""

import ast
from pathlib import Path

import pytest

import pakit_stream
from pakit_stream import cli
from pakit_stream.exceptions import DataError, PakitStreamError, UsageError
from pakit_stream.replay.traces import read_requests
from pakit_stream.training.config import TrainingConfig

PACKAGE = Path(pakit_stream.__file__).parent
BUILTINS = {"ValueError", "SystemExit", "RuntimeError"}


def test_a_bad_argument_is_a_usage_error_and_still_a_value_error(tmp_path):
    with pytest.raises(UsageError, match="unknown trace format") as info:
        read_requests(tmp_path / "t.txt", "no-such-format")
    assert isinstance(info.value, PakitStreamError) and isinstance(info.value, ValueError)
    with pytest.raises(ValueError, match="must be positive"):  # old callers still catch it
        TrainingConfig(learning_rate=0)
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(DataError, match="no accesses"):
        read_requests(tmp_path / "empty.txt", "lines")


def _main(capsys, monkeypatch, *argv):
    monkeypatch.setattr(cli, "_logging", lambda level: None)  # keep the root logger alone
    status = cli.main([str(a) for a in argv])
    return status, capsys.readouterr().err


def test_cli_reports_a_usage_error_without_a_traceback(tmp_path, capsys, monkeypatch):
    trace = tmp_path / "t.txt"
    trace.write_text("1\n2\n1\n")
    status, err = _main(capsys, monkeypatch, "replay", trace, "--kind", "trace",
                        "--jsonl-out", tmp_path / "out.jsonl")
    assert status == 2 and err.startswith("error: ") and "needs --format" in err
    assert "Traceback" not in err


def test_cli_reports_unusable_data_with_status_1(tmp_path, capsys, monkeypatch):
    (tmp_path / "empty.txt").write_text("")
    status, err = _main(capsys, monkeypatch, "replay", tmp_path / "empty.txt", "--kind", "trace",
                        "--format", "lines", "--jsonl-out", tmp_path / "out.jsonl")
    assert status == 1 and err.startswith("error: ") and "no accesses" in err
    status, err = _main(capsys, monkeypatch, "replay", tmp_path / "missing.jsonl",
                        "--jsonl-out", tmp_path / "out.jsonl")
    assert status == 1 and err.startswith("error: ")  # an OSError: a file that is not there


def _bare_raises(path: Path) -> list[str]:
    """``raise ValueError(...)`` and the like in one source file, as ``path:line``; those in a
    ``__post_init__`` of events/schema.py are allowed (msgspec validators)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    exempt = set()
    if path == PACKAGE / "events" / "schema.py":
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef) and node.name == "__post_init__":
                exempt.update(id(n) for n in ast.walk(node))
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Raise) or node.exc is None or id(node) in exempt:
            continue
        exc = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
        if isinstance(exc, ast.Name) and exc.id in BUILTINS:
            found.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} raises {exc.id}")
    return found


def test_the_package_raises_no_bare_value_runtime_or_system_exit():
    found = [hit for path in sorted(PACKAGE.rglob("*.py")) for hit in _bare_raises(path)]
    assert not found, "raise a pakit_stream.exceptions class instead:\n" + "\n".join(found)
