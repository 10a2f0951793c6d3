"""The console script behaves as people expect: --help everywhere, one-line errors, exit codes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from cacnode.cli import build_parser

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


@pytest.mark.parametrize(
    "argv",
    [
        ["score", "series"],
        ["evaluate", "cases", "--out", "out"],
        ["phantom", "out"],
        ["train"],
        ["serve"],
        ["status"],
        ["retry"],
    ],
    ids=lambda argv: argv[0],
)
def test_verbose_is_taken_after_the_command_too(argv):
    parser = build_parser()
    assert parser.parse_args([*argv, "-v"]).verbose
    assert parser.parse_args([*argv, "--verbose"]).verbose
    assert parser.parse_args(["-v", *argv]).verbose  # a command without -v keeps the one given before it
    assert not parser.parse_args(argv).verbose


def test_verbose_after_the_command_shows_the_traceback(tmp_path):
    result = cacnode("score", str(tmp_path / "nowhere"), "--labels", str(tmp_path / "x.nii.gz"), "-v", cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    assert "Traceback" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("cacnode score: error:")


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs Linux /proc, where nobody may create files")
def test_unwritable_report_path_fails_before_the_scoring(tmp_path):
    # The series folder does not exist: an error about --sr shows that the path was checked first.
    result = cacnode("score", str(tmp_path / "nowhere"), "--labels", "x.nii.gz", "--sr", "/proc/sr.dcm", cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("cacnode score: error: --sr /proc/sr.dcm: cannot create a file in /proc")


@pytest.mark.parametrize("option", ["--sr", "--seg", "--summary"])
def test_report_path_in_a_missing_folder_is_an_error_and_no_folder_is_made(tmp_path, option):
    target = tmp_path / "missing" / "report.dcm"
    result = cacnode("score", str(tmp_path / "nowhere"), "--labels", "x.nii.gz", option, str(target), cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines == [f"cacnode score: error: {option} {target}: folder {target.parent} does not exist"], result.stderr
    assert not target.parent.exists()


def test_two_report_options_naming_one_file_is_an_error(tmp_path):
    result = cacnode("score", "series", "--labels", "x.nii.gz", "--sr", "r.dcm", "--seg", "./r.dcm", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == "cacnode score: error: --sr and --seg name the same file r.dcm"
