#!/usr/bin/env bash
# Build the one-file kiwi executable.
#   ./build.sh                 interactive menu on a terminal
#   ./build.sh host            this machine: dist/kiwi-linux-<arch> and dist/kiwi
#   ./build.sh linux-arm64     another architecture, inside a container (docker buildx + QEMU)
#   ./build.sh all             every architecture
#   ./build.sh --dry-run T     print the docker buildx command instead of running it
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

menu() {
  echo "Build kiwi for:"
  local options=("${TARGETS[@]}" all host)
  select choice in "${options[@]}"; do
    [ -n "${choice:-}" ] && { echo "$choice"; return; }
  done
  die "nothing chosen"
}

ensure_venv() {
  if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv || die "cannot create a venv: install python3-venv (apt-get install python3-venv)"
  fi
  local stamp=.venv/.kiwi-deps
  if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    .venv/bin/pip install -q --disable-pip-version-check \
      "cffi>=1.16" "pyroute2>=0.7" "zstandard>=0.22" "pyinstaller>=6.3" "argparse-manpage>=4.5" \
      "pytest>=8" "pexpect>=4.9" || die "pip install failed"
    touch "$stamp"
  fi
}

build_host() {
  local target arch
  target=$(host_target)
  arch=${target#linux-}
  ensure_venv
  .venv/bin/python cffi_build/build_sys.py sys init >/dev/null || die "building the C parts failed (need gcc, libc6-dev, python3-dev)"
  KIWI_ARCH=$arch .venv/bin/pyinstaller --noconfirm --clean --log-level WARN \
    --distpath dist --workpath build/pyinstaller kiwi.spec || die "PyInstaller failed"
  cp -f "dist/kiwi-linux-$arch" dist/kiwi.tmp && mv -f dist/kiwi.tmp dist/kiwi
  build_manpages
  echo "built dist/kiwi-linux-$arch and dist/kiwi ($(du -h dist/kiwi | cut -f1))"
}

build_manpages() {
  .venv/bin/python scripts/make-manpages dist >/dev/null || die "man pages failed"
}

buildx_command() {
  local target=$1 platform
  case "$target" in
    linux-amd64) platform=linux/amd64 ;;
    linux-arm64) platform=linux/arm64 ;;
    linux-armv7) platform=linux/arm/v7 ;;
  esac
  echo docker buildx build --platform "$platform" --file scripts/Dockerfile.build \
    --build-arg "TARGET=$target" --output "type=local,dest=dist" .
}

build_in_container() {
  local target=$1
  if [ "$DRY_RUN" = 1 ]; then buildx_command "$target"; return; fi
  command -v docker >/dev/null || die "building $target needs docker with buildx and QEMU binfmt (apt-get install docker.io docker-buildx qemu-user-static); or run ./build.sh host on a $target machine"
  docker buildx version >/dev/null 2>&1 || die "docker buildx is missing (apt-get install docker-buildx)"
  $(buildx_command "$target") || die "docker buildx failed for $target"
  echo "built dist/kiwi-$target"
}

build_target() {
  local target=$1
  case "$target" in
    host) build_host ;;
    all) for t in "${TARGETS[@]}"; do build_target "$t"; done ;;
    linux-amd64|linux-arm64|linux-armv7|amd64|arm64|armv7)
      [[ "$target" == linux-* ]] || target="linux-$target"
      if [ "$target" = "$(host_target)" ] && [ "$DRY_RUN" = 0 ]; then build_host; else build_in_container "$target"; fi ;;
    *) die "unknown target '$target': choose host, linux-amd64, linux-arm64, linux-armv7 or all" ;;
  esac
}

if [ "${1:-}" = "--dry-run" ]; then DRY_RUN=1; shift; fi
target=${1:-}
if [ -z "$target" ]; then
  if [ -t 0 ]; then target=$(menu); else target=host; fi
fi
build_target "$target"
