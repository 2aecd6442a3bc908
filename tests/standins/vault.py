"""STAND-IN for HashiCorp Vault's transit secrets engine.

Usage: vault.py PORT KEY_PEM TOKEN [--mount PATH] [--log FILE]

Serves one ECDSA P-256 key named `cosign` under the mount (default `transit`).
"""
import re

from common import *  # noqa: F401,F403

args = sys.argv[1:]
PORT = int(args[0])
KEY = load_key(args[1])
TOKEN = args[2]
MOUNT = args[args.index("--mount") + 1] if "--mount" in args else "transit"
LOG = args[args.index("--log") + 1] if "--log" in args else None


class Vault(Handler):
    log_file = LOG

    def route(self, method, body):
        if self.headers.get("X-Vault-Token") != TOKEN:
            return self.reply(403, {"errors": ["permission denied"]})
        if method == "GET" and self.path == "/v1/%s/keys/cosign" % MOUNT:
            return self.reply(200, {"data": {"name": "cosign", "type": "ecdsa-p256", "latest_version": 2,
                                             "keys": {"1": {"public_key": "not-this-one"},
                                                      "2": {"public_key": public_pem(KEY)}}}})
        m = re.fullmatch(r"/v1/%s/sign/cosign/sha2-256" % re.escape(MOUNT), self.path)
        if method == "POST" and m:
            req = json.loads(body)
            if req.get("prehashed") is not True:
                return self.reply(400, {"errors": ["stand-in expects prehashed input"]})
            digest = unb64(req["input"])
            if len(digest) != 32:
                return self.reply(400, {"errors": ["input must be a SHA-256 digest"]})
            return self.reply(200, {"data": {"signature": "vault:v2:" + b64(sign_prehashed(KEY, digest)),
                                             "key_version": 2}})
        return self.reply(404, {"errors": ["stand-in: no route for %s %s" % (method, self.path)]})


serve(Vault, PORT)
