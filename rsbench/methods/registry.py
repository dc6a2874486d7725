"""Method registry in timm's style: `@register_method`, `create_method`, `list_methods`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import unknown
from .base import MethodContext, RetrievalMethod


@dataclass(frozen=True)
class MethodSpec:
    name: str
    cls: type[RetrievalMethod]
    description: str
    # Overlays of dotted keys ("train.lr", or model keys) per preset name; "small" and "paper" expected.
    presets: dict[str, dict[str, Any]]

    @property
    def config_cls(self) -> type:
        return self.cls.config_cls


_REGISTRY: dict[str, MethodSpec] = {}


def register_method(name: str, description: str, presets: dict[str, dict[str, Any]] | None = None):
    """Class decorator: register a RetrievalMethod subclass under `name`."""

    def deco(cls: type[RetrievalMethod]) -> type[RetrievalMethod]:
        if name in _REGISTRY and _REGISTRY[name].cls is not cls:
            raise ValueError(f"method '{name}' registered twice")
        _REGISTRY[name] = MethodSpec(name, cls, description, dict(presets or {}))
        return cls

    return deco


def _ensure_loaded() -> None:
    from . import _builtin  # noqa: F401  (imports the built-in methods so they register)


def get_method_spec(name: str) -> MethodSpec:
    _ensure_loaded()
    if name not in _REGISTRY:
        raise unknown("method", name, _REGISTRY)
    return _REGISTRY[name]


def list_methods() -> list[MethodSpec]:
    _ensure_loaded()
    return [_REGISTRY[k] for k in sorted(_REGISTRY)]


def create_method(name: str, config: Any, context: MethodContext) -> RetrievalMethod:
    """Build a method from its resolved config dataclass (see rsbench.config.resolve.resolve_config)."""
    spec = get_method_spec(name)
    return spec.cls(config, context)
