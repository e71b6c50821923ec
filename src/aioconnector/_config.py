"""Validated, immutable connector configuration, from code or from the environment."""

from __future__ import annotations

import math
import os
import re
import unicodedata
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import attrs

from ._parsing import parse_bool, parse_duration
from ._policy import AdaptiveConcurrency, RetryBudget
from ._retry import RetryPolicy
from ._topics import SAFE_NAME_RE
from ._version import __version__
from ._wildcards import TOPIC_MATCHINGS, TopicMatching

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from typing import TypeAlias

    _Validator: TypeAlias = Callable[[Any, "attrs.Attribute[Any]", Any], None]

__all__ = [
    "DEFAULT_USER_AGENT",
    "BasicAuth",
    "ControllerConfig",
    "parse_bool",
    "parse_duration",
    "parse_listen",
]

DEFAULT_USER_AGENT = f"aioconnector/{__version__}"
DEFAULT_GATEWAY_URL = "http://gateway:8080"
DEFAULT_SECRET_MOUNT_PATH = "/var/openfaas/secrets"  # noqa: S105  (a folder)


def _has_control(text: str) -> bool:
    return any(unicodedata.category(char) == "Cc" for char in text)


def _check_user(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, str):
        raise TypeError(f"{attribute.name} must be a str, got {type(value).__name__}")
    # RFC 7617: a basic-auth user-id cannot contain a colon.
    if not value or ":" in value or _has_control(value):
        raise ValueError(f"{attribute.name} must be non-empty, without ':' or control characters")


def _check_password(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, str):
        raise TypeError(f"{attribute.name} must be a str, got {type(value).__name__}")
    if _has_control(value):  # the value is a secret: never in the message
        raise ValueError(f"{attribute.name} must not contain control characters")


@attrs.frozen
class BasicAuth:
    """Basic-auth credentials for the gateway's ``/system/*`` endpoints."""

    user: str = attrs.field(validator=_check_user)
    password: str = attrs.field(validator=_check_password, repr=lambda _: "'***'")

    @classmethod
    def from_secrets(cls, path: str | os.PathLike[str] = DEFAULT_SECRET_MOUNT_PATH) -> BasicAuth:
        """Read ``basic-auth-user`` and ``basic-auth-password`` from an OpenFaaS secrets folder."""
        user_file = Path(path, "basic-auth-user")
        user = _read_secret(user_file, "the gateway's basic-auth user name")
        password = _read_secret(Path(path, "basic-auth-password"), "the basic-auth password")
        if not user:
            raise ValueError(f"{user_file} is empty: it should contain the basic-auth user name")
        try:
            return cls(user, password)
        except ValueError as exc:
            raise ValueError(f"invalid credentials in {os.fspath(path)}: {exc}") from exc


def _read_secret(file: Path, meaning: str) -> str:
    try:
        return file.read_text(encoding="utf-8").strip()
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"{file} not found: it should contain {meaning}") from exc
    except UnicodeDecodeError as exc:
        raise ValueError(f"{file} is not UTF-8 text") from exc


def _strip_slashes(value: str) -> str:
    try:
        return value.rstrip("/")
    except (AttributeError, TypeError):  # not a str: the validator says so, naming the field
        return value


def _check_url(name: str, value: object, *, base: bool) -> None:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, got {type(value).__name__}")
    authority = re.split(r"[/?#]", value.partition("//")[2], maxsplit=1)[0]
    if base and "@" in authority:
        # Not echoed: it holds a password. httpx would not send it to /system/* either.
        raise ValueError(f"{name} must not contain user:password@, use credentials=BasicAuth(...)")
    try:
        parts = urlsplit(value)
        port_ok = parts.port != 0
    except ValueError as exc:  # a port that is not a number or out of range, bad IPv6 brackets
        raise ValueError(f"{name} is not a valid URL: {value!r} ({exc})") from exc
    if parts.scheme not in ("http", "https") or not parts.hostname or not port_ok:
        raise ValueError(f"{name} must be an http:// or https:// URL with a host, got {value!r}")
    if any(char.isspace() for char in value) or _has_control(value):
        raise ValueError(f"{name} must not contain whitespace or control characters: {value!r}")
    if not base and not value.isascii():  # sent as a header, which httpx encodes as ASCII
        raise ValueError(f"{name} must be ASCII (percent-encode the rest), got {value!r}")
    if base and ("?" in value or "#" in value):
        raise ValueError(f"{name} must not have a query or fragment, got {value!r}")


def _check_gateway_url(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    _check_url(attribute.name, value, base=True)


def _check_callback_url(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is not None:
        _check_url(attribute.name, value, base=False)


def parse_listen(text: str) -> tuple[str, int]:
    """``(host, port)`` from ``"HOST:PORT"`` (``"[::1]:0"`` for IPv6; an empty host: every
    interface; port 0: any free port)."""
    host, colon, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        colon = ""  # an IPv6 address must be bracketed
    if not colon or not port.isascii() or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"must be HOST:PORT (port 0-65535, IPv6 in brackets), got {text!r}")
    if any(char.isspace() for char in host) or _has_control(host):
        raise ValueError(f"must be HOST:PORT without whitespace, got {text!r}")
    return host, int(port)


def _check_listen(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is None:
        return
    if not isinstance(value, str):
        raise TypeError(f"{attribute.name} must be None or a str, got {type(value).__name__}")
    try:
        parse_listen(value)
    except ValueError as exc:
        raise ValueError(f"{attribute.name} {exc}") from None


def _check_public_url(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is None:
        return
    _check_url(attribute.name, value, base=True)
    assert isinstance(value, str)  # noqa: S101 - checked just above
    if not value.isascii():  # callback URLs are sent as a header
        raise ValueError(f"{attribute.name} must be ASCII (percent-encode the rest), got {value!r}")


def _int_to_float(value: float) -> float:
    # bool is not converted (type() is not isinstance()), so the validator rejects it.
    return float(value) if type(value) is int else value


def _opt_int_to_float(value: float | None) -> float | None:
    return None if value is None else _int_to_float(value)


def _number(low: float, *, strict: bool = True, optional: bool = False) -> _Validator:
    want = f"{'None or ' if optional else ''}a number {'>' if strict else '>='} {low:g}"

    def check(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
        if value is None and optional:
            return
        if not isinstance(value, float):
            raise TypeError(f"{attribute.name} must be {want}, got {value!r}")
        if not math.isfinite(value) or value < low or (strict and value == low):
            raise ValueError(f"{attribute.name} must be {want}, got {value!r}")

    return check


def _positive_int(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{attribute.name} must be an int >= 1, got {value!r}")
    if value < 1:
        raise ValueError(f"{attribute.name} must be an int >= 1, got {value!r}")


def _text(*, empty: bool = True, optional: bool = False, header: bool = False) -> _Validator:
    def check(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
        if value is None and optional:
            return
        if not isinstance(value, str):
            raise TypeError(f"{attribute.name} must be a str, got {type(value).__name__}")
        if not value and not empty:
            raise ValueError(f"{attribute.name} must not be empty")
        # An HTTP header value, which httpx encodes as ASCII: anything else fails every call.
        if header and not all(" " <= char <= "~" for char in value):
            raise ValueError(f"{attribute.name} must be printable ASCII, got {value!r}")

    return check


def _instance(kind: type) -> _Validator:
    def check(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
        if not isinstance(value, kind):
            raise TypeError(f"{attribute.name} must be a {kind.__name__}, got {value!r}")

    return check


def _to_tuple(value: tuple[str, ...] | list[str] | None) -> tuple[str, ...] | None:
    return tuple(value) if isinstance(value, list) else value


def _check_namespaces(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is None:
        return
    if not isinstance(value, tuple):
        raise TypeError(f"{attribute.name} must be None or a tuple of str, got {value!r}")
    if not value:  # "no namespaces" would silently route nothing; None means discover
        raise ValueError(f"{attribute.name} must be None (discover) or a non-empty tuple")
    for item in value:
        if not isinstance(item, str):
            raise TypeError(f"{attribute.name} must hold only str, got {item!r}")
        if SAFE_NAME_RE.fullmatch(item) is None:  # it becomes part of every function address
            raise ValueError(f"{attribute.name} must hold valid namespace names, got {item!r}")


def _check_matching(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, str):
        raise TypeError(f"{attribute.name} must be a str, got {type(value).__name__}")
    if value not in TOPIC_MATCHINGS:
        raise ValueError(
            f"{attribute.name} must be one of {', '.join(TOPIC_MATCHINGS)}, got {value!r}"
        )


def _float(default: float, low: float = 0, *, strict: bool = True) -> Any:
    return attrs.field(
        default=default, converter=_int_to_float, validator=_number(low, strict=strict)
    )


@attrs.frozen(kw_only=True)
class ControllerConfig:
    """Everything the controller needs to know. Change it with ``attrs.evolve``."""

    gateway_url: str = attrs.field(converter=_strip_slashes, validator=_check_gateway_url)
    upstream_timeout: float | None = attrs.field(
        default=30.0, converter=_opt_int_to_float, validator=_number(0, optional=True)
    )
    lookup_timeout: float = _float(10.0)
    rebuild_interval: float = _float(30.0)
    topic_delimiter: str = attrs.field(default=",", validator=_text(empty=False))
    # Wildcards in topic annotations, in a broker's dialect; "exact" (none) as OpenFaaS.
    topic_matching: TopicMatching = attrs.field(default="exact", validator=_check_matching)
    async_invocation: bool = attrs.field(default=False, validator=_instance(bool))
    callback_url: str | None = attrs.field(default=None, validator=_check_callback_url)
    content_type: str | None = attrs.field(
        default=None, validator=_text(optional=True, header=True)
    )
    user_agent: str = attrs.field(default=DEFAULT_USER_AGENT, validator=_text(header=True))
    connector_name: str = attrs.field(
        default="aioconnector", validator=_text(empty=False, header=True)
    )
    credentials: BasicAuth | None = attrs.field(
        default=None, validator=attrs.validators.optional(_instance(BasicAuth))
    )
    # None: ask /system/namespaces on every refresh. A tuple: exactly these, never asked.
    namespaces: tuple[str, ...] | None = attrs.field(
        default=None, converter=_to_tuple, validator=_check_namespaces
    )
    max_concurrency: int = attrs.field(default=64, validator=_positive_int)
    result_buffer: int = attrs.field(default=256, validator=_positive_int)
    startup_timeout: float = _float(30.0)
    drain_timeout: float = _float(10.0, strict=False)
    max_response_bytes: int = attrs.field(default=16 * 1024 * 1024, validator=_positive_int)
    # Per /system/* response. A function's entry is 1-2 KB: 32 MiB is 16,000+ functions in one
    # namespace, far beyond real catalogues, and bounds what a broken gateway can make us hold.
    max_lookup_bytes: int = attrs.field(default=32 * 1024 * 1024, validator=_positive_int)
    retry: RetryPolicy = attrs.field(factory=RetryPolicy, validator=_instance(RetryPolicy))
    # None: every function may use all of max_concurrency (unless it declares its own limit).
    adaptive_concurrency: AdaptiveConcurrency | None = attrs.field(
        default=None, validator=attrs.validators.optional(_instance(AdaptiveConcurrency))
    )
    # None: retries are bounded only by RetryPolicy (attempts, budget seconds).
    retry_budget: RetryBudget | None = attrs.field(
        factory=RetryBudget, validator=attrs.validators.optional(_instance(RetryBudget))
    )
    # Invocations waiting for their function's turn (holding no slot); submit() waits beyond.
    max_waiting: int = attrs.field(default=1024, validator=_positive_int)
    # Credentials go to /system/* only, unless the gateway also protects functions.
    auth_invocations: bool = attrs.field(default=False, validator=_instance(bool))
    verify_tls: bool = attrs.field(default=True, validator=_instance(bool))
    ca_bundle: str | None = attrs.field(default=None, validator=_text(optional=True, empty=False))
    client_cert: str | None = attrs.field(default=None, validator=_text(optional=True, empty=False))
    client_key: str | None = attrs.field(default=None, validator=_text(optional=True, empty=False))
    # invoke_async: where callbacks are received, how long to wait for them, how many at once.
    callback_listen: str | None = attrs.field(default=None, validator=_check_listen)
    callback_public_url: str | None = attrs.field(
        default=None, converter=_strip_slashes, validator=_check_public_url
    )
    callback_timeout: float | None = attrs.field(
        default=600.0, converter=_opt_int_to_float, validator=_number(0, optional=True)
    )
    max_pending_async: int = attrs.field(default=1024, validator=_positive_int)

    def __attrs_post_init__(self) -> None:
        if self.client_key is not None and self.client_cert is None:
            raise ValueError("client_key needs client_cert (the certificate it belongs to)")

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, **overrides: Any
    ) -> ControllerConfig:
        """Read the variables OpenFaaS connectors use; ``overrides`` that are not None win."""
        env = os.environ if environ is None else environ
        unknown = sorted(set(overrides) - set(attrs.fields_dict(cls)))
        if unknown:
            raise TypeError(f"from_env() got unexpected keyword arguments {unknown}")
        given = {name: value for name, value in overrides.items() if value is not None}
        kwargs: dict[str, Any] = {"gateway_url": DEFAULT_GATEWAY_URL}
        for var, parse in _ENV_PARSERS.items():
            name = "async_invocation" if var == "asynchronous_invocation" else var
            text = env.get(var, "")
            # A space is a real topic_delimiter; for anything else blank means unset, like "".
            if name in given or not (text if name == "topic_delimiter" else text.strip()):
                continue
            try:
                kwargs[name] = parse(text)
                # Validate the field alone, so the error names the variable that set it.
                cls(**{"gateway_url": DEFAULT_GATEWAY_URL, name: kwargs[name]})
            except (ValueError, TypeError) as exc:
                raise ValueError(f"{var}: {exc}") from exc
        if "retry" not in given:
            kwargs["retry"] = _retry_from_env(env)
        if "credentials" not in given and _env_bool(env, "basic_auth"):
            path = env.get("secret_mount_path", "").strip() or DEFAULT_SECRET_MOUNT_PATH
            kwargs["credentials"] = BasicAuth.from_secrets(path)
        return cls(**(kwargs | given))


def _parse_timeout(text: str) -> float | None:
    seconds = parse_duration(text)
    return None if seconds == 0 else seconds  # "0" means no timeout, as in Go


def _env_bool(env: Mapping[str, str], var: str) -> bool:
    try:
        return parse_bool(env.get(var, "").strip() or "false")
    except ValueError as exc:
        raise ValueError(f"{var}: {exc}") from None


def _retry_from_env(env: Mapping[str, str]) -> RetryPolicy:
    changes: dict[str, Any] = {"retry_on_timeout": _env_bool(env, "retry_on_timeout")}
    text = env.get("retry_attempts", "").strip()
    try:
        if text:
            changes["attempts"] = _parse_int(text)
        return RetryPolicy(**changes)
    except ValueError as exc:
        raise ValueError(f"retry_attempts: {exc}") from exc


def _parse_int(text: str) -> int:
    if re.fullmatch(r"[+-]?[0-9]+", text.strip()) is None:
        raise ValueError(f"invalid integer {text!r}")
    return int(text)


def _parse_adaptive(text: str) -> AdaptiveConcurrency | None:
    return AdaptiveConcurrency() if parse_bool(text) else None


def _parse_word(text: str) -> str:
    return text.strip().lower()


def _parse_names(text: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))
    if not names:
        raise ValueError(f"no names in {text!r}")
    return names


_ENV_PARSERS: dict[str, Callable[[str], Any]] = {
    "gateway_url": str.strip,
    "upstream_timeout": _parse_timeout,
    **dict.fromkeys(
        ("rebuild_interval", "lookup_timeout", "startup_timeout", "drain_timeout"), parse_duration
    ),
    "topic_delimiter": str,
    "topic_matching": _parse_word,
    **dict.fromkeys(("content_type", "callback_url", "user_agent", "connector_name"), str.strip),
    "asynchronous_invocation": parse_bool,
    **dict.fromkeys(("auth_invocations", "verify_tls"), parse_bool),
    **dict.fromkeys(("ca_bundle", "client_cert", "client_key"), str.strip),
    **dict.fromkeys(("callback_listen", "callback_public_url"), str.strip),
    "callback_timeout": _parse_timeout,
    "namespaces": _parse_names,
    **dict.fromkeys(
        (
            "max_concurrency",
            "result_buffer",
            "max_response_bytes",
            "max_lookup_bytes",
            "max_pending_async",
        ),
        _parse_int,
    ),
    "max_waiting": _parse_int,
    "adaptive_concurrency": _parse_adaptive,
}
