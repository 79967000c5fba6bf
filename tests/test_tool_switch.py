"""The STATEHOST_REQUIRE_ALL_TOOLS switch (tests/support.py need_tool, the hooks in tests/conftest.py):
a missing tool skips a developer's test and fails CI's, and under the switch any skipped test fails
the run unless it is marked allowed_skip. Runs pytest in a subprocess on a tiny test file, with the
real hooks (``-p tests.conftest``), with and without the switch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import REQUIRE_ALL_TOOLS

ROOT = Path(__file__).resolve().parent.parent

TINY = """
import pytest

from tests.support import need_tool, which_or_need


def test_needs_a_missing_tool():
    need_tool("no-such-tool", "it does not exist anywhere")


def test_needs_a_missing_program():
    which_or_need("statehost-no-such-program", "it is not on PATH")


def test_skips_on_its_own():
    pytest.skip("a bare skip, not through need_tool")


@pytest.mark.allowed_skip("this one says why it may skip")
def test_may_skip():
    pytest.skip("allowed")


def test_passes():
    assert 1 + 1 == 2
"""


def _run(tmp_path: Path, switch: str | None) -> subprocess.CompletedProcess[str]:
    test_file = tmp_path / "test_tiny.py"
    test_file.write_text(TINY)
    env = {k: v for k, v in os.environ.items() if k != REQUIRE_ALL_TOOLS}
    if switch is not None:
        env[REQUIRE_ALL_TOOLS] = switch
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-rA", "-p", "no:cacheprovider", "-p", "tests.conftest", str(test_file)],
        cwd=ROOT,  # `tests` is importable from here; the tiny file's own rootdir has no configuration
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize("switch", [None, "", "0"])
def test_without_the_switch_a_missing_tool_skips(tmp_path: Path, switch: str | None):
    done = _run(tmp_path, switch)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 passed, 4 skipped" in done.stdout, done.stdout
    assert "no-such-tool is missing: it does not exist anywhere" in done.stdout
    assert "statehost-no-such-program is missing: it is not on PATH" in done.stdout
    assert "skipped tests fail the run" not in done.stdout


def test_with_the_switch_a_missing_tool_fails_and_so_does_any_other_skip(tmp_path: Path):
    done = _run(tmp_path, "1")
    assert done.returncode == pytest.ExitCode.TESTS_FAILED, done.stdout + done.stderr
    assert "2 failed, 1 passed, 2 skipped" in done.stdout, done.stdout
    assert "FAILED" in done.stdout and "test_needs_a_missing_tool" in done.stdout
    assert f"no-such-tool is missing: it does not exist anywhere ({REQUIRE_ALL_TOOLS} is set" in done.stdout
    assert "statehost-no-such-program is missing" in done.stdout
    # the bare skip is listed and fails the run; the allowed one is not listed
    section = done.stdout.split(f"skipped tests fail the run ({REQUIRE_ALL_TOOLS} is set)", 1)[1]
    listed = [line for line in section.splitlines() if line.startswith("skipped without allowed_skip: ")]
    assert len(listed) == 1 and "test_skips_on_its_own" in listed[0], listed
    assert "a bare skip, not through need_tool" in listed[0]


def test_with_the_switch_a_run_without_skips_passes(tmp_path: Path):
    test_file = tmp_path / "test_clean.py"
    test_file.write_text("def test_passes():\n    assert True\n")
    env = {**os.environ, REQUIRE_ALL_TOOLS: "1"}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "tests.conftest", str(test_file)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 passed" in done.stdout and "skipped tests fail the run" not in done.stdout
