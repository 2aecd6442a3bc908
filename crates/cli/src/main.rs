//! The `image-syncer` command: parse, call the core, render, map to an exit code.

mod args;
mod builtins;
mod metrics;
mod progress;
mod run;
mod service;

use std::process::ExitCode;

fn main() -> ExitCode {
    let args = args::parse();
    ExitCode::from(run::run(args) as u8)
}
