//! Content digests (`sha256:<hex>`) and on-the-fly verification of streamed content.

use std::fmt;
use std::pin::Pin;
use std::str::FromStr;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::Stream;
use sha2::{Digest as _, Sha256, Sha512};

/// A content digest as used by OCI: `<algorithm>:<lowercase hex>`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    algorithm: Algorithm,
    hex: String,
}

/// Digest algorithms image-syncer can verify.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Algorithm {
    Sha256,
    Sha512,
}

impl Algorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha512 => "sha512",
        }
    }
    fn hex_len(self) -> usize {
        match self {
            Algorithm::Sha256 => 64,
            Algorithm::Sha512 => 128,
        }
    }
}

/// Why a string is not a digest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestParseError {
    #[error("`{0}` is not a digest: expected `sha256:<64 hex digits>`")]
    Shape(String),
    #[error("`{0}` uses an unsupported digest algorithm (supported: sha256, sha512)")]
    Algorithm(String),
    #[error(
        "`{value}` is not a valid {algorithm} digest: expected {expected} lowercase hex digits"
    )]
    Hex {
        value: String,
        algorithm: &'static str,
        expected: usize,
    },
}

impl Digest {
    /// The sha256 digest of `data`.
    pub fn sha256_of(data: &[u8]) -> Digest {
        Digest {
            algorithm: Algorithm::Sha256,
            hex: hex::encode(Sha256::digest(data)),
        }
    }

    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The hex part, without the algorithm.
    pub fn hex(&self) -> &str {
        &self.hex
    }

    /// Checks `data` against this digest.
    pub fn verify(&self, data: &[u8]) -> Result<(), Digest> {
        let mut v = Verifier::new(self.algorithm);
        v.update(data);
        let actual = v.finish();
        if &actual == self {
            Ok(())
        } else {
            Err(actual)
        }
    }
}

/// The tags that attach artifacts to an image by its digest: cosign's
/// `sha256-<hex>.sig`, `.att` and `.sbom`, and the OCI 1.1 referrers tag
/// schema's `sha256-<hex>`. Written here once: carrying them, signing and
/// keeping them apart from images all use this rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum AttachedTag {
    /// cosign signatures: `sha256-<hex>.sig`.
    Signature,
    /// cosign attestations: `sha256-<hex>.att`.
    Attestation,
    /// cosign SBOMs: `sha256-<hex>.sbom`.
    Sbom,
    /// The referrers tag schema's index: `sha256-<hex>`.
    Referrers,
}

impl AttachedTag {
    /// Every kind, in the order they are carried.
    pub const ALL: [AttachedTag; 4] = [
        AttachedTag::Signature,
        AttachedTag::Attestation,
        AttachedTag::Sbom,
        AttachedTag::Referrers,
    ];

    fn suffix(self) -> &'static str {
        match self {
            AttachedTag::Signature => ".sig",
            AttachedTag::Attestation => ".att",
            AttachedTag::Sbom => ".sbom",
            AttachedTag::Referrers => "",
        }
    }

    /// The tag of this kind for `digest`.
    pub fn of(self, digest: &Digest) -> String {
        format!(
            "{}-{}{}",
            digest.algorithm.as_str(),
            digest.hex,
            self.suffix()
        )
    }

    /// What `tag` attaches, and to which digest, when it is such a tag.
    pub fn parse(tag: &str) -> Option<(AttachedTag, Digest)> {
        let (alg, rest) = tag.split_once('-')?;
        let algorithm = match alg {
            "sha256" => Algorithm::Sha256,
            "sha512" => Algorithm::Sha512,
            _ => return None,
        };
        let n = algorithm.hex_len();
        let (hex, suffix) = (rest.get(..n)?, rest.get(n..)?);
        let kind = Self::ALL.into_iter().find(|k| k.suffix() == suffix)?;
        let digest: Digest = format!("{alg}:{hex}").parse().ok()?;
        Some((kind, digest))
    }
}

impl FromStr for Digest {
    type Err = DigestParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (alg, hex) = s
            .split_once(':')
            .ok_or_else(|| DigestParseError::Shape(s.to_string()))?;
        let algorithm = match alg {
            "sha256" => Algorithm::Sha256,
            "sha512" => Algorithm::Sha512,
            "" => return Err(DigestParseError::Shape(s.to_string())),
            _ => return Err(DigestParseError::Algorithm(s.to_string())),
        };
        if hex.len() != algorithm.hex_len()
            || !hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(DigestParseError::Hex {
                value: s.to_string(),
                algorithm: algorithm.as_str(),
                expected: algorithm.hex_len(),
            });
        }
        Ok(Digest {
            algorithm,
            hex: hex.to_string(),
        })
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algorithm.as_str(), self.hex)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Incremental hashing for one algorithm.
pub struct Verifier {
    state: State,
}

enum State {
    Sha256(Sha256),
    Sha512(Sha512),
}

impl Verifier {
    pub fn new(algorithm: Algorithm) -> Verifier {
        let state = match algorithm {
            Algorithm::Sha256 => State::Sha256(Sha256::new()),
            Algorithm::Sha512 => State::Sha512(Sha512::new()),
        };
        Verifier { state }
    }

    pub fn update(&mut self, data: &[u8]) {
        match &mut self.state {
            State::Sha256(h) => h.update(data),
            State::Sha512(h) => h.update(data),
        }
    }

    pub fn finish(self) -> Digest {
        match self.state {
            State::Sha256(h) => Digest {
                algorithm: Algorithm::Sha256,
                hex: hex::encode(h.finalize()),
            },
            State::Sha512(h) => Digest {
                algorithm: Algorithm::Sha512,
                hex: hex::encode(h.finalize()),
            },
        }
    }
}

/// A stream of blob bytes. Errors are I/O errors; content errors surface as
/// [`std::io::ErrorKind::InvalidData`] carrying a [`ContentMismatch`].
pub type ByteStream = Pin<Box<dyn Stream<Item = std::io::Result<Bytes>> + Send>>;

/// The bytes received do not match the digest or size they were announced with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ContentMismatch {
    #[error("content does not match its digest: expected {expected}, got {actual}")]
    Digest { expected: Digest, actual: Digest },
    #[error(
        "content of {digest} has the wrong size: expected {expected} bytes, got at least {actual}"
    )]
    Size {
        digest: Digest,
        expected: u64,
        actual: u64,
    },
}

impl ContentMismatch {
    /// Finds a content mismatch inside an I/O error produced by a [`VerifyingStream`].
    pub fn from_io(err: &std::io::Error) -> Option<&ContentMismatch> {
        err.get_ref()?.downcast_ref::<ContentMismatch>()
    }
}

/// Wraps a byte stream and fails it — before its end is reported — when the bytes
/// do not hash to `expected` or do not add up to `size`. A consumer that commits
/// content only after the stream ends cleanly therefore never commits wrong bytes.
///
/// When the size is known, the digest is checked as the last byte arrives and a
/// mismatch replaces the last chunk: a consumer that stops reading at the
/// announced length (an HTTP body with `Content-Length`) never even sends the
/// complete wrong content.
pub struct VerifyingStream {
    inner: ByteStream,
    verifier: Option<Verifier>,
    expected: Digest,
    size: Option<u64>,
    seen: u64,
    /// The digest was checked with the last byte of `size`.
    done_early: bool,
}

impl VerifyingStream {
    pub fn new(inner: ByteStream, expected: Digest, size: Option<u64>) -> VerifyingStream {
        VerifyingStream {
            inner,
            verifier: Some(Verifier::new(expected.algorithm())),
            expected,
            size,
            seen: 0,
            done_early: false,
        }
    }

    fn mismatch(&mut self, m: ContentMismatch) -> Poll<Option<std::io::Result<Bytes>>> {
        self.verifier = None;
        Poll::Ready(Some(Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            m,
        ))))
    }
}

impl Stream for VerifyingStream {
    type Item = std::io::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.done_early {
            // Verified; anything more than `size` is still an error.
            return match this.inner.as_mut().poll_next(cx) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(None) => {
                    this.done_early = false;
                    Poll::Ready(None)
                }
                Poll::Ready(Some(Ok(chunk))) if chunk.is_empty() => {
                    cx.waker().wake_by_ref();
                    Poll::Pending
                }
                Poll::Ready(Some(Ok(chunk))) => {
                    this.done_early = false;
                    let m = ContentMismatch::Size {
                        digest: this.expected.clone(),
                        expected: this.size.unwrap_or(0),
                        actual: this.seen + chunk.len() as u64,
                    };
                    this.mismatch(m)
                }
                Poll::Ready(Some(Err(e))) => {
                    this.done_early = false;
                    Poll::Ready(Some(Err(e)))
                }
            };
        }
        if this.verifier.is_none() {
            return Poll::Ready(None);
        }
        match this.inner.as_mut().poll_next(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Ok(chunk))) => {
                this.seen += chunk.len() as u64;
                if let Some(size) = this.size {
                    if this.seen > size {
                        let m = ContentMismatch::Size {
                            digest: this.expected.clone(),
                            expected: size,
                            actual: this.seen,
                        };
                        return this.mismatch(m);
                    }
                }
                if let Some(v) = this.verifier.as_mut() {
                    v.update(&chunk);
                }
                if this.size == Some(this.seen) {
                    let actual = this.verifier.take().expect("checked above").finish();
                    if actual != this.expected {
                        let m = ContentMismatch::Digest {
                            expected: this.expected.clone(),
                            actual,
                        };
                        return this.mismatch(m);
                    }
                    this.done_early = true;
                }
                Poll::Ready(Some(Ok(chunk)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.verifier = None;
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => {
                let verifier = this.verifier.take().expect("checked above");
                if let Some(size) = this.size {
                    if this.seen != size {
                        let m = ContentMismatch::Size {
                            digest: this.expected.clone(),
                            expected: size,
                            actual: this.seen,
                        };
                        return this.mismatch(m);
                    }
                }
                let actual = verifier.finish();
                if actual != this.expected {
                    let m = ContentMismatch::Digest {
                        expected: this.expected.clone(),
                        actual,
                    };
                    return this.mismatch(m);
                }
                Poll::Ready(None)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    #[test]
    fn parses_and_displays() {
        let d: Digest = "sha256:31a54a0cf86d7354788a8265f60ae6acb4b348a67efbcf7c1007dd3cf7af05ab"
            .parse()
            .unwrap();
        assert_eq!(d.algorithm(), Algorithm::Sha256);
        assert_eq!(
            d.to_string(),
            "sha256:31a54a0cf86d7354788a8265f60ae6acb4b348a67efbcf7c1007dd3cf7af05ab"
        );
    }

    #[test]
    fn rejects_bad_digests() {
        for bad in [
            "sha256",
            "sha256:abc",
            "md5:00",
            ":00",
            "sha256:31A54A0CF86D7354788A8265F60AE6ACB4B348A67EFBCF7C1007DD3CF7AF05AB",
        ] {
            assert!(bad.parse::<Digest>().is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn hashes_known_value() {
        assert_eq!(
            Digest::sha256_of(b"").to_string(),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    fn stream_of(parts: &[&'static [u8]]) -> ByteStream {
        let items: Vec<std::io::Result<Bytes>> =
            parts.iter().map(|p| Ok(Bytes::from_static(p))).collect();
        Box::pin(futures_util::stream::iter(items))
    }

    async fn drain(mut s: VerifyingStream) -> std::io::Result<Vec<u8>> {
        let mut out = Vec::new();
        while let Some(c) = s.next().await {
            out.extend_from_slice(&c?);
        }
        Ok(out)
    }

    #[tokio::test]
    async fn verifying_stream_accepts_matching_content() {
        let d = Digest::sha256_of(b"hello world");
        let s = VerifyingStream::new(stream_of(&[b"hello ", b"world"]), d, Some(11));
        assert_eq!(drain(s).await.unwrap(), b"hello world");
    }

    #[tokio::test]
    async fn verifying_stream_rejects_other_bytes() {
        let d = Digest::sha256_of(b"hello world");
        let s = VerifyingStream::new(stream_of(&[b"hello ", b"WORLD"]), d.clone(), Some(11));
        let err = drain(s).await.unwrap_err();
        match ContentMismatch::from_io(&err) {
            Some(ContentMismatch::Digest { expected, .. }) => assert_eq!(expected, &d),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_mismatch_replaces_the_last_chunk() {
        // A consumer that stops at the announced length never gets all the bytes.
        let d = Digest::sha256_of(b"hello world");
        let mut s = VerifyingStream::new(stream_of(&[b"hello ", b"WORLD"]), d, Some(11));
        assert_eq!(
            s.next().await.unwrap().unwrap(),
            Bytes::from_static(b"hello ")
        );
        let err = s.next().await.unwrap().unwrap_err();
        assert!(matches!(
            ContentMismatch::from_io(&err),
            Some(ContentMismatch::Digest { .. })
        ));
    }

    #[tokio::test]
    async fn verifying_stream_rejects_wrong_size() {
        let d = Digest::sha256_of(b"hello world");
        let s = VerifyingStream::new(stream_of(&[b"hello ", b"world", b"!"]), d, Some(11));
        let err = drain(s).await.unwrap_err();
        assert!(matches!(
            ContentMismatch::from_io(&err),
            Some(ContentMismatch::Size { .. })
        ));
    }

    #[test]
    fn attached_tags_are_written_and_read_back() {
        let d = Digest::sha256_of(b"image");
        let hex = d.hex().to_string();
        for kind in AttachedTag::ALL {
            let tag = kind.of(&d);
            assert!(tag.starts_with(&format!("sha256-{hex}")), "{tag}");
            assert_eq!(AttachedTag::parse(&tag), Some((kind, d.clone())), "{tag}");
        }
        assert_eq!(AttachedTag::Signature.of(&d), format!("sha256-{hex}.sig"));
        assert_eq!(AttachedTag::Referrers.of(&d), format!("sha256-{hex}"));
        for not in [
            "latest".to_string(),
            format!("sha256-{hex}.sig2"),
            format!("sha256-{}", &hex[..63]),
            format!("sha256-{}.sig", hex.to_uppercase()),
            format!("md5-{hex}"),
            format!("sha256-{hex}-alpine"),
            "sha256-".to_string(),
        ] {
            assert_eq!(AttachedTag::parse(&not), None, "{not}");
        }
    }
}
