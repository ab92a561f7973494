fn main() {
    // The optional BLAS backend links the system OpenBLAS (Debian: libopenblas-dev).
    if std::env::var_os("CARGO_FEATURE_OPENBLAS").is_some() {
        println!("cargo:rustc-link-lib=openblas");
    }
    println!("cargo:rerun-if-changed=build.rs");
}
