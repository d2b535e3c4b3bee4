"""``Registry``: the named entries of one extension point (architectures, sensitivity metrics), registered next
to their code. CLI choices and help are read from it, and an unknown name is a one-line error listing the known
ones."""

from __future__ import annotations

from typing import Callable, Generic, Iterator, TypeVar

from lowbit.errors import LowbitError

T = TypeVar("T")


class Registry(Generic[T]):
    """Entries by name, in registration order."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}
        self._aliases: dict[str, str] = {}

    def add(self, name: str, entry: T) -> T:
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} registered twice")
        self._entries[name] = entry
        return entry

    def alias(self, name: str, target: str) -> None:
        """Let ``name`` (another project's name for an entry) stand for the entry ``target``."""
        if name in self._entries or name in self._aliases or target not in self._entries:
            raise ValueError(f"{self.kind} alias {name!r} clashes or names no entry ({target!r})")
        self._aliases[name] = target

    def canonical(self, name: str) -> str:
        """The entry's own name for ``name`` (itself, or what an alias stands for)."""
        return self._aliases.get(name, name)

    def aliases(self) -> dict[str, str]:
        return dict(self._aliases)

    def decorator(self, name: str) -> Callable[[T], T]:
        """``@registry.decorator(name)`` registers the decorated function itself."""
        return lambda entry: self.add(name, entry)

    def __getitem__(self, name: str) -> T:
        return self.get(name)

    def get(self, name: str) -> T:
        try:
            return self._entries[self.canonical(name)]
        except KeyError:
            raise LowbitError(f"unknown {self.kind} {name!r}; choose one of: {', '.join(self._entries)}") from None

    def names(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries or name in self._aliases

    def __len__(self) -> int:
        return len(self._entries)
