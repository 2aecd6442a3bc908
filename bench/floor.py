#!/usr/bin/env python3
"""The raw copy floor: the least work that moves some images between two registries.

    floor.py [--cafile CA.PEM] SRC_HOST:PORT DST_HOST:PORT DST_PREFIX REPO:TAG ...

For each image: GET its manifest from the source (following an index to its children), then,
with a pool of 8 threads, GET every blob from the source and PUT it monolithically to
DST_PREFIX + REPO on the target (POST uploads/ + PUT ?digest=), then PUT the manifests (children
before their index). No existence checks, no digest verification, no retries: whatever a real
tool does on top of this is its overhead. Plain HTTP, or HTTPS trusting CA.PEM with --cafile.
Standard library only; 127.0.0.1 / localhost only.
"""

import http.client
import json
import ssl
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import quote, urlsplit

ACCEPT = ", ".join([
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
])
WORKERS = 8
TIMEOUT = 300
TLS = None  # an ssl.SSLContext with --cafile


def check_local(host):
    if host.rsplit(":", 1)[0] not in ("127.0.0.1", "localhost"):
        sys.exit(f"floor.py: refusing non-local registry {host!r} (127.0.0.1 only)")


class Conns(threading.local):
    def __init__(self):
        self.by_host = {}

    def get(self, host):
        c = self.by_host.get(host)
        if c is None:
            if TLS is not None:
                c = http.client.HTTPSConnection(host, timeout=TIMEOUT, context=TLS)
            else:
                c = http.client.HTTPConnection(host, timeout=TIMEOUT)
            self.by_host[host] = c
        return c


CONNS = Conns()


def call(host, method, path, body=None, headers=None, expect=(200,)):
    headers = dict(headers or {})
    if body is None and method in ("POST", "PUT"):
        headers["Content-Length"] = "0"
    c = CONNS.get(host)
    c.request(method, path, body=body, headers=headers)
    r = c.getresponse()
    data = r.read()
    if r.status not in expect:
        raise RuntimeError(f"{method} {host}{path}: HTTP {r.status}: {data[:300]!r}")
    return r, data


def get_manifest(src, repo, ref):
    r, data = call(src, "GET", f"/v2/{repo}/manifests/{ref}", headers={"Accept": ACCEPT})
    return r.getheader("Content-Type"), data


def main():
    global TLS
    argv = sys.argv[1:]
    if argv[:1] == ["--cafile"] and len(argv) >= 2:
        TLS = ssl.create_default_context(cafile=argv[1])
        argv = argv[2:]
    if len(argv) < 4:
        sys.exit(__doc__)
    src, dst, prefix, refs = argv[0], argv[1], argv[2], argv[3:]
    check_local(src)
    check_local(dst)

    # 1. manifests: (src repo, ref, media type, bytes), children listed before their index
    def read_image(ref):
        repo, tag = ref.rsplit(":", 1)
        media, body = get_manifest(src, repo, tag)
        out = []
        doc = json.loads(body)
        if "manifests" in doc:
            for child in doc["manifests"]:
                cmedia, cbody = get_manifest(src, repo, child["digest"])
                out.append((repo, child["digest"], cmedia, cbody))
        out.append((repo, tag, media, body))
        return out

    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        images = list(pool.map(read_image, refs))

    # 2. blobs, once per (repo, digest)
    blobs = []
    seen = set()
    for image in images:
        for repo, _, _, body in image:
            doc = json.loads(body)
            for d in ([doc["config"]] if "config" in doc else []) + doc.get("layers", []):
                if (repo, d["digest"]) not in seen:
                    seen.add((repo, d["digest"]))
                    blobs.append((repo, d["digest"]))

    def copy_blob(item):
        repo, digest = item
        _, data = call(src, "GET", f"/v2/{repo}/blobs/{digest}")
        r, _ = call(dst, "POST", f"/v2/{prefix}{repo}/blobs/uploads/", expect=(202,))
        loc = urlsplit(r.getheader("Location"))
        q = f"{loc.query}&" if loc.query else ""
        call(dst, "PUT", f"{loc.path}?{q}digest={quote(digest, safe=':')}", body=data,
             headers={"Content-Type": "application/octet-stream",
                      "Content-Length": str(len(data))}, expect=(201,))

    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        list(pool.map(copy_blob, blobs))

    # 3. manifests, children first (each image's list is already in that order)
    def put_manifests(image):
        for repo, ref, media, body in image:
            call(dst, "PUT", f"/v2/{prefix}{repo}/manifests/{ref}", body=body,
                 headers={"Content-Type": media}, expect=(201,))

    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        list(pool.map(put_manifests, images))


if __name__ == "__main__":
    main()
