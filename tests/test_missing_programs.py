"""Tests that run programs outside Python (chromium, chromedriver, curl) when those are missing:
skipped with one line saying what to install, failed under CI=true; and `make test`'s
installer, which installs them only as root with apt-get."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import ROOT

INSTALLER = ROOT / "tests" / "install-programs.sh"


def bare_path(tmp_path: Path, *programs: str) -> str:
    """A PATH with this Python's scripts and only the named system programs."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name in programs:
        found = shutil.which(name)
        assert found, f"{name} is needed to run this test"
        (bin_dir / name).symlink_to(found)
    return f"{Path(sys.executable).parent}{os.pathsep}{bin_dir}"


def run_browser_tests(tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "tests/test_browser.py",
         f"--basetemp={tmp_path / 'inner'}"],
        cwd=ROOT,
        env=dict(os.environ, PATH=bare_path(tmp_path), **env),
        capture_output=True,
        text=True,
        timeout=120,
    )  # fmt: skip


def browser_test_count() -> int:
    """How many tests tests/test_browser.py holds (some run on two stores)."""
    listed = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--collect-only", "-q",
         "tests/test_browser.py"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    return sum("::" in line for line in listed.stdout.splitlines())


def test_without_a_browser_the_browser_tests_are_skipped_in_one_line(tmp_path):
    result = run_browser_tests(tmp_path, CI="")
    assert result.returncode == 0, result.stdout + result.stderr
    skipped = [line for line in result.stdout.splitlines() if line.startswith("SKIPPED")]
    assert len(skipped) == 1, result.stdout
    assert skipped[0].startswith(f"SKIPPED [{browser_test_count()}] ")
    assert "chromium, chromedriver not found on PATH" in skipped[0]
    assert "packages chromium chromium-driver" in skipped[0]
    assert "error" not in result.stdout.lower()


def test_without_a_browser_under_ci_the_browser_tests_fail(tmp_path):
    result = run_browser_tests(tmp_path, CI="true")
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"{browser_test_count()} errors" in result.stdout
    assert "CI=true: chromium, chromedriver not found on PATH" in result.stdout
    assert "skipped" not in result.stdout


def run_installer(path: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(INSTALLER)],
        env=dict(os.environ, PATH=path, **env),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_installer_without_apt_says_what_to_install_and_fails_only_under_ci(tmp_path):
    path = bare_path(tmp_path, "bash", "id")  # no apt-get, no chromium, no curl
    result = run_installer(path, CI="")
    assert result.returncode == 0, result.stderr
    assert "chromium chromedriver curl missing" in result.stderr
    assert "apt-get install chromium chromium-driver curl" in result.stderr
    assert run_installer(path, CI="true").returncode == 1


@pytest.mark.needs("chromium", "chromedriver", "curl")
def test_the_installer_does_nothing_when_everything_is_there(tmp_path):
    path = bare_path(tmp_path, "bash", "id", "chromium", "chromedriver", "curl")
    result = run_installer(path, CI="true")
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
