"""Where the Redis broker connects: URLs of one server and of a Sentinel group (pure)."""

from __future__ import annotations

import pytest

from roomcast.brokers.redis.connect import RedisTarget, shown_url
from roomcast.errors import ConfigError
from roomcast.settings.options import is_redis_url


def test_a_server_url_is_taken_as_it_is() -> None:
    target = RedisTarget.parse("redis://:pw@10.0.0.5:6379/2")
    assert target.sentinels == () and target.master_name == ""
    assert target.shown == "redis://:***@10.0.0.5:6379/2"


def test_a_sentinel_url_names_the_sentinels_the_master_and_the_database() -> None:
    target = RedisTarget.parse(
        "redis+sentinel://app:s3cret@10.0.0.1:26379,10.0.0.2,[::1]:26380/mymaster/3"
        "?sentinel_password=sp"
    )
    assert target.sentinels == (("10.0.0.1", 26379), ("10.0.0.2", 26379), ("::1", 26380))
    assert (target.master_name, target.db) == ("mymaster", 3)
    assert target._options == {"username": "app", "password": "s3cret"}
    assert target._sentinel_options == {"password": "sp"}
    assert "s3cret" not in target.shown and "***" in target.shown


def test_a_sentinel_url_without_a_database_uses_0_and_tls_is_asked_by_its_scheme() -> None:
    target = RedisTarget.parse("rediss+sentinel://h:1/m")
    assert (target.master_name, target.db) == ("m", 0)
    assert target._options == {"ssl": True}


@pytest.mark.parametrize(
    "url",
    [
        "redis+sentinel://h:1",  # no master name
        "redis+sentinel:///m/0",  # no sentinel
        "redis+sentinel://h:port/m",
        "redis+sentinel://h:1/m/zero",
        "redis+sentinel://h:1/m/0/extra",
    ],
)
def test_a_bad_sentinel_url_is_a_config_error(url: str) -> None:
    with pytest.raises(ConfigError):
        RedisTarget.parse(url)
    assert not is_redis_url(url)  # and the settings refuse it before


def test_the_settings_take_sentinel_urls() -> None:
    assert is_redis_url("redis+sentinel://h:26379,h2:26379/mymaster/0")
    assert is_redis_url("redis+sentinel://h/mymaster")
    assert is_redis_url("redis+cluster://h:7000,h2:7001")
    assert not is_redis_url("redis+cluster://h:7000/1")  # a cluster has database 0 only
    assert not is_redis_url("redis+cloud://h:1/")  # not a scheme the broker takes


def test_shown_url_hides_only_the_password() -> None:
    assert shown_url("redis://u:p@h:1/0") == "redis://u:***@h:1/0"
    assert shown_url("redis://h:1/0") == "redis://h:1/0"


def test_a_cluster_url_names_nodes_to_start_from() -> None:
    target = RedisTarget.parse("rediss+cluster://:pw@10.0.0.1:7000,10.0.0.2/0")
    assert target.cluster
    assert target.cluster_nodes == (("10.0.0.1", 7000), ("10.0.0.2", 6379))
    assert target._options == {"password": "pw", "ssl": True}
    for bad in ("redis+cluster://h:1/2", "redis+cluster:///"):
        with pytest.raises(ConfigError):
            RedisTarget.parse(bad)
