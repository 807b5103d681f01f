"""The namespaces, proxy and webhook options: flag, environment and TOML, and their errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from roomcast.core.namespaces import Namespace
from roomcast.errors import ConfigError
from roomcast.settings import Settings, build_parser, load_settings

NEWS = '{"news:*": {"history_size": 10, "client_publish": false}}'


def test_namespaces_from_a_flag_the_environment_and_a_toml_table(tmp_path: Path) -> None:
    expected = (Namespace("news:*", history_size=10, client_publish=False),)
    assert load_settings(["--namespaces", NEWS], {}).namespaces == expected
    assert load_settings([], {"ROOMCAST_NAMESPACES": NEWS}).namespaces == expected
    config = tmp_path / "roomcast.toml"
    config.write_text('[namespaces."news:*"]\nhistory_size = 10\nclient_publish = false\n')
    assert load_settings(["--config", str(config)], {}).namespaces == expected
    # The flag wins over the file, as for every option.
    flag = load_settings(["--config", str(config), "--namespaces", "{}"], {})
    assert flag.namespaces == ()


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("{not json", "not JSON"),
        ('{"news:*": {"histroy_size": 1}}', "unknown option 'histroy_size'"),
        ('{"news:*": {"presence": "yes"}}', "presence must be true or false"),
        ('{"news:*": {"history_size": -1}}', "history_size must be a number >= 0"),
        ('{"news:***": {}}', "use * or **"),
        ('["news:*"]', "needs a 'pattern'"),
    ],
)
def test_bad_namespaces_say_what_is_wrong(value: str, says: str) -> None:
    with pytest.raises(ConfigError, match="--namespaces") as caught:
        load_settings(["--namespaces", value], {})
    assert says in str(caught.value)


def test_proxy_and_webhook_options() -> None:
    settings = load_settings(
        ["--proxy-join", "http://127.0.0.1:9/join", "--proxy-timeout", "1.5"],
        {
            "ROOMCAST_WEBHOOK_URL": "https://hooks.example.com/in",
            "ROOMCAST_WEBHOOK_SECRET": "s3cret-value",
        },
    )
    assert settings.proxy_join == "http://127.0.0.1:9/join"
    assert settings.proxy_timeout == 1.5
    assert settings.webhook_url == "https://hooks.example.com/in"
    assert "s3cret-value" not in repr(settings)  # the secret is redacted
    with pytest.raises(ConfigError, match="--proxy-publish"):
        load_settings(["--proxy-publish", "not a url"], {})
    with pytest.raises(ConfigError, match="--proxy-timeout"):
        load_settings(["--proxy-timeout", "0"], {})


def test_auth_required_is_satisfied_by_a_connect_proxy() -> None:
    with pytest.raises(ConfigError, match="--proxy-connect"):
        Settings(auth_required=True)
    assert Settings(auth_required=True, proxy_connect="http://127.0.0.1:9/c").auth_required


def test_proxy_and_webhook_options_from_a_toml_file(tmp_path: Path) -> None:
    config = tmp_path / "roomcast.toml"
    config.write_text(
        'proxy_connect = "https://app.example.com/connect"\n'
        'proxy_publish = "https://app.example.com/publish"\n'
        "proxy_timeout = 2\n"
        'webhook_url = "https://app.example.com/hooks"\n'
        'webhook_secret = "from-the-file"\n'
    )
    settings = load_settings(
        ["--config", str(config), "--proxy-timeout", "0.5"],
        {"ROOMCAST_WEBHOOK_SECRET": "from-the-env"},
    )
    assert settings.proxy_connect == "https://app.example.com/connect"
    assert settings.proxy_publish == "https://app.example.com/publish"
    assert settings.proxy_join is None
    assert settings.proxy_timeout == 0.5  # flag > file
    assert settings.webhook_secret == "from-the-env"  # environment > file
    assert load_settings(["--config", str(config)], {}).proxy_timeout == 2


@pytest.mark.parametrize(
    ("argv", "env", "says"),
    [
        ([], {"ROOMCAST_PROXY_TIMEOUT": "soon"}, "--proxy-timeout (from ROOMCAST_PROXY_TIMEOUT)"),
        (["--proxy-timeout", "-1"], {}, "--proxy-timeout"),
        (["--proxy-connect", "app.example.com/connect"], {}, "--proxy-connect"),
        (["--proxy-join", "http:///no-host"], {}, "--proxy-join"),
        (["--webhook-url", "redis://127.0.0.1/0"], {}, "--webhook-url"),
        (["--webhook-url", "https://app.example.com/hooks"], {}, "--webhook-secret: is required"),
    ],
)
def test_bad_proxy_and_webhook_values_name_the_option(
    argv: list[str], env: dict[str, str], says: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(argv, env)
    assert str(caught.value).startswith(says)


def test_the_webhook_secret_never_shows_in_errors_or_help() -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(
            ["--webhook-secret", "hush-hush-0123", "--proxy-connect", "http://a/c"],
            {"ROOMCAST_JWT_SECRET": "j" * 32},
        )
    assert "hush-hush-0123" not in str(caught.value)
    assert "--proxy-connect" in str(caught.value)
    help_text = build_parser().format_help()
    assert "backend integration (proxy, webhooks)" in help_text
    for name in ("--proxy-connect", "--proxy-join", "--proxy-publish", "--proxy-timeout"):
        assert name in help_text
    assert "--webhook-url" in help_text and "--webhook-secret" in help_text
