"""Types: ``fn.start()`` is checked like ``fn.run()``, and a handle knows its result's type."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

SAMPLE = Path(__file__).parent / "typing_samples" / "starts.py"
ROOT = Path(__file__).parent.parent

# The suite runs once per database; types do not depend on it.
pytestmark = pytest.mark.skipif(
    os.environ.get("PGQRS_TEST_DB") == "sqlite", reason="checked once, on the PostgreSQL pass"
)


def _expected() -> tuple[dict[int, str], dict[int, str]]:
    """What the sample's comments expect, by the number of the line they come before."""
    errors, reveals = {}, {}
    for number, line in enumerate(SAMPLE.read_text().splitlines(), start=1):
        comment = line.strip()
        if comment.startswith("# E: "):
            errors[number + 1] = comment.removeprefix("# E: ")
        elif comment.startswith("# R: "):
            reveals[number + 1] = comment.removeprefix("# R: ")
    return errors, reveals


def test_starts_and_results_are_type_checked():
    from mypy import api

    stdout, stderr, _ = api.run(
        ["--config-file", str(ROOT / "pyproject.toml"), "--no-incremental", str(SAMPLE)]
    )
    found_errors: dict[int, str] = {}
    found_reveals: dict[int, str] = {}
    for line in stdout.splitlines():
        match = re.match(r"^(?:.*/)?starts\.py:(\d+): (error|note): (.*?)(  \[[\w-]+\])?$", line)
        if not match:
            continue
        number, kind, message = int(match[1]), match[2], match[3]
        if kind == "note" and message.startswith("Revealed type is "):
            found_reveals[number] = message.removeprefix("Revealed type is ").strip('"')
        elif kind == "error":
            found_errors[number] = message
    errors, reveals = _expected()
    assert found_errors == errors, stdout + stderr
    assert found_reveals == reveals, stdout + stderr
