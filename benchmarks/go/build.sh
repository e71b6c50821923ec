#!/bin/sh
# Build the Go peer offline from sources in a scratch folder, outside the repository.
#
#   benchmarks/go/build.sh SCRATCH [OUTPUT]
#
# SCRATCH holds the public sources at the versions go.mod requires (benchmarks/README.md says
# how to fetch them):
#   SCRATCH/connector-sdk   github.com/openfaas/connector-sdk  v0.7.1
#   SCRATCH/faas-provider   github.com/openfaas/faas-provider  v0.19.1
#   SCRATCH/go-execute      github.com/alexellis/go-execute    v0.5.0
# The build runs on a copy of main.go and go.mod in SCRATCH/build, with replace lines pointing
# at those folders, and no network (GOPROXY=off). OUTPUT defaults to SCRATCH/bin/gopeer.
set -eu
if [ $# -lt 1 ] || [ $# -gt 2 ]; then
    echo "usage: $0 SCRATCH [OUTPUT]" >&2
    exit 2
fi
here=$(cd "$(dirname "$0")" && pwd)
scratch=$(cd "$1" && pwd)
output=${2:-$scratch/bin/gopeer}
case $output in /*) ;; *) output=$(pwd)/$output ;; esac
for name in connector-sdk faas-provider go-execute; do
    if [ ! -f "$scratch/$name/go.mod" ]; then
        echo "$scratch/$name/go.mod is missing: fetch the sources first (benchmarks/README.md)" >&2
        exit 1
    fi
done
build=$scratch/build
rm -rf "$build"
mkdir -p "$build" "$(dirname "$output")"
cp "$here/main.go" "$here/go.mod" "$build/"
cd "$build"
go mod edit \
    -replace "github.com/openfaas/connector-sdk=$scratch/connector-sdk" \
    -replace "github.com/openfaas/faas-provider=$scratch/faas-provider" \
    -replace "github.com/alexellis/go-execute=$scratch/go-execute"
GOFLAGS=-mod=mod GOPROXY=off GOSUMDB=off GOWORK=off go build -trimpath -o "$output" .
echo "built $output ($(go version))"
