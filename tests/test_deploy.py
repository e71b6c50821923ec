"""The Dockerfile and the Kubernetes manifests in examples/deploy/, checked without a container
engine: they parse, every variable they set is one the connector reads (found by running the
connector's settings over a recording environment, not from a list), the values they set are
valid, the arguments name a broker and flags that exist, and the image installs what the entry
point needs.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from aioconnector._cli import _parser
from aioconnector.connectors import CONNECTORS

from .test_connectors import variables_read

if sys.version_info >= (3, 11):
    import tomllib
else:  # coverage[toml], in the test group, brings tomli to 3.10
    import tomli as tomllib  # type: ignore[import-not-found, unused-ignore]

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "examples" / "deploy"
MANIFESTS = sorted(DEPLOY.glob("*.yaml"))
SECRETS = "/var/openfaas/secrets"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def _deployment(path: Path) -> dict[str, Any]:
    documents = [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]
    assert [doc["kind"] for doc in documents] == ["Deployment"], path.name
    deployment: dict[str, Any] = documents[0]
    return deployment


def _container(deployment: dict[str, Any]) -> dict[str, Any]:
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    return container  # type: ignore[no-any-return]


def _broker(path: Path) -> str:
    return path.name.removesuffix("-connector.yaml")


def test_there_is_a_manifest_per_connector() -> None:
    assert sorted(map(_broker, MANIFESTS)) == sorted(CONNECTORS)


@pytest.fixture(params=MANIFESTS, ids=lambda path: path.name)
def manifest(request: pytest.FixtureRequest) -> Path:
    return request.param  # type: ignore[no-any-return]


def test_a_deployment_in_the_openfaas_namespace(manifest: Path) -> None:
    deployment = _deployment(manifest)
    assert deployment["apiVersion"] == "apps/v1"
    assert deployment["metadata"]["namespace"] == "openfaas"
    selector = deployment["spec"]["selector"]["matchLabels"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert selector.items() <= labels.items()
    assert deployment["metadata"]["name"] == f"{_broker(manifest)}-connector"


def test_the_arguments_name_the_broker_and_flags_that_exist(manifest: Path) -> None:
    container = _container(_deployment(manifest))
    assert "command" not in container  # the image's ENTRYPOINT: aioconnector connect
    args = container["args"]
    assert args[0] == _broker(manifest)
    assert args[0] in CONNECTORS
    parsed = _parser().parse_args(["connect", *map(str, args)])  # exits on an unknown flag
    assert parsed.broker == args[0]


def _env(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    entries = container["env"]
    names = [entry["name"] for entry in entries]
    assert len(names) == len(set(names)), f"a variable is set twice: {names}"
    return {entry["name"]: entry for entry in entries}


def test_every_variable_set_is_one_the_connector_reads(manifest: Path, tmp_path: Path) -> None:
    connector = CONNECTORS[_broker(manifest)]
    read = variables_read(connector, tmp_path)
    env = _env(_container(_deployment(manifest)))
    assert {"gateway_url", "basic_auth", "topics"} <= set(env)
    unread = sorted(set(env) - read)
    assert not unread, f"{manifest.name} sets variables the connector does not read: {unread}"


# What a secret would hold, for the variables that come from one.
_SECRET_VALUES = {
    "rabbitmq_url": "amqp://user:password@rabbitmq.openfaas:5672/",
    "postgres_dsn": "postgresql://user:password@postgres.openfaas:5432/app",
    "mqtt_password": "password",
}


def test_the_values_set_are_valid(manifest: Path, tmp_path: Path) -> None:
    """The connector's own settings code accepts what the manifest sets (with the secrets
    folder and the secret values stood in for)."""
    connector = CONNECTORS[_broker(manifest)]
    container = _container(_deployment(manifest))
    environ = {}
    for name, entry in _env(container).items():
        if "valueFrom" in entry:
            assert set(entry["valueFrom"]) == {"secretKeyRef"}, name
            environ[name] = _SECRET_VALUES[name]
        else:
            assert isinstance(entry["value"], str), f"{name}: quote it, Kubernetes wants a string"
            environ[name] = entry["value"]
    (tmp_path / "basic-auth-user").write_text("admin")
    (tmp_path / "basic-auth-password").write_text("secret")
    environ["secret_mount_path"] = str(tmp_path)
    args = _parser().parse_args(["connect", *map(str, container["args"])])
    settings = connector.settings(vars(args), environ)
    assert settings.config.credentials is not None  # basic_auth=true read the secret
    assert settings.config.connector_name == f"{connector.name}-connector"


def test_the_gateway_secret_is_mounted_where_the_connector_reads_it(manifest: Path) -> None:
    deployment = _deployment(manifest)
    pod = deployment["spec"]["template"]["spec"]
    container = _container(deployment)
    env = _env(container)
    assert env["basic_auth"]["value"] == "true"
    assert env["secret_mount_path"]["value"] == SECRETS
    [mount] = [m for m in container["volumeMounts"] if m["mountPath"] == SECRETS]
    assert mount["readOnly"] is True
    [volume] = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    assert volume["secret"]["secretName"] == "basic-auth"  # what OpenFaaS creates


def test_resources_requests_and_a_graceful_stop(manifest: Path) -> None:
    deployment = _deployment(manifest)
    pod = deployment["spec"]["template"]["spec"]
    container = _container(deployment)
    assert {"cpu", "memory"} <= set(container["resources"]["requests"])
    assert pod["securityContext"]["runAsNonRoot"] is True
    # SIGTERM, then drain_timeout to finish what is in flight, well before the SIGKILL.
    drain = _seconds(_env(container)["drain_timeout"]["value"])
    assert drain < pod["terminationGracePeriodSeconds"]


def test_probes_and_scrapes_reach_the_health_port(manifest: Path) -> None:
    deployment = _deployment(manifest)
    container = _container(deployment)
    port = int(_env(container)["health_port"]["value"])
    [named] = [p for p in container["ports"] if p["name"] == "health"]
    assert named["containerPort"] == port
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "health"}
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(port)
    assert annotations["prometheus.io/path"] == "/metrics"


@pytest.mark.parametrize(
    ("broker", "shared"),
    [("nats", True), ("redis", True), ("rabbitmq", True), ("mqtt", False), ("postgres", False)],
)
def test_only_the_brokers_that_share_work_are_scaled_out(broker: str, shared: bool) -> None:
    spec = _deployment(DEPLOY / f"{broker}-connector.yaml")["spec"]
    if shared:  # durable consumer, consumer group, competing consumers
        assert spec["replicas"] > 1
    else:  # a persistent MQTT session, or LISTEN (every listener gets every notification)
        assert spec["replicas"] == 1
        assert spec["strategy"]["type"] == "Recreate"


def _seconds(text: str) -> float:
    from aioconnector._config import parse_duration

    return parse_duration(text)


# -- the Dockerfile ------------------------------------------------------------------------------


def _dockerfile() -> list[tuple[str, str]]:
    """(instruction, arguments), continuation lines joined, comments dropped."""
    text = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    text = re.sub(r"\\\n", " ", text)
    instructions = []
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            instruction, _, arguments = line.strip().partition(" ")
            instructions.append((instruction.upper(), arguments.strip()))
    return instructions


def test_the_image_is_slim_python_as_a_non_root_user() -> None:
    instructions = _dockerfile()
    [base] = [args for instruction, args in instructions if instruction == "FROM"]
    assert re.fullmatch(r"python:3\.\d+-slim", base), base
    requires = PYPROJECT["project"]["requires-python"]
    assert int(base.split(".")[1].split("-")[0]) >= int(requires.split(".")[1])
    [user] = [args for instruction, args in instructions if instruction == "USER"]
    assert user.split(":")[0] not in ("0", "root")
    # The manifests run as that user.
    for manifest in MANIFESTS:
        pod = _deployment(manifest)["spec"]["template"]["spec"]
        assert str(pod["securityContext"]["runAsUser"]) == user.split(":")[0]


def test_the_entry_point_is_aioconnector_connect() -> None:
    [entrypoint] = [args for instruction, args in _dockerfile() if instruction == "ENTRYPOINT"]
    assert json.loads(entrypoint) == ["aioconnector", "connect"]
    assert PYPROJECT["project"]["scripts"]["aioconnector"] == "aioconnector._cli:main"
    subcommands = next(
        action for action in _parser()._actions if isinstance(action, argparse._SubParsersAction)
    )
    assert "connect" in subcommands.choices


def test_the_image_installs_every_connectors_extra() -> None:
    runs = " ".join(args for instruction, args in _dockerfile() if instruction == "RUN")
    installed = re.findall(r"pip install \"?\.\[([\w,]+)\]\"?", runs)
    assert installed == ["all,prometheus"], runs  # every broker client, and /metrics
    extras = PYPROJECT["project"]["optional-dependencies"]
    for connector in CONNECTORS.values():
        [requirement] = extras[connector.name]
        assert re.match(rf"{re.escape(connector.client)}\b", requirement), requirement
        assert requirement in extras["all"], f"[all] lacks {requirement}"
    # The build context has what the build backend reads.
    copied = " ".join(args for instruction, args in _dockerfile() if instruction == "COPY")
    for needed in ("pyproject.toml", "README.md", "LICENSE", "src"):
        assert needed in copied
    lines = (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
    ignored = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    assert ignored
    assert not {"src", "README.md", "LICENSE", "pyproject.toml"} & set(ignored)
