//! The weight store: every tensor of a checkpoint by its Hugging Face name, with the file it
//! came from and its on-disk dtype. Sources (`crate::source`) fill it; architectures take what
//! they need from it; the writer reads it back in checkpoint order.

use crate::fail;
use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

/// One tensor with the file it came from (for error messages) and its on-disk dtype.
#[derive(Clone)]
pub struct Stored {
    pub tensor: Tensor,
    pub file: PathBuf,
    pub disk_dtype: DType,
}

/// All tensors of a checkpoint, by name. Architectures `take` what they need; whatever is left
/// over is reported (unknown tensors are ignored with a note, not silently consumed).
pub struct WeightStore {
    tensors: HashMap<String, Stored>,
    /// Names in the order the checkpoint lists them (used when writing a model back).
    pub order: Vec<String>,
    /// Shard file of each tensor, as written in the checkpoint's index (for sharded outputs).
    pub shard_of: BTreeMap<String, String>,
    pub device: Device,
    /// Tensors let go of because the model holds (a pruned version of) them: the writer
    /// takes them from the model.
    released: std::collections::HashSet<String>,
    /// The in-memory dtype of floating tensors (None: their on-disk dtype).
    pub dtype: Option<DType>,
}

impl WeightStore {
    /// The in-memory dtype of a floating tensor stored as `disk`.
    pub fn dtype_for(&self, disk: DType) -> DType {
        self.dtype.unwrap_or(disk)
    }

    pub fn new(device: Device, dtype: Option<DType>) -> Self {
        Self {
            tensors: HashMap::new(),
            order: Vec::new(),
            shard_of: BTreeMap::new(),
            device,
            dtype,
            released: Default::default(),
        }
    }

    pub fn insert(&mut self, name: String, stored: Stored) -> Result<()> {
        if self.tensors.contains_key(&name) {
            fail!(
                Input,
                "{}: tensor '{name}' appears twice in the checkpoint",
                stored.file.display()
            );
        }
        self.order.push(name.clone());
        self.tensors.insert(name, stored);
        Ok(())
    }

    /// Let go of these tensors (the model that shares them is about to replace them); their
    /// names, files and dtypes stay.
    pub fn release(&mut self, names: &[String]) {
        for n in names {
            if let Some(s) = self.tensors.get_mut(n) {
                if let Ok(empty) = Tensor::zeros(0, s.tensor.dtype(), &self.device) {
                    s.tensor = empty;
                    self.released.insert(n.clone());
                }
            }
        }
    }

    pub fn is_released(&self, name: &str) -> bool {
        self.released.contains(name)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &String> {
        self.order.iter()
    }

    pub fn peek(&self, name: &str) -> Option<&Stored> {
        self.tensors.get(name)
    }

    /// The most common on-disk dtype (the dtype a written model keeps by default).
    pub fn disk_dtype(&self) -> DType {
        let mut counts: HashMap<DType, usize> = HashMap::new();
        for s in self.tensors.values() {
            *counts.entry(s.disk_dtype).or_default() += s.tensor.elem_count();
        }
        counts
            .into_iter()
            .max_by_key(|(_, n)| *n)
            .map(|(d, _)| d)
            .unwrap_or(DType::F32)
    }

    /// A tensor that must exist with exactly this shape.
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        match self.tensors.get(name) {
            None => fail!(
                Input,
                "checkpoint has no tensor '{name}' (expected shape {shape:?})"
            ),
            Some(_) if self.released.contains(name) => {
                fail!(Input, "tensor '{name}' was released to the model")
            }
            Some(s) => {
                if s.tensor.dims() != shape {
                    fail!(
                        Input,
                        "{}: tensor '{name}' has shape {:?} but the config implies {shape:?}",
                        s.file.display(),
                        s.tensor.dims()
                    );
                }
                Ok(s.tensor.clone())
            }
        }
    }

    /// An optional tensor (e.g. a bias); if present it must have this shape.
    pub fn get_opt(&self, name: &str, shape: &[usize]) -> Result<Option<Tensor>> {
        if self.tensors.contains_key(name) {
            self.get(name, shape).map(Some)
        } else {
            Ok(None)
        }
    }
}
