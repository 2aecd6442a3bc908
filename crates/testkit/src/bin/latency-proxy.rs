//! The testkit's latency proxy as a program, for the benchmark's latency mode
//! (`bench/run.sh --latency MS`): relays TCP connections from the listening
//! address to the upstream one, adding MS milliseconds in each direction
//! (a round trip costs 2 × MS; opening a connection one more round trip).
//! TLS passes through untouched. Prints the port it listens on when ready,
//! then runs until killed.
//!
//!     latency-proxy --listen 127.0.0.1:PORT --upstream 127.0.0.1:PORT --delay-ms MS
//!
//! `--listen 127.0.0.1:0` picks a free port.

use std::io::Write;
use std::time::Duration;

const USAGE: &str =
    "usage: latency-proxy --listen 127.0.0.1:PORT --upstream HOST:PORT --delay-ms MS";

fn fail(msg: &str) -> ! {
    eprintln!("latency-proxy: {msg}\n{USAGE}");
    std::process::exit(2)
}

#[tokio::main]
async fn main() {
    let (mut listen, mut upstream, mut delay) = (None, None, None);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let (name, inline) = match a.split_once('=') {
            Some((n, v)) => (n.to_string(), Some(v.to_string())),
            None => (a.clone(), None),
        };
        if name == "-h" || name == "--help" {
            println!("{USAGE}");
            return;
        }
        let value = inline
            .or_else(|| args.next())
            .unwrap_or_else(|| fail(&format!("{name} needs a value")));
        match name.as_str() {
            "--listen" => listen = Some(value),
            "--upstream" => upstream = Some(value),
            "--delay-ms" => {
                delay = Some(Duration::from_millis(value.parse().unwrap_or_else(|_| {
                    fail(&format!("`{value}` is not a number of milliseconds"))
                })))
            }
            _ => fail(&format!("unknown argument `{a}`")),
        }
    }
    let (Some(listen), Some(upstream), Some(delay)) = (listen, upstream, delay) else {
        fail("--listen, --upstream and --delay-ms are all needed")
    };
    let listener = tokio::net::TcpListener::bind(&listen)
        .await
        .unwrap_or_else(|e| fail(&format!("cannot listen on {listen}: {e}")));
    let port = listener.local_addr().map(|a| a.port()).unwrap_or_default();
    let mut out = std::io::stdout();
    let _ = writeln!(out, "{port}");
    let _ = out.flush();
    eprintln!(
        "latency-proxy: 127.0.0.1:{port} -> {upstream}, {} ms each way",
        delay.as_millis()
    );
    image_syncer_testkit::latency::serve(listener, upstream, delay).await;
}
