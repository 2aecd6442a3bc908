//! The testkit's fault-injecting proxy as a program, for the benchmark's
//! flaky rows (`bench/run.sh`): forwards 127.0.0.1:PORT to an upstream
//! registry, injecting faults at seeded rates, until stdin closes or it is
//! killed. Prints the port it listens on, then, at the end, what it injected.
//!
//!     fault-proxy UPSTREAM SEED SERVER_ERROR TOO_MANY DROP
//!
//! Rates are probabilities in [0, 1]; 429s carry `Retry-After: 1`.

use std::io::Read;
use std::sync::atomic::Ordering;

use image_syncer_testkit::faults::{FaultProxy, Faults};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: fault-proxy UPSTREAM SEED SERVER_ERROR TOO_MANY DROP";
    if args.len() != 5 {
        eprintln!("{usage}");
        std::process::exit(2);
    }
    let rate = |i: usize| -> f64 {
        args[i].parse().unwrap_or_else(|_| {
            eprintln!("fault-proxy: `{}` is not a rate; {usage}", args[i]);
            std::process::exit(2)
        })
    };
    let faults = Faults {
        seed: args[1].parse().unwrap_or_else(|_| {
            eprintln!("fault-proxy: `{}` is not a seed; {usage}", args[1]);
            std::process::exit(2)
        }),
        server_error: rate(2),
        too_many_requests: rate(3),
        drop_connection: rate(4),
        ..Default::default()
    };
    let proxy = FaultProxy::start(&args[0], faults);
    println!("{}", proxy.host().rsplit(':').next().unwrap_or_default());
    // Until stdin closes (the caller ends, or closes our input).
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
    let i = &proxy.injected;
    eprintln!(
        "fault-proxy: {} requests, {} faults ({} 500s, {} 429s, {} dropped)",
        i.requests.load(Ordering::SeqCst),
        i.random_faults(),
        i.server_errors.load(Ordering::SeqCst),
        i.too_many_requests.load(Ordering::SeqCst),
        i.dropped.load(Ordering::SeqCst)
    );
}
