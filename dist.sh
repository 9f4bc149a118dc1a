#!/usr/bin/env bash
# Builds release archives: static, version-stamped binaries for Linux and
# macOS on amd64 and arm64, each packed with an example config, the README,
# the LICENSE and the systemd unit, as
#   dist/flamenco-worker-<version>-<os>-<arch>.tar.gz
# (the Python worker's `setup.py zip`, for Go).
set -euo pipefail
cd "$(dirname "$0")"

version=$(git describe --tags --always --dirty 2>/dev/null || echo dev)
version=${version#v}
rm -rf dist
mkdir -p dist

for target in linux/amd64 linux/arm64 darwin/amd64 darwin/arm64; do
	os=${target%/*}
	arch=${target#*/}
	name="flamenco-worker-$version-$os-$arch"
	stage="dist/$name"
	mkdir -p "$stage"
	CGO_ENABLED=0 GOOS=$os GOARCH=$arch go build -trimpath -buildvcs=true \
		-ldflags "-s -w -X main.version=$version" -o "$stage/flamenco-worker" .
	cp README.md LICENSE flamenco-worker.service "$stage/"
	cp examples/flamenco-worker.cfg "$stage/flamenco-worker.cfg"
	tar -C dist -czf "dist/$name.tar.gz" "$name"
	rm -rf "$stage"
	echo "dist/$name.tar.gz"
done
