"""dynafast.net.deadlines: the deadline wheel (each build of it) on a real loop of each kind, with small
timeouts."""
import asyncio
import sys
import weakref

import pytest

from dynafast import _impl
from dynafast.net import loop as netloop
from dynafast.net.deadlines import DeadlineWheel
from dynafast.testing.builds import compiled_or_skip

pytestmark = pytest.mark.timeout(60)
LOOPS = ["asyncio"] + (["uvloop"] if netloop.uvloop is not None else [])
WAIT = 5.0  # seconds: "eventually", far above the few ticks a deadline may be late


@pytest.fixture(autouse=True, params=["compiled", "reference"])
def wheel_build(request, monkeypatch):
    """The tests' ``DeadlineWheel`` is this build's (``peer``: the compiled one, or its reference)."""
    build = compiled_or_skip("peer") if request.param == "compiled" else _impl.reference("peer")
    monkeypatch.setattr(sys.modules[__name__], "DeadlineWheel", build.DeadlineWheel)
    return request.param


@pytest.fixture(params=LOOPS)
def run(request):
    """run(coro): drive a coroutine on a fresh loop of each kind; fail if the loop's exception handler fired."""
    loop = netloop.new_event_loop(request.param)
    fired = []
    loop.set_exception_handler(lambda _loop, context: fired.append(context))

    def runner(coro):
        return loop.run_until_complete(asyncio.wait_for(coro, 20))

    runner.exceptions = fired
    yield runner
    loop.close()


class Callback:
    """A callback that records when it ran; weakly referenceable, to see when the wheel lets go of it."""

    def __init__(self, loop, done=None):
        self.loop = loop
        self.fired_at = None
        self.done = done

    def __call__(self):
        assert self.fired_at is None, "called twice"
        self.fired_at = self.loop.time()
        if self.done is not None:
            self.done()


class CountingLoop:
    """The loop the wheel sees, counting the timers it asks for (uvloop's loop takes no new attributes)."""

    def __init__(self, loop):
        self.loop = loop
        self.timers = 0

    def time(self):
        return self.loop.time()

    def call_at(self, when, callback, *args):
        self.timers += 1
        return self.loop.call_at(when, callback, *args)

    def call_exception_handler(self, context):
        self.loop.call_exception_handler(context)


class FrozenClock(CountingLoop):
    """As CountingLoop, with the clock stopped where it was: deadlines added together share a bucket."""

    def __init__(self, loop):
        super().__init__(loop)
        self.now = loop.time()

    def time(self):
        return self.now


async def wait_all(callbacks):
    async def fired():
        while any(c.fired_at is None for c in callbacks):
            await asyncio.sleep(0.001)
    await asyncio.wait_for(fired(), WAIT)


def test_fires_not_before_the_deadline_and_soon_after(run):
    async def main():
        loop = asyncio.get_running_loop()
        wheel = DeadlineWheel(loop)
        entries = []
        for timeout in (0.0, 0.001, 0.004, 0.005, 0.0051, 0.012, 0.03, 0.05):
            callback = Callback(loop)
            entries.append((loop.time() + timeout, callback))
            wheel.add(timeout, callback)
        await wait_all([c for _, c in entries])
        for deadline, callback in entries:
            assert callback.fired_at >= deadline
        assert len(wheel) == 0

    run(main())
    assert not run.exceptions


def test_one_loop_timer_per_bucket_not_per_item(run):
    async def main():
        loop = asyncio.get_running_loop()
        counting = FrozenClock(loop)
        wheel = DeadlineWheel(counting)
        callbacks = [Callback(loop) for _ in range(200)]
        for callback in callbacks:
            wheel.add(0.01, callback)
        later = Callback(loop)
        wheel.add(0.02, later)
        assert len(wheel) == 201
        assert counting.timers == 2
        callbacks.append(later)
        await wait_all(callbacks)
        assert len(wheel) == 0

    run(main())


def test_a_cancelled_deadline_never_fires_and_is_freed_at_once(run):
    async def main():
        loop = asyncio.get_running_loop()
        wheel = DeadlineWheel(loop)
        cancelled = Callback(loop)
        gone = weakref.ref(cancelled)
        handle = wheel.add(0.01, cancelled)
        kept = Callback(loop)
        wheel.add(0.01, kept)
        wheel.cancel(handle, cancelled)
        wheel.cancel(handle, cancelled)  # twice: a no-op
        assert len(wheel) == 1
        del cancelled
        assert gone() is None  # the wheel let go of it then, not at its deadline
        await wait_all([kept])
        wheel.cancel(handle, kept)  # after it fired: a no-op
        await asyncio.sleep(0.03)
        assert len(wheel) == 0

    run(main())


def test_fired_callbacks_are_released(run):
    async def main():
        loop = asyncio.get_running_loop()
        wheel = DeadlineWheel(loop)
        callback = Callback(loop)
        gone = weakref.ref(callback)
        wheel.add(0.002, callback)
        await wait_all([callback])
        del callback
        assert gone() is None

    run(main())


def test_a_callback_may_cancel_another_of_its_bucket(run):
    async def main():
        loop = FrozenClock(asyncio.get_running_loop())
        wheel = DeadlineWheel(loop)
        ran, handles, callbacks = [], {}, {}

        def cancelling(name, other):
            def callback():
                ran.append(name)
                wheel.cancel(handles[other], callbacks[other])
            return callback

        callbacks["a"], callbacks["b"] = cancelling("a", "b"), cancelling("b", "a")
        for name, callback in callbacks.items():
            handles[name] = wheel.add(0.001, callback)
        assert handles["a"] is handles["b"]
        await asyncio.sleep(0.05)
        assert ran in (["a"], ["b"])  # whichever ran first cancelled the other

    run(main())


def test_a_failing_callback_does_not_stop_the_others(run):
    async def main():
        loop = asyncio.get_running_loop()
        wheel = DeadlineWheel(loop, tick=0.05)

        def broken():
            raise RuntimeError("callback bug")

        callbacks = [Callback(loop) for _ in range(10)]
        wheel.add(0.001, broken)
        for callback in callbacks:
            wheel.add(0.001, callback)
        await wait_all(callbacks)

    run(main())
    assert [type(c["exception"]) for c in run.exceptions] == [RuntimeError]


def test_clear_cancels_everything(run):
    async def main():
        loop = asyncio.get_running_loop()
        wheel = DeadlineWheel(loop)
        callbacks = [Callback(loop) for _ in range(5)]
        handles = [wheel.add(0.001 * i, c) for i, c in enumerate(callbacks)]
        wheel.clear()
        assert len(wheel) == 0 and not any(handles)
        await asyncio.sleep(0.05)
        assert all(c.fired_at is None for c in callbacks)

    run(main())


def test_tick_must_be_positive():
    with pytest.raises(ValueError):
        DeadlineWheel(None, tick=0)
