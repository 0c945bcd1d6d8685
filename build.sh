#!/usr/bin/env bash
# The one entry point.  ./build.sh test | demo | bench | serve | build
#   test   restore, build, run every test (CPU; GPU tests skip themselves without a GPU)
#   demo   the main job: the weak-teacher pipeline on the embedded synthetic task -> runs/demo/
#   bench  model/kernel benchmarks (CPU here; pass --device cuda on a GPU node)
#   serve  the gRPC host on loopback with the embedded default data
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
export DOTNET_NOLOGO=1 DOTNET_CLI_TELEMETRY_OPTOUT=1 DOTNET_SKIP_FIRST_TIME_EXPERIENCE=1
cmd=${1:-test}; shift || true
config=Release

node_deps() {
  # the Node.js gRPC client used by the end-to-end tests and examples
  if [[ -f examples/node/package.json ]]; then
    (cd examples/node && { [[ -d node_modules/@grpc/grpc-js ]] || npm install --no-audit --no-fund --silent; })
  fi
}

case "$cmd" in
  build)
    dotnet build WeakTeacher.Native.sln -c $config -nologo -v minimal "$@" ;;
  test)
    node_deps
    dotnet build WeakTeacher.Native.sln -c $config -nologo -v minimal
    dotnet test --solution WeakTeacher.Native.sln -c $config --no-build "$@" ;;
  demo)
    dotnet build src/Cli/Cli.csproj -c $config -nologo -v quiet
    dotnet src/Cli/bin/$config/net10.0/wt.dll demo "$@" ;;
  bench)
    dotnet build benchmarks/ModelBench/ModelBench.csproj -c $config -nologo -v quiet
    dotnet build benchmarks/KernelBench/KernelBench.csproj -c $config -nologo -v quiet
    dotnet benchmarks/ModelBench/bin/$config/net10.0/ModelBench.dll "$@"
    dotnet benchmarks/KernelBench/bin/$config/net10.0/KernelBench.dll "$@" ;;
  serve)
    dotnet build src/GrpcHost/GrpcHost.csproj -c $config -nologo -v quiet
    dotnet src/GrpcHost/bin/$config/net10.0/WeakTeacher.GrpcHost.dll --urls http://127.0.0.1:50051 --default-task "$@" ;;
  *)
    echo "usage: ./build.sh test|demo|bench|serve|build" >&2; exit 2 ;;
esac
