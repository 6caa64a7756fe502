//! Compiles the project's `.proto` files with protox (pure Rust), so no `protoc` is needed.

const PROTOS: &[&str] = &["proto/kserve/v2/grpc_predict_v2.proto"];

fn main() {
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    let descriptors = protox::compile(PROTOS, ["proto"]).expect("the .proto files under proto/ compile");
    // The operator is only ever a client of model servers.
    tonic_prost_build::configure()
        .build_server(false)
        .build_client(true)
        .compile_fds(descriptors)
        .expect("Rust code generates from the compiled .proto files");
}
