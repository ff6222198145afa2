//! Generate the tonic/prost code from `proto/quill/v1/*.proto` with the vendored `protoc`, so a
//! build needs no system protobuf compiler.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/quill/v1/raft.proto",
        "proto/quill/v1/cluster.proto",
        "proto/quill/v1/keys.proto",
        "proto/quill/v1/jobs.proto",
        "proto/quill/v1/views.proto",
        "proto/quill/v1/exchange.proto",
    ];
    // The vendored protoc is handed to prost-build directly (no `PROTOC` environment variable,
    // which edition 2024 only sets through `unsafe`).
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    // The descriptor set is what the wire-compatibility test compares with `proto/wire.lock`.
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    config.file_descriptor_set_path(out.join("quill_v1_descriptor.bin"));
    // Views (views.proto) have a JSON form: the CLI's `--json` output and the superseded
    // `Keys.Query`. Field names are the proto names; a missing field reads as its default.
    let views = std::fs::read_to_string("proto/quill/v1/views.proto")?;
    for view in views.lines().filter_map(|l| l.strip_prefix("message ")).filter_map(|l| l.split_whitespace().next()) {
        config.type_attribute(
            format!(".quill.v1.{view}"),
            "#[derive(serde::Serialize, serde::Deserialize)] #[serde(default)]",
        );
    }
    tonic_prost_build::configure().build_client(true).build_server(true).compile_with_config(
        config,
        &protos,
        &["proto"],
    )?;
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    Ok(())
}
