#!/usr/bin/env bash
# The production build of the operator binaries: the workspace without the `test-keys` feature
# (prep's TEST key set and the Quill TEST CA's private key). Checks that no binary carries a
# private key or a TEST key component, and that the commands that need them refuse clearly.
# Called by `make test` before the normal build (which puts the default binaries back).
set -euo pipefail
cd "$(dirname "$0")/.."
RELEASE="${CARGO_TARGET_DIR:-target}/release"
say() { printf 'production build: %s\n' "$*"; }
die() { printf 'production build: FAILED: %s\n' "$*" >&2; exit 1; }

# The client speaks only the wire contract (quill-proto): it never links the node, so nothing
# added inside the node can change what `quill` sends (issue 11).
deps=$(cargo tree -p quill-ctl -e normal,build --prefix none) || die "cargo tree -p quill-ctl failed"
grep -q '^quill-proto ' <<<"$deps" || die "cargo tree -p quill-ctl does not list quill-proto: $deps"
if grep -q '^quill-node ' <<<"$deps"; then
  die "quill (quill-ctl) depends on quill-node"
fi
say "quill depends on quill-proto and quill-trust, not on quill-node"
cargo build --release --workspace --no-default-features --bins
# A component of SMK-TEST and the TEST CA key's PEM header: neither may be in any binary.
component=$(grep -m1 -o '"[0-9A-F]\{64\}"' prep/test-keys/test-keys.toml | tr -d '"')
[ -n "$component" ] || die "no TEST component found in prep/test-keys/test-keys.toml"
for bin in quill quilld quill-hsm; do
  f="$RELEASE/$bin"
  [ -x "$f" ] || die "$f was not built"
  if grep -q -a -e "PRIVATE KEY-----" -e "$component" "$f"; then
    die "$bin carries a private key or a TEST key component"
  fi
done
say "no private key and no TEST key component in quill, quilld, quill-hsm"
set +e
out=$("$RELEASE/quill" dev load-test-keys 2>&1); code=$?
set -e
[ "$code" -eq 2 ] || die "quill dev load-test-keys exited $code, not 2 (usage): $out"
grep -q "built without" <<<"$out" || die "quill dev load-test-keys did not say why: $out"
say "quill dev load-test-keys refuses: $out"
