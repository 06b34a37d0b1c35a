"""Third-party browser scripts the site serves itself, fetched at build time from the npm registry.

The site must work opened from disk with no network, but mkdocs-material loads Mermaid and, for offline search,
the iframe-worker shim from unpkg.com at run time. So each is pinned here (version and the registry's sha512 of the
tarball), fetched once with `npm pack` into a gitignored cache and copied into the built site; nothing vendored
is committed.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import shutil
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

NPM_TIMEOUT_S = 180


class VendorError(Exception):
    """A pinned package could not be fetched or did not match its pin; the message is one line."""


@dataclass(frozen=True)
class NpmAsset:
    package: str
    version: str
    integrity: str  # the registry's `dist.integrity` of the tarball: npm checks it, and so do we
    files: dict[str, str] = field(default_factory=dict)  # path inside the tarball → path in the site

    @property
    def spec(self) -> str:
        return f"{self.package}@{self.version}"


MERMAID = NpmAsset(
    "mermaid", "11.17.2",
    "sha512-V6K3C8EBdEsPFZXSKMJe6ppQOENxuHARr9GvHX4hh47lAbhMRD9qf4oEK7LoaRQxULMa80/qt5gHO73aCleBBg==",
    {"package/dist/mermaid.min.js": "assets/vendor/mermaid/mermaid.min.js",
     "package/LICENSE": "assets/vendor/mermaid/LICENSE.txt"},
)
# Material's offline plugin polyfills Web Workers under file:// with this shim, so search works from disk.
IFRAME_WORKER = NpmAsset(
    "iframe-worker", "1.0.4",
    "sha512-roeaaI+Lg1LJNfgpCjoRe/+WzEjy9+Z08LoEvu85MCPbBjwm+qXz8Ag5U05lHa6V1CysZyGzE0SOkAtSUA5q7Q==",
    {"package/shim/index.js": "assets/vendor/iframe-worker/shim.js",
     "package/LICENSE": "assets/vendor/iframe-worker/LICENSE.txt"},
)


def _check_integrity(data: bytes, integrity: str, spec: str) -> None:
    algo, _, expected = integrity.partition("-")
    actual = base64.b64encode(hashlib.new(algo, data).digest()).decode()
    if actual != expected:
        raise VendorError(f"{spec}: tarball {algo} is {actual}, pinned {expected}")


def _npm_pack(asset: NpmAsset, work: Path) -> bytes:
    npm = shutil.which("npm")
    if npm is None:
        raise VendorError(f"{asset.spec}: npm is not installed")
    # --prefer-offline: npm's own cache answers when it can, so a second machine-wide fetch needs no network.
    cmd = [npm, "pack", asset.spec, "--pack-destination", str(work), "--prefer-offline", "--ignore-scripts",
           "--silent"]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=NPM_TIMEOUT_S, cwd=work)
    except subprocess.TimeoutExpired:
        raise VendorError(f"{asset.spec}: npm pack took over {NPM_TIMEOUT_S} s") from None
    tarballs = list(work.glob("*.tgz"))
    if out.returncode != 0 or len(tarballs) != 1:
        last = (out.stderr.strip().splitlines() or ["no output"])[-1]
        raise VendorError(f"{asset.spec}: npm pack failed (exit {out.returncode}: {last})")
    return tarballs[0].read_bytes()


def cached_files(asset: NpmAsset, cache_root: Path) -> Path:
    """The folder holding `asset`'s files (named by their site paths), fetching them first if needed."""
    folder = cache_root / f"{asset.package}-{asset.version}"
    if all((folder / dest).is_file() for dest in asset.files.values()):
        return folder
    cache_root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".fetch-", dir=cache_root) as tmp:
        work = Path(tmp)
        data = _npm_pack(asset, work)
        _check_integrity(data, asset.integrity, asset.spec)
        staging = work / "staging"
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
            for member, dest in asset.files.items():
                try:
                    content = tar.extractfile(member)
                except KeyError:
                    content = None
                if content is None:
                    raise VendorError(f"{asset.spec}: no {member} in the tarball")
                target = staging / dest
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(content.read())
        # Another build may have filled the cache meanwhile: the rename makes exactly one of them win.
        try:
            os.rename(staging, folder)
        except OSError:
            if not all((folder / dest).is_file() for dest in asset.files.values()):
                raise VendorError(f"{asset.spec}: {folder} is incomplete; delete it and build again") from None
    return folder
