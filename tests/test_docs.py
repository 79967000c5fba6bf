"""Docs that are derived from code stay true to it."""

from __future__ import annotations

from pathlib import Path

from server.settings_doc import render

ROOT = Path(__file__).resolve().parent.parent


def test_the_configuration_reference_matches_the_settings():
    assert (ROOT / "docs" / "configuration.md").read_text() == render(), (
        "docs/configuration.md is out of date: python -m server.settings_doc > docs/configuration.md"
    )


def test_every_documented_setting_has_a_meaning():
    for line in render().splitlines():
        if line.startswith("| `"):
            assert not line.rstrip().endswith("|  |"), f"a setting without a docstring: {line}"
