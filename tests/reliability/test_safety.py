"""Untrusted inputs: pickle checkpoints, shell pipes, signed URLs and hostile shard names."""

import contextlib
import http.server
import json
import logging
import pickle
from pathlib import Path

import pytest
from local_http import serving
from label_helpers import tar_bytes, write_shards

from jobs.cli import run_module
from pipeline.exit_status import ExitStatus
from schemas.layout import OutputLayout
from schemas.shards import shard_name
from schemas.reading import iter_rows, read_manifest

FAST = ["--executor", "local", "--resolution", "128", "--num-masks", "3", "--modulation-timestep", "61", "--batch-size", "2"]
SECRETS = ("SIGNATURE-s3cr3t", "AKID-s3cr3t", "Bearer-t0ken")


class _Payload:
    """Unpickling this touches ``path``: stands in for a checkpoint that runs code."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return Path.touch, (Path(self.path),)


@pytest.mark.timeout(60)
def test_a_pickle_checkpoint_is_refused_without_allow_pickle_and_never_unpickled(tmp_path, make_samples, caplog):
    ran = tmp_path / "code-ran"
    checkpoint = tmp_path / "model.ckpt"
    checkpoint.write_bytes(pickle.dumps({"state_dict": _Payload(ran)}))
    assert not ran.exists()
    [url] = write_shards(str(tmp_path / "in"), {"shard-000000.tar": make_samples(0, 1)})
    code = run_module("jobs.label", ["--input", url, "--output", str(tmp_path / "out"), "--model", str(checkpoint), *FAST])
    assert code == ExitStatus.FAILED  # the job started; its model could not load
    assert "pickle checkpoint" in caplog.text and "--allow-pickle" in caplog.text
    assert not ran.exists()
    assert not (tmp_path / "out" / "data").exists() or not any((tmp_path / "out" / "data").iterdir())


@pytest.mark.timeout(60)
def test_pipe_inputs_run_no_command_unless_allowed(tmp_path, tiny_model, make_samples, caplog):
    [url] = write_shards(str(tmp_path / "in"), {"shard-000000.tar": make_samples(0, 2)})
    ran = tmp_path / "command-ran"
    argv = ["--output", str(tmp_path / "out"), "--model", str(tiny_model), *FAST]
    assert run_module("jobs.label", ["--input", f"pipe:touch {ran}; cat {url}", *argv]) == 2
    assert "--allow-pipe" in caplog.text and not ran.exists() and not (tmp_path / "out").exists()

    assert run_module("jobs.label", ["--input", f"pipe:cat {url}", "--allow-pipe", *argv]) == 0
    assert [(r["key"], r["status"]) for r in iter_rows(str(tmp_path / "out"))] == [("s00-000", "ok"), ("s00-001", "ok")]


class _SignedUrlStore(http.server.BaseHTTPRequestHandler):
    """Serves ``files`` to requests that carry the signature; a known name answers 500 on GET."""

    files: dict[str, bytes] = {}
    requests: list[str] = []

    def _respond(self, body: bool) -> None:
        type(self).requests.append(self.path)
        path, _, query = self.path.partition("?")
        name = path.rsplit("/", 1)[-1]
        if SECRETS[0] not in query or name not in self.files or (body and name == "broken.tar"):
            status = 403 if SECRETS[0] not in query else (500 if name in self.files else 404)
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        data = self.files[name]
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if body:
            self.wfile.write(data)

    def do_HEAD(self):
        self._respond(body=False)

    def do_GET(self):
        self._respond(body=True)

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def _serve(files):
    handler = type("Store", (_SignedUrlStore,), {"files": files, "requests": []})
    with serving(handler) as url:
        yield url, handler


@pytest.mark.timeout(90)
def test_signed_url_credentials_reach_no_log_row_marker_manifest_or_job_file(tmp_path, tiny_model, make_samples, caplog, capsys):
    files = {"good.tar": tar_bytes(make_samples(0, 2)), "broken.tar": tar_bytes(make_samples(1, 1))}
    query = f"X-Amz-Credential={SECRETS[1]}&X-Amz-Signature={SECRETS[0]}"
    output = tmp_path / "out"
    caplog.set_level(logging.DEBUG, logger="pipeline")
    with _serve(files) as (base, store):
        inputs = [f"{base}/shards/{name}?{query}" for name in ("good.tar", "broken.tar", "missing.tar")]
        code = run_module("jobs.label", ["--input", *inputs, "--output", str(output), "--model", str(tiny_model),
                                         "--max-attempts", "2", "--log-level", "DEBUG",
                                         "--storage-options", json.dumps({"headers": {"Authorization": SECRETS[2]}}), *FAST])
    assert store.requests, "the shards were not read through the test server"
    assert code == 1
    statuses = {row["shard"]: (row["status"], row["error"]) for row in read_manifest(str(output)).to_pylist()}
    assert statuses["good"] == ("done", None)
    assert statuses["broken"][0] == statuses["missing"][0] == "failed"
    rows = list(iter_rows(str(output)))
    assert [r["key"] for r in rows] == ["s00-000", "s00-001"]
    assert rows[0]["shard"] == f"{base}/shards/good.tar?REDACTED"

    written = "".join(p.read_bytes().decode("latin-1") for p in output.rglob("*") if p.is_file())
    said = caplog.text + "".join(capsys.readouterr())
    for secret in SECRETS:
        assert secret not in written, f"{secret} written to the output"
        assert secret not in said, f"{secret} logged"
    assert "broken.tar" in said and "missing.tar" in said  # the failures were reported, just without secrets


HOSTILE_URLS = [
    "../../../etc/passwd.tar",
    "s3://bucket/a/../../b/..evil.tar",
    "s3://bucket/x/%2e%2e%2f%2e%2e%2fescape.tar?sig=1",
    "/data/shards/..\\..\\windows.tar",
    "https://host/_hidden.tar#frag",
    "gs://b/.profile.tar",
    "pipe:curl -s https://h/../../up.tar",
    "/data/shard with spaces & $(rm -rf).tar",
]


@pytest.mark.timeout(30)
@pytest.mark.parametrize("url", HOSTILE_URLS)
def test_output_names_from_hostile_shard_urls_stay_inside_the_output(tmp_path, url):
    layout = OutputLayout(str(tmp_path / "out"))
    name = shard_name(url)
    assert "/" not in name and "\\" not in name and not name.startswith((".", "_")) and name
    for path, folder in ((layout.data_path(url), "data"), (layout.marker_path(url), "_markers")):
        resolved = Path(path).resolve()
        assert resolved.parent == (tmp_path / "out" / folder).resolve()
        assert not resolved.name.startswith((".", "_"))  # readers of data/ would silently skip it


@pytest.mark.timeout(30)
@pytest.mark.parametrize("url", ["../", "s3://bucket/", "/x/.tar", "/x/....tar"])
def test_shard_urls_with_no_usable_name_are_refused(url):
    with pytest.raises(ValueError, match="cannot derive an output name"):
        shard_name(url)
