"""The plain exceptions inside Trio's exception groups: nurseries wrap a bind error, a commit failure
or a store error in (nested) groups, and the tools report such a single cause in one line."""

from __future__ import annotations

__all__ = ["leaves"]


def leaves(exc: BaseException) -> list[BaseException]:
    """Every exception that is not a group, depth first, in order (``[exc]`` when ``exc`` is none)."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in leaves(inner)]
    return [exc]
