"""Settings: defaults, flag > env > file > default, validation, secrets; the roomcast command."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping
from pathlib import Path

import pytest

import roomcast
from roomcast._version import __version__
from roomcast.errors import ConfigError
from roomcast.settings import Settings, build_parser, load_settings

# Subprocesses -----------------------------------------------------------------------------

TIMEOUT = 20.0  # seconds any command may take


def clean_env(**extra: str) -> dict[str, str]:
    """The current environment without roomcast settings, able to import roomcast."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("ROOMCAST_") and key != "REDIS_URL"
    }
    source = str(Path(roomcast.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [source, env.get("PYTHONPATH")]))
    env.update(extra)
    return env


def roomcast_command(
    *args: str, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "roomcast", *args],
        capture_output=True,
        text=True,
        env=clean_env() if env is None else dict(env),
        timeout=TIMEOUT,
        check=False,
    )


def write_toml(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# Defaults ---------------------------------------------------------------------------------

SPEC_DEFAULTS = {
    # Network
    "host": "127.0.0.1",
    "port": 8000,
    "allowed_origins": (),
    "ping_interval": 20.0,
    "ping_timeout": 20.0,
    # Limits
    "max_connections": 10000,
    "max_connections_per_user": 0,
    "connect_rate": 0.0,
    "handshake_timeout": 10.0,
    "max_header_bytes": 16384,
    "max_pending_handshakes": 1024,
    "max_message_bytes": 65536,
    "send_queue": 256,
    "send_queue_bytes": 1048576,
    "max_rooms_per_connection": 100,
    "rate": 20.0,
    "burst": 40,
    "rate_bytes": 262144,
    "burst_bytes": 1048576,
    # History
    "history_size": 100,
    "history_ttl": 300.0,
    "history_bytes": 1048576,
    "history_max_bytes": 67108864,
    # Presence
    "presence_events": True,
    "presence_interval": 1.0,
    # Redis
    "redis_url": None,
    "redis_prefix": "realtime",
    "presence_ttl": 30.0,
    # Auth
    "jwt_secret": None,
    "jwt_public_key": None,
    "jwt_audience": None,
    "jwt_issuer": None,
    "auth_required": False,
    # API
    "api_key": None,
    "api_insecure": False,
    # Rooms and backend integration
    "namespaces": (),
    "proxy_connect": None,
    "proxy_join": None,
    "proxy_publish": None,
    "proxy_timeout": 5.0,
    "webhook_url": None,
    "webhook_secret": None,
    # Logging
    "log_format": "console",
    "log_level": "info",
    # Server
    "ws": "native",
    "demo": False,
    "app": None,
    "shutdown_timeout": 10.0,
    "config": None,
}


def test_defaults_match_the_spec() -> None:
    assert dataclasses.asdict(Settings()) == SPEC_DEFAULTS


def test_nothing_set_gives_the_defaults() -> None:
    assert load_settings([], {}) == Settings()
    assert load_settings(None, {}) == Settings()


def test_every_option_has_a_flag() -> None:
    text = build_parser().format_help()
    for item in dataclasses.fields(Settings):
        assert "--" + item.name.replace("_", "-") in text


def test_settings_are_frozen() -> None:
    settings = Settings()
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.port = 1  # type: ignore[misc]


# Precedence -------------------------------------------------------------------------------

# option: (file line, env value, flag arguments, expected from file, from env, from flag)
LAYERS = {
    "port": ("port = 7001", "7002", ["--port", "7003"], 7001, 7002, 7003),
    "allowed_origins": (
        'allowed_origins = ["https://file.example", "https://other.example"]',
        "https://env.example, https://env2.example",
        ["--allowed-origins", "https://flag.example"],
        ("https://file.example", "https://other.example"),
        ("https://env.example", "https://env2.example"),
        ("https://flag.example",),
    ),
    "demo": ("demo = true", "off", ["--demo"], True, False, True),
    "app": (
        'app = "file:app"',
        "env.mod:app",
        ["--app", "flag:api.app"],
        "file:app",
        "env.mod:app",
        "flag:api.app",
    ),
    "log_level": (
        'log_level = "debug"',
        "WARNING",
        ["--log-level", "error"],
        "debug",
        "warning",
        "error",
    ),
    "rate": ("rate = 5", "7.5", ["--rate", "0"], 5.0, 7.5, 0.0),
}


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_flag_beats_env_beats_file_beats_default(tmp_path: Path, name: str) -> None:
    line, env_value, flag_args, from_file, from_env, from_flag = LAYERS[name]
    path = write_toml(tmp_path / "roomcast.toml", line + "\n")
    env_name = "ROOMCAST_" + name.upper()
    config = ["--config", str(path)]

    assert getattr(load_settings([], {}), name) == SPEC_DEFAULTS[name]
    assert getattr(load_settings(config, {}), name) == from_file
    assert getattr(load_settings(config, {env_name: env_value}), name) == from_env
    assert getattr(load_settings(config + flag_args, {env_name: env_value}), name) == from_flag


def test_no_flag_turns_a_switch_off_over_env_and_file(tmp_path: Path) -> None:
    path = write_toml(tmp_path / "roomcast.toml", "api_insecure = true\n")
    env = {"ROOMCAST_CONFIG": str(path), "ROOMCAST_API_INSECURE": "yes"}
    assert load_settings([], env).api_insecure is True
    assert load_settings(["--no-api-insecure"], env).api_insecure is False


def test_config_file_from_env(tmp_path: Path) -> None:
    path = write_toml(tmp_path / "roomcast.toml", "max_connections = 5000\n")
    settings = load_settings([], {"ROOMCAST_CONFIG": str(path)})
    assert settings.max_connections == 5000
    assert settings.config == path


def test_config_flag_beats_config_env(tmp_path: Path) -> None:
    flag_file = write_toml(tmp_path / "flag.toml", "burst = 1\n")
    env_file = write_toml(tmp_path / "env.toml", "burst = 2\n")
    settings = load_settings(["--config", str(flag_file)], {"ROOMCAST_CONFIG": str(env_file)})
    assert settings.burst == 1


def test_file_list_may_be_a_comma_string(tmp_path: Path) -> None:
    path = write_toml(
        tmp_path / "roomcast.toml", 'allowed_origins = "https://a.example,https://b.example"\n'
    )
    settings = load_settings(["--config", str(path)], {})
    assert settings.allowed_origins == ("https://a.example", "https://b.example")


def test_full_file(tmp_path: Path) -> None:
    key = write_toml(tmp_path / "key.pem", "-----BEGIN PUBLIC KEY-----\n")
    path = write_toml(
        tmp_path / "roomcast.toml",
        f"""
host = "0.0.0.0"
port = 9000
ping_interval = 5
max_connections_per_user = 3
connect_rate = 2.5
history_ttl = 0
redis_url = "rediss://cache.internal:6380/1"
redis_prefix = "chat"
jwt_public_key = "{key}"
jwt_audience = "app"
auth_required = true
api_key = "k"
log_format = "json"
ws = "asgi"
shutdown_timeout = 3
""",
    )
    settings = load_settings(["--config", str(path)], {})
    assert settings.host == "0.0.0.0"
    assert settings.port == 9000
    assert settings.ping_interval == 5.0
    assert isinstance(settings.ping_interval, float)
    assert settings.max_connections_per_user == 3
    assert settings.connect_rate == 2.5
    assert settings.history_ttl == 0.0
    assert settings.redis_url == "rediss://cache.internal:6380/1"
    assert settings.redis_prefix == "chat"
    assert settings.jwt_public_key == key
    assert settings.jwt_audience == "app"
    assert settings.auth_required is True
    assert settings.api_key == "k"
    assert settings.log_format == "json"
    assert settings.ws == "asgi"
    assert settings.shutdown_timeout == 3.0


@pytest.mark.parametrize(
    ("word", "value"),
    [
        ("1", True),
        ("true", True),
        ("TRUE", True),
        ("yes", True),
        ("On", True),
        ("0", False),
        ("false", False),
        ("No", False),
        ("OFF", False),
    ],
)
def test_env_booleans(word: str, value: bool) -> None:
    assert load_settings([], {"ROOMCAST_DEMO": word}).demo is value


def test_empty_env_clears_an_optional_option() -> None:
    assert load_settings([], {"ROOMCAST_JWT_AUDIENCE": ""}).jwt_audience is None
    assert load_settings([], {"ROOMCAST_ALLOWED_ORIGINS": ""}).allowed_origins == ()


# Redis URL alias --------------------------------------------------------------------------


def test_redis_url_alias() -> None:
    settings = load_settings([], {"REDIS_URL": "redis://alias:6379/0"})
    assert settings.redis_url == "redis://alias:6379/0"


def test_roomcast_redis_url_beats_the_alias() -> None:
    env = {"REDIS_URL": "redis://alias:6379/0", "ROOMCAST_REDIS_URL": "redis://own:6379/0"}
    assert load_settings([], env).redis_url == "redis://own:6379/0"


def test_redis_url_flag_beats_both() -> None:
    env = {"REDIS_URL": "redis://alias:6379/0", "ROOMCAST_REDIS_URL": "redis://own:6379/0"}
    settings = load_settings(["--redis-url", "unix:///run/redis.sock"], env)
    assert settings.redis_url == "unix:///run/redis.sock"


def test_bad_alias_is_named() -> None:
    with pytest.raises(ConfigError, match=r"^--redis-url \(from REDIS_URL\): "):
        load_settings([], {"REDIS_URL": "http://nope"})


# Validation -------------------------------------------------------------------------------

BAD_FLAGS = [
    (["--port", "abc"], "--port: must be an integer between 0 and 65535, got 'abc'"),
    (["--port", "65536"], "--port: "),
    (["--port", "-1"], "--port: "),
    (["--port", "80.5"], "--port: "),
    (["--host", ""], "--host: "),
    (["--max-connections", "0"], "--max-connections: "),
    (["--max-message-bytes", "0"], "--max-message-bytes: "),
    (["--send-queue", "0"], "--send-queue: "),
    (["--max-rooms-per-connection", "0"], "--max-rooms-per-connection: "),
    (["--max-connections-per-user", "-1"], "--max-connections-per-user: "),
    (["--connect-rate", "-1"], "--connect-rate: "),
    (["--ping-interval", "0"], "--ping-interval: must be a number > 0"),
    (["--ping-timeout", "-5"], "--ping-timeout: "),
    (["--ping-timeout", "soon"], "--ping-timeout: "),
    (["--rate", "-1"], "--rate: must be a number >= 0"),
    (["--rate", "nan"], "--rate: "),
    (["--burst", "0"], "--burst: "),
    (["--history-size", "-1"], "--history-size: "),
    (["--history-ttl", "-0.5"], "--history-ttl: "),
    (["--shutdown-timeout", "inf"], "--shutdown-timeout: "),
    (["--log-format", "xml"], "--log-format: must be one of console, json, got 'xml'"),
    (["--log-level", "loud"], "--log-level: "),
    (["--ws", "tornado"], "--ws: "),
    (["--redis-url", "http://localhost:6379"], "--redis-url: "),
    (["--redis-url", "redis://"], "--redis-url: "),
    (["--redis-url", "redis://host:port/0"], "--redis-url: "),
    (["--redis-prefix", "has space"], "--redis-prefix: "),
    (["--allowed-origins", "example.com"], "--allowed-origins: "),
    (["--jwt-public-key", "/nonexistent/key.pem"], "--jwt-public-key: "),
    (
        ["--auth-required"],
        "--auth-required: needs --jwt-secret, --jwt-public-key or --proxy-connect",
    ),
    (["--port"], "--port: expected one argument"),
    (["--no-such-option"], "unrecognized arguments: --no-such-option"),
]


@pytest.mark.parametrize(("argv", "message"), BAD_FLAGS, ids=[" ".join(a) for a, _ in BAD_FLAGS])
def test_bad_flag_is_named(argv: list[str], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(argv, {})
    assert str(info.value).startswith(message)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"ROOMCAST_PORT": "abc"}, "--port (from ROOMCAST_PORT): must be an integer"),
        ({"ROOMCAST_PORT": ""}, "--port (from ROOMCAST_PORT): "),
        ({"ROOMCAST_DEMO": "maybe"}, "--demo (from ROOMCAST_DEMO): must be a boolean"),
        ({"ROOMCAST_BURST": "0"}, "--burst (from ROOMCAST_BURST): "),
        ({"ROOMCAST_LOG_FORMAT": "xml"}, "--log-format (from ROOMCAST_LOG_FORMAT): "),
    ],
)
def test_bad_env_is_named(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings([], env)
    assert str(info.value).startswith(message)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('port = "abc"', "--port (from 'port' in "),
        ("port = true", "--port (from 'port' in "),
        ("port = 1.5", "--port (from 'port' in "),
        ("rate = -2", "--rate (from 'rate' in "),
        ('demo = "perhaps"', "--demo (from 'demo' in "),
        ("allowed_origins = [1, 2]", "--allowed-origins (from 'allowed_origins' in "),
        ("[host]\nname = 'x'", "--host (from 'host' in "),
    ],
)
def test_bad_file_value_is_named(tmp_path: Path, line: str, message: str) -> None:
    path = write_toml(tmp_path / "roomcast.toml", line + "\n")
    with pytest.raises(ConfigError) as info:
        load_settings(["--config", str(path)], {})
    assert str(info.value).startswith(message)


def test_unknown_file_key_is_rejected(tmp_path: Path) -> None:
    path = write_toml(tmp_path / "roomcast.toml", "max_conections = 5\n")
    with pytest.raises(ConfigError, match=r"unknown key 'max_conections'.*'max_connections'"):
        load_settings(["--config", str(path)], {})


def test_dashed_file_key_gets_a_hint(tmp_path: Path) -> None:
    path = write_toml(tmp_path / "roomcast.toml", "max-connections = 5\n")
    with pytest.raises(
        ConfigError, match=r"unknown key 'max-connections' \(did you mean 'max_connections'\?\)"
    ):
        load_settings(["--config", str(path)], {})


def test_config_key_inside_the_file_is_rejected(tmp_path: Path) -> None:
    path = write_toml(tmp_path / "roomcast.toml", 'config = "other.toml"\n')
    with pytest.raises(ConfigError, match="'config'"):
        load_settings(["--config", str(path)], {})


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^--config: cannot read .*missing\.toml"):
        load_settings(["--config", str(tmp_path / "missing.toml")], {})


def test_malformed_file(tmp_path: Path) -> None:
    path = write_toml(tmp_path / "roomcast.toml", "port = = 1\n")
    with pytest.raises(ConfigError, match=r"^--config: .* is not valid TOML"):
        load_settings(["--config", str(path)], {})


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"port": 70000}, "--port: "),
        ({"burst": 0}, "--burst: "),
        ({"rate": -1.0}, "--rate: "),
        ({"send_queue_bytes": 100}, "--send-queue-bytes: "),
        ({"rate_bytes": -1}, "--rate-bytes: "),
        ({"burst_bytes": 1000}, "--burst-bytes: must be at least --max-message-bytes (65536)"),
        ({"history_max_bytes": -1}, "--history-max-bytes: "),
        ({"log_format": "xml"}, "--log-format: "),
        ({"allowed_origins": ["https://a.example"]}, "--allowed-origins: "),
        ({"jwt_public_key": Path("/nonexistent.pem")}, "--jwt-public-key: "),
    ],
)
def test_direct_construction_is_checked(changes: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings(**changes)  # type: ignore[arg-type]
    assert str(info.value).startswith(message)


def test_valid_edge_values() -> None:
    settings = load_settings(
        [
            "--port", "0",
            "--rate", "0",
            "--history-size", "0",
            "--history-ttl", "0",
            "--allowed-origins", "*,null,http://localhost:3000,https://*.example.com",
        ],
        {},
    )  # fmt: skip
    assert settings.port == 0
    assert settings.rate == 0.0
    assert settings.allowed_origins == (
        "*",
        "null",
        "http://localhost:3000",
        "https://*.example.com",
    )


# Secrets ----------------------------------------------------------------------------------

SECRET = "s3cr3t-Value-42"
API_KEY = "api-K3y-Value-43"


def test_secrets_are_not_in_repr() -> None:
    settings = Settings(jwt_secret=SECRET, api_key=API_KEY)
    text = repr(settings)
    assert SECRET not in text
    assert API_KEY not in text
    assert "jwt_secret='***'" in text
    assert "api_key='***'" in text
    assert SECRET not in str(settings)
    assert settings.jwt_secret == SECRET
    assert settings.api_key == API_KEY


def test_unset_secrets_repr_as_none() -> None:
    text = repr(Settings())
    assert "jwt_secret=None" in text
    assert "api_key=None" in text


def test_secret_is_not_echoed_in_errors(tmp_path: Path) -> None:
    path = write_toml(tmp_path / "roomcast.toml", f"jwt_secret = {len(SECRET)}\n")
    with pytest.raises(ConfigError) as info:
        load_settings(["--config", str(path)], {})
    assert str(info.value).startswith("--jwt-secret (from 'jwt_secret' in ")
    assert str(len(SECRET)) not in str(info.value).split(":", 1)[1]


# The command ------------------------------------------------------------------------------


def test_version() -> None:
    result = roomcast_command("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"roomcast {__version__}\n"


def test_bad_port_is_one_line_and_status_2() -> None:
    result = roomcast_command("serve", "--port", "nope")
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("roomcast: error: --port")
    assert result.stdout == ""


def test_bad_env_is_one_line_and_status_2() -> None:
    result = roomcast_command("serve", env=clean_env(ROOMCAST_MAX_CONNECTIONS="many"))
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "roomcast: error: --max-connections (from ROOMCAST_MAX_CONNECTIONS):"
        " must be an integer >= 1, got 'many'"
    ]


def test_unknown_serve_option_is_one_line() -> None:
    result = roomcast_command("serve", "--bogus")
    assert result.returncode == 2
    assert result.stderr.splitlines() == ["roomcast: error: unrecognized arguments: --bogus"]


def test_no_command_prints_help_and_status_2() -> None:
    result = roomcast_command()
    assert result.returncode == 2
    assert "usage: roomcast" in result.stderr
    assert "serve" in result.stderr


def test_serve_help() -> None:
    result = roomcast_command("serve", "--help")
    assert result.returncode == 0
    assert "--max-connections" in result.stdout
    assert "ROOMCAST_" in result.stdout


def test_main_returns_status_in_process(capsys: pytest.CaptureFixture[str]) -> None:
    from roomcast.server.cli import main

    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"roomcast {__version__}\n"
    assert main(["serve", "--burst", "0"]) == 2
    assert capsys.readouterr().err.startswith("roomcast: error: --burst: ")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_serve_starts_and_stops_on_sigterm() -> None:
    pytest.importorskip("roomcast.server")
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "roomcast", "serve", "--port", str(port), "--log-format", "json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=clean_env(),
    )
    try:
        deadline = time.monotonic() + TIMEOUT
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as reply:
                    assert reply.status == 200
                    break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=TIMEOUT)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, stderr
    records = [json.loads(line) for line in stderr.splitlines()]
    assert records
    assert all({"ts", "level", "logger", "msg"} <= record.keys() for record in records)
