"""The README's test snippet is real: extract it and run it (on asyncio and trio)."""

from __future__ import annotations

import ast
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import cast

import attrs

from aioconnector import ControllerConfig

from .helpers import RecordingEnviron

README = Path(__file__).parent.parent / "README.md"


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.DOTALL)


async def test_the_testing_kit_snippet_passes() -> None:
    (snippet,) = [block for block in _python_blocks() if "async def test_" in block]
    namespace: dict[str, object] = {}
    exec(compile(snippet, str(README), "exec"), namespace)  # noqa: S102 (our own README)
    tests = [value for name, value in namespace.items() if name.startswith("test_")]
    assert len(tests) == 1
    await cast("Callable[[], Awaitable[None]]", tests[0])()


def test_every_python_block_compiles() -> None:
    blocks = _python_blocks()
    assert len(blocks) >= 3
    for block in blocks:
        # The API overview uses `async with` at top level, as the docs of async libraries do.
        compile(block, str(README), "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)


def _configuration_table() -> tuple[set[str], set[str]]:
    """The fields (first column) and env variables (second column) of the README's table."""
    section = README.read_text(encoding="utf-8").split("\n## Configuration\n", 1)[1]
    section = section.split("\n## ", 1)[0]
    fields: set[str] = set()
    variables: set[str] = set()
    for row in section.splitlines():
        if row.startswith("| `"):
            field, variable = row.strip("|").split("|")[:2]
            fields.update(re.findall(r"`(\w+)`", field))
            variables.update(re.findall(r"`(\w+)(?:=\w*)?`", variable))  # `basic_auth=true`
    return fields, variables


def _variables_from_env_reads(secrets: Path) -> set[str]:
    (secrets / "basic-auth-user").write_text("user")
    (secrets / "basic-auth-password").write_text("password")
    asked: set[str] = set()
    # Empty, then with basic_auth on: some variables are read only when another is set.
    for values in ({}, {"basic_auth": "true", "secret_mount_path": str(secrets)}):
        environ = RecordingEnviron(values)
        ControllerConfig.from_env(environ)
        asked |= environ.asked
    return asked


def test_configuration_table_lists_every_field_and_variable(tmp_path: Path) -> None:
    fields, variables = _configuration_table()
    read = _variables_from_env_reads(tmp_path)
    assert {"gateway_url", "basic_auth", "secret_mount_path"} <= read  # the recording works
    missing_fields = sorted({field.name for field in attrs.fields(ControllerConfig)} - fields)
    missing_variables = sorted(read - variables)
    assert not missing_fields, f"ControllerConfig fields missing from README: {missing_fields}"
    assert not missing_variables, f"from_env variables missing from README: {missing_variables}"
    unread = sorted(variables - read)
    assert not unread, f"README lists env variables from_env does not read: {unread}"
