//! What every report and `--json` document records about how it was made.

use crate::source::{Loaded, Origin};
use candle_core::{DType, Device, DeviceLocation};
use serde::{Deserialize, Serialize};

/// Version of the report schemas (`docs/formats.md`); raised on any rename or removal.
pub const SCHEMA_VERSION: u32 = 1;

/// One data input of a run, identified by content.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DataRef {
    /// What it was used for: `calibration`, `eval`, `scores`, `task`, `undesired`, `general`,
    /// `lexicon`, `text`, `relevance`.
    pub role: String,
    /// Path, or the built-in's label.
    pub file: String,
    pub sha256: String,
}

impl DataRef {
    pub fn new(role: &str, file: impl Into<String>, sha256: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            file: file.into(),
            sha256: sha256.into(),
        }
    }
}

/// The shared head of every report, flattened into it (its fields sit at the report's top
/// level).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Provenance {
    pub schema_version: u32,
    /// The subcommand (`compress`, `circuit --mask`, ...).
    pub command: String,
    /// Where the model came from (None for `merge`, which reads relevance files only).
    pub model: Option<Origin>,
    /// sha256 of the canonical config JSON.
    pub config_sha256: Option<String>,
    pub data: Vec<DataRef>,
    /// Storage dtype of the weights (compute is f32).
    pub dtype: Option<String>,
    pub device: String,
    pub sparc3_version: String,
    /// Wall time of the job.
    pub seconds: f64,
    pub peak_rss_bytes: Option<usize>,
}

impl Provenance {
    /// Provenance of a job on `loaded`, started at `start`, having read `data`.
    pub fn of(
        command: &str,
        loaded: &Loaded,
        data: Vec<DataRef>,
        start: std::time::Instant,
    ) -> Self {
        Self {
            schema_version: SCHEMA_VERSION,
            command: command.into(),
            model: Some(loaded.origin.clone()),
            config_sha256: Some(loaded.config_sha256.clone()),
            data,
            dtype: Some(storage_dtype(loaded).into()),
            device: device_name(&loaded.model.device),
            sparc3_version: env!("CARGO_PKG_VERSION").into(),
            seconds: start.elapsed().as_secs_f64(),
            peak_rss_bytes: crate::util::peak_rss(),
        }
    }

    /// Provenance of a job that loads no model.
    pub fn without_model(command: &str, data: Vec<DataRef>, start: std::time::Instant) -> Self {
        Self {
            schema_version: SCHEMA_VERSION,
            command: command.into(),
            model: None,
            config_sha256: None,
            data,
            dtype: None,
            device: "cpu".into(),
            sparc3_version: env!("CARGO_PKG_VERSION").into(),
            seconds: start.elapsed().as_secs_f64(),
            peak_rss_bytes: crate::util::peak_rss(),
        }
    }
}

/// Name of the loaded weights' storage dtype (compute is f32), as `--dtype` spells it.
pub fn storage_dtype(loaded: &Loaded) -> &'static str {
    let linears = loaded.model.linears();
    dtype_name(linears.first().map_or(DType::F32, |l| l.weight.dtype()))
}

pub fn dtype_name(d: DType) -> &'static str {
    match d {
        DType::F16 => "f16",
        DType::BF16 => "bf16",
        _ => "f32",
    }
}

/// `cpu` or `cuda:N`, as the device flag spells it.
pub fn device_name(d: &Device) -> String {
    match d.location() {
        DeviceLocation::Cpu => "cpu".into(),
        DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
}
