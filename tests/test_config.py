from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING, Any

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from aioconnector._config import (
    DEFAULT_USER_AGENT,
    BasicAuth,
    ControllerConfig,
    parse_bool,
    parse_duration,
)
from aioconnector._version import __version__

if TYPE_CHECKING:
    from pathlib import Path

GW = "http://gw:8080"


def make(**kwargs: Any) -> ControllerConfig:
    kwargs.setdefault("gateway_url", GW)
    return ControllerConfig(**kwargs)


def write_secrets(folder: Path, user: str = "admin\n", pw_text: str = " s3cret \n") -> None:
    (folder / "basic-auth-user").write_text(user, encoding="utf-8")
    (folder / "basic-auth-password").write_text(pw_text, encoding="utf-8")


# --- BasicAuth -------------------------------------------------------------------------


def test_basic_auth_positional_and_repr_hides_password() -> None:
    auth = BasicAuth("admin", "hunter2")
    assert (auth.user, auth.password) == ("admin", "hunter2")
    assert repr(auth) == "BasicAuth(user='admin', password='***')"
    config = make(credentials=auth)
    assert "hunter2" not in repr(config)
    assert "hunter2" not in str(config)
    assert "password='***'" in repr(config)


@pytest.mark.parametrize(
    ("user", "password", "error", "field"),
    [
        ("", "pw", ValueError, "user"),
        ("a:b", "pw", ValueError, "user"),
        ("a\nb", "pw", ValueError, "user"),
        (1, "pw", TypeError, "user"),
        ("admin", None, TypeError, "password"),
        ("admin", "p\x00w", ValueError, "password"),
    ],
)
def test_basic_auth_validation(
    user: Any, password: Any, error: type[Exception], field: str
) -> None:
    with pytest.raises(error, match=f"^{field} ") as info:
        BasicAuth(user, password)
    if isinstance(password, str):
        assert password not in str(info.value)


def test_basic_auth_from_secrets_strips(tmp_path: Path) -> None:
    write_secrets(tmp_path)
    assert BasicAuth.from_secrets(tmp_path) == BasicAuth("admin", "s3cret")
    assert BasicAuth.from_secrets(str(tmp_path)).password == "s3cret"


@pytest.mark.parametrize("missing", ["basic-auth-user", "basic-auth-password"])
def test_basic_auth_from_secrets_missing_file(tmp_path: Path, missing: str) -> None:
    write_secrets(tmp_path)
    (tmp_path / missing).unlink()
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / missing))) as info:
        BasicAuth.from_secrets(tmp_path)
    assert "should contain" in str(info.value)


def test_basic_auth_from_secrets_empty_user(tmp_path: Path) -> None:
    write_secrets(tmp_path, user=" \n")
    with pytest.raises(ValueError, match=re.escape(str(tmp_path / "basic-auth-user"))):
        BasicAuth.from_secrets(tmp_path)


def test_basic_auth_from_secrets_not_utf8(tmp_path: Path) -> None:
    write_secrets(tmp_path)
    (tmp_path / "basic-auth-password").write_bytes(b"\xff\xfe")
    with pytest.raises(ValueError, match=re.escape(str(tmp_path / "basic-auth-password"))):
        BasicAuth.from_secrets(tmp_path)


def test_basic_auth_from_secrets_bad_user(tmp_path: Path) -> None:
    write_secrets(tmp_path, user="a:b")
    with pytest.raises(ValueError, match=re.escape(str(tmp_path))):
        BasicAuth.from_secrets(tmp_path)


# --- ControllerConfig ------------------------------------------------------------------


def test_defaults() -> None:
    config = ControllerConfig(gateway_url=GW)
    assert config.gateway_url == GW
    assert config.upstream_timeout == 30.0
    assert config.lookup_timeout == 10.0
    assert config.rebuild_interval == 30.0
    assert config.topic_delimiter == ","
    assert config.async_invocation is False
    assert config.callback_url is None
    assert config.content_type is None
    assert config.user_agent == DEFAULT_USER_AGENT == f"aioconnector/{__version__}"
    assert config.connector_name == "aioconnector"
    assert config.credentials is None
    assert config.namespaces is None
    assert config.max_concurrency == 64
    assert config.result_buffer == 256
    assert config.startup_timeout == 30.0
    assert config.drain_timeout == 10.0
    assert config.max_response_bytes == 16 * 1024 * 1024
    assert config.max_lookup_bytes == 32 * 1024 * 1024


def test_keyword_only_and_gateway_required() -> None:
    with pytest.raises(TypeError):
        ControllerConfig(GW)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="gateway_url"):
        ControllerConfig()  # type: ignore[call-arg]


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("http://gw:8080/", "http://gw:8080"),
        ("http://gw:8080///", "http://gw:8080"),
        ("http://gw:8080/base/", "http://gw:8080/base"),
        ("https://gw.example.com/a/b", "https://gw.example.com/a/b"),
        ("http://127.0.0.1:31112", "http://127.0.0.1:31112"),
        ("http://[::1]:8080/", "http://[::1]:8080"),
    ],
)
def test_gateway_url_normalised(given: str, expected: str) -> None:
    assert make(gateway_url=given).gateway_url == expected


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://admin:pw@gw:8080", "credentials=BasicAuth"),
        ("http://admin@gw:8080/base", "credentials=BasicAuth"),
        ("http://gw:8080/?x=1", "query"),
        ("http://gw:8080?", "query"),
        ("http://gw:8080/#frag", "fragment"),
        ("ftp://gw", "http"),
        ("gw:8080", "http"),
        ("http://", "host"),
        ("http:///path", "host"),
        ("http://gw:notaport", "valid URL"),
        ("http://gw:0", "host"),
        ("http://gw/a b", "whitespace"),
        ("http://gw/a\x7f", "control"),
        ("", "http"),
    ],
)
def test_gateway_url_rejected(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=f"^gateway_url .*{message}") as info:
        make(gateway_url=url)
    assert "pw@" not in str(info.value)


def test_gateway_url_not_str() -> None:
    with pytest.raises(TypeError, match="gateway_url"):
        make(gateway_url=b"http://gw")


BAD_VALUES: list[tuple[str, object, type[Exception]]] = [
    ("upstream_timeout", 0, ValueError),
    ("upstream_timeout", -1.5, ValueError),
    ("upstream_timeout", math.nan, ValueError),
    ("upstream_timeout", math.inf, ValueError),
    ("upstream_timeout", True, TypeError),
    ("upstream_timeout", "30", TypeError),
    ("lookup_timeout", 0.0, ValueError),
    ("lookup_timeout", None, TypeError),
    ("rebuild_interval", 0, ValueError),
    ("rebuild_interval", -math.inf, ValueError),
    ("rebuild_interval", False, TypeError),
    ("startup_timeout", 0, ValueError),
    ("drain_timeout", -0.1, ValueError),
    ("drain_timeout", math.nan, ValueError),
    ("drain_timeout", "1s", TypeError),
    ("topic_delimiter", "", ValueError),
    ("topic_delimiter", None, TypeError),
    ("async_invocation", 1, TypeError),
    ("async_invocation", "true", TypeError),
    ("callback_url", "not a url", ValueError),
    ("callback_url", "ftp://cb", ValueError),
    ("callback_url", "http://cb/\r\nX-Evil: 1", ValueError),
    ("callback_url", "http://cb/caf\u00e9", ValueError),
    ("callback_url", 5, TypeError),
    ("content_type", "text/plain\n", ValueError),
    ("content_type", "caf\u00e9/x", ValueError),
    ("content_type", b"text/plain", TypeError),
    ("user_agent", "ua\r\n", ValueError),
    ("user_agent", None, TypeError),
    ("connector_name", "", ValueError),
    ("connector_name", "a\tb", ValueError),
    ("credentials", ("admin", "pw"), TypeError),
    ("namespaces", "openfaas-fn", TypeError),
    ("namespaces", (), ValueError),
    ("namespaces", ("",), ValueError),
    ("namespaces", ("a/b",), ValueError),
    ("namespaces", ("dev", 1), TypeError),
    ("max_concurrency", 0, ValueError),
    ("max_concurrency", True, TypeError),
    ("max_concurrency", 2.0, TypeError),
    ("result_buffer", 0, ValueError),
    ("result_buffer", None, TypeError),
    ("max_response_bytes", -1, ValueError),
    ("max_response_bytes", "1", TypeError),
    ("max_lookup_bytes", 0, ValueError),
    ("max_lookup_bytes", 1.5, TypeError),
]


@pytest.mark.parametrize(("field", "value", "error"), BAD_VALUES)
def test_field_validation_names_field(field: str, value: object, error: type[Exception]) -> None:
    with pytest.raises(error, match=f"'?{field}'? ") as info:
        make(**{field: value})
    assert type(info.value) is error


def test_int_message_format() -> None:
    with pytest.raises(ValueError, match=r"^max_concurrency must be an int >= 1, got 0$"):
        make(max_concurrency=0)


def test_good_values_are_kept_and_ints_become_floats() -> None:
    config = make(
        upstream_timeout=None,
        lookup_timeout=2,
        rebuild_interval=0.5,
        drain_timeout=0,
        topic_delimiter=" ",
        async_invocation=True,
        callback_url="https://cb.example/hook?x=1",
        content_type="application/json",
        user_agent="custom/1",
        connector_name="kafka-connector",
        namespaces=["openfaas-fn", "dev"],
        max_concurrency=1,
        result_buffer=1,
        max_response_bytes=1,
    )
    assert config.upstream_timeout is None
    assert type(config.lookup_timeout) is float
    assert config.lookup_timeout == 2.0
    assert type(config.drain_timeout) is float
    assert config.drain_timeout == 0.0
    assert config.namespaces == ("openfaas-fn", "dev")
    assert config.callback_url == "https://cb.example/hook?x=1"


def test_frozen_and_evolve_revalidates() -> None:
    config = make()
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        config.max_concurrency = 3  # type: ignore[misc]
    changed = attrs.evolve(config, max_concurrency=3, gateway_url="http://other/")
    assert (changed.max_concurrency, changed.gateway_url) == (3, "http://other")
    assert config.max_concurrency == 64
    with pytest.raises(ValueError, match="max_concurrency"):
        attrs.evolve(config, max_concurrency=0)
    with pytest.raises(ValueError, match="gateway_url"):
        attrs.evolve(config, gateway_url="http://u:p@gw")


def test_equal_and_hashable() -> None:
    assert make(namespaces=["a"]) == make(namespaces=("a",))
    assert hash(make()) == hash(make())


# --- from_env --------------------------------------------------------------------------


def test_from_env_empty_gives_defaults() -> None:
    config = ControllerConfig.from_env({})
    assert config == ControllerConfig(gateway_url="http://gateway:8080")


def test_from_env_every_variable(tmp_path: Path) -> None:
    write_secrets(tmp_path)
    env = {
        "gateway_url": "https://gw.example/base/",
        "upstream_timeout": "1m30s",
        "rebuild_interval": "500ms",
        "lookup_timeout": "2",
        "startup_timeout": "1h",
        "drain_timeout": "0",
        "topic_delimiter": ";",
        "content_type": "application/json",
        "callback_url": "http://cb:8000/done",
        "user_agent": "my-agent/2",
        "connector_name": "cron-connector",
        "asynchronous_invocation": "TRUE",
        "basic_auth": "yes",
        "secret_mount_path": str(tmp_path),
        "namespaces": "openfaas-fn, dev,,dev",
        "max_concurrency": "8",
        "result_buffer": "16",
        "max_response_bytes": "1024",
        "max_lookup_bytes": "4096",
        "unrelated": "ignored",
    }
    config = ControllerConfig.from_env(env)
    assert config == ControllerConfig(
        gateway_url="https://gw.example/base",
        upstream_timeout=90.0,
        rebuild_interval=0.5,
        lookup_timeout=2.0,
        startup_timeout=3600.0,
        drain_timeout=0.0,
        topic_delimiter=";",
        content_type="application/json",
        callback_url="http://cb:8000/done",
        user_agent="my-agent/2",
        connector_name="cron-connector",
        async_invocation=True,
        credentials=BasicAuth("admin", "s3cret"),
        namespaces=("openfaas-fn", "dev"),
        max_concurrency=8,
        result_buffer=16,
        max_response_bytes=1024,
        max_lookup_bytes=4096,
    )


def test_from_env_zero_upstream_timeout_means_none() -> None:
    assert ControllerConfig.from_env({"upstream_timeout": "0"}).upstream_timeout is None
    assert ControllerConfig.from_env({"upstream_timeout": "0s"}).upstream_timeout is None


def test_from_env_blank_is_unset_but_space_delimiter_kept() -> None:
    env = {"gateway_url": "", "rebuild_interval": " ", "content_type": "", "topic_delimiter": " "}
    config = ControllerConfig.from_env(env)
    assert config.gateway_url == "http://gateway:8080"
    assert config.rebuild_interval == 30.0
    assert config.content_type is None
    assert config.topic_delimiter == " "
    assert ControllerConfig.from_env({"topic_delimiter": ""}).topic_delimiter == ","


def test_from_env_overrides_win_and_none_is_ignored() -> None:
    env = {"gateway_url": "http://env:8080", "max_concurrency": "8", "rebuild_interval": "bad"}
    config = ControllerConfig.from_env(
        env, gateway_url="http://flag:8080/", max_concurrency=None, rebuild_interval=5
    )
    assert config.gateway_url == "http://flag:8080"
    assert config.max_concurrency == 8
    assert config.rebuild_interval == 5.0


def test_from_env_override_credentials_skips_secret_files(tmp_path: Path) -> None:
    env = {"basic_auth": "true", "secret_mount_path": str(tmp_path / "absent")}
    auth = BasicAuth("u", "p")
    assert ControllerConfig.from_env(env, credentials=auth).credentials == auth


def test_from_env_bad_override_names_field() -> None:
    with pytest.raises(ValueError, match=r"^max_concurrency must"):
        ControllerConfig.from_env({}, max_concurrency=0)
    with pytest.raises(TypeError, match="not_a_field"):
        ControllerConfig.from_env({}, not_a_field=1)


def test_from_env_basic_auth_reads_secret_folder(tmp_path: Path) -> None:
    write_secrets(tmp_path, user="bob\n", pw_text="pw\n")
    env = {"basic_auth": "On", "secret_mount_path": f" {tmp_path} "}
    assert ControllerConfig.from_env(env).credentials == BasicAuth("bob", "pw")
    env["basic_auth"] = "false"
    assert ControllerConfig.from_env(env).credentials is None


def test_from_env_missing_secret_names_path(tmp_path: Path) -> None:
    env = {"basic_auth": "1", "secret_mount_path": str(tmp_path)}
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "basic-auth-user"))):
        ControllerConfig.from_env(env)


@pytest.mark.parametrize(
    ("var", "value", "message"),
    [
        ("rebuild_interval", "abc", "invalid duration 'abc' (use e.g. 30s, 1m30s, 500ms"),
        ("upstream_timeout", "-5s", "invalid duration '-5s'"),
        ("lookup_timeout", "10x", "invalid duration '10x'"),
        ("rebuild_interval", "0", "rebuild_interval must be a number > 0"),
        ("startup_timeout", "0s", "must be a number > 0"),
        ("drain_timeout", "soon", "invalid duration"),
        ("asynchronous_invocation", "maybe", "invalid boolean 'maybe'"),
        ("basic_auth", "sure", "invalid boolean 'sure'"),
        ("max_concurrency", "many", "invalid integer 'many'"),
        ("max_concurrency", "0", "must be an int >= 1, got 0"),
        ("result_buffer", "1.5", "invalid integer"),
        ("max_response_bytes", "-1", "got -1"),
        ("max_lookup_bytes", "0", "max_lookup_bytes must be an int >= 1, got 0"),
        ("gateway_url", "http://a:b@gw", "credentials=BasicAuth"),
        ("gateway_url", "gateway", "http"),
        ("callback_url", "nowhere", "http"),
        ("namespaces", " , ", "no names"),
        ("namespaces", "a b", "valid namespace names"),
        ("connector_name", "caf\u00e9", "ASCII"),
    ],
)
def test_from_env_bad_value_names_variable(var: str, value: str, message: str) -> None:
    with pytest.raises(ValueError, match=f"^{var}: .*{re.escape(message)}"):
        ControllerConfig.from_env({var: value})


def test_from_env_reads_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("gateway_url", "http://from-os-environ:8080")
    monkeypatch.delenv("basic_auth", raising=False)
    assert ControllerConfig.from_env().gateway_url == "http://from-os-environ:8080"


# --- parse_duration / parse_bool -------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30s", 30.0),
        ("1m30s", 90.0),
        ("500ms", 0.5),
        ("1h", 3600.0),
        ("1.5h", 5400.0),
        ("2h45m", 9900.0),
        ("1.5s", 1.5),
        ("2us", 2e-6),
        ("2\u00b5s", 2e-6),
        ("2\u03bcs", 2e-6),
        ("100ns", 1e-7),
        (".5s", 0.5),
        ("10", 10.0),
        ("0.25", 0.25),
        ("0", 0.0),
        (" 30s\n", 30.0),
        ("1h0m0.5s", 3600.5),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds, rel=1e-12, abs=0)


@pytest.mark.parametrize(
    "text",
    ["", " ", "abc", "10x", "-5s", "-0", "s", "1..5s", ".s", "1s2", "1 s", "inf", "nan", "1e3s",
     "1_000s", "+5s", "\u0665s", "1" * 101],
)  # fmt: skip
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(text)


@given(st.text())
def test_parse_duration_only_raises_value_error(text: str) -> None:
    try:
        seconds = parse_duration(text)
    except ValueError:
        return
    assert math.isfinite(seconds)
    assert seconds >= 0


UNITS = {"ns": 1e-9, "us": 1e-6, "\u00b5s": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
PARTS = st.tuples(
    st.one_of(
        st.integers(0, 10**6).map(str),
        st.decimals(0, 10**4, places=3, allow_nan=False, allow_infinity=False).map(
            lambda d: str(abs(d))
        ),
    ),
    st.sampled_from(sorted(UNITS)),
)


@given(st.lists(PARTS, min_size=1, max_size=6))
def test_parse_duration_round_trips_go_durations(parts: list[tuple[str, str]]) -> None:
    text = "".join(number + unit for number, unit in parts)
    expected = sum(float(number) * UNITS[unit] for number, unit in parts)
    assert parse_duration(text) == pytest.approx(expected, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize(
    ("text", "value"),
    [("true", True), ("TRUE", True), ("1", True), ("yes", True), ("On", True), (" true\n", True),
     ("false", False), ("False", False), ("0", False), ("no", False), ("OFF", False)],
)  # fmt: skip
def test_parse_bool(text: str, value: bool) -> None:
    assert parse_bool(text) is value


@pytest.mark.parametrize("text", ["", "maybe", "2", "truee", "t", "y", "enabled"])
def test_parse_bool_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="invalid boolean"):
        parse_bool(text)


@given(st.text())
def test_parse_bool_only_raises_value_error(text: str) -> None:
    try:
        value = parse_bool(text)
    except ValueError:
        return
    assert value is (text.strip().lower() in {"true", "1", "yes", "on"})


@given(st.sampled_from(["true", "false", "1", "0", "yes", "no", "on", "off"]), st.data())
def test_parse_bool_any_case(word: str, data: st.DataObject) -> None:
    flips = data.draw(st.lists(st.booleans(), min_size=len(word), max_size=len(word)))
    mixed = "".join(c.upper() if flip else c for c, flip in zip(word, flips, strict=True))
    assert parse_bool(mixed) is (word in {"true", "1", "yes", "on"})
