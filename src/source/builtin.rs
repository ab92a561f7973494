//! The built-in demo model, embedded in the binary so that the first command in the
//! README runs offline on a fresh machine. `demo-llama` is a 1 M-parameter Llama trained for this
//! project on the demo corpus (C4 excerpt and public-domain books); see assets/README.md.

use super::weights;
use crate::model::weights::WeightStore;
use anyhow::Result;
use std::path::Path;

pub const DEMO_NAME: &str = "demo-llama";
pub const DEMO_LABEL: &str = "builtin:demo-llama";

const CONFIG: &[u8] = include_bytes!("../../assets/demo-llama/config.json");
const WEIGHTS: &[u8] = include_bytes!("../../assets/demo-llama/model.safetensors");
const TOKENIZER: &[u8] = include_bytes!("../../assets/demo-llama/tokenizer.json");
/// Extra HF files written next to a derived model (so it loads in `transformers`).
pub const EXTRA_FILES: &[(&str, &[u8])] = &[
    (
        "tokenizer_config.json",
        include_bytes!("../../assets/demo-llama/tokenizer_config.json"),
    ),
    (
        "special_tokens_map.json",
        include_bytes!("../../assets/demo-llama/special_tokens_map.json"),
    ),
    (
        "generation_config.json",
        include_bytes!("../../assets/demo-llama/generation_config.json"),
    ),
];

pub fn load_demo(store: &mut WeightStore) -> Result<(serde_json::Value, tokenizers::Tokenizer)> {
    let label = Path::new(DEMO_LABEL);
    weights::load_bytes(store, label, WEIGHTS)?;
    let cfg = serde_json::from_slice(CONFIG)?;
    let tok = super::tokenizer_from_bytes(TOKENIZER, label)?;
    Ok((cfg, tok))
}

pub fn tokenizer_json() -> &'static [u8] {
    TOKENIZER
}

pub fn config_json() -> &'static [u8] {
    CONFIG
}
