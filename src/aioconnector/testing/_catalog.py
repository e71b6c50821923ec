"""What the fake gateway knows about functions: records, addresses, routes, handlers."""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any, Final, Literal, TypeAlias

import attrs

from ._capacity import Capacity
from ._models import FakeResponse

if TYPE_CHECKING:
    from ._models import Handler, RecordedRequest

DEFAULT_NAMESPACE: Final = "openfaas-fn"
"""The namespace of a function addressed without one, as on a real gateway."""

Kind: TypeAlias = Literal["namespaces", "functions", "function", "async", "other"]


def check_name(what: str, value: str) -> str:
    """``value`` if it can be a function or namespace name, else :class:`ValueError`."""
    if not value or any(c in value for c in "./?# ") or value != value.strip():
        raise ValueError(
            f"{what} must be non-empty, without '.', '/', '?', '#' or spaces: {value!r}"
        )
    return value


def address(name: str, namespace: str) -> str:
    """``name.namespace``, the namespace defaulted."""
    return f"{name}.{namespace or DEFAULT_NAMESPACE}"


@attrs.frozen
class Route:
    """What a request path asks for."""

    kind: Kind
    name: str = ""
    namespace: str = ""  # "" when the path named none
    extra_path: str = ""

    @property
    def ref(self) -> str:
        """The function as the path named it: ``name`` or ``name.namespace``."""
        return f"{self.name}.{self.namespace}" if self.namespace else self.name


def parse_route(path: str, base_path: str) -> Route:
    """Route ``path`` (without query) like the gateway's router, under ``base_path``."""
    if base_path:
        if path != base_path and not path.startswith(base_path + "/"):
            return Route("other")
        path = path[len(base_path) :]
    if path == "/system/namespaces":
        return Route("namespaces")
    if path == "/system/functions":
        return Route("functions")
    kind: Kind
    for prefix, kind in (("/function/", "function"), ("/async-function/", "async")):
        if path.startswith(prefix):
            ref, slash, extra = path[len(prefix) :].partition("/")
            name, dot, namespace = ref.rpartition(".")
            if not dot:
                name, namespace = namespace, ""
            if not name or (dot and not namespace):
                return Route("other")
            return Route(kind, name, namespace, slash + extra)
    return Route("other")


@attrs.define(eq=False)
class Function:
    """A deployed fake function."""

    name: str
    namespace: str
    annotations: dict[str, str] | None
    labels: dict[str, str] | None
    handler: Handler | None
    created_at: str
    capacity: Capacity = attrs.field(factory=Capacity)
    invocation_count: int = 0

    @property
    def address(self) -> str:
        return address(self.name, self.namespace)

    def status(self, *, with_namespace: bool) -> dict[str, Any]:
        """The FunctionStatus object that /system/functions lists for this function."""
        status: dict[str, Any] = {
            "name": self.name,
            "image": f"ghcr.io/openfaas/fake-{self.name}:latest",
            "namespace": self.namespace,
            "envProcess": "./handler",
            "envVars": {},
            "constraints": [],
            "secrets": [],
            "labels": self.labels,
            "annotations": self.annotations,
            "limits": None,
            "requests": None,
            "readOnlyRootFilesystem": False,
            "invocationCount": self.invocation_count,
            "replicas": 1,
            "availableReplicas": 1,
            "createdAt": self.created_at,
            "usage": {"cpu": 0.0, "totalMemoryBytes": 8388608},
        }
        if not with_namespace:  # older gateways did not report one
            del status["namespace"]
        return status

    async def call(self, record: RecordedRequest) -> FakeResponse:
        """Run the handler on ``record`` (counting the invocation)."""
        self.invocation_count += 1
        handler = self.handler
        if handler is None:  # echo
            content_type = record.headers.get("content-type")
            return FakeResponse(
                body=record.body, headers={"Content-Type": content_type} if content_type else {}
            )
        if isinstance(handler, FakeResponse):
            return handler
        result = handler(record)
        if inspect.isawaitable(result):
            result = await result
        if not isinstance(result, FakeResponse):
            raise TypeError(f"a fake function's handler must return a FakeResponse, got {result!r}")
        return result
