from __future__ import annotations

import inspect

import aioconnector
import aioconnector.connectors
import aioconnector.testing


def _public_names(module: object) -> set[str]:
    return {
        name
        for name, value in vars(module).items()
        if not name.startswith("_")
        and not inspect.ismodule(value)
        and getattr(value, "__module__", "").startswith("aioconnector")
    }


def test_all_is_sorted_and_complete() -> None:
    for module in (aioconnector, aioconnector.testing, aioconnector.connectors):
        assert list(module.__all__) == sorted(module.__all__), module.__name__
        assert _public_names(module) <= set(module.__all__), module.__name__
        for name in module.__all__:
            assert hasattr(module, name), f"{module.__name__}.{name} is listed but missing"


def test_public_classes_are_documented() -> None:
    for name in aioconnector.__all__:
        value = getattr(aioconnector, name)
        if inspect.isclass(value):
            assert value.__doc__, f"{name} has no docstring"


def test_version_is_a_string() -> None:
    assert isinstance(aioconnector.__version__, str)
    assert aioconnector.__version__[0].isdigit()
