"""Session-scoped services for tests: a moto S3 server and one local Ray instance.

Started by the tests themselves, on 127.0.0.1, so CI needs nothing running beforehand.

Ray workers are separate processes that inherit the environment of the moment Ray starts, so
S3 credentials travel in ``s3_storage_options`` (as fsspec options), never through os.environ.
"""

import uuid

import pytest

S3_KEY = "testing-key"
S3_SECRET = "testing-secret"


@pytest.fixture(scope="session")
def s3_endpoint():
    """URL of a moto S3 server on 127.0.0.1 (any free port), for the whole session."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture(scope="session")
def s3_storage_options(s3_endpoint):
    """fsspec/s3fs options that reach the moto server (pass them as --storage-options)."""
    return {"endpoint_url": s3_endpoint, "key": S3_KEY, "secret": S3_SECRET}


@pytest.fixture
def s3_bucket(s3_storage_options):
    """A fresh, empty bucket for one test: its ``s3://`` URL."""
    import s3fs

    fs = s3fs.S3FileSystem(**s3_storage_options)
    name = f"test-{uuid.uuid4().hex[:12]}"
    fs.mkdir(name)
    yield f"s3://{name}"
    fs.rm(name, recursive=True)


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for the session: 4 CPUs and 1 logical GPU, so GPU actors schedule on a CPU box.

    Code that calls ``ray.init`` only when Ray is not initialised reuses it. No dashboard.
    """
    ray = pytest.importorskip("ray")
    if ray.is_initialized():
        yield ray
        return
    ray.init(address="local", num_cpus=4, num_gpus=1, include_dashboard=False, configure_logging=False)
    yield ray
    ray.shutdown()
