//! A hostile registry: a small HTTP/1.1 server on 127.0.0.1 that serves
//! crafted answers (manifests of any size, lying `Content-Length`s, endless
//! index nesting, bad digests) to see that image-syncer refuses them with a
//! clear message, in bounded time and memory. It speaks just enough of the
//! distribution API for a source: `/v2/`, manifests and blobs by path; every
//! connection serves one request and closes.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use image_syncer_core::digest::Digest;

/// What is sent after the headers.
#[derive(Clone, Debug)]
pub enum Body {
    /// These bytes, with their true `Content-Length`.
    Bytes(Vec<u8>),
    /// `Content-Length: declared`, then only `sent`, then the connection is
    /// held open (at most 30 s) as if the rest were coming.
    Lying { declared: u64, sent: Vec<u8> },
    /// These bytes in chunked encoding: no `Content-Length` at all.
    Chunked(Vec<u8>),
}

/// One crafted answer.
#[derive(Clone, Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Body,
}

impl Answer {
    /// A manifest answer: its media type and `Docker-Content-Digest` (the
    /// digest of `bytes`, or `digest` when given, for a registry that lies).
    pub fn manifest(media_type: &str, bytes: Vec<u8>, digest: Option<&str>) -> Answer {
        let digest = digest
            .map(str::to_string)
            .unwrap_or_else(|| Digest::sha256_of(&bytes).to_string());
        Answer {
            status: 200,
            headers: vec![
                ("Content-Type".into(), media_type.into()),
                ("Docker-Content-Digest".into(), digest),
            ],
            body: Body::Bytes(bytes),
        }
    }

    /// A blob answer.
    pub fn blob(body: Body) -> Answer {
        Answer {
            status: 200,
            headers: vec![("Content-Type".into(), "application/octet-stream".into())],
            body,
        }
    }
}

/// A running hostile registry, stopped on drop.
pub struct HostileRegistry {
    port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl HostileRegistry {
    /// Serves `routes`, keyed by path (`/v2/evil/manifests/1`); HEAD gets the
    /// GET answer's headers. `/v2/` answers 200; anything else 404
    /// `MANIFEST_UNKNOWN`.
    pub fn start(routes: HashMap<String, Answer>) -> HostileRegistry {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
        listener.set_nonblocking(true).expect("nonblocking");
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let routes = Arc::new(routes);
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            // Bounded: ends when the registry is dropped.
            while !flag.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        let (routes, flag) = (routes.clone(), flag.clone());
                        std::thread::spawn(move || serve(conn, &routes, &flag));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        HostileRegistry {
            port,
            stop,
            thread: Some(thread),
        }
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for HostileRegistry {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(conn: TcpStream, routes: &HashMap<String, Answer>, stop: &AtomicBool) {
    let _ = conn.set_nonblocking(false);
    let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
    let mut reader = BufReader::new(match conn.try_clone() {
        Ok(c) => c,
        Err(_) => return,
    });
    let mut request = String::new();
    if reader.read_line(&mut request).is_err() {
        return;
    }
    // The rest of the head (bounded: 100 lines).
    for _ in 0..100 {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) if line == "\r\n" || line == "\n" => break,
            Ok(_) => {}
        }
    }
    let mut parts = request.split_whitespace();
    let method = parts.next().unwrap_or_default().to_string();
    let path = parts
        .next()
        .unwrap_or_default()
        .split('?')
        .next()
        .unwrap_or_default()
        .to_string();
    let answer = if path == "/v2/" {
        Answer {
            status: 200,
            headers: vec![("Content-Type".into(), "application/json".into())],
            body: Body::Bytes(b"{}".to_vec()),
        }
    } else {
        routes.get(&path).cloned().unwrap_or(Answer {
            status: 404,
            headers: vec![("Content-Type".into(), "application/json".into())],
            body: Body::Bytes(
                br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"not here"}]}"#.to_vec(),
            ),
        })
    };
    let _ = respond(conn, &method, answer, stop);
}

fn respond(
    mut conn: TcpStream,
    method: &str,
    answer: Answer,
    stop: &AtomicBool,
) -> std::io::Result<()> {
    let mut head = format!("HTTP/1.1 {} X\r\nConnection: close\r\n", answer.status);
    for (k, v) in &answer.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    match &answer.body {
        Body::Bytes(b) => head.push_str(&format!("Content-Length: {}\r\n", b.len())),
        Body::Lying { declared, .. } => head.push_str(&format!("Content-Length: {declared}\r\n")),
        Body::Chunked(_) => head.push_str("Transfer-Encoding: chunked\r\n"),
    }
    head.push_str("\r\n");
    conn.write_all(head.as_bytes())?;
    if method == "HEAD" {
        return conn.flush();
    }
    match answer.body {
        Body::Bytes(b) => conn.write_all(&b)?,
        Body::Lying { sent, .. } => {
            conn.write_all(&sent)?;
            conn.flush()?;
            // As if the rest were coming: held (bounded: 30 s, or until the
            // registry stops) unless the client hangs up first.
            conn.set_read_timeout(Some(Duration::from_millis(100)))?;
            let mut probe = [0u8; 1];
            for _ in 0..300 {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                match std::io::Read::read(&mut conn, &mut probe) {
                    // The client hung up.
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) => {}
                    Err(_) => break,
                }
            }
        }
        Body::Chunked(b) => {
            for chunk in b.chunks(64 * 1024) {
                conn.write_all(format!("{:x}\r\n", chunk.len()).as_bytes())?;
                conn.write_all(chunk)?;
                conn.write_all(b"\r\n")?;
            }
            conn.write_all(b"0\r\n\r\n")?;
        }
    }
    conn.flush()
}
