#!/usr/bin/env bash
# TR-31 key blocks: hsm-sim's CKM_QUILL_TR31_WRAP / CKM_QUILL_TR31_UNWRAP against PyPI psec, through
# python-pkcs11 (tests/python/test_tr31_psec.py): blocks the module wraps must unwrap in psec, blocks
# psec wraps must unwrap in the module, versions B and D. pkcs11-tool initialises the token first:
# python-pkcs11 has no C_InitToken. QUILL_TR31_SEED=<n> repeats a run (the script prints its seed).
set -euo pipefail

root="$(cd "$(dirname "$0")/../.." && pwd)"
export QUILL_HSM_MODULE="${QUILL_HSM_MODULE:-${CARGO_TARGET_DIR:-$root/target}/release/libquill_hsm_sim.so}"
VENV="${QUILL_VENV:-$HOME/.cache/quill/venv}"
[ -f "$QUILL_HSM_MODULE" ] || { echo "tr31-psec: module not found: $QUILL_HSM_MODULE (run make build)" >&2; exit 1; }
[ -x "$VENV/bin/python" ] || { echo "tr31-psec: no venv at $VENV (run make setup)" >&2; exit 1; }

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
export QUILL_HSM_DIR="$work/tokens"
mkdir -p "$QUILL_HSM_DIR"

echo "initialising token t in $QUILL_HSM_DIR with pkcs11-tool"
pkcs11-tool --module "$QUILL_HSM_MODULE" --init-token --slot 0 --label t --so-pin 12345678 >/dev/null
pkcs11-tool --module "$QUILL_HSM_MODULE" --slot 0 --init-pin --login --so-pin 12345678 --pin 1234 >/dev/null

"$VENV/bin/python" "$root/tests/python/test_tr31_psec.py"
