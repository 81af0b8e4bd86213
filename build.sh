#!/usr/bin/env bash
# Build the one-file kiwi executable.
#   ./build.sh                 interactive menu on a terminal (host build otherwise)
#   ./build.sh host            this machine: dist/kiwi-linux-<arch> and dist/kiwi
#   ./build.sh linux-arm64     another architecture, inside a container (docker buildx + QEMU)
#                              targets: host, linux-amd64, linux-arm64, linux-armv7 (or amd64,
#                              arm64, armv7), all
#   ./build.sh venv            only .venv and the cffi module (what lint and unit tests need)
#   ./build.sh --dry-run T     print the build command lines instead of running them
# docs/DISTRIBUTION.md explains the container builds and the glibc each binary needs.
set -euo pipefail
cd "$(dirname "$0")"

TARGETS=(linux-amd64 linux-arm64 linux-armv7)
DRY_RUN=0
PY=${KIWI_BUILD_PYTHON:-/usr/bin/python3}

die() { echo "build.sh: $*" >&2; exit 1; }

host_target() {
  case "$(uname -m)" in
    x86_64) echo linux-amd64 ;;
    aarch64) echo linux-arm64 ;;
    armv7l) echo linux-armv7 ;;
    *) die "unsupported host architecture $(uname -m)" ;;
  esac
}

# The menu goes to stderr: stdout carries only the choice back to the caller.
menu() {
  local options=("${TARGETS[@]}" all host) choice
  echo "Build kiwi for:" >&2
  PS3="number: "
  select choice in "${options[@]}"; do
    [ -n "${choice:-}" ] && { echo "$choice"; return; }
    echo "choose 1-${#options[@]}" >&2
  done
  die "nothing chosen"
}

ensure_venv() {
  if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv || die "cannot create a venv: install python3-venv (apt-get install python3-venv)"
  fi
  local stamp=.venv/.kiwi-deps reqs
  if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    # pyproject.toml lists the dependencies; Kiwi itself is never pip-installed.
    reqs=$("$PY" scripts/python-deps build test lint) || die "cannot read the dependencies from pyproject.toml"
    # shellcheck disable=SC2086 # one requirement a word
    .venv/bin/pip install -q --disable-pip-version-check $reqs || die "pip install failed"
    touch "$stamp"
  fi
}

# A private work and output folder per run: concurrent builds never mix files.
RUN_DIR=build/run-$$
pyinstaller_command() {
  echo .venv/bin/pyinstaller --noconfirm --clean --log-level WARN \
    --distpath "$RUN_DIR/dist" --workpath "$RUN_DIR/work" kiwi.spec
}

# The one file: Kiwi's static launcher + the one-folder bundle (zstd) that PyInstaller
# collects around build/kiwi-embed.
pack_command() {
  local arch=$1
  echo .venv/bin/python cffi_build/pack.py build/kiwi-launcher "$RUN_DIR/dist/kiwi-linux-$arch" "dist/kiwi-linux-$arch"
}

build_venv() {
  if [ "$DRY_RUN" = 1 ]; then echo .venv/bin/python cffi_build/build_sys.py sys; return; fi
  ensure_venv
  .venv/bin/python cffi_build/build_sys.py sys >/dev/null || die "building the C parts failed (need gcc, libc6-dev, python3-dev)"
}

build_host() {
  local target arch
  target=$(host_target)
  arch=${target#linux-}
  if [ "$DRY_RUN" = 1 ]; then
    echo .venv/bin/python cffi_build/build_sys.py sys init exec
    echo .venv/bin/python cffi_build/build_sys.py launcher embed
    echo "KIWI_ARCH=$arch $(pyinstaller_command)"
    pack_command "$arch"
    echo .venv/bin/python scripts/make-manpages dist
    return
  fi
  ensure_venv
  .venv/bin/python cffi_build/build_sys.py sys init exec >/dev/null || die "building the C parts failed (need gcc, libc6-dev, python3-dev)"
  .venv/bin/python cffi_build/build_sys.py launcher >/dev/null || die "building the launcher failed (need the static libzstd: apt-get install libzstd-dev)"
  .venv/bin/python cffi_build/build_sys.py embed >/dev/null || die "building the bundle's executable failed (need python3-dev)"
  trap 'rm -rf "$RUN_DIR"' EXIT
  KIWI_ARCH=$arch $(pyinstaller_command) || die "PyInstaller failed"
  mkdir -p dist
  # pack.py and the copy replace the binaries atomically: tests and benchmarks may be running them.
  $(pack_command "$arch") >/dev/null || die "packing the one-file binary failed"
  cp -f "dist/kiwi-linux-$arch" dist/.kiwi.tmp && mv -f dist/.kiwi.tmp dist/kiwi
  build_manpages
  echo "built dist/kiwi-linux-$arch and dist/kiwi ($(du -h dist/kiwi | cut -f1))"
}

build_manpages() {
  .venv/bin/python scripts/make-manpages dist >/dev/null || die "man pages failed"
}

platform_of() {
  case "$1" in
    linux-amd64) echo linux/amd64 ;;
    linux-arm64) echo linux/arm64 ;;
    linux-armv7) echo linux/arm/v7 ;;
  esac
}

# binfmt_misc entry through which the kernel runs this target's binaries under QEMU.
qemu_binfmt_of() {
  case "$1" in
    linux-amd64) echo qemu-x86_64 ;;
    linux-arm64) echo qemu-aarch64 ;;
    linux-armv7) echo qemu-arm ;;
  esac
}

buildx_command() {
  local target=$1
  echo docker buildx build --platform "$(platform_of "$target")" --file scripts/Dockerfile.build \
    --build-arg "TARGET=$target" --output "type=local,dest=dist" .
}

check_container_tools() {
  local target=$1
  command -v docker >/dev/null \
    || die "building $target needs docker with buildx and QEMU binfmt (apt-get install docker.io docker-buildx qemu-user-static binfmt-support); or run ./build.sh host on a $target machine"
  docker buildx version >/dev/null 2>&1 \
    || die "docker buildx is missing (apt-get install docker-buildx, or the docker-buildx-plugin package from Docker's repository)"
  if [ "$target" != "$(host_target)" ] && [ ! -e "/proc/sys/fs/binfmt_misc/$(qemu_binfmt_of "$target")" ]; then
    die "no QEMU binfmt handler for $target (apt-get install qemu-user-static binfmt-support)"
  fi
}

build_in_container() {
  local target=$1
  if [ "$DRY_RUN" = 1 ]; then buildx_command "$target"; return; fi
  check_container_tools "$target"
  $(buildx_command "$target") || die "docker buildx failed for $target"
  echo "built dist/kiwi-$target"
}

normalize_target() {
  case "$1" in
    amd64|arm64|armv7) echo "linux-$1" ;;
    *) echo "$1" ;;
  esac
}

build_target() {
  local target
  target=$(normalize_target "$1")
  case "$target" in
    host) build_host ;;
    venv) build_venv ;;
    all) for t in "${TARGETS[@]}"; do build_target "$t"; done ;;
    linux-amd64|linux-arm64|linux-armv7)
      # The host's own architecture needs no container (and no docker).
      if [ "$target" = "$(host_target)" ]; then build_host; else build_in_container "$target"; fi ;;
    *) die "unknown target '$1': choose host, linux-amd64, linux-arm64, linux-armv7, all or venv" ;;
  esac
}

main() {
  if [ "${1:-}" = "--dry-run" ]; then DRY_RUN=1; shift; fi
  case "${1:-}" in -h|--help) sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;; esac
  [ $# -le 1 ] || die "one target at a time (or 'all'); see ./build.sh --help"
  local target=${1:-}
  if [ -z "$target" ]; then
    if [ -t 0 ] && [ -t 1 ]; then target=$(menu); else target=host; fi
  fi
  build_target "$target"
}

main "$@"
