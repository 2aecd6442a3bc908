// docs/plugins.md's stage method of a plugin with its own tokio runtime.
use std::sync::Arc;

use bytes::Bytes;
use image_syncer_plugin::core::manifest::RawManifest;
use image_syncer_plugin::core::reference::ImageRef;
use image_syncer_plugin::core::stage::StageError;

/// An async client of the plugin's own (`self.client`): it needs the
/// runtime's timer, so it works only inside that runtime.
struct Client;

const INDEX: &[u8] =
    br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}"#;

impl Client {
    async fn manifest(&self, _reference: &ImageRef) -> Result<RawManifest, StageError> {
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        RawManifest::new(None, Bytes::from_static(INDEX), None)
            .map_err(|e| StageError::invalid(e.to_string()))
    }
}

struct MySource {
    runtime: Arc<tokio::runtime::Runtime>,
    client: Client,
}

impl MySource {
// {snippet}
}

/// The method, called from a thread outside any runtime as the host calls
/// it, gets its answer through the stage's runtime.
#[test]
fn the_method_blocks_on_the_stages_runtime() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let source = MySource {
        runtime: Arc::new(runtime),
        client: Client,
    };
    let reference = ImageRef::parse("busybox:1.36").unwrap();
    let manifest = std::thread::spawn(move || source.resolve(&reference))
        .join()
        .unwrap()
        .unwrap();
    assert_eq!(&manifest.bytes[..], INDEX);
}
