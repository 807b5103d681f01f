"""The namespaces, proxy and webhook options: flag, environment and TOML, and their errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from roomcast.core.namespaces import Namespace
from roomcast.errors import ConfigError
from roomcast.settings import Settings, load_settings

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


def test_proxy_and_webhook_options(tmp_path: Path) -> None:
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
