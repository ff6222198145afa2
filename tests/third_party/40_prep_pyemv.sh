#!/usr/bin/env bash
# The prep engine's real output against pyemv, psec and plain-integer RSA
# (tests/python/test_prep_output.py): for each sample profile, `quill prep run` with the TEST keys,
# `quill prep check` on the output, then the Python checker on the three streams (MACs, ICC master
# keys and ARQCs, tracks/CVV/iCVV/CVV2/PVV/IBM offset, offline PIN, certificates, embossing).
set -euo pipefail

root="$(cd "$(dirname "$0")/../.." && pwd)"
RELEASE="${CARGO_TARGET_DIR:-$root/target}/release"
VENV="${QUILL_VENV:-$HOME/.cache/quill/venv}"
[ -x "$RELEASE/quill" ] || { echo "prep-pyemv: quill not found: $RELEASE/quill (run make build)" >&2; exit 1; }
[ -x "$VENV/bin/python" ] || { echo "prep-pyemv: no venv at $VENV (run make setup)" >&2; exit 1; }

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

total=0
failed=()
# name:sample[:issuer bits:issuer exponent] — the last run makes the largest issuer key the TEST
# CA can certify, with e = 65537, so a size other than the TEST set's is checked end to end.
for run in visa-dda-credit:visa-dda-credit.csv mc-cap:mc-cap.txt multi-app:multi-app.csv \
           visa-dda-credit:visa-dda-credit.csv:1984:65537; do
  IFS=: read -r name sample_file bits exponent <<<"$run"
  profile="$root/prep/profiles/$name.toml"
  sample="$root/prep/samples/$sample_file"
  extra=()
  if [ -n "${bits:-}" ]; then
    extra=(--issuer-bits "$bits" --issuer-exponent "$exponent")
    name="$name-issuer-$bits-e$exponent"
  fi
  out="$work/$name"
  echo "== $name: quill prep run ${extra[*]:-}"
  if ! "$RELEASE/quill" prep run --profile "$profile" --input "$sample" -o "$out" "${extra[@]}"; then
    echo "prep-pyemv: $name: quill prep run failed" >&2
    failed+=("$name (prep run)")
    continue
  fi
  echo "== $name: quill prep check"
  if ! "$RELEASE/quill" prep check "$out"; then
    echo "prep-pyemv: $name: quill prep check failed" >&2
    failed+=("$name (prep check)")
  fi
  echo "== $name: pyemv/psec checker"
  set +e
  "$VENV/bin/python" "$root/tests/python/test_prep_output.py" --profile "$profile" --input "$sample" --out "$out" "${extra[@]}" \
    | tee "$work/$name.log"
  rc=${PIPESTATUS[0]}
  set -e
  n="$(sed -n 's/^\([0-9][0-9]*\) checks passed$/\1/p' "$work/$name.log" | tail -n 1)"
  total=$((total + ${n:-0}))
  if [ "$rc" -ne 0 ] || [ -z "$n" ]; then
    failed+=("$name (checker exit $rc)")
  fi
done

echo "prep-pyemv: $total checks passed over 3 profiles and 4 runs"
if [ ${#failed[@]} -gt 0 ]; then
  echo "prep-pyemv: FAILED: ${failed[*]}" >&2
  exit 1
fi
echo "prep-pyemv: OK"
