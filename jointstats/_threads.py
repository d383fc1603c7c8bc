"""Awaiting blocking work in a daemon thread (the local step's reading, a linked job's table
arithmetic and scalar multiplications)."""
from __future__ import annotations

import asyncio
import concurrent.futures
import threading


async def in_daemon_thread(fn, *args, name: str = "jointstats-worker"):
    """``fn(*args)`` in a fresh daemon thread, awaited without blocking the event loop.

    Not ``asyncio.to_thread``: its executor's threads are joined when the loop ends, so a job
    that fails (a peer dropped, a timeout) while a large file is being read or a block's
    multiplications run would only end, and report, once that work is done: minutes, for a
    million rows. A daemon thread is left behind and dies with the process."""
    done: concurrent.futures.Future = concurrent.futures.Future()

    def work():
        try:
            result = fn(*args)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the awaiting coroutine
            _settle(done.set_exception, exc)
        else:
            _settle(done.set_result, result)
    threading.Thread(target=work, daemon=True, name=name).start()
    return await asyncio.wrap_future(done)


def _settle(setter, value) -> None:
    """Hand the outcome to the awaiting side, unless it gave up (its wait was cancelled)."""
    try:
        setter(value)
    except concurrent.futures.InvalidStateError:
        pass
