#!/usr/bin/env bash
# Installs a CPython that Debian 12 does not ship, for the suite's runs on other versions,
# and prints the path of its interpreter on stdout (progress goes to stderr).
#
#   scripts/python.sh 3.13   built from Debian trixie's python3.13 source package
#   scripts/python.sh 3.14   Debian unstable's binary packages, run with their own C library
#
# Both install to a cache under the user's home ($ESM_TASKS_PYTHONS, default
# ~/.cache/esm-tasks/pythons/<version>) that later runs reuse; a second call only prints the path.
# Needs root for apt (a deb-src line for trixie, apt-get update) and a C toolchain for 3.13.
# Exits 1 with one line on stderr when the interpreter cannot be had.
set -euo pipefail

version="${1:?usage: scripts/python.sh 3.13|3.14}"
cache="${ESM_TASKS_PYTHONS:-$HOME/.cache/esm-tasks/pythons}"
prefix="$cache/$version"
python="$prefix/bin/python$version"

log() { echo "python.sh $version: $*" >&2; }
fail() { log "$*"; exit 1; }

# A finished install leaves a stamp; an interrupted one is started again from nothing.
if [[ -f "$prefix/.complete" ]] && "$python" -c 'import ssl, sqlite3, zlib' >/dev/null 2>&1; then
  readlink -f "$python"
  exit 0
fi

as_root() { if [[ $(id -u) -eq 0 ]]; then "$@"; else sudo "$@"; fi; }

build_313() {
  # deb-src only: the system keeps installing bookworm's binaries; this line only adds sources.
  local list=/etc/apt/sources.list.d/esm-tasks-trixie-src.sources
  if [[ ! -f $list ]]; then
    as_root tee "$list" >/dev/null <<'SRC'
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: trixie
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
  fi
  as_root apt-get update -qq -o APT::Sandbox::User=root -o Dir::Etc::sourcelist="$list" -o Dir::Etc::sourceparts=- \
    -o APT::Get::List-Cleanup=0 >&2 || fail "apt-get update of trixie's sources failed"

  local work
  work="$(mktemp -d "${TMPDIR:-/tmp}/esm-tasks-python-$version.XXXXXX")"
  trap "rm -rf '$work'" EXIT  # expanded now: the variable is gone when the script exits
  # Only the upstream tarball inside the source package is built: Debian's patches assume
  # an install under /usr (dist-packages, multiarch paths), not a private prefix.
  # As root, apt would warn that its unprivileged user cannot write to the directory.
  (cd "$work" && apt-get source -o APT::Sandbox::User=root --download-only -qq "python$version" >&2) \
    || fail "apt-get source python$version failed (is the trixie deb-src line reachable?)"
  local tarball
  tarball="$(ls "$work"/python"$version"_*.orig.tar.* | head -n1)"
  mkdir "$work/src"
  tar -xf "$tarball" -C "$work/src" --strip-components=1
  log "building $(basename "$tarball") into $prefix (several minutes)"
  rm -rf "$prefix"
  (
    cd "$work/src"
    nice ./configure --prefix="$prefix" --with-ensurepip=install >"$work/configure.log" 2>&1 \
      || { tail -n 20 "$work/configure.log" >&2; exit 1; }
    nice make -j"$(nproc)" >"$work/make.log" 2>&1 || { tail -n 30 "$work/make.log" >&2; exit 1; }
    make altinstall >"$work/install.log" 2>&1 || { tail -n 30 "$work/install.log" >&2; exit 1; }
  ) || fail "the build failed (the lines above are from its log)"
}

case "$version" in
  3.13) build_313 ;;
  3.14) source "$(dirname "$0")/python-unstable.sh"; install_unstable "$version" "$prefix" ;;
  *) fail "no recipe for Python $version (known: 3.13, 3.14)" ;;
esac

"$python" -c 'import ssl, sqlite3, zlib, ctypes, venv' || fail "the installed interpreter lacks a module the suite needs"
touch "$prefix/.complete"
log "installed $("$python" -VV | head -n1)"
readlink -f "$python"
