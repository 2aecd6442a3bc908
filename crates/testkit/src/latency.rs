//! A TCP proxy adding a fixed one-way delay, for the benchmark's latency mode
//! (`bench/run.sh --latency MS`, the `latency-proxy` program).
//!
//! Every connection accepted on the listener is relayed to the upstream
//! address, byte for byte (TLS passes through untouched). In each direction a
//! chunk read at time t is written at t + delay, in order: a round trip costs
//! 2 × delay, and throughput is not limited, because reading goes on while
//! earlier chunks wait for their time (a queue per direction of at most
//! [`QUEUE_CHUNKS`] chunks of at most [`CHUNK`] bytes).
//!
//! Opening a connection costs one more round trip, as a TCP handshake over a
//! real network does: the proxy starts relaying a new connection 2 × delay
//! after accepting it (what the client sent meanwhile waits in the kernel).

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// The largest chunk read at once.
pub const CHUNK: usize = 64 * 1024;
/// Chunks waiting for their time, per direction of a connection.
pub const QUEUE_CHUNKS: usize = 1024;

/// Accepts connections on `listener` forever, relaying each to `upstream`
/// with `delay` added in each direction.
pub async fn serve(listener: TcpListener, upstream: String, delay: Duration) {
    loop {
        let (client, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                eprintln!("latency-proxy: accept: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let upstream = upstream.clone();
        tokio::spawn(async move {
            // The handshake's round trip.
            tokio::time::sleep(2 * delay).await;
            let server = match TcpStream::connect(&upstream).await {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("latency-proxy: connecting to {upstream}: {e}");
                    return;
                }
            };
            relay(client, server, delay).await;
        });
    }
}

/// Relays both directions of one connection until both have ended.
pub async fn relay(a: TcpStream, b: TcpStream, delay: Duration) {
    let _ = a.set_nodelay(true);
    let _ = b.set_nodelay(true);
    let (ar, aw) = a.into_split();
    let (br, bw) = b.into_split();
    tokio::join!(direction(ar, bw, delay), direction(br, aw, delay));
}

/// One direction: a reader queueing (deadline, bytes) and a writer delivering
/// each chunk at its deadline; the end of the input (or an error) is passed
/// on as a shutdown of the output, also after the delay.
async fn direction(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, delay: Duration) {
    let (tx, mut rx) = mpsc::channel::<(Instant, Option<Vec<u8>>)>(QUEUE_CHUNKS);
    let reader = async move {
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = from.read(&mut buf).await.unwrap_or(0);
            let at = Instant::now() + delay;
            let chunk = (n > 0).then(|| buf[..n].to_vec());
            if tx.send((at, chunk)).await.is_err() || n == 0 {
                return;
            }
        }
    };
    let writer = async move {
        while let Some((at, chunk)) = rx.recv().await {
            tokio::time::sleep_until(at).await;
            match chunk {
                Some(bytes) => {
                    if to.write_all(&bytes).await.is_err() {
                        return; // the receiver is gone: dropping rx stops the reader
                    }
                }
                None => break,
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(reader, writer);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An echo server on 127.0.0.1; returns its address.
    async fn echo_server() -> String {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            loop {
                let Ok((s, _)) = l.accept().await else { return };
                tokio::spawn(async move {
                    let (mut r, mut w) = s.into_split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                    let _ = w.shutdown().await;
                });
            }
        });
        addr
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn round_trips_take_twice_the_delay_and_bytes_arrive_intact() {
        let delay = Duration::from_millis(20);
        let upstream = echo_server().await;
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy = l.local_addr().unwrap();
        tokio::spawn(serve(l, upstream, delay));

        tokio::time::timeout(Duration::from_secs(20), async {
            let t0 = std::time::Instant::now();
            let mut s = TcpStream::connect(proxy).await.unwrap();
            s.set_nodelay(true).unwrap();
            // First round trip: the handshake's plus the data's.
            s.write_all(b"ping").await.unwrap();
            let mut got = [0u8; 4];
            s.read_exact(&mut got).await.unwrap();
            assert_eq!(&got, b"ping");
            let first = t0.elapsed();
            assert!(first >= 4 * delay, "first round trip {first:?}");

            // Later round trips: 2 x delay each, and not much more.
            for i in 0..5u8 {
                let t = std::time::Instant::now();
                s.write_all(&[i; 10]).await.unwrap();
                let mut got = [0u8; 10];
                s.read_exact(&mut got).await.unwrap();
                assert_eq!(got, [i; 10]);
                let rtt = t.elapsed();
                assert!(rtt >= 2 * delay, "round trip {i}: {rtt:?}");
                assert!(
                    rtt < 2 * delay + Duration::from_secs(2),
                    "round trip {i}: {rtt:?}"
                );
            }

            // 8 MiB of patterned bytes, written while reading back: intact, in
            // order, and in far less than one delay per chunk (throughput is
            // not limited by the delay).
            let data: Vec<u8> = (0..8 << 20).map(|i: u32| (i % 251) as u8).collect();
            let (mut r, mut w) = s.into_split();
            let t = std::time::Instant::now();
            let sent = data.clone();
            let writer = tokio::spawn(async move {
                w.write_all(&sent).await.unwrap();
                w.shutdown().await.unwrap();
            });
            let mut back = Vec::new();
            r.read_to_end(&mut back).await.unwrap();
            writer.await.unwrap();
            let bulk = t.elapsed();
            assert!(
                back == data,
                "{} bytes back of {}, or different",
                back.len(),
                data.len()
            );
            assert!(bulk >= 2 * delay, "bulk {bulk:?}");
            // 128 chunks of 64 KiB at one delay each would take 2.5 s.
            assert!(bulk < Duration::from_secs(2), "bulk {bulk:?}");
        })
        .await
        .expect("the test finishes within 20 s");
    }
}
