"""The asyncio micro-batcher of the inspection service, with a fake model (no HTTP, no torch)."""

import asyncio
import threading
import time

import pytest

pytest.importorskip("prometheus_client")

from greyanom.serve._batcher import BatcherClosed, MicroBatcher, QueueFull, check_batch_options  # noqa: E402
from greyanom.serve._metrics import ServiceMetrics  # noqa: E402


class FakeModel:
    """Squares numbers; remembers each call's items and the thread it ran on."""

    def __init__(self, delay=0.0, fail_on=None, block=None):
        self.calls, self.threads, self.started = [], [], []
        self.delay, self.fail_on, self.block = delay, fail_on, block

    def __call__(self, items):
        self.started.append(time.monotonic())
        self.calls.append(list(items))
        self.threads.append(threading.get_ident())
        if self.block is not None:
            assert self.block.wait(10)
        if self.delay:
            time.sleep(self.delay)
        if self.fail_on is not None and self.fail_on in items:
            raise ValueError(f"cannot score {self.fail_on}")
        return [x * x for x in items]


def run(coro):
    return asyncio.run(coro)


async def _gather(batcher, items, *, return_exceptions=False):
    try:
        return await asyncio.gather(*(batcher.submit(x) for x in items), return_exceptions=return_exceptions)
    finally:
        await batcher.close()


def test_concurrent_requests_share_one_call_and_get_their_own_results():
    model = FakeModel(delay=0.05)
    batcher = MicroBatcher(model, max_batch=8, max_wait_ms=500)
    results = run(_gather(batcher, list(range(8))))
    assert results == [x * x for x in range(8)]  # each caller its own answer, in its own place
    assert model.calls == [list(range(8))]  # one forward pass for all eight
    assert model.threads[0] != threading.get_ident()  # not on the event loop's thread


def test_batches_never_exceed_max_batch_and_lose_nothing():
    model = FakeModel(delay=0.01)
    batcher = MicroBatcher(model, max_batch=3, max_wait_ms=50)
    results = run(_gather(batcher, list(range(20))))
    assert results == [x * x for x in range(20)]
    assert all(1 <= len(c) <= 3 for c in model.calls)
    assert sorted(x for c in model.calls for x in c) == list(range(20))
    assert max(len(c) for c in model.calls) == 3


def test_a_lone_request_waits_at_most_max_wait():
    async def lone(max_wait_ms):
        model = FakeModel()
        batcher = MicroBatcher(model, max_batch=8, max_wait_ms=max_wait_ms)
        t0 = time.monotonic()
        try:
            assert await batcher.submit(3) == 9
        finally:
            await batcher.close()
        return model.started[0] - t0

    # the batch does not start before the wait is over, waiting for company that never comes ...
    assert run(lone(1500)) >= 1.5
    # ... and with no wait it starts at once (a loose bound: a shared machine)
    assert run(lone(0)) < 1.0


def test_max_wait_decides_whether_a_late_request_joins():
    async def two(max_wait_ms, gap_s):
        model = FakeModel()
        batcher = MicroBatcher(model, max_batch=8, max_wait_ms=max_wait_ms)
        try:
            first = asyncio.ensure_future(batcher.submit(1))
            await asyncio.sleep(gap_s)
            second = await batcher.submit(2)
            return await first, second, model.calls
        finally:
            await batcher.close()

    assert run(two(2000, 0.1)) == (1, 4, [[1, 2]])
    assert run(two(10, 0.4)) == (1, 4, [[1], [2]])


def test_requests_queued_behind_a_running_batch_are_taken_without_waiting():
    async def scenario():
        gate = threading.Event()
        model = FakeModel(block=gate)
        batcher = MicroBatcher(model, max_batch=4, max_wait_ms=5000)
        try:
            first = [asyncio.ensure_future(batcher.submit(x)) for x in range(4)]
            while not model.calls:  # the full first batch started at once, without the 5 s wait
                await asyncio.sleep(0.01)
            later = [asyncio.ensure_future(batcher.submit(x)) for x in range(4, 8)]
            await asyncio.sleep(0.05)
            assert batcher.depth == 4
            t0 = time.monotonic()
            gate.set()
            results = await asyncio.gather(*first, *later)
            return results, model.calls, time.monotonic() - t0
        finally:
            await batcher.close()

    results, calls, elapsed = run(scenario())
    assert results == [x * x for x in range(8)]
    assert calls == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert elapsed < 4.0  # the second batch was full: it did not wait max_wait_ms


def test_one_failing_item_fails_only_its_own_request():
    model = FakeModel(fail_on=5)
    batcher = MicroBatcher(model, max_batch=8, max_wait_ms=500)
    results = run(_gather(batcher, list(range(8)), return_exceptions=True))
    assert isinstance(results[5], ValueError) and "cannot score 5" in str(results[5])
    assert [r for i, r in enumerate(results) if i != 5] == [x * x for x in range(8) if x != 5]
    assert model.calls[0] == list(range(8))  # the batch ran, failed, then each item alone
    assert sorted(len(c) for c in model.calls[1:]) == [1] * 8


def test_an_exception_result_fails_its_item_only():
    def model(items):
        return [ZeroDivisionError("no inverse of 0") if x == 0 else 1 / x for x in items]

    batcher = MicroBatcher(model, max_batch=4, max_wait_ms=500)
    results = run(_gather(batcher, [0, 1, 2, 4], return_exceptions=True))
    assert isinstance(results[0], ZeroDivisionError)
    assert results[1:] == [1.0, 0.5, 0.25]


def test_a_wrong_number_of_results_is_an_error_not_a_misassignment():
    batcher = MicroBatcher(lambda items: items[:-1], max_batch=4, max_wait_ms=500)
    results = run(_gather(batcher, [1, 2], return_exceptions=True))
    # the batch of two fails, then each item alone returns no result either
    assert all(isinstance(r, RuntimeError) and "returned" in str(r) for r in results)


def test_a_full_queue_refuses_at_once_and_keeps_the_queued_requests():
    async def scenario():
        gate = threading.Event()
        model = FakeModel(block=gate)
        batcher = MicroBatcher(model, max_batch=2, max_wait_ms=0, max_queue=2)
        try:
            running = asyncio.ensure_future(batcher.submit(1))
            while not model.calls:
                await asyncio.sleep(0.01)
            queued = [asyncio.ensure_future(batcher.submit(x)) for x in (2, 3)]
            await asyncio.sleep(0.05)
            with pytest.raises(QueueFull, match="2 images are waiting"):
                await batcher.submit(4)
            gate.set()
            return await asyncio.gather(running, *queued), model.calls
        finally:
            await batcher.close()

    results, calls = run(scenario())
    assert results == [1, 4, 9]
    assert calls == [[1], [2, 3]]


def test_close_fails_queued_requests_and_refuses_new_ones():
    async def scenario():
        gate = threading.Event()
        model = FakeModel(block=gate)
        batcher = MicroBatcher(model, max_batch=1, max_wait_ms=0)
        running = asyncio.ensure_future(batcher.submit(1))
        while not model.calls:
            await asyncio.sleep(0.01)
        queued = asyncio.ensure_future(batcher.submit(2))
        await asyncio.sleep(0.05)
        await batcher.close()
        gate.set()
        outcomes = await asyncio.gather(running, queued, return_exceptions=True)
        with pytest.raises(BatcherClosed):
            await batcher.submit(3)
        return outcomes

    outcomes = run(scenario())
    assert all(isinstance(o, BatcherClosed) for o in outcomes)


def test_cancelled_requests_are_not_computed():
    async def scenario():
        gate = threading.Event()
        model = FakeModel(block=gate)
        batcher = MicroBatcher(model, max_batch=4, max_wait_ms=0)
        try:
            running = asyncio.ensure_future(batcher.submit(1))
            while not model.calls:
                await asyncio.sleep(0.01)
            gone = asyncio.ensure_future(batcher.submit(2))
            kept = asyncio.ensure_future(batcher.submit(3))
            await asyncio.sleep(0.05)
            gone.cancel()  # the client went away
            gate.set()
            return await asyncio.gather(running, kept), model.calls
        finally:
            await batcher.close()

    results, calls = run(scenario())
    assert results == [1, 9] and calls == [[1], [3]]


def test_metrics_count_batches_waits_and_queue_depth():
    metrics = ServiceMetrics((1.0, 2.0), model_class="Fake", model_version="v0")

    async def scenario():
        gate = threading.Event()
        model = FakeModel(block=gate)
        batcher = MicroBatcher(model, max_batch=4, max_wait_ms=0, metrics=metrics)
        try:
            first = asyncio.ensure_future(batcher.submit(0))
            while not model.calls:
                await asyncio.sleep(0.01)
            rest = [asyncio.ensure_future(batcher.submit(x)) for x in (1, 2, 3)]
            await asyncio.sleep(0.05)
            depth_while_blocked = metrics.registry.get_sample_value("greyanom_batch_queue_depth")
            gate.set()
            await asyncio.gather(first, *rest)
            return depth_while_blocked
        finally:
            await batcher.close()

    assert run(scenario()) == 3
    value = metrics.registry.get_sample_value
    assert value("greyanom_batch_queue_depth") == 0
    assert value("greyanom_batch_size_count") == 2  # a batch of 1, then one of 3
    assert value("greyanom_batch_size_sum") == 4
    assert value("greyanom_batch_size_bucket", {"le": "1.0"}) == 1
    assert value("greyanom_batch_queue_wait_seconds_count") == 4


@pytest.mark.parametrize(
    "options, message",
    [
        ((0, 5.0, 10), "max_batch must be an integer >= 1"),
        ((2.5, 5.0, 10), "max_batch must be an integer >= 1"),
        ((True, 5.0, 10), "max_batch must be an integer >= 1"),
        ((4, -1.0, 10), "max_wait_ms must be a finite number >= 0"),
        ((4, float("nan"), 10), "max_wait_ms must be a finite number >= 0"),
        ((4, float("inf"), 10), "max_wait_ms must be a finite number >= 0"),
        ((4, "5", 10), "max_wait_ms must be a finite number >= 0"),
        ((4, 5.0, 0), "max_queue must be an integer >= 1"),
    ],
)
def test_bad_options_are_named(options, message):
    with pytest.raises(ValueError, match=message):
        check_batch_options(*options)
    with pytest.raises(ValueError, match=message):
        MicroBatcher(lambda items: items, max_batch=options[0], max_wait_ms=options[1], max_queue=options[2])
