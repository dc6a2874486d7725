"""Method registry in timm's style: `@register_method`, `create_method`, `list_methods`."""

from __future__ import annotations

from collections.abc import Callable
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
    # The name papers use (tables, figures): a string, or a function of the model config (a variant).
    display: str | Callable[[Any], str] | None = None

    @property
    def config_cls(self) -> type:
        return self.cls.config_cls

    def display_name(self, model: Any = None) -> str:
        """The printed name of this method with `model` (its config dataclass); the key when none declared."""
        if callable(self.display):
            return self.display(model if model is not None else self.config_cls())
        return self.display or self.name


_REGISTRY: dict[str, MethodSpec] = {}


def register_method(name: str, description: str, presets: dict[str, dict[str, Any]] | None = None,
                    display_name: str | Callable[[Any], str] | None = None):
    """Class decorator: register a RetrievalMethod subclass under `name`; `display_name` is what tables
    and figures print (a string, or a function of the method's config for a name that depends on a variant)."""

    def deco(cls: type[RetrievalMethod]) -> type[RetrievalMethod]:
        if name in _REGISTRY and _REGISTRY[name].cls is not cls:
            raise ValueError(f"method '{name}' registered twice")
        _REGISTRY[name] = MethodSpec(name, cls, description, dict(presets or {}), display_name)
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
