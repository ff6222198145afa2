#!/usr/bin/env bash
# python-pkcs11 against libquill_hsm_sim.so, with pyemv and psec as references for the EMV key
# derivations and CVV (tests/python/test_python_pkcs11.py). pkcs11-tool initialises the token first:
# python-pkcs11 has no C_InitToken.
set -euo pipefail

root="$(cd "$(dirname "$0")/../.." && pwd)"
export QUILL_HSM_MODULE="${QUILL_HSM_MODULE:-${CARGO_TARGET_DIR:-$root/target}/release/libquill_hsm_sim.so}"
VENV="${QUILL_VENV:-$HOME/.cache/quill/venv}"
[ -f "$QUILL_HSM_MODULE" ] || { echo "python-pkcs11: module not found: $QUILL_HSM_MODULE (run make build)" >&2; exit 1; }
[ -x "$VENV/bin/python" ] || { echo "python-pkcs11: no venv at $VENV (run make setup)" >&2; exit 1; }

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
export QUILL_HSM_DIR="$work/tokens"
mkdir -p "$QUILL_HSM_DIR"

echo "initialising token t in $QUILL_HSM_DIR with pkcs11-tool"
pkcs11-tool --module "$QUILL_HSM_MODULE" --init-token --slot 0 --label t --so-pin 12345678 >/dev/null
pkcs11-tool --module "$QUILL_HSM_MODULE" --slot 0 --init-pin --login --so-pin 12345678 --pin 1234 >/dev/null

"$VENV/bin/python" "$root/tests/python/test_python_pkcs11.py"
