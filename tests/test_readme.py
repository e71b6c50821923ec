"""The README's test snippet is real: extract it and run it (on asyncio and trio)."""

from __future__ import annotations

import ast
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import cast

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
