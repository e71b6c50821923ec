"""The packaged connectors without a broker: lazy client imports, the missing-extra error,
settings from flags and variables, ``aioconnector connect --help``, and option validation.

The connectors against the real brokers are tested in ``tests/brokers/``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
import pytest

import aioconnector
from aioconnector import ControllerConfig, MissingExtraError
from aioconnector._cli import _parser, main
from aioconnector.connectors import CONNECTORS, Connector, mqtt, nats, postgres, rabbitmq, redis
from aioconnector.connectors._settings import (
    CONTROLLER_VARIABLES,
    HEALTH_PORT_VARIABLE,
    LOG_LEVEL_VARIABLE,
    common_rows,
    env_names,
    option,
    option_rows,
)
from aioconnector.testing import FakeGateway

from .helpers import RecordingEnviron

BROKERS = sorted(CONNECTORS)
CLIENT_MODULES = ("nats", "redis", "aio_pika", "aiormq", "aiomqtt", "paho", "asyncpg")
PACKAGE_ROOT = str(Path(aioconnector.__file__).resolve().parents[1])


def _python(
    code: str, *args: str, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter that imports this aioconnector."""
    pythonpath = os.pathsep.join(filter(None, [PACKAGE_ROOT, os.environ.get("PYTHONPATH")]))
    base = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": pythonpath}
    return subprocess.run(  # noqa: S603 (our own interpreter)
        [sys.executable, "-c", code, *args],
        env={**base, **(env or {})},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def variables_read(connector: Connector[Any], secrets: Path) -> set[str]:
    """Every variable ``aioconnector connect <broker>`` reads, found by running its settings
    over recording environments: empty, then with basic_auth on (which reads more)."""
    (secrets / "basic-auth-user").write_text("admin")
    (secrets / "basic-auth-password").write_text("secret")
    asked: set[str] = set()
    for values in ({}, {"basic_auth": "true", "secret_mount_path": str(secrets)}):
        environ = RecordingEnviron(values)
        connector.settings({}, environ)
        asked |= environ.asked
    return asked


# -- lazy imports and the missing extra ------------------------------------------------------


def test_importing_the_package_imports_no_broker_client() -> None:
    code = (
        "import sys, aioconnector, aioconnector.connectors, aioconnector._cli\n"
        "from aioconnector._cli import _parser\n"
        "_parser().parse_args(['connect', 'nats', '--stream', 'S'])\n"
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {CLIENT_MODULES!r}))"
    )
    completed = _python(code)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == "[]"


@pytest.fixture(params=BROKERS)
def missing(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Connector[Any]:
    """A connector whose broker client cannot be imported (as if its extra were missing)."""
    connector: Connector[Any] = CONNECTORS[request.param]
    for module in connector.modules:
        monkeypatch.setitem(sys.modules, module, None)  # `import` raises ModuleNotFoundError
    return connector


def test_a_missing_extra_names_the_pip_install(missing: Connector[Any]) -> None:
    with pytest.raises(MissingExtraError) as caught:
        missing.require()
    message = str(caught.value)
    assert "\n" not in message
    assert message.endswith(f"pip install 'aioconnector[{missing.name}]'")
    assert missing.client in message
    assert isinstance(caught.value, ImportError)


async def test_run_without_the_extra_fails_before_touching_the_broker(
    missing: Connector[Any],
) -> None:
    gateway = FakeGateway()
    async with (
        gateway.serve() as url,
        aioconnector.AsyncController(
            ControllerConfig(gateway_url=url, startup_timeout=5)
        ) as controller,
    ):
        with pytest.raises(MissingExtraError, match=rf"aioconnector\[{missing.name}\]"):
            await missing.run(controller, missing.options())


def test_connect_without_the_extra_is_one_line(
    missing: Connector[Any], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["connect", missing.name, "--gateway-url", "http://127.0.0.1:1"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (
        f"aioconnector: error: the {missing.name} connector needs {missing.client}, "
        f"which is not installed: pip install 'aioconnector[{missing.name}]'\n"
    )


# -- settings: flags win over variables, which win over defaults -----------------------------


def _settings(broker: str, argv: list[str], environ: dict[str, str]) -> Any:
    args = _parser().parse_args(["connect", broker, *argv])
    return CONNECTORS[broker].settings(vars(args), environ)


def test_flags_win_over_variables_which_win_over_defaults() -> None:
    environ = {
        "gateway_url": "http://127.0.0.1:9",
        "nats_stream": "FROM_ENV",
        "nats_durable": "env-durable",
        "nats_batch": "4",
        "nats_ack_wait": "1m30s",
        "max_concurrency": "7",
        "upstream_timeout": "5s",
        "log_level": "warning",
    }
    argv = ["--stream", "FROM_FLAG", "--nak-delay", "250ms", "--upstream-timeout", "0"]
    settings = _settings("nats", [*argv, "--nak-unroutable", "--log-level", "debug"], environ)
    assert settings.options == nats.Options(
        stream="FROM_FLAG", durable="env-durable", batch=4, ack_wait=90.0, nak_delay=0.25,
        nak_unroutable=True,
    )  # fmt: skip
    assert settings.config.gateway_url == "http://127.0.0.1:9"
    assert settings.config.max_concurrency == 7
    assert settings.config.upstream_timeout is None  # the flag's 0: no timeout
    assert settings.log_level == "DEBUG"
    assert _settings("nats", [], environ).log_level == "WARNING"
    assert _settings("nats", [], {}).options == nats.Options()
    assert _settings("nats", [], {}).health_port is None
    assert _settings("nats", [], {"health_port": "8081"}).health_port == 8081
    assert _settings("nats", ["--health-port", "9000"], {"health_port": "8081"}).health_port == 9000


def test_topics_is_the_subscription_when_the_brokers_own_variable_is_not_set() -> None:
    environ = {"topics": "a,b,,a"}
    assert _settings("nats", [], environ).options.subjects == ("a", "b")
    assert _settings("redis", [], environ).options.streams == ("a", "b")
    assert _settings("rabbitmq", [], environ).options.bindings == ("a", "b")
    assert _settings("mqtt", [], environ).options.topics == ("a", "b")
    assert _settings("postgres", [], environ).options.channels == ("a", "b")
    own = {"topics": "a", "redis_streams": "own"}
    assert _settings("redis", [], own).options.streams == ("own",)


def test_switches_turn_the_controllers_booleans_both_ways() -> None:
    environ = {"verify_tls": "false", "asynchronous_invocation": "true"}
    config = _settings("redis", [], environ).config
    assert (config.verify_tls, config.async_invocation) == (False, True)
    config = _settings("redis", ["--verify-tls", "--no-asynchronous-invocation"], environ).config
    assert (config.verify_tls, config.async_invocation) == (True, False)


def test_basic_auth_reads_the_secret_folder(tmp_path: Path) -> None:
    (tmp_path / "basic-auth-user").write_text("admin\n")
    (tmp_path / "basic-auth-password").write_text("s3cret\n")
    config = _settings("mqtt", ["--basic-auth", "--secret-mount-path", str(tmp_path)], {}).config
    assert config.credentials == aioconnector.BasicAuth("admin", "s3cret")
    with pytest.raises(FileNotFoundError, match="basic-auth-user"):
        _settings("mqtt", [], {"basic_auth": "1", "secret_mount_path": str(tmp_path / "no")})


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"nats_batch": "0"}, "nats_batch: expected a whole number >= 1, got '0'"),
        ({"nats_ack_wait": "soon"}, "nats_ack_wait: invalid duration 'soon'"),
        ({"nats_nak_unroutable": "maybe"}, "nats_nak_unroutable: invalid boolean 'maybe'"),
        ({"nats_subjects": " , "}, "nats_subjects: expected one or more comma-separated names"),
        ({"log_level": "loud"}, "log_level: expected DEBUG, INFO, WARNING, ERROR, got 'loud'"),
        ({"max_concurrency": "x"}, "max_concurrency: invalid integer 'x'"),
        ({"health_port": "0"}, "health_port: expected a port from 1 to 65535, got '0'"),
    ],
)
def test_a_bad_variable_is_named(environ: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match="^" + re.escape(message)):
        _settings("nats", [], environ)


def test_a_bad_gateway_flag_is_named_as_the_flag() -> None:
    with pytest.raises(ValueError, match=r"^--upstream-timeout: invalid duration 'x'"):
        _settings("nats", ["--upstream-timeout", "x"], {"upstream_timeout": "5s"})
    with pytest.raises(ValueError, match=r"^upstream_timeout: invalid duration 'y'"):
        _settings("nats", [], {"upstream_timeout": "y"})


def test_a_choice_option_takes_only_its_choices(capsys: pytest.CaptureFixture[str]) -> None:
    assert _settings("mqtt", [], {}).options.protocol == "3.1.1"
    assert _settings("mqtt", [], {"mqtt_protocol": " 5 "}).options.protocol == "5"
    assert _settings("mqtt", ["--protocol", "3.1.1"], {"mqtt_protocol": "5"}).options.protocol == (
        "3.1.1"
    )
    with pytest.raises(ValueError, match=r"^mqtt_protocol: expected one of 3\.1\.1, 5, got 'v5'"):
        _settings("mqtt", [], {"mqtt_protocol": "v5"})
    with pytest.raises(SystemExit) as caught:
        _parser().parse_args(["connect", "mqtt", "--protocol", "3"])
    assert caught.value.code == 2
    assert "--protocol: expected one of 3.1.1, 5, got '3'" in capsys.readouterr().err
    with pytest.raises(TypeError, match="choices are for a str option whose default is one"):
        option("4", "a version", choices=("3.1.1", "5"))


def test_a_bad_option_flag_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        _parser().parse_args(["connect", "redis", "--min-idle", "-5"])
    assert caught.value.code == 2
    assert "--min-idle: expected a whole number >= 1, got '-5'" in capsys.readouterr().err


# -- every variable has its flag, and --help shows both ---------------------------------------


def test_the_gateway_flags_are_exactly_the_variables_from_env_reads(tmp_path: Path) -> None:
    read: set[str] = set()
    (tmp_path / "basic-auth-user").write_text("u")
    (tmp_path / "basic-auth-password").write_text("p")
    for values in ({}, {"basic_auth": "true", "secret_mount_path": str(tmp_path)}):
        environ = RecordingEnviron(values)
        ControllerConfig.from_env(environ)
        read |= environ.asked
    assert {"gateway_url", "basic_auth", "secret_mount_path"} <= read  # the recording works
    flagged = {variable.name for variable in CONTROLLER_VARIABLES}
    assert flagged == read, "add a flag in connectors/_settings.py for each new variable"


@pytest.mark.parametrize("broker", BROKERS)
def test_help_lists_every_flag_with_its_variable(
    broker: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    connector = CONNECTORS[broker]
    with pytest.raises(SystemExit) as caught:
        _parser().parse_args(["connect", broker, "--help"])
    assert caught.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines anywhere
    for field in attrs.fields(connector.options):
        variables = " or ".join(env_names(connector.options, connector.env_prefix, field.name))
        flag = "--" + field.name.replace("_", "-")
        assert flag in text
        assert f"(env {variables};" in text
    for variable in CONTROLLER_VARIABLES:
        assert variable.flag in text
        assert f"(env {variable.name}" in text
    assert f"(env {LOG_LEVEL_VARIABLE};" in text
    assert f"(env {HEALTH_PORT_VARIABLE};" in text
    assert connector.install in text
    # What --help names is what the connector reads, and the other way round.
    named = {
        *(v for f in attrs.fields(connector.options) for v in env_names(
            connector.options, connector.env_prefix, f.name)),
        *(variable.name for variable in CONTROLLER_VARIABLES),
        LOG_LEVEL_VARIABLE,
        HEALTH_PORT_VARIABLE,
    }  # fmt: skip
    assert variables_read(connector, tmp_path) == named


def test_connect_lists_every_broker(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        _parser().parse_args(["connect", "--help"])
    out = capsys.readouterr().out
    for connector in CONNECTORS.values():
        assert connector.name in out
        assert connector.summary[:30] in " ".join(out.split())


# -- the library API: options are validated where they are made --------------------------------


@pytest.mark.parametrize(
    ("make", "error", "message"),
    [
        (lambda: nats.Options(batch=0), ValueError, "batch must be an int >= 1, got 0"),
        (lambda: nats.Options(batch=True), TypeError, "batch must be an int >= 1, got True"),
        (lambda: nats.Options(ack_wait=-1), ValueError, "ack_wait must be a number of seconds"),
        (lambda: nats.Options(subjects=()), ValueError, "subjects must hold one or more"),
        (lambda: redis.Options(streams="orders"), TypeError, "streams must be a tuple of str"),  # type: ignore[arg-type]
        (lambda: rabbitmq.Options(url=None), TypeError, "url must be a str, got NoneType"),  # type: ignore[arg-type]
        (lambda: mqtt.Options(port="1883"), TypeError, "port must be an int >= 1"),  # type: ignore[arg-type]
        (lambda: mqtt.Options(protocol="5.0"), ValueError, "protocol must be one of 3.1.1, 5"),
        (lambda: mqtt.Options(protocol=5), TypeError, "protocol must be a str, got int"),  # type: ignore[arg-type]
        (lambda: postgres.Options(channels=("a", " ")), ValueError, "channels must hold"),
        (lambda: nats.Options(nak_unroutable="yes"), TypeError, "nak_unroutable must be a bool"),  # type: ignore[arg-type]
    ],
)
def test_bad_options_fail_where_they_are_made(
    make: Any, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        make()


def test_options_convert_lists_and_whole_seconds() -> None:
    options = nats.Options(subjects=["a.>", "b"], ack_wait=2)  # type: ignore[arg-type]
    assert options.subjects == ("a.>", "b")
    assert options.ack_wait == 2.0
    assert isinstance(options.ack_wait, float)


# -- the process ---------------------------------------------------------------------------------


def test_connect_reports_an_unreachable_gateway_in_one_line() -> None:
    completed = _python(
        "import sys; from aioconnector._cli import main; sys.exit(main(sys.argv[1:]))",
        *("connect", "redis", "--startup-timeout", "0.3", "--lookup-timeout", "0.1"),
        env={"gateway_url": "http://127.0.0.1:1"},
    )
    assert completed.returncode == 1, completed.stderr
    errors = [line for line in completed.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, completed.stderr
    assert errors[0].startswith("aioconnector: error: GatewayUnavailableError:")
    assert "Traceback" not in completed.stderr


def test_python_m_aioconnector_connect_help() -> None:
    completed = _python(
        "import runpy; runpy.run_module('aioconnector', run_name='__main__')",
        *("connect", "postgres", "--help"),
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.startswith("usage: ")
    assert "aioconnector connect postgres" in completed.stdout
    assert "(env postgres_dsn;" in completed.stdout


# -- docs/connectors.md: one table per connector, from the code --------------------------------


def _table(rows: list[tuple[str, tuple[str, ...], str, str]]) -> str:
    lines = ["| flag | environment variable | default | meaning |", "|---|---|---|---|"]
    for flag, variables, default, meaning in rows:
        names = " or ".join(f"`{name}`" for name in variables)
        shown = f"`{default}`" if default else "—"
        lines.append(f"| `{flag}` | {names} | {shown} | {meaning.replace('|', chr(92) + '|')} |")
    return "\n".join(lines)


def test_the_docs_have_the_table_of_every_connector() -> None:
    docs = (Path(__file__).resolve().parent.parent / "docs" / "connectors.md").read_text("utf-8")
    for name, connector in CONNECTORS.items():
        section = docs.split(f"\n## {name}\n", 1)[1].split("\n## ", 1)[0]
        expected = _table(option_rows(connector.options, connector.env_prefix))
        assert expected in section, f"docs/connectors.md: the {name} table is not the code's"
    assert _table(common_rows()) in docs
