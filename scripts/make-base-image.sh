#!/usr/bin/env bash
# Build a local Debian bookworm image with Python 3.11 (python3, python3-venv, python3-pip), for machines
# that reach no container registry: debootstrap from the apt mirror this machine already uses, then
# `docker import`. The Dockerfile builds on it with --build-arg BASE_IMAGE=wm-base:bookworm.
#
#   bash scripts/make-base-image.sh [--force] [TAG]      (root; TAG defaults to wm-base:bookworm)
#
# An image already tagged TAG is kept as it is unless --force. The CA certificates this machine adds to
# its trust store (/usr/local/share/ca-certificates, e.g. a TLS-intercepting proxy's) go into the image,
# so that pip inside `docker build` can verify the package index it reaches through that proxy.
set -euo pipefail

force=0
if [ "${1:-}" = "--force" ]; then force=1; shift; fi
tag="${1:-wm-base:bookworm}"
suite=bookworm

if [ "$force" = 0 ] && docker image inspect "$tag" >/dev/null 2>&1; then
    echo "$tag exists; kept (--force rebuilds it)"
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    echo "error: $0 must run as root (debootstrap and chroot need it)" >&2
    exit 1
fi
command -v debootstrap >/dev/null || { echo "error: debootstrap is missing (apt-get install -y debootstrap)" >&2; exit 1; }

# The first mirror among the machine's apt sources that serves $suite (one-line or deb822 format), and
# the one serving $suite-security, if any.
sources() { cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null || true; }
mirror_for() {
    sources | awk -v want="$1" '
        /^[[:space:]]*#/ { next }
        /^deb[[:space:]]/ { line = $0; sub(/\[[^]]*\]/, "", line); split(line, f)
                            if (f[3] == want) { print f[2]; exit }
                            next }
        /^Types:/ { binary = ($0 ~ /[[:space:]]deb([[:space:]]|$)/) }
        /^URIs:/ { uri = $2 }
        /^Suites:/ { for (j = 2; j <= NF; j++) if ($j == want && uri != "" && binary) { print uri; exit } }
        /^[[:space:]]*$/ { uri = ""; binary = 0 }'
}
mirror="$(mirror_for "$suite")"
security="$(mirror_for "$suite-security")"
if [ -z "$mirror" ]; then
    echo "error: no apt source for $suite in /etc/apt/sources.list*; cannot tell which mirror to use" >&2
    exit 1
fi
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
[ -f "$keyring" ] || { echo "error: $keyring is missing (apt-get install -y debian-archive-keyring)" >&2; exit 1; }

root="$(mktemp -d /var/tmp/wm-base.XXXXXX)"
log="$root.log"
chmod 755 "$root"  # apt's download user (_apt) must reach the tree
cleanup() {
    umount "$root/proc" 2>/dev/null || true
    rm -rf --one-file-system "$root" "$log"
}
trap cleanup EXIT

echo "debootstrap $suite from $mirror ..."
# Output goes to $log and is shown only when a step fails.
quiet() { "$@" >>"$log" 2>&1 || { tail -30 "$log" >&2; echo "error: failed: $*" >&2; exit 1; }; }
quiet debootstrap --variant=minbase --keyring="$keyring" "$suite" "$root" "$mirror"

{
    echo "deb $mirror $suite main"
    echo "deb $mirror $suite-updates main"
    [ -z "$security" ] || echo "deb $security $suite-security main"
} >"$root/etc/apt/sources.list"
# The same freshness rule as this machine's apt (a dated mirror snapshot would otherwise be refused).
if grep -rqs 'Check-Valid-Until "false"' /etc/apt/apt.conf.d/; then
    echo 'Acquire::Check-Valid-Until "false";' >"$root/etc/apt/apt.conf.d/99check-valid-until"
fi
printf 'path-exclude /usr/share/doc/*\npath-include /usr/share/doc/*/copyright\npath-exclude /usr/share/man/*\n' \
    >"$root/etc/dpkg/dpkg.cfg.d/01-no-docs"

mount -t proc proc "$root/proc"
quiet chroot "$root" /bin/sh -ec '
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends python3 python3-venv python3-pip ca-certificates
    apt-get clean
    rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/log/apt /var/log/dpkg.log'
if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
    cp /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/"
    quiet chroot "$root" update-ca-certificates
fi
umount "$root/proc"

echo "docker import -> $tag ..."
tar --numeric-owner -C "$root" -c . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["/bin/bash"]' \
    --message "debootstrap --variant=minbase $suite $mirror + python3 python3-venv python3-pip ca-certificates" \
    - "$tag" >/dev/null
docker image ls "$tag"
