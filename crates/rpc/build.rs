//! Generates the Agent service's messages, server and client from proto/diffkeeper/v1/agent.proto.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_root = "../../proto";
    let proto = "../../proto/diffkeeper/v1/agent.proto";
    println!("cargo:rerun-if-changed={proto}");
    tonic_prost_build::configure().compile_protos(&[proto], &[proto_root])?;
    Ok(())
}
