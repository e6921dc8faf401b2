#!/bin/sh
# Builds the Kubernetes control plane the integration tests run against —
# kube-apiserver, kube-controller-manager and etcd — from the Go modules
# pinned in tools/kube/kubernetes/go.mod and tools/kube/etcd/go.mod, into a
# cache directory outside the repository keyed by those versions, and
# prints that directory. A complete earlier build is reused as it is.
#
#   tools/kube/build.sh            build if needed, print the directory
#   tools/kube/build.sh --dir      only print the directory
#
# SRS_PROXY_KUBE_BIN overrides the directory (binaries built elsewhere).
# Nothing is downloaded but Go modules, through the Go module proxy.
set -eu

here=$(cd "$(dirname "$0")" && pwd)

# The pinned versions, read from the wrapper modules so they cannot
# disagree with what is built.
pinned() {
	awk -v m="$2" '$1 == "require" && $2 == m { print $3; exit } $1 == m && $2 ~ /^v/ { print $2; exit }' "$1"
}
kube_version=$(pinned "$here/kubernetes/go.mod" k8s.io/kubernetes)
etcd_version=$(pinned "$here/etcd/go.mod" go.etcd.io/etcd/server/v3)
[ -n "$kube_version" ] && [ -n "$etcd_version" ] || {
	echo "tools/kube: cannot read the pinned k8s.io/kubernetes or etcd version from the go.mod files" >&2
	exit 1
}

if [ -n "${SRS_PROXY_KUBE_BIN:-}" ]; then
	dir=$SRS_PROXY_KUBE_BIN
else
	dir=${XDG_CACHE_HOME:-$HOME/.cache}/srs-proxy/kube-$kube_version-etcd-$etcd_version
fi

if [ "${1:-}" = "--dir" ]; then
	echo "$dir"
	exit 0
fi

complete() {
	for b in kube-apiserver kube-controller-manager etcd; do
		[ -x "$1/$b" ] || return 1
	done
}

if complete "$dir"; then
	echo "$dir"
	exit 0
fi
if [ -n "${SRS_PROXY_KUBE_BIN:-}" ]; then
	echo "SRS_PROXY_KUBE_BIN=$dir lacks kube-apiserver, kube-controller-manager or etcd" >&2
	exit 1
fi

command -v go >/dev/null || {
	echo "tools/kube: the Go toolchain (go) is missing: it builds kube-apiserver, kube-controller-manager and etcd. Install Go 1.24 or newer (\`make deps\` does, as root)." >&2
	exit 1
}

echo "building kube-apiserver, kube-controller-manager $kube_version and etcd $etcd_version into $dir (once; later runs reuse it)" >&2
mkdir -p "$(dirname "$dir")"
work=$(mktemp -d "$dir.tmp.XXXXXX")
trap 'rm -rf "$work"' EXIT

# Lean: no debug info, no cgo, only the three commands; niced, because the
# machine is shared with Rust builds.
minor=${kube_version#v1.}
minor=${minor%%.*}
version_flags="-X k8s.io/component-base/version.gitVersion=$kube_version -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor -X k8s.io/component-base/version.gitTreeState=clean"
export CGO_ENABLED=0
(cd "$here/kubernetes" && nice -n 15 go build -trimpath -ldflags="-s -w $version_flags" -o "$work/" \
	k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager)
(cd "$here/etcd" && nice -n 15 go build -trimpath -ldflags="-s -w" -o "$work/etcd" go.etcd.io/etcd/server/v3)

complete "$work" || {
	echo "tools/kube: the build finished without all three binaries in $work" >&2
	exit 1
}
# Published whole or not at all: an interrupted build is never reused.
chmod 755 "$work"
rm -rf "$dir"
mv "$work" "$dir"
trap - EXIT
echo "$dir"
