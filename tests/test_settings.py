"""Settings are declared once (server/config.py): ``statehost serve``'s flags, their environment
variables and docs/configuration.md are all derived from the fields, and agree with them."""

from __future__ import annotations

import argparse
import dataclasses
import typing
from pathlib import Path

import pytest

from runtime import ENGINE_NAMES, FetchPolicy, Limits
from server import settings_doc
from server.cli import _parser
from server.config import ServeFlag, Settings, serve_flags, settings_from_args

FLAGS = list(serve_flags())


def _name(flag: ServeFlag) -> str:
    return f"{flag.option}:{flag.setting}"


def _serve_parser() -> argparse.ArgumentParser:
    sub = next(a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices["serve"]


def _clear_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for flag in FLAGS:
        if flag.env:
            monkeypatch.delenv(flag.env, raising=False)


def _parse(*argv: str) -> Settings:
    return settings_from_args(_parser().parse_args(["serve", *argv]))


def _field_value(settings: Settings, flag: ServeFlag) -> object:
    value = getattr(settings, flag.setting)
    return getattr(value, flag.nested) if flag.nested else value


def _other_value(flag: ServeFlag, tmp_path: Path) -> tuple[list[str], object]:
    """Command-line words that set ``flag`` to something other than its default, and the value the
    setting should then have."""
    if flag.parse is None:
        return [], True
    if flag.choices:
        other = next(c for c in flag.choices if c != flag.default)
        return [other], other
    if flag.option == "--data-dir":
        return [str(tmp_path)], tmp_path
    if flag.parse is float:
        return ["2.5"], 2.5
    if flag.parse is str:
        return ["given-" + flag.dest], "given-" + flag.dest
    return ["7"], 7  # the int settings (and the non-negative counts)


def test_serve_has_exactly_the_declared_flags():
    options = {o for a in _serve_parser()._actions for o in a.option_strings if o not in ("-h", "--help")}
    assert options == {f.option for f in FLAGS}
    # data-dir is one flag for two settings; every other flag sets one field.
    assert sorted(f.setting for f in FLAGS if f.option == "--data-dir") == ["bootstrap_file", "database"]
    assert len({f.option for f in FLAGS}) == len(FLAGS) - 1


def test_no_flags_give_the_settings_defaults(monkeypatch):
    _clear_env(monkeypatch)
    assert _parse() == Settings(database=Path(".statehost/statehost.db"), bootstrap_file=Path(".statehost/admin.json"))


@pytest.mark.parametrize("flag", [f for f in FLAGS if f.option != "--data-dir" or f.setting == "database"], ids=_name)
def test_each_flag_sets_its_setting_and_nothing_else(flag, monkeypatch, tmp_path):
    _clear_env(monkeypatch)
    words, expected = _other_value(flag, tmp_path)
    settings = _parse(flag.option, *words)
    if flag.option == "--data-dir":
        assert (settings.database, settings.bootstrap_file) == (tmp_path / "statehost.db", tmp_path / "admin.json")
        return
    assert _field_value(settings, flag) == expected != _field_value(_parse(), flag)
    changed = {f.name for f in dataclasses.fields(Settings) if getattr(settings, f.name) != getattr(_parse(), f.name)}
    assert changed == {flag.setting}


@pytest.mark.parametrize("flag", [f for f in FLAGS if f.env and f.setting != "bootstrap_file"], ids=_name)
def test_environment_variables_and_the_flag_wins(flag, monkeypatch, tmp_path):
    _clear_env(monkeypatch)
    words, expected = _other_value(flag, tmp_path)
    monkeypatch.setenv(flag.env, words[0])
    from_env = _parse()
    if flag.option == "--data-dir":
        assert from_env.database == tmp_path / "statehost.db"
        assert _parse("--data-dir", "elsewhere").database == Path("elsewhere/statehost.db")
        return
    assert _field_value(from_env, flag) == expected
    # Given both, the flag wins.
    word = str(flag.default) if flag.choices else "from-the-flag" if flag.parse is str else "8"
    assert flag.parse is not None
    value = flag.parse(word)
    assert _field_value(_parse(flag.option, word), flag) == value != expected


def test_counts_refuse_negative_numbers_with_a_clear_error(monkeypatch, capsys):
    _clear_env(monkeypatch)
    with pytest.raises(SystemExit) as exited:
        _parse("--actor-vm-memory-mb", "-1")
    assert exited.value.code == 2
    assert "-1 is negative; use 0 or more" in capsys.readouterr().err


def test_the_engine_choices_are_the_runtimes_engines():
    engine = typing.get_type_hints(Settings)["engine"]
    assert set(typing.get_args(engine)) == set(ENGINE_NAMES)
    assert next(f for f in FLAGS if f.option == "--engine").choices == typing.get_args(engine)


def test_nested_flags_set_a_field_of_the_nested_dataclass(monkeypatch):
    _clear_env(monkeypatch)
    settings = _parse("--settle-window-ms", "1234", "--allow-private-fetch")
    assert settings.limits == dataclasses.replace(Limits(), settle_window_ms=1234)
    assert settings.fetch == FetchPolicy(allow_private=True)


def test_the_reference_shows_every_flag_and_variable():
    text = settings_doc.render()
    for flag in FLAGS:
        row = next(line for line in text.splitlines() if line.startswith(f"| `{flag.nested or flag.setting}` |"))
        assert f"`{flag.option}`" in row and (flag.env is None or f"`${flag.env}`" in row), row


def test_write_regenerates_the_reference(monkeypatch, tmp_path, capsys):
    target = tmp_path / "configuration.md"
    target.write_text("stale\n")
    monkeypatch.setattr(settings_doc, "TARGET", target)
    assert settings_doc.main(["--write"]) == 0
    assert target.read_text() == settings_doc.render()
    assert settings_doc.main(["--bogus"]) == 2
    assert "usage" in capsys.readouterr().err
