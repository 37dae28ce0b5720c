#!/usr/bin/env bash
# Make the `docker` sandbox backend usable on this machine, offline, idempotently:
#   1. install docker.io and debootstrap (skipped when dockerd and debootstrap exist),
#   2. start dockerd without a default bridge (skipped when an engine already answers),
#   3. build an offline base image by debootstrapping a minimal Debian with python3 and
#      importing it (skipped when $APPO_BASE_IMAGE exists),
#   4. build the Dockerfile's `sandbox` target on it as $APPO_SANDBOX_IMAGE (layer cache: fast).
# Prints `APPO_SANDBOX_IMAGE=<image>` last. Needs root for steps 1-3 when they are not skipped.
set -euo pipefail
cd "$(dirname "$0")/.."

BASE_IMAGE="${APPO_BASE_IMAGE:-appo-base:local}"
SANDBOX_IMAGE="${APPO_SANDBOX_IMAGE:-appo-sandbox:local}"
DOCKERD_LOG="${APPO_DOCKERD_LOG:-/var/log/appo-dockerd.log}"
SUITE="${APPO_DEBIAN_SUITE:-bookworm}"
export DOCKER_BUILDKIT=0  # the classic builder needs no buildx plugin and no registry access

say() { echo "== ci_docker: $*" >&2; }
die() { echo "ci_docker: error: $*" >&2; exit 1; }
need_root() { [ "$(id -u)" = 0 ] || die "$1 needs root (run as root, or do it by hand: $2)"; }

# 1. packages
if command -v dockerd >/dev/null && command -v docker >/dev/null && command -v debootstrap >/dev/null; then
    say "docker and debootstrap already installed"
else
    need_root "installing docker.io and debootstrap" "apt-get install docker.io debootstrap"
    say "installing docker.io and debootstrap"
    apt-get update -q >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q docker.io debootstrap >&2
fi

# 2. engine
if docker info >/dev/null 2>&1; then
    say "docker engine already running (${DOCKER_HOST:-unix:///var/run/docker.sock})"
else
    [ -z "${DOCKER_HOST:-}" ] || die "DOCKER_HOST=$DOCKER_HOST does not answer; unset it to start a local dockerd"
    need_root "starting dockerd" "dockerd --bridge=none --iptables=false"
    say "starting dockerd (no default bridge), log: $DOCKERD_LOG"
    mkdir -p "$(dirname "$DOCKERD_LOG")"
    nohup dockerd --bridge=none --iptables=false --ip6tables=false >>"$DOCKERD_LOG" 2>&1 &
    for _ in $(seq 60); do
        docker info >/dev/null 2>&1 && break
        sleep 0.5
    done
    docker info >/dev/null 2>&1 || { tail -n 30 "$DOCKERD_LOG" >&2; die "dockerd did not come up; see $DOCKERD_LOG"; }
fi

# 3. offline base image
debian_mirror() {
    # The first Debian archive URI of this machine's apt sources (deb822 or one-line format).
    local uri
    uri=$( (grep -hE '^\s*URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}';
            grep -hE '^\s*deb\s' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null |
                sed -E 's/\[[^]]*\]//' | awk '{print $2}') | grep -v -- '-security' | head -n 1)
    echo "${uri:-http://deb.debian.org/debian}"
}
if docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
    say "base image $BASE_IMAGE already exists"
else
    need_root "debootstrap" "debootstrap --variant=minbase --include=python3 $SUITE DIR MIRROR"
    mirror=$(debian_mirror)
    rootfs=$(mktemp -d /var/tmp/appo-rootfs.XXXXXX)
    trap 'rm -rf "$rootfs" "$rootfs.log"' EXIT
    say "debootstrapping $SUITE (minbase + python3) from $mirror"
    debootstrap --variant=minbase --include=python3 "$SUITE" "$rootfs" "$mirror" >"$rootfs.log" 2>&1 \
        || { tail -n 40 "$rootfs.log" >&2; die "debootstrap failed (mirror $mirror; set it in /etc/apt/sources.list*)"; }
    rm -f "$rootfs.log"
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    say "importing it as $BASE_IMAGE"
    tar -C "$rootfs" -c . | docker import - "$BASE_IMAGE" >/dev/null
    rm -rf "$rootfs"
    trap - EXIT
fi

# 4. the sandbox image (cached layers make this a no-op when nothing changed)
say "building $SANDBOX_IMAGE (Dockerfile target sandbox, BASE=$BASE_IMAGE)"
docker build -q --target sandbox --build-arg "BASE=$BASE_IMAGE" -t "$SANDBOX_IMAGE" . >&2
echo "APPO_SANDBOX_IMAGE=$SANDBOX_IMAGE"
