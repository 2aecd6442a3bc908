//! What an oci-client error means to the orchestrator: its [`ErrorKind`],
//! pushback, `Retry-After` wait and refusing registry; and the plugin's own
//! error, [`SetupError`].

use image_syncer_core::digest::ContentMismatch;
use image_syncer_core::reference::ImageRef;
use image_syncer_core::stage::{error_chain, ErrorKind, Pushback, StageError};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use tracing::debug;

/// Why the `oci` stage could not be set up (a [`crate::OciRegistry`] not
/// built): an input error, reported before any registry is asked.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// The HTTP client could not be built, most often because an extra CA
    /// certificate (`--ca-file`) cannot be used.
    #[error("cannot set up the registry client (CA files: {}): {source}", ca_files.join(", "))]
    Client {
        /// The CA files given, as named.
        ca_files: Vec<String>,
        source: OciDistributionError,
    },
}

/// The kind a registry's error code stands for (distribution spec error codes).
fn code_kind(code: &OciErrorCode) -> Option<ErrorKind> {
    match code {
        OciErrorCode::ManifestUnknown
        | OciErrorCode::NameUnknown
        | OciErrorCode::BlobUnknown
        | OciErrorCode::NotFound => Some(ErrorKind::NotFound),
        // The registry hashed what it received and it was not the digest.
        OciErrorCode::DigestInvalid => Some(ErrorKind::Integrity),
        OciErrorCode::Unauthorized | OciErrorCode::Denied => Some(ErrorKind::Unauthorized),
        OciErrorCode::Toomanyrequests => Some(ErrorKind::Transient),
        _ => None,
    }
}

/// Maps an oci-client error to a stage error, keeping the wait a registry
/// asked for with `Retry-After`. Messages never include credentials.
pub(crate) fn classify(context: &str, e: OciDistributionError, r: &ImageRef) -> StageError {
    let kind = kind_of(&e);
    let hint = if kind == ErrorKind::Unauthorized {
        match crate::cloud::missing_identity(r.registry()) {
            // Read anonymously because the run has no identity of its cloud.
            Some(missing) => format!(
                " (registry {} refused access; it was read anonymously: {missing})",
                r.registry()
            ),
            None => format!(" (registry {} refused access)", r.registry()),
        }
    } else {
        String::new()
    };
    let mut error = StageError::new(kind, format!("{context}: {}{hint}", error_chain(&e)));
    if kind == ErrorKind::Unauthorized {
        error = error.with_refused_by(r.registry());
    }
    if kind == ErrorKind::Transient && busy(&e) {
        error = error.with_pushback(Pushback::Busy);
    }
    match &e {
        OciDistributionError::RetryAfter { retry_after, .. } if kind == ErrorKind::Transient => {
            match parse_retry_after(retry_after, std::time::SystemTime::now()) {
                Some(wait) => error.with_retry_after(wait),
                None => {
                    debug!(value = %retry_after, "unreadable Retry-After, using the backoff");
                    error
                }
            }
        }
        _ => error,
    }
}

/// Whether a registry answered "slow down": 429 or 503, or a
/// `TOOMANYREQUESTS` code.
fn busy(e: &OciDistributionError) -> bool {
    use OciDistributionError as E;
    match e {
        E::RetryAfter { source, .. } => busy(source),
        E::ServerError { code, .. } => matches!(code, 429 | 503),
        E::RegistryError { envelope, .. } => envelope
            .errors
            .iter()
            .any(|x| matches!(x.code, OciErrorCode::Toomanyrequests)),
        E::RequestError(re) => matches!(re.status().map(|s| s.as_u16()), Some(429 | 503)),
        _ => false,
    }
}

/// [`classify`] for a write (a manifest or blob put). The registry's
/// refusal of what we sent (a blob or child it does not see, a digest it
/// computed otherwise: `MANIFEST_BLOB_UNKNOWN`, `BLOB_UNKNOWN`,
/// `DIGEST_INVALID`, `MANIFEST_INVALID`, or any other 400/404) is a
/// consistency failure, never a safety stop: we verified the bytes
/// ourselves, so the registry's view, not the content, is in question.
pub(crate) fn classify_write(context: &str, e: OciDistributionError, r: &ImageRef) -> StageError {
    use OciDistributionError as E;
    let refused = |e: &E| match e {
        E::RegistryError { .. } => true,
        E::ServerError { code, .. } => matches!(code, 400 | 404),
        _ => false,
    };
    let inconsistent = match &e {
        E::RetryAfter { source, .. } => refused(source),
        other => refused(other),
    };
    let mut error = classify(context, e, r);
    if inconsistent
        && matches!(
            error.kind,
            ErrorKind::Integrity | ErrorKind::NotFound | ErrorKind::Invalid
        )
    {
        error.kind = ErrorKind::Consistency;
    }
    error
}

/// A `Retry-After` value (RFC 9110 §10.2.3): delay-seconds, or an HTTP-date
/// (a date already past means no wait).
fn parse_retry_after(value: &str, now: std::time::SystemTime) -> Option<std::time::Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(std::time::Duration::from_secs(secs));
    }
    let when = httpdate::parse_http_date(value).ok()?;
    Some(when.duration_since(now).unwrap_or_default())
}

/// The kind of an oci-client error.
fn kind_of(e: &OciDistributionError) -> ErrorKind {
    use OciDistributionError as E;
    match e {
        E::RetryAfter { source, .. } => kind_of(source),
        E::ImageManifestNotFoundError(_) => ErrorKind::NotFound,
        E::RegistryError { envelope, .. } => {
            // With several codes in one envelope, the first kind in this order wins.
            let found = |k| {
                envelope
                    .errors
                    .iter()
                    .any(|x| code_kind(&x.code) == Some(k))
            };
            [
                ErrorKind::NotFound,
                ErrorKind::Integrity,
                ErrorKind::Unauthorized,
                ErrorKind::Transient,
            ]
            .into_iter()
            .find(|k| found(*k))
            .unwrap_or(ErrorKind::Invalid)
        }
        E::ServerError { code: 404, .. } => ErrorKind::NotFound,
        E::ServerError {
            code: 400, message, ..
        } if message.contains("DIGEST_INVALID") => ErrorKind::Integrity,
        E::ServerError {
            code: 401 | 403, ..
        } => ErrorKind::Unauthorized,
        E::ServerError { code, .. } if *code >= 500 || *code == 429 || *code == 408 => {
            ErrorKind::Transient
        }
        E::ServerError { .. } => ErrorKind::Invalid,
        E::UnauthorizedError { .. } | E::AuthenticationFailure(_) => ErrorKind::Unauthorized,
        E::DigestError(_) => ErrorKind::Integrity,
        E::IoError(io) if ContentMismatch::from_io(io).is_some() => ErrorKind::Integrity,
        E::UnsupportedMediaTypeError(_)
        | E::UnsupportedSchemaVersionError(_)
        | E::ManifestParsingError(_)
        | E::VersionedParsingError(_)
        | E::JsonError(_)
        | E::SpecViolationError(_) => ErrorKind::Invalid,
        E::RequestError(re) if matches!(re.status().map(|s| s.as_u16()), Some(401 | 403)) => {
            ErrorKind::Unauthorized
        }
        _ => ErrorKind::Transient,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    #[test]
    fn a_refusal_of_our_write_is_a_consistency_failure_not_a_stop() {
        let refused = |code: &str| OciDistributionError::ServerError {
            code: 400,
            url: "https://registry.example/v2/team/app/manifests/1".into(),
            message: format!("{{\"errors\":[{{\"code\":\"{code}\"}}]}}"),
        };
        for code in [
            "DIGEST_INVALID",
            "MANIFEST_BLOB_UNKNOWN",
            "MANIFEST_INVALID",
        ] {
            let e = classify_write("pushing", refused(code), &image());
            assert_eq!(e.kind, ErrorKind::Consistency, "{code}");
            assert!(e.message.contains(code), "{}", e.message);
        }
        // The same answer to a read keeps its kind; a 5xx on a write stays transient.
        assert_eq!(
            classify("pulling", refused("DIGEST_INVALID"), &image()).kind,
            ErrorKind::Integrity
        );
        let e = classify_write(
            "pushing",
            OciDistributionError::ServerError {
                code: 503,
                url: "u".into(),
                message: "busy".into(),
            },
            &image(),
        );
        assert_eq!(
            (e.kind, e.pushback),
            (ErrorKind::Transient, Some(Pushback::Busy))
        );
    }

    #[test]
    fn retry_after_reads_seconds_and_http_dates() {
        // Wed, 21 Oct 2015 07:28:00 GMT
        let now = UNIX_EPOCH + Duration::from_secs(1_445_412_480);
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:30 GMT", now),
            Some(Duration::from_secs(30))
        );
        // A date already past: no wait.
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        for bad in ["soon", "-5", "1.5", ""] {
            assert_eq!(parse_retry_after(bad, now), None, "{bad}");
        }
        assert!(parse_retry_after("120", SystemTime::now()).is_some());
    }

    fn image() -> ImageRef {
        ImageRef::parse("registry.example/team/app:1").unwrap()
    }

    fn too_many(retry_after: &str) -> OciDistributionError {
        OciDistributionError::RetryAfter {
            retry_after: retry_after.into(),
            source: Box::new(OciDistributionError::ServerError {
                code: 429,
                url: "https://registry.example/v2/team/app/manifests/1".into(),
                message: "slow down".into(),
            }),
        }
    }

    #[test]
    fn a_429_keeps_the_wait_the_registry_asked_for() {
        let e = classify(
            "registry.example/team/app:1: fetching manifest",
            too_many("7"),
            &image(),
        );
        assert_eq!(e.kind, ErrorKind::Transient);
        assert_eq!(e.retry_after, Some(Duration::from_secs(7)));
        assert_eq!(
            e.message,
            "registry.example/team/app:1: fetching manifest: Server error: url https://registry.example/v2/team/app/manifests/1, code: 429, message: slow down (the registry asks to retry after 7)"
        );
        // An unreadable value falls back to the backoff, still retried.
        let e = classify("x", too_many("later"), &image());
        assert_eq!((e.kind, e.retry_after), (ErrorKind::Transient, None));
    }

    #[test]
    fn a_retry_after_on_a_refusal_is_not_a_reason_to_retry() {
        let e = OciDistributionError::RetryAfter {
            retry_after: "5".into(),
            source: Box::new(OciDistributionError::ServerError {
                code: 403,
                url: "u".into(),
                message: "denied".into(),
            }),
        };
        let e = classify("x", e, &image());
        assert_eq!((e.kind, e.retry_after), (ErrorKind::Unauthorized, None));
    }

    #[test]
    fn a_refusal_of_access_names_the_registry_in_a_field() {
        let denied = |code| OciDistributionError::ServerError {
            code,
            url: "u".into(),
            message: "denied".into(),
        };
        for code in [401, 403] {
            let e = classify("x", denied(code), &image());
            assert_eq!(e.kind, ErrorKind::Unauthorized);
            assert_eq!(e.refused_by.as_deref(), Some("registry.example"));
            let e = classify_write("x", denied(code), &image());
            assert_eq!(e.refused_by.as_deref(), Some("registry.example"));
        }
        // Any other failure names no registry as refusing.
        for code in [404, 429, 500] {
            assert_eq!(classify("x", denied(code), &image()).refused_by, None);
        }
    }
}
