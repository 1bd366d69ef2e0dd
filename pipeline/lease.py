"""One job at a time on an output: the lease file ``OUTPUT/_lease.json``.

A job takes the lease by creating the file conditionally (``pipeline.storage.create_exclusive``:
of two jobs starting together, exactly one succeeds), renews it from a background thread, and
deletes it when it ends. A second job on the same output finds the lease and is refused, or waits
for it (``lease_wait``), saying which job holds it. A lease its job stopped renewing (the driver
was killed) expires after ``lease_seconds``; one held by a dead process on this host is taken at once.

Clocks: expiry compares the holder's ``renewed_at`` with this machine's clock, so hosts must agree
to well within ``lease_seconds`` (NTP does).
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import os
import socket
import threading
import time
import uuid

from pipeline.storage import create_exclusive, replace_file
from schemas.layout import OutputLayout
from schemas.urls import redact_url, redact_urls_in

logger = logging.getLogger(__name__)

_RENEWALS_PER_TTL = 4  # a lease survives three missed renewals (a slow store, a long GC pause)
_WAIT_LOG_SECONDS = 60.0


class LeaseHeld(RuntimeError):
    """Another live job holds the output's lease; the message names it and says what to do."""


class LeaseLost(RuntimeError):
    """This job's lease was taken over or could not be renewed; it must stop writing."""


@dataclasses.dataclass(frozen=True)
class LeaseRecord:
    job_id: str
    host: str
    pid: int
    pid_namespace: str | None  # containers on one host share its name but not its process ids
    started_at: str  # ISO 8601, UTC
    renewed_at: float  # seconds since the epoch
    ttl_seconds: float

    @property
    def expires_at(self) -> float:
        return self.renewed_at + self.ttl_seconds

    def to_json(self) -> bytes:
        return json.dumps(dataclasses.asdict(self), indent=1, sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> LeaseRecord:
        values = json.loads(data)
        return cls(**{field.name: values[field.name] for field in dataclasses.fields(cls)})

    def describe(self, now: float) -> str:
        return (f"job {self.job_id} (pid {self.pid} on {self.host}, started {self.started_at}; "
                f"lease renewed {max(now - self.renewed_at, 0):.0f}s ago, expires in {max(self.expires_at - now, 0):.0f}s)")

    def is_stale(self, now: float) -> bool:
        """Expired, or held by a process of this host that no longer exists (a killed driver)."""
        here = self.host == socket.gethostname() and self.pid_namespace == _pid_namespace()
        return now > self.expires_at or (here and not _pid_alive(self.pid))


class OutputLease:
    """``with OutputLease(layout, ttl, wait):`` holds the output's lease for the block.

    Raises LeaseHeld on entry when another live job holds it for longer than ``wait_seconds``.
    Inside, ``check()`` raises LeaseLost once the lease is no longer this job's.
    """

    def __init__(self, layout: OutputLayout, ttl_seconds: float, wait_seconds: float = 0.0):
        self.layout = layout
        self.ttl_seconds = ttl_seconds
        self.wait_seconds = wait_seconds
        self.record = LeaseRecord(
            job_id=uuid.uuid4().hex[:12],
            host=socket.gethostname(),
            pid=os.getpid(),
            pid_namespace=_pid_namespace(),
            started_at=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            renewed_at=time.time(),
            ttl_seconds=ttl_seconds,
        )
        self._lost: str | None = None
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    def __enter__(self) -> OutputLease:
        self.acquire()
        return self

    def __exit__(self, *exc_info) -> None:
        self.release()

    @property
    def path(self) -> str:
        return self.layout.lease_path

    def acquire(self) -> None:
        deadline = time.monotonic() + self.wait_seconds
        next_log = time.monotonic()
        while True:
            self.record = dataclasses.replace(self.record, renewed_at=time.time())
            if create_exclusive(self.layout.fs, self.path, self.record.to_json()):
                break
            holder, now = read_lease(self.layout), time.time()
            if holder is None:  # released between our create and our read: try again
                continue
            if holder.is_stale(now):
                logger.warning("taking over %s from %s, which stopped renewing its lease",
                               redact_url(self.layout.url), holder.describe(now))
                self._remove_if_unchanged(holder)
                continue
            if time.monotonic() >= deadline:
                raise LeaseHeld(self._held_message(holder, now))
            if time.monotonic() >= next_log:
                logger.warning("%s is being written by %s; waiting up to %.0fs more for it to finish",
                               redact_url(self.layout.url), holder.describe(now), deadline - time.monotonic())
                next_log = time.monotonic() + _WAIT_LOG_SECONDS
            time.sleep(min(max(holder.expires_at - now, 0.05), deadline - time.monotonic(), 5.0))
        logger.info("took the lease on %s as job %s", redact_url(self.layout.url), self.record.job_id)
        self._renewer = threading.Thread(target=self._renew_until_stopped, name="emerdiff-lease", daemon=True)
        self._renewer.start()

    def check(self) -> None:
        if self._lost is not None:
            raise LeaseLost(self._lost)

    def release(self) -> None:
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join()
            self._renewer = None
        if self._lost is None:
            self._remove_if_unchanged(None)

    def _held_message(self, holder: LeaseRecord, now: float) -> str:
        output = redact_url(self.layout.url)
        return (
            f"{output} is being written by {holder.describe(now)}. Two jobs on one output would label the same "
            f"shards twice, so this one stops here. Wait for that job to finish (or pass --lease-wait SECONDS to "
            f"wait for it), or choose another --output. If that job is gone, its lease expires by itself; "
            f"deleting {self.layout.full_url(self.path)} frees it at once."
        )

    def _remove_if_unchanged(self, expected: LeaseRecord | None) -> None:
        """Delete the lease file if it still holds ``expected`` (None: this job's own lease)."""
        current = read_lease(self.layout)
        if current is None:
            return
        ours = current.job_id == self.record.job_id
        if (expected is None and ours) or (expected is not None and current == expected):
            try:
                self.layout.fs.rm_file(self.path)
            except FileNotFoundError:
                pass

    def _renew_until_stopped(self) -> None:
        interval = self.ttl_seconds / _RENEWALS_PER_TTL
        last_renewed = time.time()
        while not self._stop.wait(interval):
            try:
                holder = read_lease(self.layout)
                if holder is None or holder.job_id != self.record.job_id:
                    now = time.time()
                    self._lost = (f"the lease on {redact_url(self.layout.url)} was taken over by "
                                  f"{holder.describe(now) if holder else 'nobody (it was deleted)'}; this job stopped writing")
                    return
                self.record = dataclasses.replace(self.record, renewed_at=time.time())
                replace_file(self.layout.fs, self.path, self.record.to_json())
                last_renewed = self.record.renewed_at
            except Exception as error:  # a store hiccup: the next renewal may succeed
                if time.time() - last_renewed > self.ttl_seconds:
                    self._lost = (f"could not renew the lease on {redact_url(self.layout.url)} for {self.ttl_seconds:.0f}s: "
                                  f"{redact_urls_in(str(error))}")
                    return
                logger.warning("could not renew the lease on %s (will retry): %s", redact_url(self.layout.url),
                               redact_urls_in(str(error)))


def read_lease(layout: OutputLayout) -> LeaseRecord | None:
    """The output's current lease, None when no job holds it."""
    layout.fs.invalidate_cache(layout.lease_path)
    try:
        return LeaseRecord.from_json(layout.fs.cat_file(layout.lease_path))
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError):  # not ours, or damaged by hand: treat as long expired
        return LeaseRecord(job_id="unreadable", host="unknown", pid=0, pid_namespace=None, started_at="unknown",
                           renewed_at=0.0, ttl_seconds=0.0)


def _pid_namespace() -> str | None:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:  # not Linux
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True
