//! Compiles `ordo/v1/*.proto` with protox (pure Rust), so no system `protoc` is needed.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "ordo/v1/sequencer.proto",
        "ordo/v1/cluster.proto",
        "ordo/v1/quorum.proto",
        "ordo/v1/registers.proto",
        "ordo/v1/log.proto",
        "ordo/v1/log_peer.proto",
        "ordo/v1/divider.proto",
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["."])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    let descriptor_path = out.join("ordo_descriptor.bin");
    std::fs::write(&descriptor_path, prost::Message::encode_to_vec(&fds))?;
    tonic_prost_build::configure().file_descriptor_set_path(&descriptor_path).skip_protoc_run().compile_fds(fds)?;
    Ok(())
}
