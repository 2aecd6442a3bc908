//! `immutable`: the original tool's guard. A synced tag never changes.
//!
//! - target absent → copy;
//! - target holds the source digest → skip, nothing written;
//! - target holds another digest → safety stop (the source changed since an
//!   earlier sync, or the target tag was moved).

use std::sync::Arc;

use image_syncer_core::async_trait;
use image_syncer_core::catalogue::{
    typed_config, BuildError, ConfigDoc, ConfigValue, Factory, GuardFactory, StagePlugin,
};
use image_syncer_core::context::GuardContext;
use image_syncer_core::stage::{Guard, GuardInput, StageError, StageKind, Verdict};
use serde::{Deserialize, Serialize};

/// `immutable` has no settings: `config:` is empty or absent (an unknown key is an error).
#[derive(Debug, Default, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ImmutableConfig {}

pub struct Immutable;

#[async_trait]
impl Guard for Immutable {
    async fn check(&self, input: GuardInput<'_>) -> Result<Verdict, StageError> {
        Ok(match input.target_digest {
            None => Verdict::Copy,
            Some(d) if d == input.source_digest => Verdict::Skip {
                reason: "target holds the source digest".into(),
            },
            Some(d) => Verdict::Stop {
                reason: format!(
                    "safety stop: target {} holds {d} but source {} is {}; a synced tag never changes (the source changed since an earlier sync, or the target tag was moved). Nothing is written.",
                    input.target, input.image.source, input.source_digest
                ),
            },
        })
    }
}

struct ImmutableFactory;

impl GuardFactory for ImmutableFactory {
    fn build(
        &self,
        config: &ConfigValue,
        _cx: &GuardContext,
    ) -> Result<Arc<dyn Guard>, BuildError> {
        let _: ImmutableConfig = typed_config(StageKind::Guard, "immutable", config)?;
        Ok(Arc::new(Immutable))
    }
}

image_syncer_core::inventory::submit! {
    StagePlugin {
        name: "immutable",
        description: "Copies when the target tag is absent, skips when it holds the source digest, stops the run when it holds another digest",
        config: ConfigDoc::of::<ImmutableConfig>(),
        transport: None,
        factory: || Factory::guard(ImmutableFactory),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image_syncer_core::digest::Digest;
    use image_syncer_core::reference::ImageRef;
    use image_syncer_core::stage::ImageEntry;

    #[tokio::test]
    async fn decides() {
        let spec = ImageEntry::new(ImageRef::parse("busybox:1.36").unwrap(), "r.io/m/");
        let target = ImageRef::parse("r.io/m/library/busybox:1.36").unwrap();
        let a = Digest::sha256_of(b"a");
        let b = Digest::sha256_of(b"b");
        let check = |t: Option<Digest>| {
            let (spec, target, a) = (spec.clone(), target.clone(), a.clone());
            async move {
                let input = GuardInput::new(&spec, &a, &target, t.as_ref());
                Immutable.check(input).await.unwrap()
            }
        };
        assert_eq!(check(None).await, Verdict::Copy);
        assert!(matches!(check(Some(a.clone())).await, Verdict::Skip { .. }));
        match check(Some(b.clone())).await {
            Verdict::Stop { reason } => insta::assert_snapshot!(reason),
            v => panic!("expected stop, got {v:?}"),
        }
    }
}
