#!/usr/bin/env python3
"""Fills a local registry with the benchmark workloads (standard library only).

    populate.py HOST:PORT w1 [--count 20] [--layers 3] [--layer-size 1048576]
    populate.py HOST:PORT w2 [--count 10] [--layer-size 1048576]
    populate.py HOST:PORT w3 [--layer-size 1073741824] [--tmpdir DIR]
    populate.py HOST:PORT w4 [--count 1000] [--layer-size 1024]
    populate.py HOST:PORT check REPO:TAG ...     # HEAD each manifest; exit 1 if one is missing
    populate.py HOST:PORT same SRC_HOST:PORT SRC_REPO:TAG=REPO:TAG ...
                                                 # print how many pairs hold the same digest

Plain HTTP, or HTTPS with --cafile CA.PEM (the registries' CA; both hosts, for `same`).

Repositories: bench/w1-NN:1, bench/w2-NN:1, bench/w3:1, bench/w4-NNNN:1.

Blobs are pushed monolithically (POST /v2/<name>/blobs/uploads/, then PUT <location>&digest=...),
manifests with PUT /v2/<name>/manifests/<ref>. Layer content is random bytes from a seeded
generator (reproducible), wrapped in a gzip stream of "stored" (uncompressed) deflate blocks: a
valid gzip layer, so that no tool under test decides to compress it on the way, and of about the
stated size (the framing adds 5 bytes per 64 KiB). Only 127.0.0.1 / localhost hosts are accepted.
"""

import argparse
import hashlib
import http.client
import json
import os
import random
import ssl
import struct
import sys
import tempfile
import threading
import zlib
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import quote, urlsplit

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
TIMEOUT = 300  # seconds, per socket operation
STORED_BLOCK = 65535  # the largest stored deflate block


def check_local(host):
    name = host.rsplit(":", 1)[0]
    if name not in ("127.0.0.1", "localhost"):
        sys.exit(f"populate.py: refusing non-local registry {host!r} (127.0.0.1 only)")


class Registry:
    """One connection per thread to a registry: plain HTTP, or HTTPS trusting `cafile`."""

    def __init__(self, host, cafile=None):
        check_local(host)
        self.host = host
        self.local = threading.local()
        self.cafile = cafile
        self.tls = ssl.create_default_context(cafile=cafile) if cafile else None

    def conn(self):
        c = getattr(self.local, "conn", None)
        if c is None:
            if self.tls is not None:
                c = http.client.HTTPSConnection(self.host, timeout=TIMEOUT, context=self.tls)
            else:
                c = http.client.HTTPConnection(self.host, timeout=TIMEOUT)
            self.local.conn = c
        return c

    def request(self, method, path, body=None, headers=None, expect=(200,)):
        headers = dict(headers or {})
        if body is None and method in ("POST", "PUT"):
            headers.setdefault("Content-Length", "0")
        for attempt in range(2):  # one retry on a connection the server closed
            c = self.conn()
            try:
                c.request(method, path, body=body, headers=headers)
                r = c.getresponse()
                data = r.read()
                break
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                c.close()
                self.local.conn = None
                if attempt == 1:
                    raise
        if r.status not in expect:
            raise RuntimeError(f"{method} {path}: HTTP {r.status}: {data[:300]!r}")
        return r, data

    def start_upload(self, repo):
        r, _ = self.request("POST", f"/v2/{repo}/blobs/uploads/", expect=(202,))
        loc = urlsplit(r.getheader("Location"))
        return loc.path, loc.query

    @staticmethod
    def put_path(path, query, digest):
        q = f"{query}&" if query else ""
        return f"{path}?{q}digest={quote(digest, safe=':')}"

    def push_blob(self, repo, data):
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        path, query = self.start_upload(repo)
        self.request("PUT", self.put_path(path, query, digest), body=data,
                     headers={"Content-Type": "application/octet-stream",
                              "Content-Length": str(len(data))}, expect=(201,))
        return {"mediaType": None, "digest": digest, "size": len(data)}

    def push_blob_file(self, repo, filename, digest, size):
        """Streams a file as the body of the monolithic PUT (never held in memory)."""
        path, query = self.start_upload(repo)
        c = self.conn()
        c.putrequest("PUT", self.put_path(path, query, digest))
        c.putheader("Content-Type", "application/octet-stream")
        c.putheader("Content-Length", str(size))
        c.endheaders()
        with open(filename, "rb") as f:
            for _ in range(size // (1 << 20) + 2):  # bounded: one pass over the file
                chunk = f.read(1 << 20)
                if not chunk:
                    break
                c.send(chunk)
        r = c.getresponse()
        data = r.read()
        if r.status != 201:
            raise RuntimeError(f"PUT blob {digest}: HTTP {r.status}: {data[:300]!r}")

    def push_manifest(self, repo, ref, manifest, media_type):
        """ref None: push by digest (an untagged child of an index)."""
        body = json.dumps(manifest, separators=(",", ":")).encode()
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        self.request("PUT", f"/v2/{repo}/manifests/{ref or digest}", body=body,
                     headers={"Content-Type": media_type}, expect=(201,))
        return {"mediaType": media_type, "digest": digest, "size": len(body)}

    def manifest_digest(self, repo, ref):
        """The digest `repo:ref` resolves to, or None."""
        r, _ = self.request("HEAD", f"/v2/{repo}/manifests/{ref}",
                            headers={"Accept": f"{OCI_MANIFEST}, {OCI_INDEX}"}, expect=(200, 404))
        return r.getheader("Docker-Content-Digest") if r.status == 200 else None

    def has_manifest(self, repo, ref):
        r, _ = self.request("HEAD", f"/v2/{repo}/manifests/{ref}",
                            headers={"Accept": f"{OCI_MANIFEST}, {OCI_INDEX}"}, expect=(200, 404))
        return r.status == 200


# --- content -------------------------------------------------------------------------------

def gzip_stored_chunks(payload_chunks):
    """A gzip stream (stored deflate blocks) around the payload; yields byte strings."""
    yield b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"  # magic, deflate, no flags, mtime 0, OS unknown
    crc = 0
    size = 0
    pending = None
    for chunk in payload_chunks:
        crc = zlib.crc32(chunk, crc)
        size += len(chunk)
        view = memoryview(chunk)
        for off in range(0, len(view), STORED_BLOCK):
            if pending is not None:
                yield struct.pack("<BHH", 0, len(pending), len(pending) ^ 0xFFFF)
                yield pending
            pending = view[off:off + STORED_BLOCK]
    if pending is None:
        pending = memoryview(b"")
    yield struct.pack("<BHH", 1, len(pending), len(pending) ^ 0xFFFF)  # final block
    yield pending
    yield struct.pack("<II", crc, size & 0xFFFFFFFF)


def random_payload(seed, size):
    rng = random.Random(seed)
    left = size
    while left > 0:
        n = min(left, 1 << 20)
        yield rng.randbytes(n)
        left -= n


def make_layer(seed, size):
    """(gzip bytes, diff_id) of a random layer with `size` bytes of payload."""
    payload = b"".join(random_payload(seed, size))
    diff_id = "sha256:" + hashlib.sha256(payload).hexdigest()
    return b"".join(gzip_stored_chunks([payload])), diff_id


def config_json(arch, diff_ids, label):
    cfg = {
        "architecture": arch,
        "os": "linux",
        "config": {"Labels": {"image-syncer.bench": label}},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }
    return json.dumps(cfg, separators=(",", ":"), sort_keys=True).encode()


def push_image(reg, repo, arch, layers, label, ref):
    """layers: list of (gzip bytes, diff_id). Pushes blobs, config, manifest at ref (None: by
    digest). Returns the manifest's descriptor."""
    descs = []
    for data, _ in layers:
        d = reg.push_blob(repo, data)
        d["mediaType"] = OCI_LAYER_GZIP
        descs.append(d)
    cfg = reg.push_blob(repo, config_json(arch, [diff for _, diff in layers], label))
    cfg["mediaType"] = OCI_CONFIG
    manifest = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": cfg, "layers": descs}
    desc = reg.push_manifest(repo, ref, manifest, OCI_MANIFEST)
    return desc


# --- workloads -----------------------------------------------------------------------------

def run_pool(fn, items, workers):
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for _ in pool.map(fn, items):
            pass


def w1(reg, args):
    def one(i):
        layers = [make_layer(f"w1-{i}-{j}", args.layer_size) for j in range(args.layers)]
        push_image(reg, f"bench/w1-{i:02d}", "amd64", layers, f"w1-{i}", "1")
    run_pool(one, range(args.count), 4)


def w2(reg, args):
    base = [make_layer(f"w2-base-{j}", args.layer_size) for j in range(2)]

    def one(i):
        repo = f"bench/w2-{i:02d}"
        children = []
        for arch in ("amd64", "arm64"):
            own = make_layer(f"w2-{i}-{arch}", args.layer_size)
            # each child is pushed by digest (untagged), then referenced from the index
            desc = push_image(reg, repo, arch, base + [own], f"w2-{i}-{arch}", None)
            desc["platform"] = {"architecture": arch, "os": "linux"}
            children.append(desc)
        index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": children}
        reg.push_manifest(repo, "1", index, OCI_INDEX)
    run_pool(one, range(args.count), 4)


def w3(reg, args):
    fd, name = tempfile.mkstemp(prefix="w3-layer-", suffix=".gz", dir=args.tmpdir)
    try:
        raw = hashlib.sha256()
        gz = hashlib.sha256()
        size = 0

        def payload():
            for chunk in random_payload("w3", args.layer_size):
                raw.update(chunk)
                yield chunk

        with os.fdopen(fd, "wb") as f:
            for piece in gzip_stored_chunks(payload()):
                gz.update(piece)
                f.write(piece)
                size += len(piece)
        digest = "sha256:" + gz.hexdigest()
        repo = "bench/w3"
        reg.push_blob_file(repo, name, digest, size)
        layer = {"mediaType": OCI_LAYER_GZIP, "digest": digest, "size": size}
        cfg = reg.push_blob(repo, config_json("amd64", ["sha256:" + raw.hexdigest()], "w3"))
        cfg["mediaType"] = OCI_CONFIG
        manifest = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": cfg,
                    "layers": [layer]}
        reg.push_manifest(repo, "1", manifest, OCI_MANIFEST)
    finally:
        os.unlink(name)


def w4(reg, args):
    def one(i):
        layer = make_layer(f"w4-{i}", args.layer_size)
        push_image(reg, f"bench/w4-{i:04d}", "amd64", [layer], f"w4-{i}", "1")
    run_pool(one, range(args.count), 4)


def check(reg, refs):
    missing = []
    for ref in refs:
        repo, tag = ref.rsplit(":", 1)
        if not reg.has_manifest(repo, tag):
            missing.append(ref)
    for m in missing:
        print(f"missing in {reg.host}: {m}", file=sys.stderr)
    return 1 if missing else 0


def same(reg, source, pairs):
    """How many SRC=DST pairs resolve to the same digest (the target exact)."""
    src = Registry(source, reg.cafile)
    n = 0
    for pair in pairs:
        a, b = pair.split("=", 1)
        (ra, ta), (rb, tb) = a.rsplit(":", 1), b.rsplit(":", 1)
        want = src.manifest_digest(ra, ta)
        if want is not None and reg.manifest_digest(rb, tb) == want:
            n += 1
    print(n)
    return 0


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("registry", help="127.0.0.1:PORT (plain HTTP; HTTPS with --cafile)")
    p.add_argument("workload", choices=["w1", "w2", "w3", "w4", "check", "same"])
    p.add_argument("refs", nargs="*", help="for check: REPO:TAG ...")
    p.add_argument("--count", type=int)
    p.add_argument("--layers", type=int, default=3)
    p.add_argument("--layer-size", type=int)
    p.add_argument("--tmpdir", default=None)
    p.add_argument("--cafile", default=None, help="HTTPS, trusting this CA (PEM)")
    args = p.parse_args()
    reg = Registry(args.registry, args.cafile)
    defaults = {"w1": (20, 1 << 20), "w2": (10, 1 << 20), "w3": (1, 1 << 30), "w4": (1000, 1024)}
    if args.workload == "check":
        sys.exit(check(reg, args.refs))
    if args.workload == "same":
        sys.exit(same(reg, args.refs[0], args.refs[1:]))
    count, size = defaults[args.workload]
    args.count = args.count if args.count is not None else count
    args.layer_size = args.layer_size if args.layer_size is not None else size
    {"w1": w1, "w2": w2, "w3": w3, "w4": w4}[args.workload](reg, args)


if __name__ == "__main__":
    main()
