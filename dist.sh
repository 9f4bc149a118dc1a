#!/usr/bin/env bash
# Builds release archives: static, version-stamped binaries for Linux and
# macOS on amd64 and arm64, each packed with an example config, the README,
# the LICENSE and the systemd unit, as
#   dist/flamenco-worker-<version>-<os>-<arch>.tar.gz
# (the Python worker's `setup.py zip`, for Go). DIST_TARGETS (os/arch
# words) and DIST_DIR override the targets and the output directory.
# The version is the one the binary reports (-V): baseVersion in main.go
# plus the git revision, which every binary built here records.
set -euo pipefail
cd "$(dirname "$0")"

out=${DIST_DIR:-dist}
rm -rf "$out"
mkdir -p "$out"
# Ask a binary for this machine, built like the release ones, for its version.
CGO_ENABLED=0 go build -trimpath -buildvcs=auto -o "$out/.version-probe" .
version=$("$out/.version-probe" --version)
rm -f "$out/.version-probe"

for target in ${DIST_TARGETS:-linux/amd64 linux/arm64 darwin/amd64 darwin/arm64}; do
	os=${target%/*}
	arch=${target#*/}
	name="flamenco-worker-$version-$os-$arch"
	stage="$out/$name"
	mkdir -p "$stage"
	CGO_ENABLED=0 GOOS=$os GOARCH=$arch go build -trimpath -buildvcs=auto \
		-ldflags "-s -w" -o "$stage/flamenco-worker" .
	cp README.md LICENSE flamenco-worker.service "$stage/"
	cp examples/flamenco-worker.cfg "$stage/flamenco-worker.cfg"
	tar -C "$out" -czf "$out/$name.tar.gz" "$name"
	rm -rf "$stage"
	echo "$out/$name.tar.gz"
done
