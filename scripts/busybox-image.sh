#!/bin/bash
# Writes a docker-archive of a busybox image (Debian's busybox-static, every
# applet linked in /bin) with the real tools: umoci builds the OCI layout,
# skopeo writes the archive. Nothing is downloaded.
#
#   scripts/busybox-image.sh OUT.tar [REFERENCE]   (default busybox:latest)
set -euo pipefail

out=${1:?usage: $0 OUT.tar [REFERENCE]}
ref=${2:-busybox:latest}
for tool in umoci skopeo; do
	command -v "$tool" >/dev/null || { echo "$0: $tool is missing (make setup installs it)" >&2; exit 1; }
done
[ -x /bin/busybox ] || { echo "$0: /bin/busybox is missing: install busybox-static" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
umoci init --layout "$work/layout"
umoci new --image "$work/layout:latest"
umoci unpack --rootless --image "$work/layout:latest" "$work/bundle" >/dev/null
root=$work/bundle/rootfs
mkdir -p "$root"/{bin,etc,tmp,root}
chmod 1777 "$root/tmp"
cp /bin/busybox "$root/bin/busybox"
for applet in $(/bin/busybox --list); do
	[ "$applet" = busybox ] || ln -sf busybox "$root/bin/$applet"
done
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' >"$root/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' >"$root/etc/group"
umoci repack --image "$work/layout:latest" "$work/bundle" >/dev/null
umoci config --image "$work/layout:latest" --config.cmd /bin/sh \
	--config.env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin >/dev/null
mkdir -p "$(dirname "$out")"
rm -f "$out.tmp"
skopeo copy -q "oci:$work/layout:latest" "docker-archive:$out.tmp:$ref"
mv "$out.tmp" "$out"
