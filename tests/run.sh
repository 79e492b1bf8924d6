#!/usr/bin/env bash
# The whole test suite from a fresh Debian machine: installs what the tests need
# (Debian packages, a virtual environment with the package and its test tools),
# then runs lint, types and pytest. Safe to run again: every step is idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VENV=${KPR_TEST_VENV:-$ROOT/.venv}

need_apt=()
# gcc, make, binutils: the symbolization tests' kernel module and the benchmarks' C sender;
# elfutils: eu-addr2line, the symbolizer the receiver runs; qemu-system-arm: the live arm64 test;
# shellcheck and dash: the netconsole client script is checked with the one and run with the other
for pkg in rsyslog qemu-system-x86 qemu-system-arm busybox-static debootstrap iproute2 util-linux gcc make \
    binutils elfutils shellcheck dash systemd; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need_apt+=("$pkg")
done
if [ ${#need_apt[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${need_apt[@]}"
fi

# A real kernel for the live test: Debian's current amd64 kernel package, of which only
# the kernel and the three modules netconsole needs are kept (about 10 MB).
KERNEL_DIR=${KPR_KERNEL_DIR:-$HOME/.cache/kpr-omprog-kernel}
if [ ! -f "$KERNEL_DIR/vmlinuz" ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  pkg=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
  if [ -z "$pkg" ]; then $SUDO apt-get update -q; \
    pkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/ {print $2; exit}'); fi
  kt=$(mktemp -d); chmod 755 "$kt"
  (cd "$kt" && apt-get download -q "$pkg")
  dpkg-deb --fsys-tarfile "$kt"/*.deb | tar -x -C "$kt" --wildcards './boot/vmlinuz-*' \
    '*/e1000.ko*' '*/configfs.ko*' '*/netconsole.ko*'
  mkdir -p "$KERNEL_DIR"
  cp "$kt"/boot/vmlinuz-* "$KERNEL_DIR/vmlinuz"
  find "$kt/lib" "$kt/usr/lib" -name '*.ko*' -exec cp {} "$KERNEL_DIR/" \; 2>/dev/null || true
  basename "$kt"/boot/vmlinuz-* | sed 's/^vmlinuz-//' > "$KERNEL_DIR/RELEASE"
  rm -rf "$kt"
fi
export KPR_KERNEL_DIR="$KERNEL_DIR"

# A real arm64 kernel for tests/test_live_kernel.py: Debian's current arm64 kernel
# package and busybox-static:arm64 (dpkg learns the foreign architecture once), of which only
# the kernel, busybox and the modules of the guest's e1000 NIC and netconsole are kept (about 30 MB).
ARM64_DIR=${KPR_ARM64_DIR:-$HOME/.cache/kpr-omprog-kernel-arm64}
if [ ! -f "$ARM64_DIR/RELEASE" ] || ! ls "$ARM64_DIR"/e1000.ko* >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  if ! dpkg --print-foreign-architectures | grep -qx arm64; then
    $SUDO dpkg --add-architecture arm64; $SUDO apt-get update -q; fi
  pkg=$(apt-cache depends linux-image-arm64:arm64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
  if [ -z "$pkg" ]; then $SUDO apt-get update -q; \
    pkg=$(apt-cache depends linux-image-arm64:arm64 | awk '/Depends: linux-image-[0-9]/ {print $2; exit}'); fi
  pkg=${pkg%:arm64}
  at=$(mktemp -d); chmod 755 "$at"
  (cd "$at" && apt-get download -q "$pkg:arm64" busybox-static:arm64)
  for deb in "$at"/*.deb; do dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$at" --wildcards './boot/vmlinuz-*' \
    './bin/busybox' '*/e1000.ko*' '*/configfs.ko*' '*/netconsole.ko*' 2>/dev/null || true; done
  rm -rf "$ARM64_DIR.tmp"; mkdir -p "$ARM64_DIR.tmp"
  cp "$at"/boot/vmlinuz-* "$ARM64_DIR.tmp/vmlinuz"
  cp "$at"/bin/busybox "$ARM64_DIR.tmp/busybox"
  find "$at/lib" "$at/usr/lib" -name '*.ko*' -exec cp {} "$ARM64_DIR.tmp/" \; 2>/dev/null || true
  basename "$at"/boot/vmlinuz-* | sed 's/^vmlinuz-//' > "$ARM64_DIR.tmp/RELEASE"
  rm -rf "$ARM64_DIR"; mv "$ARM64_DIR.tmp" "$ARM64_DIR"
  rm -rf "$at"
fi
export KPR_ARM64_DIR="$ARM64_DIR"

# A newer kernel for the netconsole client script's live test: Debian 13's backports
# kernel, whose netconsole has the release, userdata and sysdata options (2023-2025) that
# Debian 12's 6.1 lacks. Fetched through a private apt configuration (the machine's own
# sources are left alone); the kernel and the same three modules kept (about 25 MB).
NEW_KERNEL_DIR=${KPR_NEW_KERNEL_DIR:-$HOME/.cache/kpr-omprog-kernel-new}
if [ ! -f "$NEW_KERNEL_DIR/vmlinuz" ]; then
  na=$(mktemp -d); chmod 755 "$na"; mkdir -p "$na/lists/partial" "$na/cache/archives/partial" "$na/dl" "$na/x"
  chmod 777 "$na/dl"
  echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian trixie-backports main" \
    > "$na/sources.list"
  apt_private=(-o Dir::Etc::SourceList="$na/sources.list" -o Dir::Etc::SourceParts=/dev/null
               -o Dir::State::Lists="$na/lists" -o Dir::Cache="$na/cache" -o Dir::State::status=/dev/null)
  apt-get "${apt_private[@]}" update -q >/dev/null
  img=$(apt-cache "${apt_private[@]}" depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
  npkgs=("$img" $(apt-cache "${apt_private[@]}" depends "$img" | awk '/Depends: linux-(binary|modules)-[0-9]/ {print $2}'))
  (cd "$na/dl" && apt-get "${apt_private[@]}" download -q "${npkgs[@]}")
  for deb in "$na"/dl/*.deb; do
    dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$na/x" --wildcards '*vmlinuz*' '*/e1000.ko*' '*/configfs.ko*' \
      '*/netconsole.ko*' 2>/dev/null || true
  done
  rm -rf "$NEW_KERNEL_DIR.tmp"; mkdir -p "$NEW_KERNEL_DIR.tmp"
  cp "$(find "$na/x" -name 'vmlinuz*' -type f | head -n 1)" "$NEW_KERNEL_DIR.tmp/vmlinuz"
  find "$na/x" -name '*.ko*' -exec cp {} "$NEW_KERNEL_DIR.tmp/" \;
  echo "${img#linux-image-}" > "$NEW_KERNEL_DIR.tmp/RELEASE"
  rm -rf "$NEW_KERNEL_DIR" "$na"; mv "$NEW_KERNEL_DIR.tmp" "$NEW_KERNEL_DIR"
fi
export KPR_NEW_KERNEL_DIR="$NEW_KERNEL_DIR"

# Debug information of a real kernel module for the symbolization tests: the headers
# package of that same kernel (with its -common and kbuild packages, about 70 MB unpacked,
# cached) and tests/kmod/kprcrash.c built against them with -g (the tools installed above).
KRELEASE=$(cat "$KERNEL_DIR/RELEASE")
HEADERS_DIR=${KPR_HEADERS_DIR:-$HOME/.cache/kpr-omprog-headers/$KRELEASE}
if [ ! -f "$HEADERS_DIR/usr/src/linux-headers-$KRELEASE/Makefile" ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  ht=$(mktemp -d); chmod 755 "$ht"
  hpkgs=("linux-headers-$KRELEASE")
  hpkgs+=($(apt-cache depends "linux-headers-$KRELEASE" 2>/dev/null | awk '/Depends: linux-(headers|kbuild)-/ {print $2}'))
  if [ ${#hpkgs[@]} -lt 3 ]; then $SUDO apt-get update -q; hpkgs=("linux-headers-$KRELEASE"); \
    hpkgs+=($(apt-cache depends "linux-headers-$KRELEASE" | awk '/Depends: linux-(headers|kbuild)-/ {print $2}')); fi
  (cd "$ht" && apt-get download -q "${hpkgs[@]}")
  rm -rf "$HEADERS_DIR.tmp"; mkdir -p "$HEADERS_DIR.tmp"
  for deb in "$ht"/*.deb; do dpkg-deb -x "$deb" "$HEADERS_DIR.tmp"; done
  # The arch package's Makefile includes the common one by its installed (absolute) path.
  sed -i "s|^include /usr/src/|include $HEADERS_DIR/usr/src/|" "$HEADERS_DIR.tmp/usr/src/linux-headers-$KRELEASE/Makefile"
  rm -rf "$HEADERS_DIR"; mv "$HEADERS_DIR.tmp" "$HEADERS_DIR"
  rm -rf "$ht"
fi
KMOD_DIR=${KPR_KMOD_DIR:-$HOME/.cache/kpr-omprog-kmod/$KRELEASE}
if [ ! -f "$KMOD_DIR/kprcrash.ko" ] || ! cmp -s tests/kmod/kprcrash.c "$KMOD_DIR/kprcrash.c"; then
  rm -rf "$KMOD_DIR"; mkdir -p "$KMOD_DIR"
  cp tests/kmod/kprcrash.c tests/kmod/Makefile "$KMOD_DIR/"
  make -s -C "$HEADERS_DIR/usr/src/linux-headers-$KRELEASE" M="$KMOD_DIR" modules >"$KMOD_DIR/build.log" 2>&1 \
    || { cat "$KMOD_DIR/build.log"; exit 1; }
fi
export KPR_KMOD_DIR="$KMOD_DIR"

# A Debian 12 root with systemd, rsyslog and python3 for tests/test_install_systemd.py,
# which boots it in QEMU and runs install.sh there as root (about 300 MB, cached). elfutils
# too, as on a host where install.sh has run once: the guest has no network for apt.
DEBIAN_ROOT=${KPR_DEBIAN_ROOT:-$HOME/.cache/kpr-omprog-debian/rootfs}
if [ ! -x "$DEBIAN_ROOT/lib/systemd/systemd" ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  rm -rf "$DEBIAN_ROOT.tmp"; mkdir -p "$DEBIAN_ROOT.tmp"
  $SUDO debootstrap --variant=minbase --include=systemd,systemd-sysv,rsyslog,python3,python3-venv,procps,elfutils \
    bookworm "$DEBIAN_ROOT.tmp" http://deb.debian.org/debian >/dev/null
  mv "$DEBIAN_ROOT.tmp" "$DEBIAN_ROOT"
fi
if [ ! -x "$DEBIAN_ROOT/usr/bin/eu-addr2line" ]; then  # a root cached before elfutils was in the list
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO unshare -m sh -c "mount -t proc proc '$DEBIAN_ROOT/proc' && DEBIAN_FRONTEND=noninteractive \
    chroot '$DEBIAN_ROOT' apt-get install -y -q --no-install-recommends elfutils" >/dev/null
fi
export KPR_DEBIAN_ROOT="$DEBIAN_ROOT"

[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/pip" install -q --disable-pip-version-check -e ".[test,fast]"

# Bugsink (a Sentry-compatible server) in a venv of its own: its wheel ships top-level
# packages (events, issues, ...) that must not shadow the project's.
BUGSINK_VENV=${KPR_BUGSINK_VENV:-$HOME/.cache/kpr-omprog-bugsink}
if [ ! -x "$BUGSINK_VENV/bin/gunicorn" ]; then
  python3 -m venv "$BUGSINK_VENV"
  "$BUGSINK_VENV/bin/pip" install -q --disable-pip-version-check "bugsink==2.6.1"
fi
if [ ! -f "$BUGSINK_VENV/migrated-template/db.sqlite3" ]; then
  tmpl=$(mktemp -d)
  cat > "$tmpl/bugsink_conf.py" <<PYEOF
from bugsink.settings.default import *  # noqa
from bugsink.settings.default import DATABASES
DATABASES["default"]["NAME"] = "$tmpl/db.sqlite3"
DATABASES["snappea"]["NAME"] = "$tmpl/snappea.sqlite3"
SECRET_KEY = "template"
PYEOF
  (cd "$tmpl" && DJANGO_SETTINGS_MODULE=bugsink_conf PYTHONPATH="$tmpl" "$BUGSINK_VENV/bin/bugsink-manage" migrate -v0 \
     && DJANGO_SETTINGS_MODULE=bugsink_conf PYTHONPATH="$tmpl" "$BUGSINK_VENV/bin/bugsink-manage" migrate --database=snappea -v0)
  mkdir -p "$BUGSINK_VENV/migrated-template"
  cp "$tmpl/db.sqlite3" "$tmpl/snappea.sqlite3" "$BUGSINK_VENV/migrated-template/"
  rm -rf "$tmpl"
fi
export KPR_BUGSINK_VENV="$BUGSINK_VENV"

echo "== ruff"; "$VENV/bin/ruff" check kpr_omprog tests
echo "== mypy"; "$VENV/bin/mypy"
echo "== pytest"; "$VENV/bin/pytest" -q --durations=15 "$@"
