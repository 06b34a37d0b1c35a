#!/usr/bin/env bash
# Builds a Chromify image without a Docker daemon and without pulling base images,
# then runs `chromify --help` in it as the image's (non-root) user.
#
#   sudo containers/image-check.sh [containers/Dockerfile.cpu]
#
# Needs root, Debian's buildah and debootstrap (apt-get install buildah debootstrap),
# uv of the same version as the Dockerfile's ghcr.io/astral-sh/uv tag, and network
# access to a Debian mirror and PyPI (uv sync inside the build).
#
# Stand-ins, stored under the names the Dockerfile asks for so that FROM and
# COPY --from resolve locally (--pull=never):
#   python:<tag>-slim-bookworm  <- debootstrap'd Debian bookworm with Debian's python3 (3.11.x; the
#                                  interpreter lives in /usr/bin, not /usr/local/bin, which the
#                                  Dockerfile does not depend on)
#   ghcr.io/astral-sh/uv:<ver>  <- this machine's uv and uvx binaries
# Storage is vfs and isolation chroot: neither needs overlayfs or user namespaces.
#
# Environment: CHROMIFY_IMAGE_CHECK_DIR (work dir, default /var/tmp/chromify-image-check),
# DEBIAN_MIRROR, CHROMIFY_IMAGE_CHECK_KEEP=1 to keep the (large) image store afterwards.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DOCKERFILE=${1:-containers/Dockerfile.cpu}
WORK=${CHROMIFY_IMAGE_CHECK_DIR:-/var/tmp/chromify-image-check}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
TAG=localhost/chromify-image-check:dev

die() { echo "image-check: $*" >&2; exit 1; }
say() { echo "image-check: $*" >&2; }

[[ $(id -u) == 0 ]] || die "run as root (debootstrap and buildah's chroot isolation need it)"
for tool in buildah debootstrap; do
  command -v "$tool" >/dev/null || die "$tool missing: apt-get install -y buildah debootstrap"
done
[[ -f $ROOT/$DOCKERFILE ]] || die "no $DOCKERFILE under $ROOT"

PY_IMAGE=$(awk 'toupper($1) == "FROM" && $2 ~ /^python:/ { print $2; exit }' "$ROOT/$DOCKERFILE")
UV_IMAGE=$(grep -o 'ghcr\.io/astral-sh/uv:[0-9.]*' "$ROOT/$DOCKERFILE" | head -n 1)
[[ -n $PY_IMAGE ]] || die "$DOCKERFILE has no python:* base; only the Debian-based images can be checked here"
[[ -n $UV_IMAGE ]] || die "$DOCKERFILE copies no ghcr.io/astral-sh/uv image"
[[ $PY_IMAGE == *bookworm* ]] || die "$PY_IMAGE is not bookworm-based: the stand-in would not match"

# The real uv binary, not a pyenv/asdf shim script.
UV_BIN=${UV_BIN:-$(python3 -c 'import uv; print(uv.find_uv_bin())' 2>/dev/null || command -v uv)}
[[ $(head -c 4 "$UV_BIN" | tr -d '\0') == $'\x7fELF' ]] || die "$UV_BIN is not a uv binary; set UV_BIN"
UV_VERSION=$("$UV_BIN" --version | awk '{ print $2 }')
[[ $UV_VERSION == "${UV_IMAGE##*:}" ]] || die "local uv is $UV_VERSION, the Dockerfile pins ${UV_IMAGE##*:}"

mkdir -p "$WORK"
bah() { buildah --storage-driver vfs --root "$WORK/storage" --runroot "$WORK/run" "$@"; }

cleanup() {
  if [[ ${CHROMIFY_IMAGE_CHECK_KEEP:-0} != 1 ]]; then
    bah rm --all >/dev/null 2>&1 || true
    rm -rf "$WORK"
  fi
}
trap cleanup EXIT

if ! bah inspect --type image "docker.io/library/$PY_IMAGE" >/dev/null 2>&1; then
  say "debootstrapping bookworm as a stand-in for $PY_IMAGE"
  rm -rf "$WORK/rootfs"
  debootstrap --variant=minbase --include=python3 bookworm "$WORK/rootfs" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 ||
    die "debootstrap failed, see $WORK/debootstrap.log"
  rm -rf "$WORK/rootfs/var/lib/apt/lists/"* "$WORK/rootfs/var/cache/apt/"*.bin
  base_env=(--env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin --env LANG=C.UTF-8)
  # Where this machine reaches PyPI through a TLS-inspecting egress, the build needs its CA bundle.
  # Only the local stand-in base gets it (and SSL_CERT_FILE, which uv honours); the Dockerfile stays as is.
  if [[ -n ${SSL_CERT_FILE:-} && -f $SSL_CERT_FILE ]]; then
    mkdir -p "$WORK/rootfs/etc/ssl/certs"
    cp "$SSL_CERT_FILE" "$WORK/rootfs/etc/ssl/certs/host-ca-bundle.crt"
    base_env+=(--env SSL_CERT_FILE=/etc/ssl/certs/host-ca-bundle.crt)
  fi
  tar -C "$WORK/rootfs" -cf "$WORK/rootfs.tar" .
  rm -rf "$WORK/rootfs"
  ctr=$(bah from scratch)
  bah add "$ctr" "$WORK/rootfs.tar" / >/dev/null
  bah config "${base_env[@]}" --cmd python3 "$ctr"
  bah commit --quiet --rm "$ctr" "docker.io/library/$PY_IMAGE" >/dev/null
  rm -f "$WORK/rootfs.tar"
fi

if ! bah inspect --type image "$UV_IMAGE" >/dev/null 2>&1; then
  say "packing local uv $UV_VERSION as $UV_IMAGE"
  ctr=$(bah from scratch)
  bah copy "$ctr" "$UV_BIN" /uv >/dev/null
  bah copy "$ctr" "$(dirname "$UV_BIN")/uvx" /uvx >/dev/null
  bah commit --quiet --rm "$ctr" "$UV_IMAGE" >/dev/null
fi

say "building $DOCKERFILE"
start=$SECONDS
bah bud --isolation chroot --pull=never --layers=false --quiet \
  -f "$ROOT/$DOCKERFILE" -t "$TAG" "$ROOT" >"$WORK/build.log" 2>&1 || {
  tail -n 40 "$WORK/build.log" >&2
  die "build failed (log: $WORK/build.log; set CHROMIFY_IMAGE_CHECK_KEEP=1 to keep it)"
}
say "built in $((SECONDS - start)) s; image size $(bah images --format '{{.Size}}' "$TAG")"

ctr=$(bah from "$TAG")
user=$(bah run --isolation chroot "$ctr" -- id -u)
[[ $user != 0 ]] || die "the image runs as root"
say "running as uid $user: chromify --help"
bah run --isolation chroot "$ctr" -- chromify --help
bah rm "$ctr" >/dev/null
say "ok"
