"""The configuration `shelfsync run` uses: a TOML file, the standard directories, flags over
both, and one clear line (exit 2, no traceback) for every mistake."""

from __future__ import annotations

import logging
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from daemon.config import (
    account_token,
    default_config_path,
    default_state_dir,
    merge,
    prepare_state_dir,
    read_config_file,
    settings_from,
)
from daemon.device_key import API_TOKEN_MIN_CHARS, load_or_create_api_token
from daemon.errors import ConfigError
from server_stub.signing import load_or_create_key

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def service_pub(tmp_path: Path) -> Path:
    load_or_create_key(tmp_path / "stub")
    return tmp_path / "stub" / "service.pub"


def _write(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


def test_the_file_gives_every_setting_with_paths_relative_to_it(
    tmp_path: Path, service_pub: Path
) -> None:
    _write(tmp_path / "token", "acct-secret\n")
    config_file = _write(
        tmp_path / "config.toml",
        'service_url = "http://127.0.0.1:9/"\n'
        f'service_key = "{service_pub}"\n'
        'profile = "kindle-keyboard-3g"\n'
        'device_name = "Hall reader"\n'
        'account_token_file = "token"\n'
        'state_dir = "state"\n'
        "tcp_port = 8765\n"
        'log_level = "debug"\n'
        'log_format = "json"\n',
    )
    config = read_config_file(config_file)
    assert config.state_dir == tmp_path / "state"
    assert config.account_token_file == tmp_path / "token"
    settings = settings_from(config, str(config_file), environ={})
    assert settings.service_url == "http://127.0.0.1:9"
    assert settings.profile.name == "Kindle Keyboard 3G"
    assert settings.device_name == "Hall reader"
    assert settings.account_token == "acct-secret"
    assert settings.tcp_port == 8765
    assert settings.state_dir.is_dir()


def test_a_flag_overrides_the_file(tmp_path: Path) -> None:
    config_file = _write(tmp_path / "c.toml", 'profile = "kindle-keyboard-3g"\nlog_level = "info"')
    config = merge(read_config_file(config_file), {"profile": "paperwhite-wifi", "socket": None})
    assert (config.profile, config.log_level, config.socket) == ("paperwhite-wifi", "info", None)


def test_the_state_directory_is_systemds_then_xdgs(tmp_path: Path) -> None:
    assert default_state_dir({"STATE_DIRECTORY": "/var/lib/shelfsync"}) == Path(
        "/var/lib/shelfsync"
    )
    xdg = {"XDG_STATE_HOME": str(tmp_path / "xdg-state")}
    assert default_state_dir(xdg) == tmp_path / "xdg-state" / "shelfsync"
    assert default_state_dir({}) == Path.home() / ".local" / "state" / "shelfsync"


def test_the_users_configuration_is_found_in_xdg_config_home(tmp_path: Path) -> None:
    (tmp_path / "shelfsync").mkdir()
    user = _write(tmp_path / "shelfsync" / "config.toml", "")
    assert default_config_path({"XDG_CONFIG_HOME": str(tmp_path)}) == user


def test_the_account_token_comes_from_a_file_the_environment_or_a_systemd_credential(
    tmp_path: Path,
) -> None:
    credentials = tmp_path / "creds"
    credentials.mkdir()
    _write(credentials / "account-token", "from-systemd\n", 0o400)
    assert account_token(None, {"CREDENTIALS_DIRECTORY": str(credentials)}) == "from-systemd"
    assert account_token(None, {"SHELFSYNC_ACCOUNT_TOKEN": "from-env"}) == "from-env"
    assert account_token(None, {}) is None


@pytest.mark.parametrize(
    ("config_text", "field", "reason"),
    [
        ('service_uri = "http://x"', "service_uri", "unknown key; did you mean 'service_url'?"),
        ("tcp_port = '8080'", "tcp_port", "must be an integer"),
        ("profile = 3", "profile", "must be a string"),
        ("log_level = [", "<file>", "invalid TOML"),
    ],
)
def test_a_bad_file_is_refused_naming_the_key(
    tmp_path: Path, config_text: str, field: str, reason: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        read_config_file(_write(tmp_path / "c.toml", config_text))
    assert (caught.value.field, caught.value.reason.startswith(reason)) == (field, True)


def test_a_token_file_others_can_read_is_refused(tmp_path: Path) -> None:
    token = _write(tmp_path / "token", "secret", 0o644)
    with pytest.raises(ConfigError, match="readable by others"):
        account_token(token, {})


def _config_command(
    *args: str, env: dict[str, str] | None = None, command: str = "config"
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "daemon", command, *args],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
        env={**os.environ, "XDG_CONFIG_HOME": "/nonexistent", **(env or {})},
    )


def test_shelfsync_config_prints_what_run_would_use_without_secrets(
    tmp_path: Path, service_pub: Path
) -> None:
    token = _write(tmp_path / "token", "acct-very-secret")
    done = _config_command(
        "--service=http://127.0.0.1:9",
        f"--service-key={service_pub}",
        f"--account-token-file={token}",
        "--profile=kindle-keyboard-3g",
        env={"XDG_STATE_HOME": str(tmp_path / "xdg")},
    )
    assert done.returncode == 0, done.stderr
    assert f"state_dir = {tmp_path / 'xdg' / 'shelfsync'}" in done.stdout
    assert "account_token = given" in done.stdout
    assert "acct-very-secret" not in done.stdout


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (
            ["--service-key={tmp}/no-such.pub"],
            "{tmp}/no-such.pub: field 'service_key': no such file",
        ),
        (["--profile=kindel"], "kindel.toml: field '<file>': no such file; shipped profiles:"),
        (["--state={tmp}/a-file/state"], "field 'state_dir': not writable: Not a directory"),
        (["--log-level=verbose"], "field 'log_level': 'verbose' is not one of debug, info,"),
        (["--log-format=xml"], "field 'log_format': 'xml' is not one of text, json"),
        (["--config={tmp}/bad.toml"], "bad.toml: field 'servce_url': unknown key; did you mean"),
        (["--config={tmp}/missing.toml"], "missing.toml: field '<file>': no such file"),
        (["--account-token-file={tmp}/no-token"], "no-token: field 'account_token_file': no such"),
    ],
)
def test_every_mistake_is_one_line_and_exit_code_2(
    tmp_path: Path, service_pub: Path, flags: list[str], message: str
) -> None:
    (tmp_path / "a-file").write_text("not a directory")
    _write(tmp_path / "bad.toml", 'servce_url = "http://x"')
    base = {
        "--service": "--service=http://127.0.0.1:9",
        "--service-key": f"--service-key={service_pub}",
        "--state": f"--state={tmp_path / 'state'}",
    }
    given = [f.format(tmp=tmp_path) for f in flags]
    args = [v for k, v in base.items() if not any(g.startswith(k + "=") for g in given)]
    done = _config_command(*args, *given)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert message.format(tmp=tmp_path) in done.stderr


@pytest.mark.parametrize(
    ("flag", "message"),
    [
        ("--log-level=verbose", "field 'log_level': 'verbose' is not one of"),
        ("--state={tmp}/a-file/state", "field 'state_dir': not writable: Not a directory"),
        ("--service-key={tmp}/no-such.pub", "field 'service_key': no such file"),
    ],
)
def test_run_refuses_the_same_mistakes_in_one_line_before_starting(
    tmp_path: Path, service_pub: Path, flag: str, message: str
) -> None:
    (tmp_path / "a-file").write_text("not a directory")
    args = {
        "--service": "http://127.0.0.1:9",
        "--service-key": str(service_pub),
        "--state": str(tmp_path / "state"),
    }
    given = flag.format(tmp=tmp_path)
    args[given.split("=")[0]] = given.split("=", 1)[1]
    done = _config_command(*(f"{k}={v}" for k, v in args.items()), command="run")
    assert (done.returncode, done.stderr.count("\n")) == (2, 1), done.stderr
    assert message in done.stderr


@pytest.mark.parametrize("mode", [0o755, 0o777, 0o750])
def test_a_state_directory_others_can_enter_is_made_owner_only_and_says_so(
    tmp_path: Path, mode: int, caplog: pytest.LogCaptureFixture
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    state.chmod(mode)
    with caplog.at_level(logging.WARNING):
        assert prepare_state_dir(state) == state
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    assert "state_dir_mode_repaired" in caplog.text


def test_an_owner_only_state_directory_is_left_as_it_is(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    state = tmp_path / "state"
    with caplog.at_level(logging.INFO):
        prepare_state_dir(state)
        prepare_state_dir(state)
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    assert "repaired" not in caplog.text


def test_the_api_token_is_made_owner_only_and_of_full_length(tmp_path: Path) -> None:
    path = tmp_path / "api-token"
    token = load_or_create_api_token(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(token) >= API_TOKEN_MIN_CHARS
    assert load_or_create_api_token(path) == token  # kept across restarts


@pytest.mark.parametrize(
    ("mode", "text", "kept"),
    [
        (0o644, "x" * 43, True),  # a whole token others could read: made owner-only
        (0o600, "abcde", False),  # five characters: anyone could guess it
        (0o644, "abcde", False),
        (0o600, "", False),
        (0o600, "é" * 43, False),  # not a token this daemon wrote
    ],
)
def test_a_weak_api_token_file_is_repaired_or_replaced_and_says_so(
    tmp_path: Path, mode: int, text: str, kept: bool, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "api-token"
    path.write_text(text)
    path.chmod(mode)
    with caplog.at_level(logging.WARNING):
        token = load_or_create_api_token(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text().strip() == token
    assert len(token) >= API_TOKEN_MIN_CHARS
    assert (token == text) is kept
    assert ("api_token_mode_repaired" if kept else "api_token_replaced") in caplog.text
