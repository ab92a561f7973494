//! The integration tests, linked as one binary (one link instead of one per area; run one area
//! with `cargo test --release --test it -- compress::`). The shared assets live in `../shared`
//! beside the crate (see shared/README.md); `common` holds the helpers every area uses.

mod common;

mod attribute;
mod battery;
mod circuit;
mod cli_bad_input;
mod compress;
mod correct;
mod eval_reference;
mod fuzz;
mod lrp_parity;
mod parity;
mod pins;
mod readme;
mod reliability;
mod sources;
