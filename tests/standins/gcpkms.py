"""STAND-IN for GCP Cloud KMS (REST v1) and the GCE metadata server.

Usage: gcpkms.py PORT KEY_DIR [--bad-signature-crc] [--mismatched-public-key] [--log FILE]

KEY_DIR holds v1.pem, v2.pem, ... (PKCS#8 P-256 private keys), one per crypto
key version of every key asked for. Version 1 is DISABLED, the others ENABLED.
Requests must carry the bearer token the metadata endpoint hands out.
With --mismatched-public-key, GetPublicKey answers the public key of another
key (made at start) than the one AsymmetricSign signs with: a provider whose
key and public key disagree.
"""
import re
import os
from urllib.parse import urlparse, parse_qs

from common import *  # noqa: F401,F403

TOKEN = "standin-access-token"
ALGORITHM = "EC_SIGN_P256_SHA256"

args = sys.argv[1:]
PORT = int(args[0])
KEY_DIR = args[1]
BAD_SIGNATURE_CRC = "--bad-signature-crc" in args
MISMATCHED_PUBLIC_KEY = "--mismatched-public-key" in args
LOG = args[args.index("--log") + 1] if "--log" in args else None

VERSIONS = sorted(
    int(m.group(1)) for m in (re.match(r"v(\d+)\.pem$", f) for f in os.listdir(KEY_DIR)) if m
)
KEYS = {v: load_key(os.path.join(KEY_DIR, "v%d.pem" % v)) for v in VERSIONS}
OTHER_KEY = new_key()

KEY_RE = r"projects/[^/]+/locations/[^/]+/keyRings/[^/]+/cryptoKeys/[^/:]+"


def error(code, status, message):
    return code, {"error": {"code": code, "message": message, "status": status}}


class GcpKms(Handler):
    log_file = LOG

    def route(self, method, body):
        url = urlparse(self.path)
        path = url.path
        if path.startswith("/computeMetadata/"):
            return self.metadata(path)
        if self.headers.get("Authorization") != "Bearer " + TOKEN:
            return self.reply(*error(401, "UNAUTHENTICATED", "missing or wrong bearer token"))
        m = re.fullmatch(r"/v1/(%s)/cryptoKeyVersions" % KEY_RE, path)
        if m and method == "GET":
            filt = parse_qs(url.query).get("filter", [""])[0]
            versions = [
                {"name": "%s/cryptoKeyVersions/%d" % (m.group(1), v),
                 "state": "DISABLED" if v == 1 else "ENABLED",
                 "algorithm": ALGORITHM, "protectionLevel": "SOFTWARE"}
                for v in VERSIONS
            ]
            if filt == "state=ENABLED":
                versions = [v for v in versions if v["state"] == "ENABLED"]
            return self.reply(200, {"cryptoKeyVersions": versions, "totalSize": len(versions)})
        m = re.fullmatch(r"/v1/(%s/cryptoKeyVersions/(\d+))/publicKey" % KEY_RE, path)
        if m and method == "GET":
            key = KEYS.get(int(m.group(2)))
            if key is None:
                return self.reply(*error(404, "NOT_FOUND", "no such version"))
            pem = public_pem(OTHER_KEY if MISMATCHED_PUBLIC_KEY else key)
            return self.reply(200, {"pem": pem, "algorithm": ALGORITHM, "pemCrc32c": str(crc32c(pem.encode())),
                                    "name": m.group(1), "protectionLevel": "SOFTWARE"})
        m = re.fullmatch(r"/v1/(%s/cryptoKeyVersions/(\d+)):asymmetricSign" % KEY_RE, path)
        if m and method == "POST":
            version = int(m.group(2))
            key = KEYS.get(version)
            if key is None:
                return self.reply(*error(404, "NOT_FOUND", "no such version"))
            if version == 1:
                return self.reply(*error(400, "FAILED_PRECONDITION", "version is DISABLED"))
            req = json.loads(body)
            digest = unb64(req["digest"]["sha256"])
            if len(digest) != 32:
                return self.reply(*error(400, "INVALID_ARGUMENT", "digest must be SHA-256"))
            verified = "digestCrc32c" in req
            if verified and int(req["digestCrc32c"]) != crc32c(digest):
                return self.reply(*error(400, "INVALID_ARGUMENT", "digest CRC32C mismatch"))
            sig = sign_prehashed(key, digest)
            crc = crc32c(sig) ^ (1 if BAD_SIGNATURE_CRC else 0)
            return self.reply(200, {"signature": b64(sig), "signatureCrc32c": str(crc),
                                    "verifiedDigestCrc32c": verified, "name": m.group(1),
                                    "protectionLevel": "SOFTWARE"})
        return self.reply(*error(404, "NOT_FOUND", "stand-in: no route for %s %s" % (method, path)))

    def metadata(self, path):
        if self.headers.get("Metadata-Flavor") != "Google":
            return self.reply(403, "missing Metadata-Flavor", "text/plain")
        base = "/computeMetadata/v1/instance/service-accounts/default"
        if path == base + "/token":
            return self.reply(200, {"access_token": TOKEN, "expires_in": 3600, "token_type": "Bearer"})
        if path == base + "/email":
            return self.reply(200, "syncer@standin.iam.gserviceaccount.com", "text/plain")
        if path == "/computeMetadata/v1/universe/universe-domain":
            return self.reply(200, "googleapis.com", "text/plain")
        if path == "/computeMetadata/v1/project/project-id":
            return self.reply(200, "standin", "text/plain")
        return self.reply(404, "not found", "text/plain")


serve(GcpKms, PORT)
