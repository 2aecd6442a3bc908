#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs what the tests need
# (Debian's docker-registry, the real CNCF distribution registry), checks
# formatting, lints and docs (warnings are errors), then runs every test of
# the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."

have_registry() {
  [ -n "${IMAGE_SYNCER_REGISTRY_BIN:-}" ] || command -v docker-registry >/dev/null 2>&1 || [ -x /usr/bin/docker-registry ]
}

install_debs() {
  if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "missing: $* — install them with: sudo apt-get install -y $*" >&2
    exit 1
  fi
  echo "installing $* (Debian packages) ..." >&2
  DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

missing=()
have_registry || missing+=(docker-registry)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
# skopeo: reads and writes the `dir:` format the example dir plugin is checked against.
command -v skopeo >/dev/null 2>&1 || missing+=(skopeo)
# python3 (standard library only): scripts/image.sh assembles the container image with it.
command -v python3 >/dev/null 2>&1 || missing+=(python3)
if [ ${#missing[@]} -gt 0 ]; then
  install_debs "${missing[@]}"
fi

# A command from a PyPI package, installed with pip when it is missing.
pip_tool() {
  local cmd=$1 package=$2
  command -v "$cmd" >/dev/null 2>&1 && return 0
  if ! command -v pip3 >/dev/null 2>&1 && ! command -v pip >/dev/null 2>&1; then
    echo "missing: $cmd — install Python's pip, then: pip install '$package'" >&2
    exit 1
  fi
  echo "installing $package (PyPI) ..." >&2
  "$(command -v pip3 || command -v pip)" install --quiet --disable-pip-version-check "$package" >&2
  hash -r
  command -v "$cmd" >/dev/null 2>&1 || { echo "$cmd is not on PATH after pip install; add pip's script directory to PATH" >&2; exit 1; }
}
# moto's server: a real AWS KMS implementation for the awskms:// tests.
pip_tool moto_server "moto[server]"
# sigstore-python: the independent checker of the testkit's stand-in Sigstore (offline).
pip_tool sigstore "sigstore~=4.5"
# kubernetes-validate: the Kubernetes schemas (offline, --strict) the manifests of deploy/kubernetes/ are checked against.
pip_tool kubernetes-validate "kubernetes-validate~=1.37"

# Warnings are errors for all three; lints the workspace allows are listed,
# each with its reason, in Cargo.toml's [workspace.lints].
echo "checking formatting (cargo fmt --check) ..." >&2
cargo fmt --all -- --check
echo "checking lints (cargo clippy -D warnings) ..." >&2
cargo clippy --workspace --all-targets --locked -- -D warnings
# The CLI without its cloud features (KMS providers, ECR/GAR/ACR logins)
# must keep building: checked, not built (no second set of binaries).
echo "checking the build without default features (cargo clippy --no-default-features) ..." >&2
cargo clippy -p image-syncer-cli --no-default-features --locked -- -D warnings
echo "checking docs (cargo doc, warnings as errors) ..." >&2
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked

# The one documented opt-out (README, "Test it"): said before and after the
# tests, never silent.
opt_outs() {
  if [ "${IMAGE_SYNCER_TEST_NO_CHROOT:-}" = 1 ]; then
    echo "OPT-OUT IMAGE_SYNCER_TEST_NO_CHROOT=1: image::image_runs_in_a_chroot_of_its_layers does not run the image's entrypoint if neither root nor \`unshare -r\` is available" >&2
  fi
}
opt_outs
status=0
cargo test --workspace --locked "$@" || status=$?
opt_outs
exit "$status"
