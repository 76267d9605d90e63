"""``rlstack arena`` command-line errors: one line and exit code 2."""

from __future__ import annotations

from pathlib import Path

import pytest

from robot_learning.cli import main


def test_create_evaluator_prints_a_token_once_and_refuses_a_duplicate(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    db = f"sqlite:///{tmp_path}/arena.db"
    assert main(["arena", "create-evaluator", "ann", "--db", db]) == 0
    token = capsys.readouterr().out.strip()
    assert token.startswith("arena_") and len(token) > 40
    assert main(["arena", "create-evaluator", "ann", "--db", db]) == 2
    assert "evaluator 'ann' exists already" in capsys.readouterr().err
    assert token not in (tmp_path / "arena.db").read_bytes().decode("latin-1")  # only its hash is stored


def test_evaluate_without_token_or_unreachable_server_is_a_one_line_error(capsys: pytest.CaptureFixture,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RLSTACK_ARENA_TOKEN", raising=False)
    assert main(["arena", "evaluate", "--task", "push", "--store", ""]) == 2
    assert "--token" in capsys.readouterr().err
    assert main(["arena", "evaluate", "--task", "nope", "--token", "t", "--store", ""]) == 2
    assert "--task 'nope'" in capsys.readouterr().err
