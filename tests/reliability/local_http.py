"""A threaded HTTP server on 127.0.0.1 for the tests that put a fake store or proxy in the way."""

import contextlib
import http.server
import threading


@contextlib.contextmanager
def serving(handler):
    """Yield the base URL of ``handler`` served on a free local port; shut it down afterwards."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
