"""Connector settings: each option is a flag and an environment variable; the flag wins.

A connector's options are a frozen attrs class whose fields are made with :func:`option`: the
field ``max_deliver`` of the NATS connector is the flag ``--max-deliver`` and the variable
``nats_max_deliver``. The default's type decides how text is parsed (and the field validated):
``str`` as it is, ``int`` a whole number >= 1, ``float`` seconds (``30``, ``1.5``, ``30s``,
``1m30s``), ``tuple`` comma-separated names, ``bool`` true/false; a ``str`` option may be
limited to ``choices``. The gateway settings are the
variables ``ControllerConfig.from_env`` reads, each also a flag (:data:`CONTROLLER_VARIABLES`):
a flag given is handed to ``from_env`` as its variable, so both are parsed, validated and
reported the same way. Nothing here imports a broker client.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final, TypeVar

import attrs

from .._config import ControllerConfig, parse_bool, parse_duration

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

__all__ = [
    "CONTROLLER_VARIABLES",
    "HEALTH_PORT_VARIABLE",
    "LOG_LEVEL_VARIABLE",
    "add_controller_flags",
    "add_health_port_flag",
    "add_log_level_flag",
    "add_option_flags",
    "common_rows",
    "controller_config",
    "env_names",
    "health_port",
    "log_level",
    "option",
    "option_rows",
    "options_from",
]

T = TypeVar("T")
OptionsT = TypeVar("OptionsT", bound="attrs.AttrsInstance")

_HELP: Final = "aioconnector.help"
_ALSO: Final = "aioconnector.also_env"
_CHOICES: Final = "aioconnector.choices"
LOG_LEVEL_VARIABLE: Final = "log_level"
HEALTH_PORT_VARIABLE: Final = "health_port"
_HEALTH_HELP: Final = "serve /healthz, /readyz and /metrics on this port (all interfaces)"
LOG_LEVELS: Final = ("DEBUG", "INFO", "WARNING", "ERROR")


# -- parsing text (a flag or a variable) by the type of the option's default -------------------


def _whole(text: str) -> int:
    if not text.strip().isdecimal() or int(text) < 1:
        raise ValueError(f"expected a whole number >= 1, got {text!r}")
    return int(text)


def _seconds(text: str) -> float:
    return parse_duration(text)  # plain seconds or a Go duration, as the gateway variables


def _names(text: str) -> tuple[str, ...]:
    parts = tuple(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))
    if not parts:
        raise ValueError(f"expected one or more comma-separated names, got {text!r}")
    return parts


_PARSERS: Final[dict[type, Callable[[str], Any]]] = {
    bool: parse_bool,
    int: _whole,
    float: _seconds,
    tuple: _names,
    str: str.strip,
}


def _parser_of(field: attrs.Attribute[Any]) -> Callable[[str], Any]:
    choices: tuple[str, ...] = field.metadata.get(_CHOICES, ())
    if not choices:
        return _PARSERS[type(field.default)]

    def one_of(text: str) -> str:
        value = text.strip()
        if value not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}, got {text!r}")
        return value

    return one_of


# -- validating the fields (the library API: bad values fail where the options are made) ------


def _check(
    kind: type, choices: tuple[str, ...] = (), *, blank: bool = True
) -> Callable[[object, attrs.Attribute[Any], object], None]:
    def check(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
        name = attribute.name
        if choices and isinstance(value, str) and value not in choices:
            raise ValueError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
        if not blank and isinstance(value, str) and not value.strip():
            raise ValueError(f"{name} must not be blank")
        if kind is bool:
            if not isinstance(value, bool):
                raise TypeError(f"{name} must be a bool, got {value!r}")
        elif kind is int:
            if not isinstance(value, int) or isinstance(value, bool):
                raise TypeError(f"{name} must be an int >= 1, got {value!r}")
            if value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        elif kind is float:
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise TypeError(f"{name} must be a number of seconds >= 0, got {value!r}")
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a number of seconds >= 0, got {value!r}")
        elif kind is tuple:
            if not isinstance(value, tuple) or not all(isinstance(v, str) for v in value):
                raise TypeError(f"{name} must be a tuple of str, got {value!r}")
            if not value or not all(v.strip() for v in value):
                raise ValueError(f"{name} must hold one or more non-blank names, got {value!r}")
        elif not isinstance(value, str):
            raise TypeError(f"{name} must be a str, got {type(value).__name__}")

    return check


def _to_tuple(value: object) -> object:
    return tuple(value) if isinstance(value, list) else value


def _to_float(value: object) -> object:
    return float(value) if type(value) is int else value  # not a bool: the validator says so


_CONVERTERS: Final[dict[type, Callable[[object], object]]] = {tuple: _to_tuple, float: _to_float}


def option(
    default: T,
    help: str,
    *,
    also_env: tuple[str, ...] = (),
    choices: tuple[str, ...] = (),
    blank: bool = True,
) -> T:
    """A field of a connector's options class that is also a flag and a variable.

    ``also_env``: more variables read, in order, when the connector's own is not set (e.g.
    ``topics``, which OpenFaaS connectors use for what to subscribe to). ``choices``: the
    values a ``str`` option may take (its default one of them). ``blank=False``: a ``str``
    option that must not be empty.
    """
    kind = type(default)
    if kind not in _PARSERS:
        raise TypeError(
            f"an option's default must be one of {sorted(t.__name__ for t in _PARSERS)}"
        )
    if choices and (kind is not str or default not in choices):
        raise TypeError(f"choices are for a str option whose default is one; got {default!r}")
    field: T = attrs.field(
        default=default,
        converter=_CONVERTERS.get(kind),
        validator=_check(kind, choices, blank=blank),
        metadata={_HELP: help, _ALSO: also_env, _CHOICES: choices},
    )
    return field


def _option_fields(cls: type[attrs.AttrsInstance]) -> list[attrs.Attribute[Any]]:
    return [field for field in attrs.fields(cls) if _HELP in field.metadata]


def env_names(cls: type[attrs.AttrsInstance], prefix: str, field: str) -> tuple[str, ...]:
    """The variables that set ``field``, in the order they are read."""
    attribute = attrs.fields_dict(cls)[field]
    return (prefix + field, *attribute.metadata[_ALSO])


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _argparse_type(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return convert


def _shown(value: object) -> str:
    if isinstance(value, tuple):
        return ",".join(value)
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}s"
    return repr(value) if value == "" else str(value)


def add_option_flags(
    group: argparse._ActionsContainer, cls: type[attrs.AttrsInstance], prefix: str
) -> None:
    """A flag for each option of ``cls``; not given, it is None (the variable, else the
    default, applies in :func:`options_from`)."""
    for field in _option_fields(cls):
        variables = " or ".join(env_names(cls, prefix, field.name))
        text = f"{field.metadata[_HELP]} (env {variables}; default: {_shown(field.default)})"
        if isinstance(field.default, bool):
            group.add_argument(
                _flag(field.name),
                dest=field.name,
                action=argparse.BooleanOptionalAction,
                default=None,
                help=text.replace("%", "%%"),
            )
            continue
        group.add_argument(
            _flag(field.name),
            dest=field.name,
            type=_argparse_type(_parser_of(field)),
            default=None,
            metavar=field.name.split("_")[-1].upper(),
            help=text.replace("%", "%%"),
        )


def option_rows(
    cls: type[attrs.AttrsInstance], prefix: str
) -> list[tuple[str, tuple[str, ...], str, str]]:
    """(flag, variables, default, meaning) of each option, for the documentation."""
    return [
        (_flag(f.name), env_names(cls, prefix, f.name), _shown(f.default), f.metadata[_HELP])
        for f in _option_fields(cls)
    ]


def options_from(
    cls: type[OptionsT], prefix: str, flags: Mapping[str, object], environ: Mapping[str, str]
) -> OptionsT:
    """The options: each from its flag when given (not None), else its first variable set
    (non-blank), else its default. A bad variable raises ``ValueError`` naming it."""
    values: dict[str, object] = {}
    for field in _option_fields(cls):
        given = flags.get(field.name)
        if given is not None:
            values[field.name] = given
            continue
        for variable in env_names(cls, prefix, field.name):
            text = environ.get(variable, "")
            if text.strip():
                try:
                    values[field.name] = _parser_of(field)(text)
                except ValueError as exc:
                    raise ValueError(f"{variable}: {exc}") from None
                break
    return cls(**values)


# -- the gateway settings: ControllerConfig.from_env's variables, each also a flag ------------


@attrs.frozen
class _Variable:
    name: str
    help: str
    default: str = ""  # as shown by --help; "" shows none
    switch: bool = attrs.field(default=False, kw_only=True)  # true/false: --name / --no-name

    @property
    def flag(self) -> str:
        return _flag(self.name)

    @property
    def dest(self) -> str:
        return f"env_{self.name}"


def _Switch(name: str, help: str, default: str) -> _Variable:  # noqa: N802  (a row, like _Variable)
    return _Variable(name, help, default, switch=True)


def _default(name: str) -> str:
    field = attrs.fields_dict(ControllerConfig)[name]
    return _shown(field.default)


_D = _default
CONTROLLER_VARIABLES: Final = (
    _Variable("gateway_url", "the OpenFaaS gateway", "http://gateway:8080"),
    _Switch("basic_auth", "read the gateway's basic-auth secret from secret_mount_path", "false"),
    _Variable(
        "secret_mount_path",
        "folder with basic-auth-user and basic-auth-password",
        "/var/openfaas/secrets",
    ),
    _Variable("upstream_timeout", "per invocation, 0: none", _D("upstream_timeout")),
    _Variable("rebuild_interval", "topic map refresh period", _D("rebuild_interval")),
    _Variable("lookup_timeout", "per /system/* lookup", _D("lookup_timeout")),
    _Variable("startup_timeout", "retry the first lookup", _D("startup_timeout")),
    _Variable("drain_timeout", "on SIGTERM, to finish", _D("drain_timeout")),
    _Switch("asynchronous_invocation", "invoke via /async-function/", "false"),
    _Variable("callback_url", "X-Callback-Url of asynchronous invocations"),
    _Variable("callback_listen", "HOST:PORT of the invoke_async callback receiver"),
    _Variable("callback_public_url", "where the gateway reaches that receiver"),
    _Variable("callback_timeout", "wait for a callback, 0: none", _D("callback_timeout")),
    _Variable("max_pending_async", "async invocations awaiting callbacks", _D("max_pending_async")),
    _Variable("content_type", "Content-Type of invocations"),
    _Variable("topic_delimiter", "in topic annotations", repr(_D("topic_delimiter"))),
    _Variable("topic_matching", "wildcards in topic annotations: exact, nats, mqtt, amqp", "exact"),
    _Variable("namespaces", "function namespaces, comma-separated", "ask the gateway"),
    _Variable("max_concurrency", "messages in flight", _D("max_concurrency")),
    _Switch("adaptive_concurrency", "learn each function's capacity (AIMD)", "false"),
    _Variable("max_waiting", "invocations waiting for their function", _D("max_waiting")),
    _Variable("retry_attempts", "tries per invocation, the first included", "3"),
    _Switch("retry_on_timeout", "retry an invocation that timed out", "false"),
    _Switch("auth_invocations", "send credentials with invocations", "false"),
    _Variable("connector_name", "sent as X-Connector", _D("connector_name")),
    _Variable("user_agent", "User-Agent of every request", "aioconnector/VERSION"),
    _Variable("result_buffer", "results per subscriber", _D("result_buffer")),
    _Variable("max_response_bytes", "per response", _D("max_response_bytes")),
    _Variable("max_lookup_bytes", "per /system/* answer", _D("max_lookup_bytes")),
    _Switch("verify_tls", "verify the gateway's certificate", "true"),
    _Variable("ca_bundle", "CA certificates (PEM) to verify the gateway with"),
    _Variable("client_cert", "client certificate (PEM) for mutual TLS"),
    _Variable("client_key", "its private key (PEM), when not in client_cert"),
)
"""Every variable ``ControllerConfig.from_env`` reads, in the order ``--help`` shows them."""


def common_rows() -> list[tuple[str, tuple[str, ...], str, str]]:
    """(flag, variables, default, meaning) of each setting every connector has (the gateway's,
    the log level and the health port), for the documentation."""
    rows = [(v.flag, (v.name,), v.default, v.help) for v in CONTROLLER_VARIABLES]
    return [
        *rows,
        ("--log-level", (LOG_LEVEL_VARIABLE,), "INFO", ", ".join(LOG_LEVELS)),
        ("--health-port", (HEALTH_PORT_VARIABLE,), "off", _HEALTH_HELP),
    ]


def add_controller_flags(group: argparse._ActionsContainer) -> None:
    """A flag for each of :data:`CONTROLLER_VARIABLES`; not given, it is None."""
    for variable in CONTROLLER_VARIABLES:
        default = f"; default: {variable.default}" if variable.default else ""
        text = f"{variable.help} (env {variable.name}{default})".replace("%", "%%")
        if variable.switch:
            group.add_argument(
                variable.flag,
                dest=variable.dest,
                action=argparse.BooleanOptionalAction,
                default=None,
                help=text,
            )
        else:
            metavar = variable.name.split("_")[-1].upper()
            group.add_argument(
                variable.flag, dest=variable.dest, default=None, metavar=metavar, help=text
            )


def controller_config(flags: Mapping[str, object], environ: Mapping[str, str]) -> ControllerConfig:
    """``ControllerConfig.from_env`` over the environment, with the flags given in front."""
    given: dict[str, str] = {}
    for variable in CONTROLLER_VARIABLES:
        value = flags.get(variable.dest)
        if value is not None:
            given[variable.name] = str(value).lower() if isinstance(value, bool) else str(value)
    try:
        return ControllerConfig.from_env(_Overlay(given, environ))
    except ValueError as exc:
        raise ValueError(_name_the_flag(str(exc), given)) from exc


class _Overlay(Mapping[str, str]):
    """``front``, then ``back``: looked up key by key, so ``back`` may be ``os.environ``."""

    def __init__(self, front: Mapping[str, str], back: Mapping[str, str]) -> None:
        self._front = front
        self._back = back

    def __getitem__(self, key: str) -> str:
        if key in self._front:
            return self._front[key]
        return self._back[key]

    def __iter__(self) -> Iterator[str]:
        return iter({**dict.fromkeys(self._back), **dict.fromkeys(self._front)})

    def __len__(self) -> int:
        return sum(1 for _ in self)


def _name_the_flag(message: str, given: Mapping[str, str]) -> str:
    """``upstream_timeout: ...`` becomes ``--upstream-timeout: ...`` when the flag set it."""
    name, colon, rest = message.partition(":")
    if colon and name in given:
        return f"{_flag(name)}{colon}{rest}"
    return message


def add_log_level_flag(group: argparse._ActionsContainer) -> None:
    """``--log-level``; not given, it is None."""
    group.add_argument(
        "--log-level",
        dest="log_level",
        type=_argparse_type(_log_level),
        default=None,
        metavar="LEVEL",
        help=f"{', '.join(LOG_LEVELS)} (env {LOG_LEVEL_VARIABLE}; default: INFO)",
    )


def log_level(flags: Mapping[str, object], environ: Mapping[str, str]) -> str:
    """The flag's level, else the variable's, else INFO."""
    given = flags.get("log_level")
    if isinstance(given, str):
        return given
    text = environ.get(LOG_LEVEL_VARIABLE, "")
    try:
        return _log_level(text) if text.strip() else "INFO"
    except ValueError as exc:
        raise ValueError(f"{LOG_LEVEL_VARIABLE}: {exc}") from None


def _log_level(text: str) -> str:
    level = text.strip().upper()
    if level not in LOG_LEVELS:
        raise ValueError(f"expected {', '.join(LOG_LEVELS)}, got {text!r}")
    return level


def add_health_port_flag(group: argparse._ActionsContainer) -> None:
    """``--health-port``; not given, it is None."""
    group.add_argument(
        "--health-port",
        dest="health_port",
        type=_argparse_type(_port),
        default=None,
        metavar="PORT",
        help=f"{_HEALTH_HELP} (env {HEALTH_PORT_VARIABLE}; default: off)",
    )


def health_port(flags: Mapping[str, object], environ: Mapping[str, str]) -> int | None:
    """The flag's port, else the variable's, else None (no health endpoint)."""
    given = flags.get("health_port")
    if isinstance(given, int):
        return given
    text = environ.get(HEALTH_PORT_VARIABLE, "")
    try:
        return _port(text) if text.strip() else None
    except ValueError as exc:
        raise ValueError(f"{HEALTH_PORT_VARIABLE}: {exc}") from None


def _port(text: str) -> int:
    if not text.strip().isdecimal() or not 1 <= int(text) <= 65535:
        raise ValueError(f"expected a port from 1 to 65535, got {text!r}")
    return int(text)
