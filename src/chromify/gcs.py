"""gs:// access through google-cloud-storage (credentials from ADC or STORAGE_EMULATOR_HOST for tests)."""

from __future__ import annotations

from functools import lru_cache

from chromify.decode import IMAGE_SUFFIXES
from chromify.errors import ConfigError


def split_uri(uri: str) -> tuple[str, str]:
    """'gs://bucket/some/prefix' → ('bucket', 'some/prefix')."""
    if not uri.startswith("gs://") or len(uri) <= 5:
        raise ConfigError(f"{uri}: not a gs://bucket/prefix URI")
    bucket, _, prefix = uri[5:].partition("/")
    if not bucket:
        raise ConfigError(f"{uri}: no bucket name")
    return bucket, prefix


@lru_cache(maxsize=1)
def client():
    from google.cloud import storage

    return storage.Client()


def list_gcs_images(uri: str) -> list:
    """Every image object under a gs:// prefix, as SourceFile rows (stamp = object generation)."""
    from chromify.ingest import SourceFile

    bucket, prefix = split_uri(uri)
    files = []
    for blob in client().list_blobs(bucket, prefix=prefix):
        if blob.name.endswith("/") or not blob.name.lower().endswith(IMAGE_SUFFIXES):
            continue
        files.append(SourceFile(f"gs://{bucket}/{blob.name}", int(blob.size or 0), str(blob.generation)))
    return sorted(files, key=lambda f: f.uri)


def read_gcs_bytes(uri: str) -> bytes:
    bucket, name = split_uri(uri)
    return client().bucket(bucket).blob(name).download_as_bytes()
