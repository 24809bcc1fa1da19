# Sourced by scripts/python.sh: a CPython from Debian unstable's binary packages.
#
# Unstable's python3.X needs a newer C library than Debian 12 has, so the packages and
# everything they depend on, the C library included, are unpacked into the prefix (never
# installed on the system), and the interpreter is pointed at that C library's loader and
# library directory. Unstable moves on quickly: when the version is gone, this says so.

install_unstable() {
  local version="$1" prefix="$2"
  local state
  state="$(mktemp -d "${TMPDIR:-/tmp}/esm-tasks-unstable.XXXXXX")"
  trap "rm -rf '$state'" EXIT  # expanded now: the variable is gone when the script exits
  mkdir -p "$state/lists/partial" "$state/archives/partial"
  : >"$state/status"
  cat >"$state/sid.sources" <<'SRC'
Types: deb
URIs: http://deb.debian.org/debian
Suites: sid
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
  # A private apt state: the system's package lists and status stay as they are, and the
  # empty status makes apt fetch every dependency, down to the C library.
  local apt=(-o Dir::Etc::sourcelist="$state/sid.sources" -o Dir::Etc::sourceparts=-
    -o Dir::State::Lists="$state/lists" -o Dir::State::status="$state/status"
    -o Dir::Cache="$state" -o Dir::Cache::archives="$state/archives"
    -o APT::Architecture="$(dpkg --print-architecture)" -o Debug::NoLocking=1
    -o APT::Sandbox::User="$(id -un)")
  apt-get "${apt[@]}" update -qq >&2 || fail "apt-get update of Debian unstable failed"
  apt-get "${apt[@]}" install --download-only -y -qq --no-install-recommends \
    "python$version" "python$version-venv" >&2 \
    || fail "Debian unstable has no python$version to download (it may have left the archive)"

  command -v patchelf >/dev/null || as_root apt-get install -y -qq patchelf >&2 \
    || fail "patchelf is needed to point the interpreter at its own C library"

  rm -rf "$prefix"
  mkdir -p "$prefix/root" "$prefix/bin"
  local deb
  for deb in "$state"/archives/*.deb; do dpkg-deb -x "$deb" "$prefix/root"; done
  local root="$prefix/root" multiarch
  multiarch="$(dpkg-architecture -qDEB_HOST_MULTIARCH 2>/dev/null || echo x86_64-linux-gnu)"
  local loader
  loader="$(ls "$root/usr/lib/$multiarch"/ld-linux*.so.* | head -n1)"
  # DT_RPATH rather than RUNPATH: it also serves the extension modules the interpreter loads.
  patchelf --set-interpreter "$loader" --force-rpath \
    --set-rpath "$root/usr/lib/$multiarch:$root/lib/$multiarch" "$root/usr/bin/python$version"
  # python.sh prints the real binary's path, not this link's: a venv made from the link
  # would look for the standard library beside the link.
  ln -s "$root/usr/bin/python$version" "$prefix/bin/python$version"
}
