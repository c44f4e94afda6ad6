"""A tiny name -> factory registry shared by models and datasets."""

from __future__ import annotations

from typing import Callable, Generic, TypeVar

from .errors import unknown_name

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to factories; unknown names raise an ApdError with a suggestion."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, Callable[..., T]] = {}

    def register(self, name: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        def deco(fn: Callable[..., T]) -> Callable[..., T]:
            if name in self._items:
                raise ValueError(f"{self.kind} '{name}' registered twice")
            self._items[name] = fn
            return fn

        return deco

    def get(self, name: str) -> Callable[..., T]:
        if name not in self._items:
            raise unknown_name(self.kind, name, self._items)
        return self._items[name]

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        return name in self._items
