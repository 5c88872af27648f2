"""Dynamic micro-batching for the inspection service: concurrent requests share one forward pass.

:class:`MicroBatcher` is a generic asyncio batcher: requests ``await submit(item)``; a single
consumer task takes the first waiting item, then more until it holds ``max_batch`` items or
``max_wait_ms`` have passed since the first one arrived, runs ``fn(items)`` once in its own
worker thread (the event loop keeps accepting requests meanwhile) and resolves each request's
future with its own result. A batch that fails as a whole is rerun item by item, so one bad
item fails only its own request. The queue is bounded: a full queue raises
:class:`QueueFull`, which the service answers with 503 ``queue_full``.

:class:`BatchedInspector` is ``InspectionService.inspect`` on that path: decode in the thread
pool, each model's ``explain`` on the stacked batch in the batcher, then decision, heatmap,
record and drift observation per request in the thread pool, exactly as without batching.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import math
import numbers
import time

__all__ = ["MicroBatcher", "BatchedInspector", "QueueFull", "BatcherClosed", "check_batch_options",
           "DEFAULT_MAX_BATCH", "DEFAULT_MAX_WAIT_MS", "DEFAULT_MAX_QUEUE"]

logger = logging.getLogger("greyanom.serve")

#: 1 = no batching: each request runs its own forward pass, as before micro-batching existed.
DEFAULT_MAX_BATCH = 1
#: With batching on, the longest a lone request waits for company (a tenth of the case study's
#: 50 ms budget). Under load the batches fill while the previous one runs, without waiting.
DEFAULT_MAX_WAIT_MS = 5.0
#: Images waiting for the model before new requests are answered 503 ``queue_full``.
DEFAULT_MAX_QUEUE = 128


class QueueFull(RuntimeError):
    """The batcher's queue holds ``max_queue`` items; the request was not queued."""


class BatcherClosed(RuntimeError):
    """The batcher was closed (the service is shutting down) before the item ran."""


def check_batch_options(max_batch, max_wait_ms, max_queue):
    """Validate the micro-batching options; return them as ``(int, float, int)``.

    Raises
    ------
    ValueError
        Naming the option and what it must be.
    """
    for name, value in (("max_batch", max_batch), ("max_queue", max_queue)):
        if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}.")
    if not isinstance(max_wait_ms, numbers.Real) or isinstance(max_wait_ms, bool) or not 0 <= max_wait_ms < math.inf:
        raise ValueError(f"max_wait_ms must be a finite number >= 0, got {max_wait_ms!r}.")
    return int(max_batch), float(max_wait_ms), int(max_queue)


class _Pending:
    __slots__ = ("item", "future", "enqueued")

    def __init__(self, item, future, enqueued):
        self.item, self.future, self.enqueued = item, future, enqueued


class MicroBatcher:
    """Run ``fn`` on batches of concurrently submitted items, one batch at a time.

    Parameters
    ----------
    fn : callable
        ``fn(items) -> results``: a list in, a sequence of the same length out, one result
        per item in order. A result that is an exception instance fails its item only. Runs
        in the batcher's single worker thread, never on the event loop.
    max_batch : int, default=8
        Most items per call of ``fn``.
    max_wait_ms : float, default=5.0
        Longest time a batch waits for more items after its first item arrived. Items that
        are already queued (because the previous batch was running) are taken at once.
    max_queue : int, default=128
        Most items waiting; :meth:`submit` raises :class:`QueueFull` beyond it.
    metrics : ServiceMetrics, optional
        Its ``batch_queue_depth`` gauge, ``batch_size`` and ``batch_queue_wait`` histograms
        are updated.
    """

    def __init__(self, fn, *, max_batch=8, max_wait_ms=DEFAULT_MAX_WAIT_MS, max_queue=DEFAULT_MAX_QUEUE,
                 metrics=None):
        self.fn = fn
        self.max_batch, self.max_wait_ms, self.max_queue = check_batch_options(max_batch, max_wait_ms, max_queue)
        self.metrics = metrics
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="greyanom-batch")
        self._queue = None
        self._task = None
        self._loop = None
        self._closed = False

    # -- lifecycle -----------------------------------------------------------------------
    def start(self):
        """Start the consumer on the running event loop (again if the loop changed)."""
        loop = asyncio.get_running_loop()
        if self._task is not None and self._loop is loop and not self._task.done():
            return
        if self._closed:
            raise BatcherClosed("the batcher is closed.")
        # a queue belongs to the loop it was first used on; a new loop gets a new one
        self._loop, self._queue = loop, asyncio.Queue(maxsize=self.max_queue)
        self._task = loop.create_task(self._consume(), name="greyanom-micro-batcher")

    async def close(self):
        """Stop the consumer; items still queued fail with :class:`BatcherClosed`."""
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        while self._queue is not None and not self._queue.empty():
            pending = self._queue.get_nowait()
            if not pending.future.done():
                pending.future.set_exception(BatcherClosed("the service is shutting down."))
        self._set_depth()
        self._executor.shutdown(wait=False, cancel_futures=True)

    @property
    def depth(self):
        """Items waiting in the queue now."""
        return 0 if self._queue is None else self._queue.qsize()

    # -- requests ------------------------------------------------------------------------
    async def submit(self, item):
        """Queue ``item``, wait for its batch, return its result (or raise its exception).

        Raises
        ------
        QueueFull
            If ``max_queue`` items are waiting already.
        BatcherClosed
            If the batcher is closed.
        """
        if self._closed:
            raise BatcherClosed("the service is shutting down.")
        self.start()
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        try:
            self._queue.put_nowait(_Pending(item, future, loop.time()))
        except asyncio.QueueFull:
            raise QueueFull(
                f"{self.max_queue} images are waiting for the model (the queue limit, --max-queue); retry later."
            ) from None
        self._set_depth()
        return await future

    # -- the consumer --------------------------------------------------------------------
    async def _consume(self):
        loop = asyncio.get_running_loop()
        while True:
            first = await self._queue.get()
            batch = [first]
            deadline = first.enqueued + self.max_wait_ms / 1000.0
            while len(batch) < self.max_batch:
                if not self._queue.empty():
                    batch.append(self._queue.get_nowait())
                    continue
                timeout = deadline - loop.time()
                if timeout <= 0:
                    break
                try:
                    async with asyncio.timeout(timeout):
                        batch.append(await self._queue.get())
                except TimeoutError:
                    break
            self._set_depth()
            # a request whose client went away (its future cancelled) is not computed
            batch = [p for p in batch if not p.future.done()]
            if batch:
                try:
                    await self._run(batch, loop)
                except asyncio.CancelledError:
                    for p in batch:
                        if not p.future.done():
                            p.future.set_exception(BatcherClosed("the service is shutting down."))
                    raise

    async def _run(self, batch, loop):
        started = loop.time()
        if self.metrics is not None:
            self.metrics.batch_size.observe(len(batch))
            for p in batch:
                self.metrics.batch_queue_wait.observe(max(0.0, started - p.enqueued))
        items = [p.item for p in batch]
        try:
            results = await loop.run_in_executor(self._executor, self._call, items)
        except Exception as exc:
            if len(items) == 1:
                results = [exc]
            else:  # find the bad item: every other one still gets its answer
                logger.warning("a batch of %d failed (%s: %s); running its items one by one",
                               len(items), type(exc).__name__, exc)
                results = [await self._run_alone(item, loop) for item in items]
        for p, result in zip(batch, results):
            if p.future.done():
                continue
            if isinstance(result, BaseException):
                p.future.set_exception(result)
            else:
                p.future.set_result(result)

    async def _run_alone(self, item, loop):
        try:
            return (await loop.run_in_executor(self._executor, self._call, [item]))[0]
        except Exception as exc:
            return exc

    def _call(self, items):
        results = list(self.fn(items))
        if len(results) != len(items):
            raise RuntimeError(f"the batch function returned {len(results)} results for {len(items)} items.")
        return results

    def _set_depth(self):
        if self.metrics is not None:
            self.metrics.batch_queue_depth.set(self.depth)


class BatchedInspector:
    """:meth:`InspectionService.inspect` with one forward pass for concurrent requests.

    Each request takes its models (:meth:`InspectionService.plan`) once, is decoded in the
    thread pool, waits in a :class:`MicroBatcher` whose function is
    :meth:`InspectionService.explain_plan` (each model's public ``explain`` on the stacked
    images of the requests that share its models), then gets its own decision, heatmap, committed record, metrics
    and drift observation from :meth:`InspectionService.answer`, in the thread pool: the
    same record and answer as without batching.

    Parameters
    ----------
    service : InspectionService
    max_batch, max_wait_ms, max_queue
        See :class:`MicroBatcher`.
    """

    def __init__(self, service, *, max_batch, max_wait_ms=DEFAULT_MAX_WAIT_MS, max_queue=DEFAULT_MAX_QUEUE):
        self.service = service
        self.batcher = MicroBatcher(service.explain_plan, max_batch=max_batch, max_wait_ms=max_wait_ms,
                                    max_queue=max_queue, metrics=service.metrics)

    def start(self):
        self.batcher.start()

    async def close(self):
        await self.batcher.close()

    async def inspect(self, body, wafer_id, inspection_point):
        """Decode, score in a shared batch, decide, record; the answer of ``service.inspect``.

        Raises
        ------
        ImageError
            If the body is not a usable image (never queued).
        QueueFull
            If the batch queue is full.
        """
        from starlette.concurrency import run_in_threadpool

        t0 = time.perf_counter()
        plan = self.service.plan()  # the models this request runs on, even if production is swapped meanwhile
        image = await run_in_threadpool(self.service.decode, body, plan)
        decode_s = time.perf_counter() - t0
        explained = await self.batcher.submit((plan.models, image))
        return await run_in_threadpool(
            self.service.answer, explained, wafer_id, inspection_point, body=body,
            spent_s=decode_s + explained[0].forward_s, plan=plan,
        )
