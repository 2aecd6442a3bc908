//! Stand-in servers (tests/standins/*.py) for providers with no local
//! implementation: started on a free 127.0.0.1 port, stopped on drop.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct StandIn {
    child: Child,
    port: u16,
}

/// The folder of the stand-in scripts.
pub fn standins_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/standins")
}

impl StandIn {
    /// Starts `python3 tests/standins/<script> PORT <args...>` and waits for its
    /// "ready" line (at most 30 s).
    pub fn start(script: &str, args: &[&str]) -> StandIn {
        let port = crate::registry::free_port();
        let mut child = Command::new("python3")
            .arg(standins_dir().join(script))
            .arg(port.to_string())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3 runs the stand-in servers");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) if line.trim() == "ready" => StandIn { child, port },
            other => {
                let _ = child.kill();
                panic!("stand-in {script} did not start: {other:?} (it needs python3 with the `cryptography` package, which `pip install moto[server]` brings)");
            }
        }
    }

    /// `127.0.0.1:PORT`
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
