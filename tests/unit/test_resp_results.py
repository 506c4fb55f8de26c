"""Results of RESP commands that are not ready yet (``commands.then``): a failure that nobody waits for any more,
because the connection went, is taken quietly instead of being reported by the event loop."""
import asyncio
import gc

import pytest

from dynafast.resp.commands import then
from dynafast.resp.protocol import RespError


@pytest.mark.parametrize("chained", [False, True])
def test_a_failure_after_the_client_went_is_not_reported_as_never_retrieved(chained):
    async def run():
        loop = asyncio.get_running_loop()
        reported = []
        loop.set_exception_handler(lambda _, context: reported.append(context["message"]))
        source, inner = loop.create_future(), loop.create_future()
        # A login: the command's future follows the verification (chained: a second step that is itself pending).
        out = then(source, (lambda _: inner) if chained else (lambda role: role))
        if chained:
            source.set_result("readwrite")
            await asyncio.sleep(0)
        out.cancel()  # the connection closed: its commands in flight are cancelled
        (inner if chained else source).set_exception(RespError("WRONGPASS invalid username-password pair"))
        await asyncio.sleep(0)
        del source, inner, out
        gc.collect()
        await asyncio.sleep(0)
        return reported

    assert asyncio.run(run()) == []
