fn main() {
    // The optional BLAS backend links the system OpenBLAS (Debian: libopenblas-dev).
    if std::env::var_os("CARGO_FEATURE_MKL").is_some() {
        // Intel MKL's single dynamic library; MKLROOT/lib or SPARC3_MKL_LIB_DIR locate it.
        for var in ["SPARC3_MKL_LIB_DIR", "MKLROOT"] {
            if let Some(d) = std::env::var_os(var) {
                let mut p = std::path::PathBuf::from(d);
                if var == "MKLROOT" {
                    p.push("lib");
                }
                println!("cargo:rustc-link-search=native={}", p.display());
            }
        }
        println!("cargo:rustc-link-lib=mkl_rt");
        println!("cargo:rerun-if-env-changed=SPARC3_MKL_LIB_DIR");
        println!("cargo:rerun-if-env-changed=MKLROOT");
    } else if std::env::var_os("CARGO_FEATURE_OPENBLAS").is_some() {
        println!("cargo:rustc-link-lib=openblas");
    }
    println!("cargo:rerun-if-changed=build.rs");
}
