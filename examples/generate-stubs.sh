#!/usr/bin/env bash
# Generates the client stubs of protos/weakteacher/v1 with the system protoc and its gRPC plugins into build folders
# (not committed):
#   python  -> examples/python/gen            (protoc + grpc_python_plugin; Debian: protobuf-compiler, protobuf-compiler-grpc)
#   go      -> examples/go/gopath/src/<go_package path>   (protoc + protoc-gen-go with plugins=grpc; Debian: golang-goprotobuf-dev)
# Usage: examples/generate-stubs.sh python|go|all
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
protos=("$root"/protos/weakteacher/v1/*.proto)
# google/api/{annotations,http}.proto (the HTTP/JSON bindings), vendored from Google.Api.CommonProtos
google_api=("$root"/protos/google/api/*.proto)
what=${1:-all}
need() { command -v "$1" >/dev/null || { echo "generate-stubs.sh: '$1' not found ($2)" >&2; exit 3; }; }
need protoc "Debian: apt-get install protobuf-compiler"

if [[ $what == python || $what == all ]]; then
  plugin=${GRPC_PYTHON_PLUGIN:-$(command -v grpc_python_plugin || true)}
  [[ -n $plugin ]] || { echo "generate-stubs.sh: grpc_python_plugin not found (Debian: apt-get install protobuf-compiler-grpc)" >&2; exit 3; }
  out=$root/examples/python/gen
  rm -rf "$out.tmp" && mkdir -p "$out.tmp"
  protoc -I "$root/protos" --python_out="$out.tmp" --grpc_python_out="$out.tmp" --plugin=protoc-gen-grpc_python="$plugin" "${protos[@]}" "${google_api[@]}"
  rm -rf "$out" && mv "$out.tmp" "$out"
fi

if [[ $what == go || $what == all ]]; then
  need protoc-gen-go "Debian: apt-get install golang-goprotobuf-dev"
  gopath=$root/examples/go/gopath
  rm -rf "$gopath/src/github.com/weakteacher/weakteacher-native/gen"
  mkdir -p "$gopath/src"
  # Debian's protoc-gen-go 1.3.5 predates proto3 `optional` and protoc refuses to hand it such files. `optional`
  # changes presence tracking only, not the wire format, so the Go stubs come from a copy without the keyword
  # (a Go client cannot tell an unset optional field from a zero one; it sends the same bytes).
  copy=$(mktemp -d); trap 'rm -rf "$copy"' EXIT
  mkdir -p "$copy/weakteacher/v1"
  for f in "${protos[@]}"; do sed -E 's/^([[:space:]]*)optional[[:space:]]+/\1/' "$f" >"$copy/weakteacher/v1/$(basename "$f")"; done
  # go_package in the protos gives the import path; paths=import lays the files out under it, as GOPATH mode wants.
  # protoc 3.21's timestamp.proto names the APIv2 package; goprotobuf 1.3.5 has the type in ptypes/timestamp.
  # google/api's Go package is Debian's genproto (golang-google-genproto-dev, pulled in by golang-google-grpc-dev).
  (cd "$copy" && protoc -I . -I "$root/protos" --go_out=plugins=grpc,paths=import,Mgoogle/protobuf/timestamp.proto=github.com/golang/protobuf/ptypes/timestamp:"$gopath/src" weakteacher/v1/*.proto)
fi
