#!/usr/bin/env bash
# Packs what gpu-checks.sh runs on the GPU machine into .device/ (git-ignored; the device tool carries it):
#   - the .NET runtime and on-device.sh, by shared/device/pack.sh;
#   - the four published projects as one xz tarball. Published one by one they each repeat TorchSharp, the engine and
#     the test platform (about 60 MiB together) and would not fit the 64 MiB the tool carries; one solid xz stream
#     stores each repeated file once (about 10 MiB).
# Usage, from the project root:  bash benchmarks/device/pack.sh      (WT_SHARED=path overrides ../shared)
set -euo pipefail
root=$(git rev-parse --show-toplevel)
cd "$root"
# ../shared beside the checkout; from a linked worktree, beside the main checkout
shared=${WT_SHARED:-$root/../shared}
[[ -f $shared/device/pack.sh ]] || shared=$(cd "$(git rev-parse --git-common-dir)/../.." && pwd)/shared
projects=(tests/CudaKernels.Tests/CudaKernels.Tests.csproj tests/WeakTeacher.Tests/WeakTeacher.Tests.csproj
          benchmarks/KernelBench/KernelBench.csproj benchmarks/ModelBench/ModelBench.csproj)

find .device -mindepth 1 -maxdepth 1 -type d -exec rm -rf {} + 2>/dev/null || true
bash "$shared/device/pack.sh"          # no project named: the runtime tarball and on-device.sh only
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
for proj in "${projects[@]}"; do
  name=$(basename "$proj" .csproj)
  echo "pack: publishing $proj"
  dotnet publish "$proj" -c Release -r linux-x64 --self-contained false -o "$stage/$name" -nologo -v quiet
  # as shared/device/pack.sh does: the CPU libtorch stays behind (the GPU machine's PyTorch provides CUDA libtorch),
  # and so do other platforms' native libraries
  find "$stage/$name" -type f \( -name 'libtorch*.so*' -o -name 'libc10*.so*' -o -name 'libgomp*.so*' \
    -o -name 'libaoti_custom_ops.so' -o -name 'libbackend_with_compiler.so' -o -name 'libjitbackend_test.so' \
    -o -name 'libnnapi_backend.so' -o -name 'libshm.so' -o -name 'libtorchbind_test.so' \) -delete
  find "$stage/$name" -type d -path '*runtimes/*' \( -name 'win-*' -o -name 'osx-*' -o -name 'linux-arm*' -o -name 'linux-musl*' \) -prune -exec rm -rf {} +
done
echo "pack: compressing the projects (about half a minute)"
tar -C "$stage" -cf - . | xz -9e -T1 >.device/gpu-checks.tar.xz.tmp
mv .device/gpu-checks.tar.xz.tmp .device/gpu-checks.tar.xz
size=$(du -sm .device | cut -f1)
echo "pack: .device is ${size} MiB (the device tool carries 64 MiB with the working tree)"
if ((size > 56)); then echo "pack: too large" >&2; exit 1; fi
