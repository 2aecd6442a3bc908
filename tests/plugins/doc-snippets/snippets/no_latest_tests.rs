// docs/plugins.md's unit test of the guard, in the plugin's `mod tests`.
use super::*;

// {snippet}

/// The guard lets other tags through (the doc's test covers the stop).
#[test]
fn another_tag_is_copied() {
    let image = ImageEntry::new(ImageRef::parse("busybox:1.36").unwrap(), "r.io/m/");
    let target = ImageRef::parse("r.io/m/library/busybox:1.36").unwrap();
    let digest = Digest::sha256_of(b"a");
    let guard = NoLatest { tags: vec!["latest".into()] };
    let verdict = guard.check(GuardInput::new(&image, &digest, &target, None)).unwrap();
    assert!(matches!(verdict, Verdict::Copy));
}
