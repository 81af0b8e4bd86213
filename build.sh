#!/usr/bin/env bash
# Build the one-file kiwi executable.
#   ./build.sh                 interactive menu on a terminal (host build otherwise)
#   ./build.sh host            this machine (its glibc): dist/kiwi only; dist/kiwi-linux-<arch>
#                              is a release build's and never written by a host build
#   ./build.sh linux-arm64     a release binary (glibc >= 2.31): in a Debian 11 root (QEMU for
#                              foreign ones), or docker buildx when present; also linux-amd64,
#                              linux-armv7 (or amd64, arm64, armv7), all, release (+ dist/release)
#   ./build.sh venv            only .venv and the cffi module (what lint and unit tests need)
#   ./build.sh --dry-run T     print the build command lines instead of running them
# docs/DISTRIBUTION.md explains the release builds and the glibc each binary needs.
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
# collects around build/kiwi-embed. pack.py replaces dist/kiwi atomically (tests and
# benchmarks may be running it).
pack_command() {
  local arch=$1
  echo .venv/bin/python cffi_build/pack.py build/kiwi-launcher "$RUN_DIR/dist/kiwi-linux-$arch" dist/kiwi
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
    echo .venv/bin/python cffi_build/build_sys.py sys init exec lxfs
    echo .venv/bin/python cffi_build/build_sys.py launcher embed
    echo "KIWI_ARCH=$arch $(pyinstaller_command)"
    pack_command "$arch"
    echo .venv/bin/python scripts/make-manpages dist
    return
  fi
  ensure_venv
  .venv/bin/python cffi_build/build_sys.py sys init exec lxfs >/dev/null || die "building the C parts failed (need gcc, libc6-dev, python3-dev)"
  .venv/bin/python cffi_build/build_sys.py launcher >/dev/null || die "building the launcher failed (need the static libzstd: apt-get install libzstd-dev)"
  .venv/bin/python cffi_build/build_sys.py embed >/dev/null || die "building the bundle's executable failed (need python3-dev)"
  trap 'rm -rf "$RUN_DIR"' EXIT
  write_build_info "$arch" "$RUN_DIR"
  KIWI_ARCH=$arch KIWI_BUILD_INFO=$RUN_DIR/build-info $(pyinstaller_command) || die "PyInstaller failed"
  mkdir -p dist
  $(pack_command "$arch") >/dev/null || die "packing the one-file binary failed"
  build_manpages
  echo "built dist/kiwi ($(du -h dist/kiwi | cut -f1))"
}

# What `kiwi --version` says after the version: commit, build time (UTC) and
# architecture; kiwi.spec bundles the file as kiwi/build-info.
write_build_info() {
  local arch=$1 out=$2 commit built
  commit=$(git rev-parse --short=12 HEAD 2>/dev/null) || commit=unknown
  git diff --quiet HEAD -- 2>/dev/null || commit+="-dirty"
  built=$(date -u -d "@${SOURCE_DATE_EPOCH:-$(date +%s)}" +%Y-%m-%dT%H:%MZ)
  mkdir -p "$out"
  echo "commit $commit, built $built, linux-$arch" >"$out/build-info"
}

build_manpages() {
  .venv/bin/python scripts/make-manpages dist >/dev/null || die "man pages failed"
  .venv/bin/python scripts/make-completions dist >/dev/null || die "shell completion failed"
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

# --- release builds: inside a Debian 11 (bullseye) root, glibc 2.31 ------------------
# Every release binary, the host's architecture too, is built in a debootstrapped
# bullseye root of its own architecture (foreign ones through debootstrap --foreign and
# qemu-user-static's binfmt handlers), cached in $BUILD_CACHE. bullseye's Python is 3.9,
# so the root gets a shared-library CPython 3.11 built from Debian's own python3.11
# source package (bookworm), once per root. docs/DISTRIBUTION.md has the measurements.
BUILD_CACHE=${KIWI_BUILD_CACHE:-/var/cache/kiwi-build}
MIRROR=${KIWI_BUILD_MIRROR:-http://deb.debian.org/debian}
RELEASE_SUITE=bullseye
PYTHON_SOURCE_SUITE=bookworm
ROOT_PYTHON=/opt/kiwi-python
ROOT_VENV=/opt/kiwi-venv
GLIBC_FLOOR=2.31
# Emulated builds take both cores for many minutes: they yield to everyone else.
NICE=(nice -n "${KIWI_BUILD_NICE:-19}")
# gcc, libc6-dev, libzstd-dev: the C parts and the static launcher; make and the -dev
# libraries: CPython and the modules kiwi uses (ssl, sqlite3, lzma, bz2, readline,
# ctypes, zlib); binutils: PyInstaller's scan, strip and the glibc check.
ROOT_PACKAGES=gcc,libc6-dev,make,binutils,libzstd-dev,libffi-dev,zlib1g-dev,libssl-dev,libsqlite3-dev,liblzma-dev,libbz2-dev,libreadline-dev,libncursesw5-dev,uuid-dev,ca-certificates,xz-utils

debian_arch_of() {
  case "$1" in
    linux-amd64) echo amd64 ;;
    linux-arm64) echo arm64 ;;
    linux-armv7) echo armhf ;;
  esac
}

root_of() {
  echo "$BUILD_CACHE/roots/$RELEASE_SUITE-$(debian_arch_of "$1")"
}

# GNU triplet: Debian's cross compilers (gcc-<triplet>) and multiarch folders.
triplet_of() {
  case "$1" in
    linux-amd64) echo x86_64-linux-gnu ;;
    linux-arm64) echo aarch64-linux-gnu ;;
    linux-armv7) echo arm-linux-gnueabihf ;;
  esac
}

# Runs a command in ROOT inside a private mount namespace with its own /proc: nothing
# is mounted on the host, and whatever debootstrap or a build mounts goes with it.
# shellcheck disable=SC2016 # the sh -c scripts here expand their own arguments
in_root() {
  local root=$1
  shift
  "${NICE[@]}" unshare -m --propagation private sh -c \
    'mount -t proc proc "$0/proc" && exec chroot "$0" /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 "$@"' \
    "$root" "$@"
}

# The kernel runs the foreign root's binaries through qemu-user-static (its binfmt
# entries have the F flag: the interpreter is opened at registration, so the root
# needs no copy of it).
ensure_binfmt() {
  local target=$1 entry
  entry=$(qemu_binfmt_of "$target")
  [ -e /proc/sys/fs/binfmt_misc/status ] || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc \
    || die "cannot mount binfmt_misc (needed to run $target programs)"
  [ -e "/proc/sys/fs/binfmt_misc/$entry" ] || update-binfmts --enable "$entry" >/dev/null 2>&1 \
    || die "no QEMU binfmt handler for $target: apt-get install qemu-user-static binfmt-support (or scripts/install-deps --cross)"
}

# One build per root at a time; a second waits (the fd goes with the process).
lock_root() {
  local root=$1
  mkdir -p "$(dirname "$root")"
  exec {ROOT_LOCK}>"$root.lock"
  flock -n "$ROOT_LOCK" || { echo "waiting for another build in $root" >&2; flock "$ROOT_LOCK"; }
}

make_root() {
  local target=$1 root darch foreign=()
  root=$(root_of "$target")
  darch=$(debian_arch_of "$target")
  [ -f "$root/.kiwi-root" ] && return
  command -v debootstrap >/dev/null || die "building $target needs debootstrap (scripts/install-deps --cross)"
  [ "$target" = "$(host_target)" ] || foreign=(--foreign)
  echo "debootstrap $RELEASE_SUITE $darch into $root (minutes; cached)" >&2
  rm -rf --one-file-system "$root.tmp"
  "${NICE[@]}" unshare -m --propagation private debootstrap --arch="$darch" --variant=minbase \
    --include="$ROOT_PACKAGES" "${foreign[@]}" "$RELEASE_SUITE" "$root.tmp" "$MIRROR" >"$root.log" 2>&1 \
    || die "debootstrap failed; see $root.log"
  if [ ${#foreign[@]} -gt 0 ]; then
    in_root "$root.tmp" /debootstrap/debootstrap --second-stage >>"$root.log" 2>&1 \
      || die "debootstrap --second-stage failed; see $root.log"
  fi
  touch "$root.tmp/.kiwi-root"
  mv "$root.tmp" "$root"
}

# CPython 3.11 as a shared library (PyInstaller bundles libpython), from the upstream
# tarball of Debian's python3.11 source package, against the root's own glibc: built in
# the root for the host's architecture, cross-compiled on the host for a foreign one.
make_root_python() {
  local target=$1 root
  root=$(root_of "$target")
  [ -x "$root$ROOT_PYTHON/bin/python3.11" ] && return
  echo "building CPython 3.11 for $root (once per root)" >&2
  fetch_python_source "$root"
  if [ "$target" = "$(host_target)" ]; then
    build_python_in_root "$root"
  else
    cross_build_python "$target" "$root"
  fi
}

# Debian's python3.11 source package (bookworm) into the root's /usr/src/python.
fetch_python_source() {
  local root=$1
  compgen -G "$root/usr/src/python/python3.11_*.orig.tar.*" >/dev/null && return
  install -m 0644 /usr/share/keyrings/debian-archive-keyring.gpg "$root/usr/share/keyrings/kiwi-debian.gpg"
  echo "deb-src [signed-by=/usr/share/keyrings/kiwi-debian.gpg] $MIRROR $PYTHON_SOURCE_SUITE main" \
    >"$root/etc/apt/sources.list.d/kiwi-python-source.list"
  in_root "$root" sh -euc '
    apt-get update -qq
    rm -rf /usr/src/python && mkdir -p /usr/src/python && cd /usr/src/python
    apt-get source --download-only -qq -o APT::Sandbox::User=root python3.11' >>"$root.log" 2>&1 \
    || die "downloading the python3.11 source package into $root failed; see $root.log"
}

# No debug info, -O2 and no test modules: a third less compiling.
PYTHON_CONFIGURE=(--prefix="$ROOT_PYTHON" --enable-shared --disable-test-modules
  OPT="-DNDEBUG -fwrapv -O2" LDFLAGS="-Wl,-rpath,$ROOT_PYTHON/lib")

build_python_in_root() {
  local root=$1
  in_root "$root" sh -euc '
    cd /usr/src/python
    tar -xf python3.11_*.orig.tar.*
    cd Python-3.11.*
    ./configure -q "$@"
    make -s -j"$(nproc)"
    # .pyc files of the top-level stdlib only: PyInstaller compiles what it bundles.
    make -s altinstall COMPILEALL_OPTS=-l
    cd / && rm -rf /usr/src/python' sh "${PYTHON_CONFIGURE[@]}" >>"$root.log" 2>&1 \
    || die "building CPython in $root failed; see $root.log"
}

# Debian's -dev packages link libfoo.so to /lib/<triplet>/libfoo.so.N: outside the root
# such a link points at the host's file or nowhere, and the linker silently takes the
# static libfoo.a instead. Relative links resolve inside the root wherever it is.
relative_library_links() {
  local root=$1 dir=$1/usr/lib/$2 link target
  find "$dir" -maxdepth 1 -type l -lname '/*' | while read -r link; do
    target=$(readlink "$link")
    ln -sfnr "$root$target" "$link"
    [ -e "$link" ] || die "$link: $target is not in $root"
  done
}

# Debian's cross gcc, with the bullseye root as --sysroot (its headers, glibc 2.31 and
# -dev libraries), and the host's python3.11 as the build Python: minutes, where
# configure and make under qemu-user took hours. Installed into the root (DESTDIR),
# where pip and PyInstaller then run it under emulation.
cross_build_python() {
  local target=$1 root=$2 triplet work
  triplet=$(triplet_of "$target")
  { command -v "$triplet-gcc" >/dev/null && [ -x /usr/bin/python3.11 ]; } \
    || die "cross-compiling CPython for $target needs gcc-$triplet and python3.11 (scripts/install-deps --cross)"
  # libc6-dev-<arch>-cross (bookworm's glibc 2.36) comes before any --sysroot in the
  # cross gcc's search path: with it installed, the result would need glibc 2.36.
  case $("$triplet-gcc" --sysroot="$root" -print-file-name=libc.so) in
    "$root"/*) ;;
    *) die "$triplet-gcc takes another glibc than $root's: apt-get remove libc6-dev-$(debian_arch_of "$target")-cross" ;;
  esac
  relative_library_links "$root" "$triplet"
  work=$BUILD_CACHE/work/python-$triplet
  rm -rf "$work" && mkdir -p "$work"
  tar -xf "$root"/usr/src/python/python3.11_*.orig.tar.* -C "$work"
  # configure cannot run test programs for another architecture: these are its answers
  # for Linux (a /dev/ptmx, no /dev/ptc, a working getaddrinfo with IPv6).
  # The root's /usr/include is a system folder to pkg-config: otherwise libffi.pc's
  # -I<root>/usr/include becomes LIBFFI_INCLUDEDIR, which lacks Debian's multiarch
  # ffi.h, and setup.py then builds _ctypes without libffi.
  (cd "$work"/Python-3.11.* \
    && export PKG_CONFIG_LIBDIR="$root/usr/lib/$triplet/pkgconfig:$root/usr/share/pkgconfig" PKG_CONFIG_SYSROOT_DIR="$root" \
      PKG_CONFIG_SYSTEM_INCLUDE_PATH="$root/usr/include" \
    && "${NICE[@]}" ./configure -q --host="$triplet" --build="$(gcc -dumpmachine)" --with-build-python=/usr/bin/python3.11 \
      --enable-ipv6 ac_cv_file__dev_ptmx=yes ac_cv_file__dev_ptc=no --with-ensurepip=no \
      CC="$triplet-gcc --sysroot=$root" AR="$triplet-ar" READELF="$triplet-readelf" \
      "${PYTHON_CONFIGURE[@]}" LDFLAGS="-Wl,-rpath,$ROOT_PYTHON/lib -L$root/usr/lib/$triplet" \
    && "${NICE[@]}" make -s -j"$(nproc)" \
    && "${NICE[@]}" make -s altinstall DESTDIR="$root" COMPILEALL_OPTS=-l) >>"$root.log" 2>&1 \
    || die "cross-compiling CPython for $target failed; see $root.log"
  rm -rf "$work" "$root/usr/src/python"
  # setup.py looks for libffi.so only in LDFLAGS' -L folders when cross-compiling (hence
  # the -L above), and for ffi.h as said above; without them _ctypes builds unlinked
  # and fails at import.
  readelf -d "$root$ROOT_PYTHON"/lib/python3.11/lib-dynload/_ctypes.*.so | grep -q 'libffi\.so' \
    || die "the cross-built _ctypes of $root does not link libffi; see $root.log"
  python_builds_in_root "$root" "$triplet"
}

# The cross-built Python records the host's cross compiler as its CC; in the root,
# where pip and build_sys.py compile C extensions with it, that is the root's gcc.
python_builds_in_root() {
  local root=$1 triplet=$2
  sed -i -e "s|--sysroot=$root||g" -e "s|$root||g" -e "s|$triplet-gcc|gcc|g" -e "s|$triplet-ar|ar|g" -e "s|$triplet-readelf|readelf|g" \
    "$root$ROOT_PYTHON"/lib/python3.11/_sysconfigdata_*.py "$root$ROOT_PYTHON"/lib/python3.11/config-3.11-*/Makefile
  ! grep -q "$root" "$root$ROOT_PYTHON"/lib/python3.11/_sysconfigdata_*.py \
    || die "$root$ROOT_PYTHON still names host paths in its build configuration"
}

# The host venv's exact versions of the build requirements (pyproject.toml names them),
# so every architecture bundles what the host build does.
pinned_requirements() {
  local names
  names=$("$PY" scripts/python-deps build | sed 's/[<>=!~ ;].*//') || die "cannot read the dependencies from pyproject.toml"
  # shellcheck disable=SC2086 # one name a word
  .venv/bin/python -c 'import sys, importlib.metadata as m; print(" ".join(f"{n}=={m.version(n)}" for n in sys.argv[1:]))' $names \
    || die "the host .venv lacks a build requirement: run ./build.sh venv"
}

make_root_venv() {
  local root=$1 reqs stamp
  reqs=$(pinned_requirements)
  stamp=$root$ROOT_VENV/.kiwi-deps
  [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$reqs" ] && return
  echo "installing $reqs in $root" >&2
  # pip in the root trusts what the host trusts (a proxy with its own CA, say).
  install -m 0644 "${PIP_CERT:-${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}}" "$root/etc/ssl/certs/kiwi-host-ca.crt" \
    || die "cannot copy the host's CA certificates into $root"
  # shellcheck disable=SC2086 # one requirement a word
  in_root "$root" sh -euc 'venv=$1; shift; "$0/bin/python3.11" -m venv --clear "$venv" && PIP_CERT=/etc/ssl/certs/kiwi-host-ca.crt "$venv/bin/pip" install -q --disable-pip-version-check "$@"' \
    "$ROOT_PYTHON" "$ROOT_VENV" $reqs >>"$root.log" 2>&1 || die "pip install in $root failed; see $root.log"
  echo "$reqs" >"$stamp"
}

# The files a build needs, without the host's compiled parts.
copy_sources() {
  local dest=$1
  mkdir -p "$dest"
  tar -c --exclude='__pycache__' --exclude='kiwi/_sys*' --exclude=kiwi/kiwi-init --exclude=kiwi/kiwi-exec --exclude=kiwi/kiwi-lxfs \
    pyproject.toml kiwi.spec cffi_build kiwi scripts/python-deps \
    | tar -x -C "$dest"
}

# The newest GLIBC_ symbol version any ELF object in DIR needs (objdump -T reads only
# the host's architecture; readelf reads them all).
glibc_floor() {
  local f
  find "$1" -type f | while read -r f; do
    [ "$(head -c 4 "$f" | od -An -c | tr -d ' ')" = '177ELF' ] || continue
    objdump -T "$f" 2>/dev/null || readelf --dyn-syms -W "$f"
  done | grep -o 'GLIBC_[0-9][0-9.]*' | sed 's/GLIBC_//' | sort -Vu | tail -1
}

newer_than_floor() {
  [ "$(printf '%s\n%s\n' "$1" "$GLIBC_FLOOR" | sort -V | tail -1)" != "$GLIBC_FLOOR" ]
}

# Builds dist/kiwi-linux-<arch> in the target's bullseye root; refuses a bundle that
# needs a glibc above 2.31.
build_in_root() {
  local target=$1 arch=${1#linux-} root src floor
  root=$(root_of "$target")
  if [ "$DRY_RUN" = 1 ]; then
    echo "debootstrap --arch=$(debian_arch_of "$target") --variant=minbase --include=$ROOT_PACKAGES$([ "$target" = "$(host_target)" ] || echo ' --foreign') $RELEASE_SUITE $root $MIRROR"
    echo "chroot $root: apt-get source python3.11 ($PYTHON_SOURCE_SUITE)"
    if [ "$target" = "$(host_target)" ]; then
      echo "chroot $root: configure --enable-shared --prefix=$ROOT_PYTHON; make altinstall"
    else
      echo "host: configure --host=$(triplet_of "$target") CC='$(triplet_of "$target")-gcc --sysroot=$root' --with-build-python=/usr/bin/python3.11 --enable-shared --prefix=$ROOT_PYTHON; make altinstall DESTDIR=$root"
    fi
    echo "chroot $root: $ROOT_PYTHON/bin/python3.11 -m venv $ROOT_VENV; pip install <the host .venv's versions of: $("$PY" scripts/python-deps build | paste -sd' ')>"
    echo "chroot $root: build_sys.py sys init exec lxfs launcher embed; pyinstaller kiwi.spec; pack.py"
    echo "copy to dist/kiwi-linux-$arch"
    return
  fi
  [ "$(id -u)" = 0 ] || die "building $target in a Debian root needs root (debootstrap, chroot)"
  ensure_venv
  [ "$target" = "$(host_target)" ] || ensure_binfmt "$target"
  lock_root "$root"
  make_root "$target"
  make_root_python "$target"
  make_root_venv "$root"
  src=/src/kiwi-$$
  rm -rf "$root$src"
  copy_sources "$root$src"
  write_build_info "$arch" "$root$src"
  trap 'rm -rf "${root:?}$src"' EXIT
  echo "building $target in $root" >&2
  in_root "$root" sh -euc 'cd "$0" && export PATH="$1/bin:$PATH"
    python cffi_build/build_sys.py sys init exec lxfs launcher embed >/dev/null
    KIWI_ARCH="$2" KIWI_BUILD_INFO=build-info pyinstaller --noconfirm --clean --log-level WARN --distpath out --workpath work kiwi.spec
    python cffi_build/pack.py build/kiwi-launcher "out/kiwi-linux-$2" "kiwi-linux-$2" >/dev/null' "$src" "$ROOT_VENV" "$arch" \
    || die "the build in $root failed"
  floor=$(glibc_floor "$root$src/out")
  ! newer_than_floor "$floor" || die "the $target bundle needs glibc $floor, above the $GLIBC_FLOOR floor"
  mkdir -p dist
  { cp -f "$root$src/kiwi-linux-$arch" "dist/.kiwi-linux-$arch.tmp" && mv -f "dist/.kiwi-linux-$arch.tmp" "dist/kiwi-linux-$arch"; } \
    || die "cannot write dist/kiwi-linux-$arch"
  rm -rf "${root:?}$src"
  trap - EXIT
  echo "built dist/kiwi-linux-$arch (needs glibc >= $floor)"
}

# dist/release/kiwi-<version>-linux-<arch>.tar.gz (binary, man pages, completions)
# for every target built, and SHA256SUMS of binaries and tarballs. Man pages and
# completions come from the parser and are the same on every architecture.
pack_release() {
  local version target arch name stage
  version=$("$PY" -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')
  rm -rf dist/release && mkdir -p dist/release
  .venv/bin/python scripts/make-manpages dist/release/man >/dev/null || die "man pages failed"
  .venv/bin/python scripts/make-completions dist/release/completions >/dev/null || die "shell completion failed"
  for target in $(release_targets); do
    arch=${target#linux-}
    name=kiwi-$version-linux-$arch
    stage=dist/release/$name
    rm -rf "$stage" && mkdir -p "$stage"
    cp "dist/kiwi-linux-$arch" "$stage/kiwi"
    cp "dist/kiwi-linux-$arch" dist/release/
    cp -r dist/release/man dist/release/completions "$stage/"
    # Root extracts the archived modes as they are: never group- or world-writable,
    # whatever the builder's umask was.
    tar -C dist/release --owner=0 --group=0 --mode=go-w --sort=name -czf "dist/release/$name.tar.gz" "$name"
    rm -rf "$stage"
  done
  rm -rf dist/release/man dist/release/completions
  (cd dist/release && sha256sum kiwi-linux-* kiwi-*.tar.gz >SHA256SUMS)
  echo "dist/release:" && (cd dist/release && cat SHA256SUMS)
}

# KIWI_RELEASE_TARGETS="linux-amd64" limits a release to some architectures.
release_targets() {
  echo "${KIWI_RELEASE_TARGETS:-${TARGETS[*]}}"
}

build_release() {
  local target
  for target in $(release_targets); do build_arch "$target"; done
  [ "$DRY_RUN" = 1 ] && { echo "pack dist/release/kiwi-<version>-linux-<arch>.tar.gz, dist/release/SHA256SUMS"; return; }
  pack_release
}

# docker buildx where it exists (fast path), else the cached Debian root.
build_arch() {
  local target=$1
  if command -v docker >/dev/null && docker buildx version >/dev/null 2>&1; then
    build_in_container "$target"
  else
    build_in_root "$target"
  fi
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
    release) build_release ;;
    linux-amd64|linux-arm64|linux-armv7) build_arch "$target" ;;
    *) die "unknown target '$1': choose host, linux-amd64, linux-arm64, linux-armv7, all, release or venv" ;;
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

# exit on the same line: a build.sh edited while this one runs is never read further.
main "$@"; exit
