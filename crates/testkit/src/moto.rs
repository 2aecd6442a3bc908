//! moto's server (PyPI `moto[server]`): real AWS KMS and ECR API
//! implementations on 127.0.0.1 (ECR's API only: moto serves no registry
//! protocol).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const MISSING: &str = "moto's server (`moto_server`, PyPI package `moto[server]`) is needed by the AWS KMS tests and was not found.\n\
Install it with `pip install \"moto[server]\"` (scripts/test.sh does this).";

/// A running moto server, stopped on drop.
pub struct Moto {
    child: Child,
    port: u16,
}

impl Moto {
    pub fn start() -> Moto {
        let mut last = String::new();
        for _ in 0..5 {
            let port = crate::registry::free_port();
            let spawned = Command::new("moto_server")
                .args(["-H", "127.0.0.1", "-p", &port.to_string()])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn();
            let mut child = match spawned {
                Ok(c) => c,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!("{MISSING}"),
                Err(e) => panic!("moto_server: {e}"),
            };
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                if let Ok(Some(status)) = child.try_wait() {
                    last = format!("moto_server exited with {status}");
                    break;
                }
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return Moto { child, port };
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    last = "moto_server did not listen within 30 s".into();
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        panic!("could not start moto: {last}");
    }

    /// `http://127.0.0.1:PORT`
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Environment for the AWS SDK to use this server with dummy credentials.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.endpoint()),
            ("AWS_ACCESS_KEY_ID", "testing".into()),
            ("AWS_SECRET_ACCESS_KEY", "testing".into()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_EC2_METADATA_DISABLED", "true".into()),
            ("AWS_CONFIG_FILE", "/nonexistent".into()),
            ("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent".into()),
        ]
    }

    /// Calls a KMS action (JSON protocol) and returns the JSON answer.
    pub fn kms(&self, action: &str, body: serde_json::Value) -> serde_json::Value {
        let (status, answer) = self.call("TrentService", "us-east-1", "kms", action, body);
        assert_eq!(status, 200, "moto {action}: {answer}");
        answer
    }

    /// Calls an ECR API action in `region` (JSON protocol): the status and
    /// the JSON answer (an error's too: `__type` names the exception).
    pub fn ecr(
        &self,
        region: &str,
        action: &str,
        body: serde_json::Value,
    ) -> (u16, serde_json::Value) {
        self.call(
            "AmazonEC2ContainerRegistry_V20150921",
            region,
            "ecr",
            action,
            body,
        )
    }

    /// One call of a JSON-protocol API (`X-Amz-Target: <target>.<action>`),
    /// signed (in name: moto checks no signature) for `region`, which
    /// chooses moto's backend.
    fn call(
        &self,
        target: &str,
        region: &str,
        service: &str,
        action: &str,
        body: serde_json::Value,
    ) -> (u16, serde_json::Value) {
        let body = body.to_string();
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).expect("connect to moto");
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        write!(
            s,
            "POST / HTTP/1.0\r\nHost: 127.0.0.1:{}\r\nX-Amz-Target: {target}.{action}\r\nContent-Type: application/x-amz-json-1.1\r\nAuthorization: AWS4-HMAC-SHA256 Credential=testing/20260101/{region}/{service}/aws4_request, SignedHeaders=host, Signature=0\r\nContent-Length: {}\r\n\r\n{body}",
            self.port,
            body.len()
        )
        .unwrap();
        let mut resp = String::new();
        s.read_to_string(&mut resp).expect("moto answers");
        let (head, json) = resp.split_once("\r\n\r\n").expect("HTTP response");
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or_else(|| panic!("moto {action}: not an HTTP answer: {resp}"));
        let json = serde_json::from_str(json)
            .unwrap_or_else(|e| panic!("moto {action}: not JSON ({e}): {resp}"));
        (status, json)
    }

    /// Creates an ECC_NIST_P256 SIGN_VERIFY key; returns its id.
    pub fn create_p256_key(&self) -> String {
        let v = self.kms(
            "CreateKey",
            serde_json::json!({"KeySpec": "ECC_NIST_P256", "KeyUsage": "SIGN_VERIFY"}),
        );
        v["KeyMetadata"]["KeyId"]
            .as_str()
            .expect("key id")
            .to_string()
    }

    /// The key's public key as PEM (SPKI).
    pub fn public_key_pem(&self, key_id: &str) -> String {
        let v = self.kms("GetPublicKey", serde_json::json!({"KeyId": key_id}));
        let b64 = v["PublicKey"].as_str().expect("public key");
        let mut pem = String::from("-----BEGIN PUBLIC KEY-----\n");
        for chunk in b64.as_bytes().chunks(64) {
            pem.push_str(std::str::from_utf8(chunk).unwrap());
            pem.push('\n');
        }
        pem.push_str("-----END PUBLIC KEY-----\n");
        pem
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
