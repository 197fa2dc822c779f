"""Running both parties: concurrently in one event loop, with one deadline for the pair."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from .channel import Channel
from .errors import PartyError
from .memory import memory_pair

T = TypeVar("T")
U = TypeVar("U")

PartyFn = Callable[[Channel], Awaitable[Any]]


async def run_pair(
    client: Awaitable[T], server: Awaitable[U], *, timeout: float | None = None
) -> tuple[T, U]:
    """Run the client's and the server's coroutines concurrently.

    If either raises, the other is cancelled and a :class:`PartyError` names the party that
    failed first (and what the other was doing). ``timeout`` bounds the whole run.
    """
    results: dict[str, Any] = {}
    errors: dict[str, BaseException] = {}

    async def guard(name: str, coro: Awaitable[Any]) -> None:
        try:
            results[name] = await coro
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            errors[name] = exc
            raise

    try:
        async with asyncio.timeout(timeout), asyncio.TaskGroup() as tg:
            tg.create_task(guard("client", client))
            tg.create_task(guard("server", server))
    except TimeoutError:
        raise PartyError(f"the two-party run exceeded its deadline of {timeout:g} s") from None
    except BaseExceptionGroup:
        first, exc = next(iter(errors.items()))
        other = "server" if first == "client" else "client"
        state = f"; {other}: {errors[other]!r}" if other in errors else f"; {other}: cancelled"
        raise PartyError(f"{first}: {type(exc).__name__}: {exc}{state}") from exc
    return results["client"], results["server"]


async def run_local(
    client_fn: PartyFn,
    server_fn: PartyFn,
    *,
    timeout: float | None = None,
    **session_kw: Any,
) -> tuple[Any, Any]:
    """Run ``client_fn(ch)`` and ``server_fn(ch)`` over an in-memory channel pair.

    Returns ``(client_result, server_result)``. Keyword arguments configure both sessions.
    """
    cch, sch = memory_pair(**session_kw)
    try:
        return await run_pair(client_fn(cch), server_fn(sch), timeout=timeout)
    finally:
        await cch.close()
        await sch.close()
