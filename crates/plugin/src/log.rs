//! Plugin logs, carried to the host.
//!
//! A plugin links its own copy of `tracing`, whose global dispatcher the host
//! never sees. At registration the host hands over a [`HostLog`]: plain C data
//! (a level, a function pointer and an opaque context). [`install`] makes the
//! plugin copy's global subscriber a [`Forward`], which formats each event
//! into text and calls the host's function with it; the host re-emits it with
//! its own `tracing`, under its own filter. Nothing but bytes and integers
//! crosses, so neither side's `tracing` statics meet.

use std::ffi::c_void;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Metadata, Subscriber};

/// The host's log sink, handed to the plugin at registration.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct HostLog {
    /// The most verbose level the host shows: 1 error, 2 warn, 3 info,
    /// 4 debug, 5 trace; 0 shows nothing.
    pub max_level: u8,
    /// Passed back to `emit` unchanged (the host's record of the library).
    pub context: *const c_void,
    /// Shows one event: its level (as `max_level`), its target and its text
    /// (UTF-8, not NUL-terminated). Never unwinds.
    pub emit: extern "C" fn(
        context: *const c_void,
        level: u8,
        target: *const u8,
        target_len: usize,
        text: *const u8,
        text_len: usize,
    ),
}

// The context is only ever handed back to the host's `emit`, which may be
// called from any thread.
unsafe impl Send for HostLog {}
unsafe impl Sync for HostLog {}

/// `tracing`'s levels as the numbers [`HostLog`] uses.
pub fn level_number(level: &Level) -> u8 {
    match *level {
        Level::ERROR => 1,
        Level::WARN => 2,
        Level::INFO => 3,
        Level::DEBUG => 4,
        Level::TRACE => 5,
    }
}

/// Makes [`Forward`] the global subscriber of this copy of `tracing` (in a
/// plugin: the plugin's). A copy that already has one keeps it.
pub fn install(log: HostLog) {
    let _ = tracing::subscriber::set_global_default(Forward {
        log,
        next_span: AtomicU64::new(1),
    });
}

/// A subscriber that hands every enabled event to the host as text. Spans are
/// not carried: they get ids and are otherwise ignored.
pub struct Forward {
    log: HostLog,
    next_span: AtomicU64,
}

impl Subscriber for Forward {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        level_number(metadata.level()) <= self.log.max_level
    }

    fn max_level_hint(&self) -> Option<tracing::level_filters::LevelFilter> {
        Some(match self.log.max_level {
            0 => tracing::level_filters::LevelFilter::OFF,
            1 => tracing::level_filters::LevelFilter::ERROR,
            2 => tracing::level_filters::LevelFilter::WARN,
            3 => tracing::level_filters::LevelFilter::INFO,
            4 => tracing::level_filters::LevelFilter::DEBUG,
            _ => tracing::level_filters::LevelFilter::TRACE,
        })
    }

    fn new_span(&self, _: &Attributes<'_>) -> Id {
        Id::from_u64(self.next_span.fetch_add(1, Ordering::Relaxed).max(1))
    }

    fn record(&self, _: &Id, _: &Record<'_>) {}

    fn record_follows_from(&self, _: &Id, _: &Id) {}

    fn event(&self, event: &Event<'_>) {
        let text = render(event);
        let target = event.metadata().target();
        (self.log.emit)(
            self.log.context,
            level_number(event.metadata().level()),
            target.as_ptr(),
            target.len(),
            text.as_ptr(),
            text.len(),
        );
    }

    fn enter(&self, _: &Id) {}

    fn exit(&self, _: &Id) {}
}

/// An event as one line: its message, then its other fields as `key=value`.
pub fn render(event: &Event<'_>) -> String {
    #[derive(Default)]
    struct Text {
        message: String,
        fields: String,
    }
    impl Visit for Text {
        fn record_str(&mut self, field: &Field, value: &str) {
            if field.name() == "message" {
                self.message.push_str(value);
            } else {
                let _ = write!(self.fields, " {}={value}", field.name());
            }
        }
        fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
            if field.name() == "message" {
                let _ = write!(self.message, "{value:?}");
            } else {
                let _ = write!(self.fields, " {}={value:?}", field.name());
            }
        }
    }
    let mut text = Text::default();
    event.record(&mut text);
    text.message + &text.fields
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    static SEEN: Mutex<Vec<(u8, String, String)>> = Mutex::new(Vec::new());

    extern "C" fn keep(
        _: *const c_void,
        level: u8,
        target: *const u8,
        target_len: usize,
        text: *const u8,
        text_len: usize,
    ) {
        let read = |p, n| unsafe {
            String::from_utf8_lossy(std::slice::from_raw_parts(p, n)).into_owned()
        };
        SEEN.lock()
            .unwrap()
            .push((level, read(target, target_len), read(text, text_len)));
    }

    #[test]
    fn events_up_to_the_host_level_cross_as_text() {
        let forward = Forward {
            log: HostLog {
                max_level: 3,
                context: std::ptr::null(),
                emit: keep,
            },
            next_span: AtomicU64::new(1),
        };
        tracing::subscriber::with_default(forward, || {
            let _span = tracing::info_span!("ignored", id = 7).entered();
            tracing::warn!(digest = "sha256:ab", size = 3u64, "blob written");
            tracing::info!(path = ?std::path::Path::new("/x"), "done");
            tracing::debug!("not shown: above the host's level");
        });
        let seen = SEEN.lock().unwrap().clone();
        assert_eq!(
            seen,
            vec![
                (
                    2,
                    "image_syncer_plugin::log::tests".to_string(),
                    "blob written digest=sha256:ab size=3".to_string()
                ),
                (
                    3,
                    "image_syncer_plugin::log::tests".to_string(),
                    "done path=\"/x\"".to_string()
                ),
            ]
        );
    }
}
