//! A one-line progress display on stderr when it is a terminal.

use std::io::Write as _;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use image_syncer_core::report::{ImageReport, Progress};

pub struct TtyProgress {
    total: AtomicUsize,
    to_copy: AtomicUsize,
    done: AtomicUsize,
    bytes: AtomicU64,
    last: Mutex<(Instant, String)>,
}

impl TtyProgress {
    pub fn new() -> TtyProgress {
        TtyProgress {
            total: AtomicUsize::new(0),
            to_copy: AtomicUsize::new(0),
            done: AtomicUsize::new(0),
            bytes: AtomicU64::new(0),
            last: Mutex::new((Instant::now() - Duration::from_secs(1), String::new())),
        }
    }

    fn draw(&self, current: Option<&str>, force: bool) {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = current {
            last.1 = c.to_string();
        }
        if !force && last.0.elapsed() < Duration::from_millis(100) {
            return;
        }
        last.0 = Instant::now();
        let mib = self.bytes.load(Ordering::Relaxed) as f64 / (1024.0 * 1024.0);
        let line = format!(
            "[{}/{} images] {} to copy, {mib:.1} MiB copied{}",
            self.done.load(Ordering::Relaxed),
            self.total.load(Ordering::Relaxed),
            self.to_copy.load(Ordering::Relaxed),
            if last.1.is_empty() {
                String::new()
            } else {
                format!(" · {}", last.1)
            }
        );
        let mut err = std::io::stderr().lock();
        let _ = write!(
            err,
            "\r\x1b[2K{}",
            line.chars().take(160).collect::<String>()
        );
        let _ = err.flush();
    }

    /// Clears the line before the summary is printed.
    pub fn clear(&self) {
        let mut err = std::io::stderr().lock();
        let _ = write!(err, "\r\x1b[2K");
        let _ = err.flush();
    }
}

impl Progress for TtyProgress {
    fn planned(&self, total: usize, to_copy: usize) {
        self.total.store(total, Ordering::Relaxed);
        self.to_copy.store(to_copy, Ordering::Relaxed);
        self.draw(None, true);
    }

    fn transferred(&self, _index: usize, source: &str, bytes: u64) {
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
        self.draw(Some(source), false);
    }

    fn finished(&self, image: &ImageReport) {
        let done = self.done.fetch_add(1, Ordering::Relaxed) + 1;
        // The last image always shows, however soon it comes.
        let last = done == self.total.load(Ordering::Relaxed);
        self.draw(
            Some(&format!("{} {}", image.action.label(), image.source)),
            last,
        );
    }
}
