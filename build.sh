#!/usr/bin/env bash
# The one entry point.  ./build.sh test | demo | experiments | bench | serve | build
#   test   restore, build, run every test (CPU; GPU tests skip themselves without a GPU)
#   demo   the main job: the weak-teacher pipeline on the embedded synthetic task -> runs/demo/
#   experiments  the paper's studies over 3 seeds on the embedded task -> runs/experiments/results/report.md
#   bench  the benchmark of record: the engine against PyTorch eager on the same weights (CPU) -> benchmarks/results/bench-cpu.md;
#          --suite X for ModelBench's other suites (--device cuda on a GPU node), `bench kernels` for KernelBench
#   serve  the gRPC host on loopback with the embedded default data
#   device-dry-run  packs .device/ and runs benchmarks/device/gpu-checks.sh here on the CPU (WT_DRY_RUN=1), checking
#          its set-up, per-step logs and summary rows before a GPU run spends device time on them (about 6 minutes)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
export DOTNET_NOLOGO=1 DOTNET_CLI_TELEMETRY_OPTOUT=1 DOTNET_SKIP_FIRST_TIME_EXPERIENCE=1
cmd=${1:-test}; shift || true
config=Release

apt_install_missing() {
  # Debian's packages, installed only where one is missing (apt-get update first, once)
  local missing=() p
  command -v dpkg-query >/dev/null || { echo "build.sh: not a Debian system; install $* yourself" >&2; return 0; }
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  ((${#missing[@]} == 0)) && return 0
  local sudo=()
  [[ $(id -u) == 0 ]] || sudo=(sudo -n)
  echo "build.sh: installing ${missing[*]}" >&2
  "${sudo[@]}" apt-get update -qq && DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
}

host_blas() {
  # the decode head's products go to the system OpenBLAS where it is installed (HostBlas; WT_HOST_BLAS=torch turns it
  # off): installed for the main job and the studies too, so a fresh machine prints the numbers of their records
  [[ ${WT_HOST_BLAS:-} == torch ]] || apt_install_missing libopenblas0-openmp
}

bench_deps() {
  # the benchmark of record's PyTorch side (benchmarks/torch_baseline.py): Debian's python3-torch uses the system BLAS,
  # the netlib reference BLAS as installed (36x slower); libopenblas0-openmp becomes libblas.so.3. The engine's decode head
  # uses it too where it is installed.
  apt_install_missing python3-torch python3-numpy libopenblas0-openmp
}

node_deps() {
  # the Node.js gRPC client used by the end-to-end tests and examples
  if [[ -f examples/node/package.json ]]; then
    (cd examples/node && { [[ -d node_modules/@grpc/grpc-js ]] || npm install --no-audit --no-fund --silent; })
  fi
}

client_deps() {
  # the Python and Go example clients the suite runs (examples/generate-stubs.sh, examples/python, examples/go) and the
  # PostgreSQL server the shared job-store test starts in a temporary folder (JobStoreReplicaTests)
  apt_install_missing python3-grpcio python3-protobuf protobuf-compiler protobuf-compiler-grpc \
    golang-go golang-google-grpc-dev golang-goprotobuf-dev postgresql
}

pg_user_for_tests() {
  # initdb and postgres refuse to run as root: run as root, the PostgreSQL test starts them as WT_PG_USER (nobody,
  # or a system user made here where there is no nobody)
  [[ $(id -u) == 0 && -z ${WT_PG_USER:-} ]] || return 0
  getent passwd nobody >/dev/null && return 0
  getent passwd wt-postgres >/dev/null || useradd --system --no-create-home --shell /usr/sbin/nologin wt-postgres
  export WT_PG_USER=wt-postgres
}

nvrtc_for_tests() {
  # NVRTC needs no GPU: with it the NVRTC compile tests build every kernel for sm_80 and sm_90 instead of skipping.
  # Debian ships it in non-free; it is fetched once into .tools/nvrtc from the Debian mirror this machine's apt
  # already uses, with a private apt state (the system's sources stay as they are). Best effort: without it those
  # tests skip and say why.
  [[ -n ${WT_NVRTC:-} || -n ${CUDA_LIB:-} ]] && return 0
  local dest=$PWD/.tools/nvrtc state=$PWD/.tools/apt
  if ! compgen -G "$dest/libnvrtc.so.*" >/dev/null; then
    local codename mirror
    codename=$(. /etc/os-release 2>/dev/null && echo "${VERSION_CODENAME:-}")
    mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
    [[ -z $mirror ]] && mirror=$(awk '$1 == "deb" && $2 !~ /^\[/ {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
    if [[ -z $codename || -z $mirror ]] || ! command -v apt-get >/dev/null; then
      echo "build.sh: no Debian apt source found; the NVRTC compile tests will skip" >&2; return 0
    fi
    rm -rf "$state" "$dest"; mkdir -p "$state/lists/partial" "$state/archives/partial" "$dest"
    echo "deb $mirror $codename non-free" >"$state/sources.list"
    local o=(-o "Dir::Etc::SourceList=$state/sources.list" -o Dir::Etc::SourceParts=/dev/null
             -o "Dir::State::Lists=$state/lists" -o "Dir::Cache=$state" -o "Dir::State::status=/dev/null"
             -o Debug::NoLocking=1 -o APT::Sandbox::User=root -o Acquire::Retries=1 -o Acquire::http::Timeout=30 -qq)
    local names
    if apt-get "${o[@]}" update >"$state/log" 2>&1 &&
       names=$(apt-cache "${o[@]}" pkgnames libnvrtc 2>>"$state/log" | grep -v -- '-dev$' | sort) && [[ -n $names ]] &&
       (cd "$state" && apt-get "${o[@]}" download $names >>log 2>&1); then
      for deb in "$state"/*.deb; do dpkg-deb -x "$deb" "$state/root"; done
      find "$state/root" -name 'libnvrtc*.so*' -exec cp -P {} "$dest"/ \;
    fi
    if ! compgen -G "$dest/libnvrtc.so.*" >/dev/null; then
      echo "build.sh: could not fetch NVRTC from Debian non-free (see $state/log); the NVRTC compile tests will skip" >&2
      return 0
    fi
    rm -rf "$state"
  fi
  WT_NVRTC=$(ls "$dest"/libnvrtc.so.* | sort -V | tail -1)
  export WT_NVRTC
}

case "$cmd" in
  build)
    dotnet build WeakTeacher.Native.sln -c $config -nologo -v minimal "$@" ;;
  test)
    node_deps
    client_deps
    bench_deps  # the benchmark of record's tiny version (RecordBenchTests) runs both sides
    export WT_CLIENT_TESTS=required  # the Python/Go client tests fail rather than skip when their toolchain is missing
    nvrtc_for_tests
    pg_user_for_tests
    dotnet build WeakTeacher.Native.sln -c $config -nologo -v minimal
    # A test app with no test starting or ending for 20 minutes is named and ended (a mini dump of it and of its
    # child processes under TestResults/), rather than the whole run waiting for CI's own time limit.
    rm -rf TestResults
    dotnet test --solution WeakTeacher.Native.sln -c $config --no-build \
      --hangdump --hangdump-timeout 20m --hangdump-type Mini --results-directory "$PWD/TestResults" "$@" || {
      status=$?
      for log in TestResults/*_hang.log; do
        [[ -f $log ]] && { echo "still running at the hang dump ($log):"; cat "$log"; }
      done
      exit $status
    } ;;
  demo)
    host_blas
    dotnet build src/Cli/Cli.csproj -c $config -nologo -v quiet
    dotnet src/Cli/bin/$config/net10.0/wt.dll demo "$@" ;;
  experiments)
    host_blas
    dotnet build src/Cli/Cli.csproj -c $config -nologo -v quiet
    dotnet src/Cli/bin/$config/net10.0/wt.dll experiments "$@" ;;
  bench)
    # ./build.sh bench [--quick] [--rounds N] [--threads N]: the benchmark of record, the engine against PyTorch eager
    #   (benchmarks/torch_baseline.py on Debian's python3-torch over OpenBLAS) -> benchmarks/results/bench-cpu.md
    # ./build.sh bench --suite model|dpo|matmul|generate|packing [...]: one of ModelBench's other suites
    # ./build.sh bench kernels [...]: KernelBench
    bench_deps
    dotnet build benchmarks/ModelBench/ModelBench.csproj -c $config -nologo -v quiet
    if [[ ${1:-} == kernels ]]; then
      shift
      dotnet build benchmarks/KernelBench/KernelBench.csproj -c $config -nologo -v quiet
      dotnet benchmarks/KernelBench/bin/$config/net10.0/KernelBench.dll "$@"
    elif printf '%s\n' "$@" | grep -qx -- --suite; then
      dotnet benchmarks/ModelBench/bin/$config/net10.0/ModelBench.dll "$@"
    else
      # the machine's matmul rate and the BLAS each library path maps, printed before the record
      WT_HOST_BLAS=openblas dotnet benchmarks/ModelBench/bin/$config/net10.0/ModelBench.dll --suite matmul --device cpu \
        $(printf '%s\n' "$@" | grep -x -- --quick || true)
      dotnet benchmarks/ModelBench/bin/$config/net10.0/ModelBench.dll --suite record "$@"
    fi ;;
  serve)
    dotnet build src/GrpcHost/GrpcHost.csproj -c $config -nologo -v quiet
    dotnet src/GrpcHost/bin/$config/net10.0/WeakTeacher.GrpcHost.dll --urls http://127.0.0.1:50051 --default-task "$@" ;;
  device-dry-run)
    bash benchmarks/device/pack.sh
    out=${OUT:-$(mktemp -d)}
    WT_DRY_RUN=1 OUT=$out WT_DEVICE_WORK=$(mktemp -d) bash benchmarks/device/gpu-checks.sh
    # the set-up ran, every step left a row, the kernel tests passed on the CPU, the logs are in $OUT
    for s in info kernels fixtures parity-cpu engine-dpo torch-baseline kernelbench modelbench; do
      grep -q "^$s " "$out/summary.txt" || { echo "device-dry-run: no summary row for $s in $out/summary.txt" >&2; exit 1; }
    done
    grep -Eq '^kernels +[|] +0 [|]' "$out/summary.txt" || { echo "device-dry-run: the kernels step failed (see $out/steps.log)" >&2; exit 1; }
    grep -q '^== kernels' "$out/steps.log" || { echo "device-dry-run: no kernels log in $out/steps.log" >&2; exit 1; }
    # the engine's DPO table and the baseline's ran to the end (same format, so one table shows both)
    grep -Eq '^engine-dpo +[|] +0 [|]' "$out/summary.txt" || { echo "device-dry-run: the engine-dpo step failed (see $out/steps.log)" >&2; exit 1; }
    grep -q 'dpo step (precomputed reference)' "$out/engine-dpo-cpu.md" || { echo "device-dry-run: no engine DPO table in $out" >&2; exit 1; }
    echo "device-dry-run: passed; logs in $out" ;;
  *)
    echo "usage: ./build.sh test|demo|experiments|bench|serve|build|device-dry-run" >&2; exit 2 ;;
esac
