#!/usr/bin/env bash
# The e2e image without Docker: kubebox's bookworm + PostgreSQL 15 root filesystem (postgres is
# uid/gid 999) plus the freshly built release pgkeep, wrapped as a one-layer image and imported
# into the running kubebox cluster. The tag is derived from the binary (never `latest`), so a
# changed build is a new image and nothing is ever pulled.
#
# Usage: e2e/kubebox-image.sh            prints the image reference on stdout (logs on stderr)
# Env:   KUBEBOX  path of the kubebox script (default: ../shared/kubebox/kubebox beside the checkout)
set -euo pipefail
cd "$(dirname "$0")/.."
KUBEBOX=${KUBEBOX:-$(cd .. && pwd)/shared/kubebox/kubebox}
[ -f "$KUBEBOX" ] || { echo "kubebox not found at $KUBEBOX: set KUBEBOX to the kubebox script" >&2; exit 1; }

cargo build --release --locked -p pgkeep >&2
bin=target/release/pgkeep
ref="kubebox.local/pgkeep:$(sha256sum "$bin" | cut -c1-12)-pg15"

work=$(mktemp -d /tmp/pgkeep-image.XXXXXX)
trap 'rm -rf "$work"' EXIT
bash "$KUBEBOX" pg-rootfs "$work/fs" >&2
install -m 755 "$bin" "$work/fs/usr/local/bin/pgkeep"
bash "$KUBEBOX" mkimage "$work/fs" "$ref" "$work/pgkeep.tar" --user 999:999 \
  --env PATH=/usr/lib/postgresql/15/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  --env LANG=C.UTF-8 --cmd '["pgkeep","--help"]' >&2
bash "$KUBEBOX" image-import "$work/pgkeep.tar" >&2
echo "$ref"
