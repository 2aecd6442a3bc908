"""STAND-IN for Azure Key Vault keys (REST API 7.x) and the App Service
managed-identity token endpoint, over TLS (the Azure SDK refuses bearer tokens
over plain HTTP).

Usage: azurekms.py PORT KEY_DIR CA_OUT [--log FILE]

KEY_DIR holds v1.pem, v2.pem, ... (PKCS#8 P-256 keys), the versions of the key
named `cosign`; the newest is current. A CA certificate for the server's
self-made certificate (valid for 127.0.0.1) is written to CA_OUT.
"""
import base64
import datetime
import ipaddress
import os
import re
import ssl
import tempfile
import time
from urllib.parse import urlparse

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from common import *  # noqa: F401,F403
from common import ThreadingHTTPServer

TOKEN = "standin-azure-token"
IDENTITY_HEADER = "standin-identity-header"

args = sys.argv[1:]
PORT = int(args[0])
KEY_DIR = args[1]
CA_OUT = args[2]
LOG = args[args.index("--log") + 1] if "--log" in args else None
VERSIONS = sorted(int(m.group(1)) for m in (re.match(r"v(\d+)\.pem$", f) for f in os.listdir(KEY_DIR)) if m)
KEYS = {"v%d" % v: load_key(os.path.join(KEY_DIR, "v%d.pem" % v)) for v in VERSIONS}
CURRENT = "v%d" % VERSIONS[-1]


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))



def make_tls():
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "image-syncer stand-in CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                                       key_encipherment=False, data_encipherment=False, key_agreement=False,
                                       encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(leaf_key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    with open(CA_OUT, "wb") as f:
        f.write(ca.public_bytes(serialization.Encoding.PEM))
    d = tempfile.mkdtemp()
    cert_file, key_file = os.path.join(d, "cert.pem"), os.path.join(d, "key.pem")
    with open(cert_file, "wb") as f:
        f.write(leaf.public_bytes(serialization.Encoding.PEM))
    with open(key_file, "wb") as f:
        f.write(leaf_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert_file, key_file)
    return ctx


class Azure(Handler):
    log_file = LOG
    protocol_version = "HTTP/1.1"

    def host(self):
        return "https://127.0.0.1:%d" % PORT

    def route(self, method, body):
        url = urlparse(self.path)
        if url.path == "/msi/token":
            if self.headers.get("X-IDENTITY-HEADER") != IDENTITY_HEADER:
                return self.reply(400, {"error": "missing identity header"})
            return self.reply(200, {"access_token": TOKEN, "expires_on": str(int(time.time()) + 3600),
                                    "resource": "https://vault.azure.net", "token_type": "Bearer"})
        if self.headers.get("Authorization") != "Bearer " + TOKEN:
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Bearer authorization="https://login.microsoftonline.com/standin", '
                                                 'resource="https://vault.azure.net"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        m = re.fullmatch(r"/keys/cosign/?(v\d+)?(/sign)?", url.path)
        if not m:
            return self.reply(404, {"error": {"code": "NotFound", "message": "stand-in: no route " + url.path}})
        version = m.group(1) or CURRENT
        key = KEYS.get(version)
        if key is None:
            return self.reply(404, {"error": {"code": "KeyNotFound", "message": "no such version"}})
        kid = "%s/keys/cosign/%s" % (self.host(), version)
        if m.group(2) and method == "POST":
            req = json.loads(body)
            if req.get("alg") != "ES256":
                return self.reply(400, {"error": {"code": "BadParameter", "message": "alg must be ES256"}})
            digest = unb64url(req["value"])
            if len(digest) != 32:
                return self.reply(400, {"error": {"code": "BadParameter", "message": "digest must be 32 bytes"}})
            r, s = decode_dss_signature(sign_prehashed(key, digest))
            return self.reply(200, {"kid": kid, "value": b64url(r.to_bytes(32, "big") + s.to_bytes(32, "big"))})
        if method == "GET" and not m.group(2):
            nums = key.public_key().public_numbers()
            return self.reply(200, {"key": {"kid": kid, "kty": "EC", "crv": "P-256", "key_ops": ["sign", "verify"],
                                            "x": b64url(nums.x.to_bytes(32, "big")), "y": b64url(nums.y.to_bytes(32, "big"))},
                                    "attributes": {"enabled": True}})
        return self.reply(405, {"error": {"code": "MethodNotAllowed", "message": method}})


server = ThreadingHTTPServer(("127.0.0.1", PORT), Azure)
server.socket = make_tls().wrap_socket(server.socket, server_side=True)
print("ready", flush=True)
server.serve_forever()
