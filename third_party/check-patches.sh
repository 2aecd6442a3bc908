#!/usr/bin/env bash
# Checks that third_party/oci-client/src is the published oci-client's src/
# with third_party/patches/*.patch applied in order, and that the crate's
# LICENSE and README.md are the published ones. Exit 0 when they agree, 1
# with the difference when they do not.
#
# The published crate is read from cargo's registry cache
# (~/.cargo/registry/src/*/oci-client-<version>); the workspace never
# downloads it (it uses the patched copy), so when it is missing this script
# fetches it with `cargo fetch` in a scratch project: that needs network.
# OCI_CLIENT_PRISTINE=<dir> names an unpacked copy instead.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
version=0.18.0
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

find_pristine() {
  ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/"oci-client-$version" 2>/dev/null | head -n 1
}
pristine=${OCI_CLIENT_PRISTINE:-$(find_pristine || true)}
if [ -z "$pristine" ]; then
  echo "oci-client $version is not in cargo's cache; fetching it (network) ..." >&2
  mkdir -p "$scratch/fetch/src"
  : > "$scratch/fetch/src/lib.rs"
  cat > "$scratch/fetch/Cargo.toml" <<TOML
[package]
name = "fetch-oci-client"
version = "0.0.0"
edition = "2021"
[dependencies]
oci-client = { version = "=$version", default-features = false }
[workspace]
TOML
  cargo fetch --quiet --manifest-path "$scratch/fetch/Cargo.toml"
  pristine=$(find_pristine)
fi
[ -d "$pristine/src" ] || { echo "no oci-client $version sources at $pristine" >&2; exit 1; }

mkdir -p "$scratch/tree"
cp -r "$pristine/src" "$scratch/tree/src"
for p in third_party/patches/*.patch; do
  # No fuzz, no offset tolerance beyond what git allows: each patch must apply
  # exactly where it was made.
  if ! (cd "$scratch/tree" && git apply -p1 --whitespace=nowarn "$root/$p") 2>"$scratch/err"; then
    echo "$p does not apply after the patches before it:" >&2
    cat "$scratch/err" >&2
    exit 1
  fi
done
status=0
diff -ru "$scratch/tree/src" third_party/oci-client/src || status=1
for f in LICENSE README.md; do
  cmp -s "$pristine/$f" "third_party/oci-client/$f" || { echo "third_party/oci-client/$f differs from the published $f" >&2; status=1; }
done
if [ "$status" -eq 0 ]; then
  echo "third_party/oci-client/src = oci-client $version + $(ls third_party/patches/*.patch | wc -l) patches"
else
  echo "third_party/oci-client/src is not oci-client $version + third_party/patches (see the diff above)" >&2
fi
exit "$status"
