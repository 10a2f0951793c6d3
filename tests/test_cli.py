"""The console script behaves as people expect: --help everywhere, one-line errors, exit codes."""

from __future__ import annotations

import subprocess
import sys

import pytest

COMMANDS = ["score", "phantom", "train", "serve", "status", "retry"]


def cacnode(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cacnode.cli", *args], capture_output=True, text=True, **kwargs)


def test_top_level_help_lists_every_command():
    result = cacnode("--help")
    assert result.returncode == 0
    for command in COMMANDS:
        assert command in result.stdout
    assert "Not a medical device" in result.stdout


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command):
    result = cacnode(command, "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: cacnode {command}")


def test_missing_series_folder_is_one_line_on_stderr(tmp_path):
    result = cacnode("score", str(tmp_path / "nowhere"), "--labels", str(tmp_path / "x.nii.gz"), cwd=tmp_path)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("cacnode score: error:") and "nowhere" in lines[0]


def test_bad_config_is_one_line_naming_the_key(tmp_path):
    (tmp_path / "bad.toml").write_text("[scp]\nprot = 1\n")
    result = cacnode("status", "--config", str(tmp_path / "bad.toml"), cwd=tmp_path)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("cacnode status: error:")
    assert "scp: unknown key(s) prot" in lines[0]


def test_unknown_command_exits_2():
    assert cacnode("frobnicate").returncode == 2
