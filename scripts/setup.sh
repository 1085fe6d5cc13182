#!/bin/sh
# Installs what building, booting and testing berth needs on a Debian machine:
# the apt packages, the musl target, and (through berth-build) Debian's kernel.
# Safe to run again: it only installs what is missing.
set -eu

PACKAGES="qemu-system-x86 ovmf busybox-static e2fsprogs cpio tini dumb-init dpkg-dev dnsmasq-base iproute2 util-linux musl-tools skopeo umoci curl docker-registry docker.io dhcpcd-base grub-common grub-pc-bin grub-efi-amd64-bin xorriso mtools dosfstools fdisk qemu-utils"

missing=""
for p in $PACKAGES; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "setup: missing Debian packages:$missing; run as root or install them with apt-get" >&2
        exit 1
    fi
    echo "setup: installing$missing"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null
    # Packages with daemons (docker.io, docker-registry) are installed for
    # their clients and binaries only: tests start what they need by hand,
    # so keep the packages' services from starting (Debian's policy-rc.d).
    policy=""
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        policy=/usr/sbin/policy-rc.d
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod +x "$policy"
    fi
    status=0
    apt-get install -y -q --no-install-recommends $missing >/dev/null || status=$?
    [ -z "$policy" ] || rm -f "$policy"
    [ "$status" -eq 0 ] || { echo "setup: apt-get install failed ($status)" >&2; exit "$status"; }
fi

if ! command -v cargo >/dev/null 2>&1; then
    echo "setup: cargo is not installed; install Rust with rustup first" >&2
    exit 1
fi
if ! rustup target list --installed 2>/dev/null | grep -q '^x86_64-unknown-linux-musl$'; then
    echo "setup: adding the x86_64-unknown-linux-musl target"
    rustup target add x86_64-unknown-linux-musl >/dev/null 2>&1 || \
        echo "setup: could not add the musl target; building static glibc binaries instead" >&2
fi
