"""Background jobs of a node: periodic loops that survive their own failures, and stopping them."""
from __future__ import annotations

import asyncio
import logging
import random

from dynafast.errors import DynafastError


async def periodic(interval: float, job, log: logging.Logger, what: str, *, jitter: float = 0.25,
                   rng: random.Random | None = None) -> None:
    """Run ``await job()`` every ``interval`` seconds (+- ``jitter`` of it, so nodes do not beat in step).

    A failing round is logged and the next round tries again: one bad exchange must not stop the loop.
    """
    draw = (rng or random).random
    while True:
        await asyncio.sleep(interval * (1 - jitter + 2 * jitter * draw()))
        try:
            await job()
        except asyncio.CancelledError:
            raise
        except DynafastError as exc:  # a peer that did not answer: expected while nodes come and go
            log.warning("%s failed: %s", what, exc)
        except Exception:  # noqa: BLE001 - see the docstring
            log.exception("%s failed", what)


async def cancel_and_wait(tasks) -> None:
    """Cancel ``tasks`` and wait until each has finished, whatever it raised."""
    tasks = [task for task in tasks if task is not None]
    for task in tasks:
        task.cancel()
    for task in tasks:
        try:
            await task
        except (asyncio.CancelledError, Exception):
            pass
