"""gs:// access through google-cloud-storage (credentials from ADC; STORAGE_EMULATOR_HOST in tests)."""

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
    """One client per process (ingest's workers clear this cache: HTTP connections must not cross a fork)."""
    from google.auth.exceptions import DefaultCredentialsError
    from google.cloud import storage

    try:
        return storage.Client()
    except DefaultCredentialsError:
        # No credentials on this machine: public buckets still read anonymously; private ones fail on listing.
        return storage.Client.create_anonymous_client()


def list_gcs_images(uri: str) -> list:
    """Every image object under a gs:// prefix, as SourceFile rows (stamp = object generation)."""
    from google.api_core import exceptions

    from chromify.ingest import SourceFile

    bucket, prefix = split_uri(uri)
    files = []
    try:
        for blob in client().list_blobs(bucket, prefix=prefix):
            if blob.name.endswith("/") or not blob.name.lower().endswith(IMAGE_SUFFIXES):
                continue
            files.append(SourceFile(f"gs://{bucket}/{blob.name}", int(blob.size or 0), str(blob.generation)))
    except exceptions.NotFound:
        raise ConfigError(f"{uri}: bucket {bucket!r} not found") from None
    except exceptions.Forbidden as exc:
        raise ConfigError(f"{uri}: access denied ({exc.message})") from None
    return sorted(files, key=lambda f: f.uri)


def read_gcs_bytes(uri: str, generation: str | None = None) -> bytes:
    """The object's bytes; with `generation`, exactly the version that was listed (an overwrite raises NotFound)."""
    bucket, name = split_uri(uri)
    gen = int(generation) if generation and generation.isdigit() else None
    return client().bucket(bucket).blob(name, generation=gen).download_as_bytes()
