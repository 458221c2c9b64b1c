#!/usr/bin/env bash
# Install everything slimcc needs to run aarch64 artifacts under emulation (Debian 12, as root):
#   qemu-user + the aarch64 cross compiler (host packages),
#   a sysroot of Debian arm64 packages (python3.11 and its libraries) unpacked with dpkg -x,
#   the manylinux aarch64 wheels of apache-tvm and its runtime needs, unzipped into the sysroot.
# Idempotent: every step is skipped when its result is already there.
# Usage: .ci/setup_arm.sh [SYSROOT]   (default: $SLIMCC_ARM_SYSROOT or ~/.cache/slimcc/arm-sysroot)
set -euo pipefail

SYSROOT="${1:-${SLIMCC_ARM_SYSROOT:-$HOME/.cache/slimcc/arm-sysroot}}"
PYTHON="${PYTHON:-python3}"
SITE="$SYSROOT/opt/slimcc/site-packages"
DEBS="$SYSROOT.debs"
WHEELS="$SYSROOT.wheels"

# Debian arm64 packages: python 3.11 and every shared library it, its stdlib extensions and the
# TVM / numpy wheels load.
ARM_PACKAGES=(
  libc6 libgcc-s1 libstdc++6 libgomp1 libcrypt1
  python3.11-minimal libpython3.11-minimal libpython3.11-stdlib
  libffi8 zlib1g libssl3 libexpat1 libbz2-1.0 liblzma5 libsqlite3-0 libzstd1
  libncursesw6 libtinfo6 libuuid1 libreadline8 libdb5.3 libnsl2 libtirpc3
  libgssapi-krb5-2 libkrb5-3 libk5crypto3 libkrb5support0 libcom-err2 libkeyutils1
)
# aarch64 wheels of TVM and what its RPC server and runtime import.
WHEEL_SPECS=(
  apache-tvm==0.27.0.post1 apache-tvm-ffi==0.1.14.post1
  numpy ml_dtypes typing_extensions psutil cloudpickle tornado
)

CHANGED=0  # set when a step did work: only then is the (slow, emulated) import check run
log() { echo "[setup_arm] $*"; }
# Wait for another apt/dpkg run (e.g. a parallel CI step) instead of failing on its lock.
APT=(apt-get -o DPkg::Lock::Timeout=600)

need_host_packages() {
  command -v qemu-aarch64 >/dev/null && command -v aarch64-linux-gnu-g++ >/dev/null \
    && dpkg --print-foreign-architectures | grep -qx arm64
}

if need_host_packages; then
  log "host packages present (qemu-aarch64, aarch64-linux-gnu-g++, arm64 architecture)"
else
  log "installing qemu-user and g++-aarch64-linux-gnu, adding the arm64 architecture"
  dpkg --add-architecture arm64
  "${APT[@]}" update -qq
  DEBIAN_FRONTEND=noninteractive "${APT[@]}" install -y -qq --no-install-recommends \
    qemu-user g++-aarch64-linux-gnu
fi

mkdir -p "$SYSROOT" "$DEBS" "$WHEELS"

if [ -f "$SYSROOT/.slimcc-debs-done" ]; then
  log "sysroot packages present in $SYSROOT"
else
  log "downloading ${#ARM_PACKAGES[@]} arm64 packages into $DEBS"
  if ! apt-cache show "libc6:arm64" >/dev/null 2>&1; then "${APT[@]}" update -qq; fi
  (cd "$DEBS" && "${APT[@]}" -o APT::Sandbox::User=root download -qq "${ARM_PACKAGES[@]/%/:arm64}")
  for deb in "$DEBS"/*.deb; do dpkg -x "$deb" "$SYSROOT"; done
  touch "$SYSROOT/.slimcc-debs-done"
  CHANGED=1
fi

if [ -f "$SITE/.slimcc-wheels-done" ]; then
  log "aarch64 wheels present in $SITE"
else
  log "downloading aarch64 wheels into $WHEELS"
  # The host may pin versions for x86 (PIP_CONSTRAINT / pip.conf); aarch64 wheels follow our specs.
  PIP_CONSTRAINT= PIP_CONFIG_FILE=/dev/null "$PYTHON" -m pip download -q -d "$WHEELS" \
    --platform manylinux2014_aarch64 --platform manylinux_2_28_aarch64 \
    --platform manylinux_2_17_aarch64 --only-binary=:all: --python-version 3.11 \
    --implementation cp "${WHEEL_SPECS[@]}"
  rm -rf "$SITE.tmp" && mkdir -p "$SITE.tmp"
  for whl in "$WHEELS"/*.whl; do
    "$PYTHON" -m zipfile -e "$whl" "$SITE.tmp"
  done
  rm -rf "$SITE" && mv "$SITE.tmp" "$SITE"
  touch "$SITE/.slimcc-wheels-done"
  CHANGED=1
fi

if [ -f "$SYSROOT/.slimcc-pyc-done" ] && [ "$SYSROOT/.slimcc-pyc-done" -nt "$SITE/.slimcc-wheels-done" ]; then
  log "bytecode present"
elif ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
  log "host $PYTHON is not 3.11: skipping byte-compilation (emulated starts will be slower)"
else
  # Byte-compile on the host (.pyc of one Python minor version is the same on every CPU): under
  # emulation, compiling the stdlib and tvm on each start costs ~6x the import time.
  log "byte-compiling the sysroot stdlib and site-packages on the host"
  "$PYTHON" -m compileall -q -j 0 -x 'lib2to3|/test/|/tests/|idlelib|tkinter' \
    "$SYSROOT/usr/lib/python3.11" "$SITE" >/dev/null || true
  touch "$SYSROOT/.slimcc-pyc-done"
  CHANGED=1
fi

if [ "$CHANGED" = 0 ] && [ "${SLIMCC_ARM_CHECK:-0}" != 1 ]; then
  log "already set up: $SYSROOT (SLIMCC_ARM_CHECK=1 re-runs the emulated import check)"
  exit 0
fi
log "checking: import tvm under qemu-aarch64"
TVM_USE_RUNTIME_LIB=1 PYTHONPATH="$SITE" PYTHONNOUSERSITE=1 qemu-aarch64 -L "$SYSROOT" "$SYSROOT/usr/bin/python3.11" -c \
  "import tvm, numpy, tvm.rpc.server; print('[setup_arm] aarch64 python', __import__('platform').machine(), 'tvm', tvm.__version__, 'numpy', numpy.__version__)"
log "done: sysroot $SYSROOT"
