"""gs:// access through google-cloud-storage (credentials from ADC; STORAGE_EMULATOR_HOST in tests)."""

from __future__ import annotations

import os
import re
from functools import lru_cache

from chromify.decode import IMAGE_SUFFIXES
from chromify.errors import ChromifyError, ConfigError

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
        # Listing and reading need no project; inferring one fails (OSError) for the ADC file that
        # `gcloud auth application-default login` writes when gcloud has no default project.
        return storage.Client(project=None)
    except DefaultCredentialsError as exc:
        key = os.environ.get("GOOGLE_APPLICATION_CREDENTIALS")
        if key:  # named, but unusable: reading anonymously would hide the mistake behind an "access denied"
            raise ConfigError(f"GOOGLE_APPLICATION_CREDENTIALS={key}: unusable "
                              f"({' '.join(str(exc).split())})") from None
        # No credentials on this machine: public buckets still read anonymously; private ones fail on listing.
        return storage.Client.create_anonymous_client()


def folder_prefix(prefix: str) -> str:
    """A prefix names a folder: gs://b/photos must not also list photos_holdout/. Object URIs are built from full
    object names, so they (and the manifest rows keyed on them) are the same with or without the slash."""
    return prefix + "/" if prefix and not prefix.endswith("/") else prefix


def list_gcs_images(uri: str) -> list:
    """Every image object under a gs:// prefix, as SourceFile rows (stamp = object generation)."""
    from google.api_core.exceptions import GoogleAPIError
    from google.auth.exceptions import GoogleAuthError
    from google.cloud.storage.retry import DEFAULT_RETRY
    from requests.exceptions import RequestException

    from chromify.ingest import SourceFile

    bucket, prefix = split_uri(uri)
    prefix = folder_prefix(prefix)
    files = []
    try:
        for blob in client().list_blobs(bucket, prefix=prefix, timeout=REQUEST_TIMEOUT_S,
                                        retry=DEFAULT_RETRY.with_timeout(RETRY_DEADLINE_S)):
            if blob.name.endswith("/") or not blob.name.lower().endswith(IMAGE_SUFFIXES):
                continue
            files.append(SourceFile(f"gs://{bucket}/{blob.name}", int(blob.size or 0), str(blob.generation),
                                    gzip=blob.content_encoding == "gzip"))
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

    response = getattr(exc, "response", None)  # a download's InvalidResponse: its first arg says only "failed"
    if isinstance(exc, GoogleAPICallError):
        text = f"HTTP {exc.code}: {exc.message}" if exc.code else exc.message
    elif getattr(response, "status_code", None):
        text = f"HTTP {response.status_code}: {response.reason}"
    else:
        first = exc.args[0] if exc.args else exc
        text = str(getattr(first, "reason", None) or first)
    return " ".join(text.split()) or type(exc).__name__


# Set once a read in this process gave up after RETRY_DEADLINE_S: the bucket is gone for now (network down), and
# the reads after it fail at once instead of each waiting out its own deadline (10,000 objects: hours).
_gave_up = False


def fresh() -> None:
    """Forget this process's client and any outage seen: at the start of each ingest run and in each forked worker
    (HTTP connections must not cross a fork)."""
    global _gave_up
    client.cache_clear()
    _gave_up = False


class TooLarge(ChromifyError):
    """A gzip-encoded object expands past the reader's limit (it was listed at its compressed size)."""


def read_gcs_bytes(uri: str, generation: str | None = None, gzip: bool = False, limit: int | None = None) -> bytes:
    """The object's bytes; with `generation`, exactly the version that was listed (an overwrite is an error).

    A gzip-encoded object (`gsutil cp -Z`) is fetched as stored and expanded here, at most `limit` bytes of it.
    Errors are ChromifyErrors of one line.
    """
    global _gave_up
    import zlib

    from google.api_core import exceptions
    from google.auth.exceptions import GoogleAuthError
    from google.cloud.storage.retry import DEFAULT_RETRY
    from requests.exceptions import RequestException

    bucket, name = split_uri(uri)
    gen = int(generation) if generation and generation.isdigit() else None
    retry = DEFAULT_RETRY.with_timeout(RETRY_DEADLINE_S) if not _gave_up else None
    try:
        data = client().bucket(bucket).blob(name, generation=gen).download_as_bytes(
            timeout=REQUEST_TIMEOUT_S, retry=retry, raw_download=gzip)
    except exceptions.NotFound:
        raise ChromifyError(f"{uri}: changed or deleted since the listing; read again on the next run") from None
    except exceptions.RetryError as exc:
        _gave_up = True
        raise ChromifyError(f"{uri}: {_cause(exc.cause or exc)} (gave up after {RETRY_DEADLINE_S:g} s of retries; "
                            "later reads in this run are not retried)") from None
    except (exceptions.GoogleAPIError, GoogleAuthError, RequestException) as exc:
        raise ChromifyError(f"{uri}: {_cause(exc)}") from None
    if not gzip:
        return data
    expand = zlib.decompressobj(wbits=zlib.MAX_WBITS | 16)
    try:
        out = expand.decompress(data, (limit or 1 << 62) + 1)
    except zlib.error as exc:
        raise ChromifyError(f"{uri}: stored gzip-encoded, but does not expand ({exc})") from None
    if limit is not None and len(out) > limit:
        raise TooLarge(f"{uri}: expands past {limit:,} bytes")
    return out
