#!/usr/bin/env bash
# Installs what building and testing Quill needs on a Debian 12 machine, and nothing twice:
#   - Debian packages: the C toolchain and headers for -sys crates, SoftHSM 2 (the reference module),
#     libfaketime (clock-skew faults in quill-chaos),
#     OpenSC's pkcs11-tool (a third-party PKCS#11 client), python3-venv;
#   - a Python venv with the third-party references from tests/python/requirements.txt.
# The venv lives outside the repository, at ${QUILL_VENV:-$HOME/.cache/quill/venv}, so fresh clones
# (CI makes one per run) reuse it. The Rust toolchain is expected to be there already (rustup).
# Runs as root, or through sudo when not root. Safe to run again: each step checks first.
set -euo pipefail

cd "$(dirname "$0")/.."

APT_PACKAGES=(build-essential pkg-config libssl-dev libclang-dev softhsm2 opensc python3-venv libfaketime)
VENV="${QUILL_VENV:-$HOME/.cache/quill/venv}"
REQUIREMENTS="tests/python/requirements.txt"

say() { printf 'setup: %s\n' "$*"; }
die() { printf 'setup: error: %s\n' "$*" >&2; exit 1; }

# 1. Debian packages.
missing=()
for p in "${APT_PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$p")
  fi
done
if [ ${#missing[@]} -eq 0 ]; then
  say "debian packages present: ${APT_PACKAGES[*]}"
else
  if [ "$(id -u)" -eq 0 ]; then
    sudo=()
  elif command -v sudo >/dev/null 2>&1; then
    sudo=(sudo)
  else
    die "missing Debian packages (${missing[*]}) and neither root nor sudo to install them"
  fi
  say "apt-get update"
  "${sudo[@]}" apt-get update -qq
  say "apt-get install ${missing[*]}"
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# 2. Tools the build and the tests call.
for tool in cargo pkcs11-tool softhsm2-util openssl python3; do
  command -v "$tool" >/dev/null 2>&1 || die "$tool not found on PATH"
done
if command -v cargo-nextest >/dev/null 2>&1; then
  say "tools present: cargo, cargo-nextest, pkcs11-tool, softhsm2-util, openssl, python3"
else
  say "tools present: cargo, pkcs11-tool, softhsm2-util, openssl, python3 (no cargo-nextest: tests run with cargo test)"
fi

# 3. Python venv.
if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c 'import sys' >/dev/null 2>&1; then
  say "python venv present: $VENV"
else
  rm -rf "$VENV"
  mkdir -p "$(dirname "$VENV")"
  python3 -m venv "$VENV"
  say "python venv created: $VENV ($("$VENV/bin/python" --version))"
fi

# 4. Python packages, reinstalled only when requirements.txt changes.
stamp="$VENV/.quill-requirements.sha256"
want=$(sha256sum "$REQUIREMENTS" | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  say "python packages up to date ($(grep -Ev '^\s*(#|$)' "$REQUIREMENTS" | paste -sd' '))"
else
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$REQUIREMENTS"
  "$VENV/bin/python" -c 'import pkcs11, pyemv, psec'
  echo "$want" > "$stamp"
  say "python packages installed: $(grep -Ev '^\s*(#|$)' "$REQUIREMENTS" | paste -sd' ')"
fi
