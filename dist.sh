#!/usr/bin/env bash
# Builds release archives: static, version-stamped binaries for Linux and
# macOS on amd64 and arm64, each packed with an example config, the README,
# the LICENSE and the systemd unit, as
#   dist/flamenco-worker-<version>-<os>-<arch>.tar.gz
# (the Python worker's `setup.py zip`, for Go). DIST_TARGETS (os/arch
# words) and DIST_DIR override the targets and the output directory.
set -euo pipefail
cd "$(dirname "$0")"

version=$(git describe --tags --always --dirty 2>/dev/null || echo dev)
version=${version#v}
out=${DIST_DIR:-dist}
rm -rf "$out"
mkdir -p "$out"

for target in ${DIST_TARGETS:-linux/amd64 linux/arm64 darwin/amd64 darwin/arm64}; do
	os=${target%/*}
	arch=${target#*/}
	name="flamenco-worker-$version-$os-$arch"
	stage="$out/$name"
	mkdir -p "$stage"
	CGO_ENABLED=0 GOOS=$os GOARCH=$arch go build -trimpath -buildvcs=true \
		-ldflags "-s -w -X main.version=$version" -o "$stage/flamenco-worker" .
	cp README.md LICENSE flamenco-worker.service "$stage/"
	cp examples/flamenco-worker.cfg "$stage/flamenco-worker.cfg"
	tar -C "$out" -czf "$out/$name.tar.gz" "$name"
	rm -rf "$stage"
	echo "$out/$name.tar.gz"
done
