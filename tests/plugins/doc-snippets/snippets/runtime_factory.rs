// docs/plugins.md's factory part of a plugin with its own tokio runtime.
use image_syncer_plugin::core::catalogue::BuildError;
use image_syncer_plugin::core::stage::StageKind;

fn factory() -> Result<tokio::runtime::Runtime, BuildError> {
// {snippet}
    Ok(runtime)
}

/// The runtime built as the doc shows drives timers, for futures created
/// inside its `async` block (as the doc says: one created outside panics,
/// "there is no reactor running").
#[test]
fn the_factory_builds_a_runtime_with_timers() {
    let runtime = factory().unwrap();
    let slept = runtime.block_on(async {
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        true
    });
    assert!(slept);
}
