"""Config loading: layering, clear errors, secrets redacted."""

from pathlib import Path

import pytest

from edged.cli import main
from edged.config import ConfigError, load_settings


def write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_defaults_are_valid() -> None:
    s = load_settings(env={})
    assert s.session.turn_detection == "local"
    assert s.gemini.api_key is None


def test_layers_override_in_order(tmp_path: Path) -> None:
    admin = write(tmp_path, "edged.toml", '[gemini]\nvoice = "Puck"\nlanguage = "en-US"\n')
    ota = write(tmp_path, "current.toml", '[gemini]\nvoice = "Aoede"\n')
    s = load_settings(admin, ota, env={"GEMINI_API_KEY": "k-123"})
    assert s.gemini.voice == "Aoede"          # OTA beats admin
    assert s.gemini.language == "en-US"       # admin beats defaults
    assert s.api_key() == "k-123"             # environment beats files


def test_error_names_file_key_value_and_rule(tmp_path: Path) -> None:
    admin = write(tmp_path, "edged.toml", "[vad]\naggressiveness = 7\n")
    with pytest.raises(ConfigError) as e:
        load_settings(admin, tmp_path / "none.toml", env={})
    msg = str(e.value)
    assert str(admin) in msg and "vad.aggressiveness" in msg and "7" in msg
    assert "less than or equal to 3" in msg


def test_unknown_key_is_an_error_not_ignored(tmp_path: Path) -> None:
    admin = write(tmp_path, "edged.toml", '[gemini]\nmodle = "x"\n')
    with pytest.raises(ConfigError, match=r"unknown key 'gemini.modle'"):
        load_settings(admin, tmp_path / "none.toml", env={})


def test_bad_toml_names_the_file(tmp_path: Path) -> None:
    admin = write(tmp_path, "edged.toml", "[gemini\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(admin, tmp_path / "none.toml", env={})


def test_check_config_redacts_secret(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GEMINI_API_KEY", "super-secret-key")
    admin = write(tmp_path, "edged.toml", "")
    assert main(["check-config", "--config", str(admin), "--override", str(tmp_path / "x")]) == 0
    out = capsys.readouterr()
    assert "super-secret-key" not in out.out + out.err
    assert "**********" in out.out


def test_check_config_bad_file_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    admin = write(tmp_path, "edged.toml", "[session]\nbackoff_base_s = -1\n")
    assert main(["check-config", "--config", str(admin), "--override", str(tmp_path / "x")]) == 2
    assert "session.backoff_base_s" in capsys.readouterr().err


def test_shipped_example_config_is_valid() -> None:
    example = Path(__file__).resolve().parent.parent / "config" / "edged.example.toml"
    s = load_settings(example, example.with_name("absent.toml"), env={})
    assert s.gemini.language == "es-ES"


def test_every_setting_says_what_it_is_for() -> None:
    """`edged check-config` and the docs rely on it: each key has a description, each section
    a docstring."""
    from pydantic import BaseModel

    from edged.config import Settings

    missing: list[str] = []

    def walk(model: type[BaseModel], prefix: str) -> None:
        if not (model.__doc__ or "").strip():
            missing.append(f"{prefix or 'Settings'} (section docstring)")
        for name, f in model.model_fields.items():
            ann = f.annotation
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                walk(ann, f"{prefix}{name}.")
            elif not (f.description or "").strip():
                missing.append(prefix + name)

    walk(Settings, "")
    assert missing == []
