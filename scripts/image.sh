#!/usr/bin/env bash
# Builds the image-syncer container image without a daemon: an OCI image
# layout assembled from an already built binary, then (with --push) pushed by
# image-syncer itself. See README.md, "Container image".
#
#   scripts/image.sh [--binary PATH] [--output DIR] [--tag TAG]
#                    [--push REF [--syncer PATH] [-- IMAGE-SYNCER FLAGS...]]
#
#   --binary PATH  the binary to ship (default: ${CARGO_TARGET_DIR:-target}/release/image-syncer)
#   --output DIR   the OCI image layout to write (default: ${CARGO_TARGET_DIR:-target}/oci/image-syncer);
#                  replaced if it is an OCI layout already (any other existing path is refused)
#   --tag TAG      the tag in the layout (default: the workspace version)
#   --push REF     then push the layout to REF (registry/repository[:tag], tag default: --tag)
#                  with image-syncer; flags after `--` go to that run
#                  (e.g. -- --insecure-registry 127.0.0.1:5000, or -t key.json)
#   --syncer PATH  the image-syncer that pushes (default: the binary being shipped)
#
# One layer: the binary at /usr/local/bin/image-syncer, the shared libraries
# `ldd` reports and the dynamic loader, the system CA bundle, /etc/passwd with
# the non-root user 65532, /tmp. The same binary gives the same digest: fixed
# mtimes (SOURCE_DATE_EPOCH, default 0), sorted entries, fixed owners,
# gzip without name or time. Prints the layout, the tag and the manifest digest.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
target_dir="${CARGO_TARGET_DIR:-$root/target}"
binary="$target_dir/release/image-syncer"
output="$target_dir/oci/image-syncer"
tag=""
push=""
syncer=""
extra=()

die() { echo "image.sh: $*" >&2; exit 1; }

while [ $# -gt 0 ]; do
  case "$1" in
    --binary) [ $# -ge 2 ] || die "--binary needs a path"; binary="$2"; shift 2 ;;
    --output) [ $# -ge 2 ] || die "--output needs a directory"; output="$2"; shift 2 ;;
    --tag) [ $# -ge 2 ] || die "--tag needs a tag"; tag="$2"; shift 2 ;;
    --push) [ $# -ge 2 ] || die "--push needs a reference (registry/repository[:tag])"; push="$2"; shift 2 ;;
    --syncer) [ $# -ge 2 ] || die "--syncer needs a path"; syncer="$2"; shift 2 ;;
    --) shift; extra=("$@"); break ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument: $1 (see --help)" ;;
  esac
done

command -v python3 >/dev/null 2>&1 || die "python3 is needed (standard library only) and was not found"
command -v ldd >/dev/null 2>&1 || die "ldd is needed (to find the binary's shared libraries) and was not found"
[ -f "$binary" ] || die "binary not found: $binary (build it with: cargo build --release -p image-syncer-cli, or pass --binary PATH)"
[ -x "$binary" ] || die "binary is not executable: $binary"
ca_bundle=/etc/ssl/certs/ca-certificates.crt
[ -f "$ca_bundle" ] || die "CA bundle not found: $ca_bundle (install the ca-certificates package)"
if [ -n "${extra[*]:-}" ] && [ -z "$push" ]; then
  die "flags after -- are for the push run; they need --push REF"
fi

case "$(uname -m)" in
  x86_64) arch=amd64 ;;
  aarch64|arm64) arch=arm64 ;;
  *) die "unsupported architecture $(uname -m) (known: x86_64, aarch64)" ;;
esac

# The push target, checked before anything is built: only the last path
# component of an `oci:` source names the target repository, so the source is
# a link named after the target's last component; `targetRepoPrefix` is the
# rest of the reference and `tag:` the target tag.
if [ -n "$push" ]; then
  syncer="${syncer:-$binary}"
  [ -x "$syncer" ] || die "image-syncer to push with not found or not executable: $syncer"
  case "$push" in
    *@*) die "--push takes registry/repository[:tag], not a digest: $push" ;;
  esac
  name_and_tag="${push##*/}"
  [ "$name_and_tag" != "$push" ] || die "--push needs registry/repository[:tag]: $push"
  prefix="${push%/*}/"
  case "$name_and_tag" in
    *:*) repo_name="${name_and_tag%%:*}"; push_tag="${name_and_tag#*:}" ;;
    *) repo_name="$name_and_tag"; push_tag="" ;;
  esac
  [ -n "$repo_name" ] && [ "$name_and_tag" != "$repo_name:" ] || die "bad reference: $push"
fi

mkdir -p "$(dirname "$output")"
output="$(cd "$(dirname "$output")" && pwd)/$(basename "$output")"
# Only a previous layout is replaced, never a directory of something else.
if [ -e "$output" ] && ! [ -f "$output/oci-layout" ]; then
  die "$output exists and is not an OCI image layout; refusing to replace it (choose another --output)"
fi

# Prints "<tag> <manifest digest>".
read -r tag digest < <(python3 - "$root/Cargo.toml" "$binary" "$output" "$tag" "$arch" "$ca_bundle" <<'PY'
import datetime, gzip, hashlib, io, json, os, re, shutil, subprocess, sys, tarfile, tempfile

cargo_toml, binary, output, tag, arch, ca_bundle = sys.argv[1:7]
try:
    import tomllib  # Python 3.11+
    with open(cargo_toml, "rb") as f:
        package = tomllib.load(f)["workspace"]["package"]
except ImportError:  # older Python: the three keys of [workspace.package]
    with open(cargo_toml) as f:
        section = f.read().split("[workspace.package]", 1)[1].split("\n[", 1)[0]
    package = dict(re.findall(r'^(version|license|repository) = "([^"]*)"', section, re.M))
version = package["version"]
tag = tag or version
mtime = int(os.environ.get("SOURCE_DATE_EPOCH", "0"))
UID = 65532

def fail(msg):
    print(f"image.sh: {msg}", file=sys.stderr)
    sys.exit(1)

# Shared libraries and the loader, as ldd names them.
ldd = subprocess.run(["ldd", binary], capture_output=True, text=True)
libs = []
text = ldd.stdout + ldd.stderr
if ldd.returncode != 0 or "not a dynamic executable" in text or "statically linked" in text:
    if "not a dynamic executable" not in text and "statically linked" not in text:
        fail(f"ldd {binary} failed: {text.strip()}")
else:
    for line in ldd.stdout.splitlines():
        line = line.strip()
        m = re.match(r"^(\S+) => not found", line)
        if m:
            fail(f"{binary} needs {m.group(1)}, which ldd could not find")
        m = re.match(r"^\S+ => (/\S+) \(0x[0-9a-f]+\)$", line) or re.match(r"^(/\S+) \(0x[0-9a-f]+\)$", line)
        if m:
            libs.append(m.group(1))
        # linux-vdso.so.1 (0x...) is the kernel's, not a file.

files = {}  # path in the image -> (bytes, mode)
def add_file(path, data, mode):
    files[path.lstrip("/")] = (data, mode)
def read(path):
    with open(path, "rb") as f:  # follows symlinks: the image holds real files
        return f.read()

add_file("usr/local/bin/image-syncer", read(binary), 0o755)
for lib in libs:
    add_file(lib, read(lib), 0o755)
add_file("etc/ssl/certs/ca-certificates.crt", read(ca_bundle), 0o644)
add_file("etc/passwd", b"root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n", 0o644)
add_file("etc/group", b"root:x:0:\nnonroot:x:65532:\n", 0o644)
add_file("etc/nsswitch.conf", b"hosts: files dns\n", 0o644)

dirs = {"tmp": (0o1777, 0), "home": (0o755, 0), "home/nonroot": (0o700, UID)}
for path in files:
    parts = path.split("/")[:-1]
    for i in range(1, len(parts) + 1):
        dirs.setdefault("/".join(parts[:i]), (0o755, 0))

def info(name, kind, mode, owner):
    ti = tarfile.TarInfo(name)
    ti.type = kind
    ti.mode = mode
    ti.mtime = mtime
    ti.uid = ti.gid = owner
    ti.uname = ti.gname = "nonroot" if owner == UID else "root"
    return ti

raw = io.BytesIO()
with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tar:
    for name in sorted(set(dirs) | set(files)):
        if name in dirs:
            mode, owner = dirs[name]
            tar.addfile(info(name + "/", tarfile.DIRTYPE, mode, owner))
        else:
            data, mode = files[name]
            ti = info(name, tarfile.REGTYPE, mode, 0)
            ti.size = len(data)
            tar.addfile(ti, io.BytesIO(data))
layer_tar = raw.getvalue()
packed = io.BytesIO()
with gzip.GzipFile(filename="", mode="wb", fileobj=packed, mtime=0, compresslevel=6) as gz:
    gz.write(layer_tar)
layer = packed.getvalue()

def sha(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()
def canonical(obj):
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()

created = datetime.datetime.fromtimestamp(mtime, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
labels = {
    "org.opencontainers.image.source": package["repository"],
    "org.opencontainers.image.version": version,
    "org.opencontainers.image.licenses": package["license"],
    "org.opencontainers.image.title": "image-syncer",
}
config = canonical({
    "created": created,
    "architecture": arch,
    "os": "linux",
    "config": {
        "User": f"{UID}:{UID}",
        "Entrypoint": ["/usr/local/bin/image-syncer"],
        "Env": [
            "PATH=/usr/local/bin",
            "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt",
            "HOME=/home/nonroot",
        ],
        "WorkingDir": "/",
        "Labels": labels,
    },
    "rootfs": {"type": "layers", "diff_ids": [sha(layer_tar)]},
    "history": [{"created": created, "created_by": "scripts/image.sh"}],
})
manifest = canonical({
    "schemaVersion": 2,
    "mediaType": "application/vnd.oci.image.manifest.v1+json",
    "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha(config), "size": len(config)},
    "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": sha(layer), "size": len(layer)}],
    "annotations": labels,
})
index = canonical({
    "schemaVersion": 2,
    "mediaType": "application/vnd.oci.image.index.v1+json",
    "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": sha(manifest),
        "size": len(manifest),
        "platform": {"architecture": arch, "os": "linux"},
        "annotations": {"org.opencontainers.image.ref.name": tag},
    }],
})

# Written beside, then moved into place: a half-written layout is never left at `output`.
tmp = tempfile.mkdtemp(prefix=".layout.", dir=os.path.dirname(output))
os.chmod(tmp, 0o755)
os.makedirs(os.path.join(tmp, "blobs", "sha256"))
for blob in (layer, config, manifest):
    with open(os.path.join(tmp, "blobs", "sha256", sha(blob)[7:]), "wb") as f:
        f.write(blob)
with open(os.path.join(tmp, "oci-layout"), "wb") as f:
    f.write(canonical({"imageLayoutVersion": "1.0.0"}))
with open(os.path.join(tmp, "index.json"), "wb") as f:
    f.write(index)
shutil.rmtree(output, ignore_errors=True)
os.rename(tmp, output)
print(tag, sha(manifest))
PY
) || true
[ -n "${digest:-}" ] || die "assembling the layout failed"
echo "layout: $output" >&2
echo "oci:$output:$tag $digest"

[ -n "$push" ] || exit 0

push_tag="${push_tag:-$tag}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/src"
ln -s "$output" "$work/src/$repo_name"
cat >"$work/push.yaml" <<EOF
# Written by scripts/image.sh: the image-syncer image, pushed by image-syncer.
targetRepoPrefix: "$prefix"
images:
- source: "oci:src/$repo_name:$tag"
  tag: "$push_tag"
EOF
echo "pushing to ${prefix}${repo_name}:${push_tag} with $syncer" >&2
"$syncer" --images-file "$work/push.yaml" "${extra[@]}"
