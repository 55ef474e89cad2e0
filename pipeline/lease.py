"""One writer per output: a lease a run holds on its output for as long as it writes.

Get one with `store_for(output).lease(output, run_id)`.

A second run on the same output is refused with a one-line error naming the
holder, and no run's start-up removes files another live run is writing.

- Local outputs: an exclusive `flock` on `OUT/.lock`. The kernel releases it
  when the holder dies, however it dies (`kill -9` included), so a killed
  run never blocks the next one.
- S3 outputs: an object `OUT/_lock.json` created with a conditional PUT
  (`If-None-Match: *`): of two runs starting at once, exactly one creates it.
  The holder renews it (`If-Match` its own ETag) every `ttl_s / 4`; a run
  that finds it expired (its holder died without releasing it) takes it over
  with `If-Match` the expired version's ETag, so again only one run wins.
  A holder whose renewal is refused has lost the lease and must stop writing.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass

from pipeline.errors import LabelError

TTL_S = 300.0  # an S3 lease not renewed for this long belongs to a dead run
# after taking over from a run that died holding the lease: long enough for Ray to stop that
# run's workers (their write tasks publish only while the lease names their run; this covers
# a task that checked just before the takeover)
GRACE_S = 5.0
CONFLICT = ("PreconditionFailed", "ConditionalRequestConflict")


class OutputBusy(LabelError):
    """Another live run holds the output's lease."""


class LeaseLost(RuntimeError):
    """This run's S3 lease was taken over (it was not renewed in time): stop writing."""


@dataclass(frozen=True)
class Holder:
    """Who holds a lease, for the error message a second run gets."""

    run_id: str
    host: str
    pid: int
    since: float  # unix time
    expires: float  # unix time; S3 leases only

    def describe(self) -> str:
        started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(self.since))
        return f"run {self.run_id} (host {self.host}, pid {self.pid}, since {started})"


def _me(run_id: str, ttl_s: float) -> Holder:
    now = time.time()
    return Holder(run_id, socket.gethostname(), os.getpid(), now, now + ttl_s)


class Lease(ABC):
    """An output's lease: `acquire()` (or OutputBusy), `check()` while writing, `release()`."""

    def __init__(self, output: str, run_id: str, ttl_s: float = TTL_S):
        self.output = output
        self.run_id = run_id
        self.ttl_s = ttl_s

    taken_from_dead: bool = False  # the previous holder died holding it (see GRACE_S)

    @abstractmethod
    def acquire(self) -> Lease:
        """Take the lease, or raise OutputBusy naming the holder."""

    @abstractmethod
    def current_holder(self) -> Holder | None:
        """Who holds the output's lease now (None: nobody, or unreadable)."""

    def check(self) -> None:  # noqa: B027 (a flock cannot be lost: nothing to check)
        """Raise LeaseLost if this run no longer holds the lease."""

    @abstractmethod
    def release(self) -> None:
        """Give the lease up (a lease already lost is left alone)."""

    def holds(self) -> bool:
        """Whether the output's lease still names this run (what a write task checks)."""
        holder = self.current_holder()
        return holder is not None and holder.run_id == self.run_id

    def __enter__(self) -> Lease:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


class FlockLease(Lease):
    """A local output's lease: an exclusive flock on `path`, released by the kernel on death."""

    def __init__(self, output: str, run_id: str, path: str, ttl_s: float = TTL_S):
        super().__init__(output, run_id, ttl_s)
        self.path = path
        self._file = None

    def acquire(self) -> FlockLease:
        try:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            f = open(self.path, "a+")  # noqa: SIM115 (held open for the whole run)
        except OSError as e:
            raise LabelError(f"cannot write to output {self.output}: {e.strerror or e}") from None
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = _parse(f.read())
            f.close()
            raise OutputBusy(_busy(self.output, holder)) from None
        f.seek(0)
        # a holder that released its lease left the file empty; one that died did not
        self.taken_from_dead = _parse(f.read()) is not None
        f.seek(0)
        f.truncate()
        f.write(json.dumps(asdict(_me(self.run_id, self.ttl_s))))
        f.flush()
        self._file = f
        return self

    def current_holder(self) -> Holder | None:
        try:
            with open(self.path) as f:
                return _parse(f.read())
        except OSError:
            return None

    def release(self) -> None:
        if self._file is not None:
            self._file.seek(0)
            self._file.truncate()
            self._file.flush()
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None


class ConditionalPutLease(Lease):
    """An S3 output's lease: an object created with If-None-Match and renewed with If-Match."""

    def __init__(self, output: str, run_id: str, bucket: str, key: str, ttl_s: float = TTL_S):
        super().__init__(output, run_id, ttl_s)
        self.bucket, self.key = bucket, key
        self._etag: str | None = None
        self._since = 0.0
        self._lost: str | None = None
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    def _put(self, holder: Holder, **condition: str) -> str:
        from pipeline.store.s3 import s3_client

        resp = s3_client().put_object(Bucket=self.bucket, Key=self.key,
                                      Body=json.dumps(asdict(holder)).encode(), **condition)
        return resp["ETag"]

    def acquire(self) -> ConditionalPutLease:
        from botocore.exceptions import ClientError

        me = _me(self.run_id, self.ttl_s)
        try:
            self._etag = self._put(me, IfNoneMatch="*")
        except ClientError as e:
            if _code(e) not in CONFLICT:
                raise LabelError(f"cannot write to output {self.output}: {_code(e) or e}") from None
            self._etag = self._take_over_if_expired(me)
        self._since = me.since
        self._renewer = threading.Thread(target=self._renew_loop, name="lease", daemon=True)
        self._renewer.start()
        return self

    def _take_over_if_expired(self, me: Holder) -> str:
        from botocore.exceptions import ClientError

        from pipeline.store.s3 import s3_client

        current = s3_client().get_object(Bucket=self.bucket, Key=self.key)
        holder = _parse(current["Body"].read().decode("utf-8", "replace"))
        if holder is not None and holder.run_id == self.run_id:
            # our own PUT got through but its answer was lost, and botocore's retry of it
            # failed its precondition: the lease is ours already
            return current["ETag"]
        if holder is not None and holder.expires > time.time():
            raise OutputBusy(_busy(self.output, holder))
        self.taken_from_dead = True
        try:  # expired: whoever replaces exactly that version wins
            return self._put(me, IfMatch=current["ETag"])
        except ClientError as e:
            if _code(e) in CONFLICT:
                raise OutputBusy(f"output {self.output} was just taken by another run") from None
            raise

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.ttl_s / 4):
            me = Holder(self.run_id, socket.gethostname(), os.getpid(), self._since,
                        time.time() + self.ttl_s)
            try:
                self._etag = self._put(me, IfMatch=self._etag)
            except Exception as e:
                if _code(e) not in CONFLICT:
                    continue  # a transient failure: again next round (the lease holds a while)
                holder = self.current_holder()
                if holder is not None and holder.run_id == self.run_id:
                    # our renewal got through, its answer was lost: take the new ETag
                    from pipeline.store.s3 import s3_client

                    with contextlib.suppress(Exception):
                        self._etag = s3_client().head_object(Bucket=self.bucket,
                                                             Key=self.key)["ETag"]
                    continue
                self._lost = f"the lease on {self.output} was taken over by another run"
                return

    def check(self) -> None:
        if self._lost:
            raise LeaseLost(self._lost)

    def current_holder(self) -> Holder | None:
        from pipeline.store.s3 import s3_client

        try:
            body = s3_client().get_object(Bucket=self.bucket, Key=self.key)["Body"].read()
        except Exception:
            return None
        return _parse(body.decode("utf-8", "replace"))

    def release(self) -> None:
        from pipeline.store.s3 import s3_client

        self._stop.set()
        if self._renewer is not None:
            self._renewer.join()
        if self._etag is not None:
            # taken over or gone: then it is not ours to delete any more
            with contextlib.suppress(Exception):
                s3_client().delete_object(Bucket=self.bucket, Key=self.key, IfMatch=self._etag)
            self._etag = None


def _code(e: Exception) -> str:
    return str(getattr(e, "response", {}).get("Error", {}).get("Code", ""))


def _parse(text: str) -> Holder | None:
    try:
        return Holder(**json.loads(text))
    except (ValueError, TypeError):
        return None  # empty (being written) or not ours


def _busy(output: str, holder: Holder | None) -> str:
    who = holder.describe() if holder else "another run"
    return f"output {output} is being written by {who}; one run per output at a time"
