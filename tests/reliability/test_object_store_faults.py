"""An object store that throttles, errs and drops connections, between the job and moto."""

import contextlib
import http.client
import http.server
import socket
import threading
from collections import Counter
from urllib.parse import urlsplit

import pytest
from local_http import serving
from label_helpers import write_shards

from pipeline.driver import run_job
from schemas.reading import iter_rows, read_manifest

SLOW_DOWN = b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>SlowDown</Code><Message>Reduce your request rate.</Message></Error>"
ACCESS_DENIED = b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>"
TRANSIENT = ("503 SlowDown", "500", "dropped connection")


class _FaultyProxy(http.server.BaseHTTPRequestHandler):
    """Forwards to ``upstream``; the first request for each (method, object) meets a transient fault,
    and every request for the input ``denied.tar`` is refused for good."""

    protocol_version = "HTTP/1.1"  # answers botocore's "Expect: 100-continue" before reading a PUT body
    upstream: str
    seen: set
    faults: list
    lock: threading.Lock

    def _handle(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        path = urlsplit(self.path).path
        if path.endswith("/in/denied.tar"):
            return self._reply(403, ACCESS_DENIED)
        with self.lock:
            first = (self.command, path) not in self.seen and path.endswith((".tar", ".parquet", ".json"))
            self.seen.add((self.command, path))
            fault = TRANSIENT[len(self.faults) % len(TRANSIENT)] if first else None
            if fault:
                self.faults.append((self.command, path, fault))
        if fault == "dropped connection":
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        if fault:
            return self._reply(503 if fault.startswith("503") else 500, SLOW_DOWN if fault.startswith("503") else b"")
        host = urlsplit(self.upstream)
        connection = http.client.HTTPConnection(host.hostname, host.port, timeout=30)
        try:
            headers = {name: value for name, value in self.headers.items() if name.lower() != "expect"}
            connection.request(self.command, self.path, body=body, headers=headers)
            response = connection.getresponse()
            data = response.read()
            self.send_response(response.status)
            for name, value in response.getheaders():
                if name.lower() not in ("transfer-encoding", "connection", "content-length"):
                    self.send_header(name, value)
            self.send_header("Content-Length", response.getheader("Content-Length") if self.command == "HEAD" else str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)
        finally:
            connection.close()

    def _reply(self, status, body):
        self.send_response(status)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _handle

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def _faulty_proxy(upstream):
    handler = type("Proxy", (_FaultyProxy,), {"upstream": upstream, "seen": set(), "faults": [], "lock": threading.Lock()})
    with serving(handler) as url:
        yield url, handler


@pytest.mark.timeout(120)
def test_transient_store_faults_are_retried_and_a_denied_shard_fails_alone(s3_bucket, s3_storage_options, s3_endpoint,
                                                                           make_job, make_samples, fast_segmenter):
    shards = {"shard-000000.tar": make_samples(0, 2), "shard-000001.tar": make_samples(1, 1),
              "denied.tar": make_samples(2, 1)}
    urls = write_shards(f"{s3_bucket}/in", shards, s3_storage_options)
    output = f"{s3_bucket}/out"
    with _faulty_proxy(s3_endpoint) as (endpoint, proxy):
        options = {**s3_storage_options, "endpoint_url": endpoint}
        summary = run_job(make_job(urls, output, executor="local", storage_options=options), segmenter=fast_segmenter)

    # Every kind of transient fault happened, on reads of the input and writes of the output alike.
    assert Counter(fault for _, _, fault in proxy.faults).keys() == set(TRANSIENT)
    assert {method for method, _, _ in proxy.faults} >= {"GET", "HEAD", "PUT"}
    assert any(path.endswith(".tar") for _, path, _ in proxy.faults) and any(path.endswith(".parquet") for _, path, _ in proxy.faults)
    assert summary.labelled == 2 and list(summary.failed) == ["denied"] and summary.exit_code == 1
    assert "PermissionError" in summary.failed["denied"].error and summary.failed["denied"].task.attempt == 2
    manifest = {row["shard"]: row["status"] for row in read_manifest(output, s3_storage_options).to_pylist()}
    assert manifest == {"shard-000000": "done", "shard-000001": "done", "denied": "failed"}
    keys = Counter(row["key"] for row in iter_rows(output, columns=["key"], storage_options=s3_storage_options))
    assert keys == Counter(["s00-000", "s00-001", "s01-000"])
