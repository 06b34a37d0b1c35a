"""gs:// access through google-cloud-storage (credentials from ADC; STORAGE_EMULATOR_HOST in tests)."""

from __future__ import annotations

import os
import re
from functools import lru_cache

from chromify.decode import IMAGE_SUFFIXES
from chromify.errors import ConfigError

BUCKET_NAME_RULE = ("3-63 lowercase letters, digits, '-', '_' or '.', starting and ending with a letter or digit; "
                    "up to 222 with dots, 63 between dots")
# Listing and reading retry transient errors (connection refused, DNS, 5xx) until this deadline: a user without
# network is told within half a minute, not after google-cloud-storage's 120 s of silence (per object, for reads).
RETRY_DEADLINE_S = 30.0
REQUEST_TIMEOUT_S = (10.0, 60.0)  # per request: connect, read (a page lists up to 1000 objects)
CREDENTIALS_HINT = "run `gcloud auth application-default login` or set GOOGLE_APPLICATION_CREDENTIALS"


def is_bucket_name(name: str) -> bool:
    """GCS's naming rules, checked before any request (the client library raises a bare ValueError for some)."""
    limit = 222 if "." in name else 63
    return (3 <= len(name) <= limit and re.fullmatch(r"[a-z0-9][a-z0-9._-]*[a-z0-9]", name) is not None
            and all(len(part) <= 63 for part in name.split(".")))


def split_uri(uri: str) -> tuple[str, str]:
    """'gs://bucket/some/prefix' → ('bucket', 'some/prefix')."""
    if not uri.startswith("gs://") or len(uri) <= 5:
        raise ConfigError(f"{uri}: not a gs://bucket/prefix URI")
    bucket, _, prefix = uri[5:].partition("/")
    if not bucket:
        raise ConfigError(f"{uri}: no bucket name")
    if not is_bucket_name(bucket):
        raise ConfigError(f"{uri}: {bucket!r} is not a valid bucket name ({BUCKET_NAME_RULE})")
    return bucket, prefix


@lru_cache(maxsize=1)
def client():
    """One client per process (ingest's workers clear this cache: HTTP connections must not cross a fork)."""
    from google.auth.exceptions import DefaultCredentialsError
    from google.cloud import storage

    try:
        return storage.Client()
    except DefaultCredentialsError as exc:
        key = os.environ.get("GOOGLE_APPLICATION_CREDENTIALS")
        if key:  # named, but unusable: reading anonymously would hide the mistake behind an "access denied"
            raise ConfigError(f"GOOGLE_APPLICATION_CREDENTIALS={key}: unusable "
                              f"({' '.join(str(exc).split())})") from None
        # No credentials on this machine: public buckets still read anonymously; private ones fail on listing.
        return storage.Client.create_anonymous_client()


def list_gcs_images(uri: str) -> list:
    """Every image object under a gs:// prefix, as SourceFile rows (stamp = object generation)."""
    from google.api_core.exceptions import GoogleAPIError
    from google.auth.exceptions import GoogleAuthError
    from google.cloud.storage.retry import DEFAULT_RETRY
    from requests.exceptions import RequestException

    from chromify.ingest import SourceFile

    bucket, prefix = split_uri(uri)
    if prefix and not prefix.endswith("/"):
        # A prefix names a folder: gs://b/photos must not also list photos_holdout/. Object URIs are built from full
        # object names, so they (and the manifest rows keyed on them) are the same with or without the slash.
        prefix += "/"
    files = []
    try:
        for blob in client().list_blobs(bucket, prefix=prefix, timeout=REQUEST_TIMEOUT_S,
                                        retry=DEFAULT_RETRY.with_timeout(RETRY_DEADLINE_S)):
            if blob.name.endswith("/") or not blob.name.lower().endswith(IMAGE_SUFFIXES):
                continue
            files.append(SourceFile(f"gs://{bucket}/{blob.name}", int(blob.size or 0), str(blob.generation)))
    except (GoogleAPIError, GoogleAuthError, RequestException) as exc:
        raise _listing_error(uri, bucket, exc) from exc
    return sorted(files, key=lambda f: f.uri)


def _listing_error(uri: str, bucket: str, exc: Exception) -> ConfigError:
    """One line for a failed listing: the URI, the cause, and what to do about credentials where that is the cause."""
    from google.api_core import exceptions
    from google.auth.exceptions import GoogleAuthError, TransportError

    retried = ""
    if isinstance(exc, exceptions.RetryError) and exc.cause is not None:
        retried = f" (gave up after {RETRY_DEADLINE_S:g} s of retries)"
        exc = exc.cause
    if isinstance(exc, exceptions.NotFound):
        return ConfigError(f"{uri}: bucket {bucket!r} not found")
    if isinstance(exc, exceptions.Forbidden):
        return ConfigError(f"{uri}: access denied ({exc.message})")
    # 401, or google-auth failing to get a token (an anonymous client answered 401 raises InvalidOperation).
    if isinstance(exc, exceptions.Unauthorized) or (isinstance(exc, GoogleAuthError)
                                                    and not isinstance(exc, TransportError)):
        return ConfigError(f"{uri}: access denied: no usable Google credentials ({_cause(exc)}); {CREDENTIALS_HINT}")
    return ConfigError(f"{uri}: cannot list the bucket: {_cause(exc)}{retried}")


def _cause(exc: Exception) -> str:
    """The innermost reason, on one line: requests wraps urllib3's in a long 'Max retries exceeded with url' text."""
    from google.api_core.exceptions import GoogleAPICallError

    if isinstance(exc, GoogleAPICallError):
        text = f"HTTP {exc.code}: {exc.message}" if exc.code else exc.message
    else:
        first = exc.args[0] if exc.args else exc
        text = str(getattr(first, "reason", None) or first)
    return " ".join(text.split()) or type(exc).__name__


def read_gcs_bytes(uri: str, generation: str | None = None) -> bytes:
    """The object's bytes; with `generation`, exactly the version that was listed (an overwrite raises NotFound)."""
    bucket, name = split_uri(uri)
    gen = int(generation) if generation and generation.isdigit() else None
    from google.cloud.storage.retry import DEFAULT_RETRY

    return client().bucket(bucket).blob(name, generation=gen).download_as_bytes(
        timeout=REQUEST_TIMEOUT_S, retry=DEFAULT_RETRY.with_timeout(RETRY_DEADLINE_S))
