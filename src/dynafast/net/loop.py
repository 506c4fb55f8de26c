"""Event loop choice: uvloop when it is importable, plain asyncio otherwise.

``DYNAFAST_LOOP=asyncio`` forces plain asyncio (handy to compare, or to debug with asyncio's debug mode).
"""
import asyncio
import os

try:
    import uvloop
except ImportError:  # uvloop does not build on every platform; asyncio is always there
    uvloop = None


def loop_name() -> str:
    """'uvloop' or 'asyncio': what install() and new_event_loop() use."""
    if uvloop is None or os.environ.get("DYNAFAST_LOOP", "").lower() == "asyncio":
        return "asyncio"
    return "uvloop"


def install() -> str:
    """Make uvloop the event loop policy when it is available; return the name of the loop in use."""
    name = loop_name()
    if name == "uvloop":
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return name


def new_event_loop(name: str | None = None) -> asyncio.AbstractEventLoop:
    """A new event loop: uvloop when available (or ``name`` = 'uvloop' / 'asyncio' to choose)."""
    name = name or loop_name()
    if name == "uvloop":
        if uvloop is None:
            raise RuntimeError("uvloop is not installed")
        return uvloop.new_event_loop()
    # Not asyncio.new_event_loop(): that follows the installed policy, which may be uvloop's.
    return asyncio.DefaultEventLoopPolicy().new_event_loop()


__all__ = ["install", "new_event_loop", "loop_name"]
