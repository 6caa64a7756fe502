//! Compiles the kubelet PodResources v1 API (`proto/podresources/v1/api.proto`) with protox, so no
//! `protoc` is needed, into a client and a server: the agent calls the client, the fake kubelet in
//! `tests/fake-kubelet` serves the server.

fn main() {
    // The `samples` wire types alone (`default-features = false`) need no generated code.
    #[cfg(feature = "agent")]
    compile_pod_resources_api();
}

#[cfg(feature = "agent")]
fn compile_pod_resources_api() {
    // Read when the script runs, not baked in when it is compiled: a target directory shared by
    // several checkouts may run a script compiled for another one.
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let proto_root = format!("{manifest_dir}/../proto");
    println!("cargo:rerun-if-changed={proto_root}/podresources");
    let files = protox::compile(["podresources/v1/api.proto"], [&proto_root]).expect("the PodResources proto compiles");
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(files)
        .expect("tonic code generation for the PodResources API");
}
