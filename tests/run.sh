#!/usr/bin/env bash
# The whole test suite from a fresh Debian machine: installs what the tests need
# (Debian packages, a virtual environment with the package and its test tools),
# then runs lint, types and pytest. Safe to run again: every step is idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VENV=${KPR_TEST_VENV:-$ROOT/.venv}

need_apt=()
for pkg in rsyslog qemu-system-x86 busybox-static cpio; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need_apt+=("$pkg")
done
if [ ${#need_apt[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${need_apt[@]}"
fi

[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/pip" install -q --disable-pip-version-check -e ".[test]"

echo "== ruff"; "$VENV/bin/ruff" check kpr_omprog tests
echo "== mypy"; "$VENV/bin/mypy"
echo "== pytest"; "$VENV/bin/pytest" -q "$@"
