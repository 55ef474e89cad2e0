"""The job's input stream: listing chunks, minus what is done, fed to Ray Data as they come.

    listing (driver thread) --chunks--> a bounded Ray queue --> read tasks --> decode tasks

Ray Data builds a Dataset's input before it runs; a nightly listing of
millions of objects would first sit whole in the driver's memory and cost
the driver a block each (issue: 5,000 blocks took 44 s to build). Here the
driver only lists and filters, one chunk at a time, into a queue of a few
chunks (so its memory stays flat), and read tasks on the workers cut the
chunks into decode-sized blocks. Decoding starts with the first chunk.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass

import pyarrow as pa
from ray.data.block import BlockMetadata
from ray.data.datasource import Datasource, ReadTask

from pipeline.keys import KeySet, hash_keys

QUEUE_CHUNKS = 8  # chunks waiting for the read tasks at most


@dataclass
class FeedStats:
    """What the feed has passed on so far."""

    skipped: int = 0  # already done by earlier runs
    queued: int = 0  # handed to the pipeline
    error: BaseException | None = None  # the listing's own failure, if any
    finished: bool = False


def todo(chunks: Iterator[pa.Table], done: KeySet, stats: FeedStats,
         limit: int | None = None) -> Iterator[pa.Table]:
    """The chunks' rows that `done` does not hold (by hashed `(uri, version)`), at most
    `limit` of them."""
    left = limit
    for chunk in chunks:
        keys = hash_keys(chunk["uri"].to_pylist(), chunk["version"].to_pylist())
        keep = ~done.known(keys)
        stats.skipped += len(keys) - int(keep.sum())
        if keep.any():
            rows = chunk.filter(pa.array(keep))
            if left is not None:
                rows = rows.slice(0, left)
                left -= rows.num_rows
            yield rows
        if left == 0:
            return


class Feed:
    """Runs the listing in a driver thread and hands its chunks to `readers` read tasks.

    `chunks` is the listing already filtered by `todo`, which counts into `stats`.
    """

    def __init__(self, chunks: Iterator[pa.Table], stats: FeedStats, readers: int):
        from ray.util.queue import Queue

        from pipeline.progress import on_this_node

        self.chunks = chunks
        self.readers = readers
        self.queue = Queue(maxsize=QUEUE_CHUNKS, actor_options={
            "num_cpus": 0, "scheduling_strategy": on_this_node()})
        self.stats = stats
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="listing-feed", daemon=True)

    def start(self) -> Feed:
        self._thread.start()
        return self

    def _put(self, item) -> bool:
        from ray.util.queue import Full

        while not self._stop.is_set():
            try:
                self.queue.put(item, timeout=0.5)
                return True
            except Full:
                continue
        return False

    def _run(self) -> None:
        try:
            for chunk in self.chunks:
                if not self._put(chunk):
                    return
                self.stats.queued += chunk.num_rows
        except BaseException as e:  # raised again on the driver by `check`
            self.stats.error = e
        finally:
            self.stats.finished = True
            try:
                for _ in range(self.readers):  # one end mark per read task
                    if not self._put(None):
                        break
            except Exception as e:  # the queue is gone: nothing to mark; say why if first
                if self.stats.error is None:
                    self.stats.error = e

    def check(self) -> None:
        """Raise the listing's error, if it failed."""
        if self.stats.error is not None:
            raise self.stats.error

    def stop(self) -> None:
        import ray.exceptions
        from ray.util.queue import Empty

        self._stop.set()
        self._thread.join(timeout=10)
        try:
            # read tasks that are still waiting get their end marks, so nothing hangs
            while True:
                try:
                    self.queue.get_nowait()
                except Empty:
                    break
            for _ in range(self.readers):
                try:
                    self.queue.put_nowait(None)
                except Exception:
                    break
            self.queue.shutdown()
        except ray.exceptions.RayActorError:
            pass  # the queue's actor is gone (its node was lost): nothing left to stop


class FeedDatasource(Datasource):
    """A Ray Data source whose read tasks pull a `Feed`'s chunks and yield small blocks."""

    def __init__(self, feed: Feed, block_rows: int):
        self.queue = feed.queue
        self.readers = feed.readers
        self.block_rows = block_rows

    def estimate_inmemory_data_size(self) -> int | None:
        return None

    def get_read_tasks(self, parallelism: int, *args, **kwargs) -> list[ReadTask]:
        queue, rows = self.queue, self.block_rows

        def read() -> Iterator[pa.Table]:
            while (chunk := queue.get()) is not None:
                # Ray Data joins these slices into blocks of about the job's
                # target_max_block_size (see job.feed_block_bytes: ~12-100 inputs), one
                # decode task each, which decodes them `rows` at a time
                for start in range(0, chunk.num_rows, rows):
                    yield chunk.slice(start, rows)

        meta = BlockMetadata(num_rows=None, size_bytes=None, input_files=None, exec_stats=None)
        return [ReadTask(read, meta) for _ in range(self.readers)]
