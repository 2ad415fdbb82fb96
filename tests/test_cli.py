"""The pointd command dispatcher."""

import pytest

from pointd import cli


def test_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for words in cli.SUBCOMMANDS:
        assert " ".join(words) in out


def test_unknown_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["frobnicate"]) == cli.USAGE_EXIT
    assert "unknown command" in capsys.readouterr().err


def test_no_arguments_prints_usage_and_fails(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([]) == cli.USAGE_EXIT
    assert "usage" in capsys.readouterr().out
