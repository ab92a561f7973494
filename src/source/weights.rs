//! Loading safetensors checkpoints (single or sharded) into the weight store
//! ([`crate::model::weights`]), validated on the way in.

use crate::error::{Kind, Tag};
use crate::fail;
use crate::model::weights::{Stored, WeightStore};
use anyhow::{Context, Result};
use candle_core::{DType, Tensor};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The files of a safetensors checkpoint: one `model.safetensors`, or an index and its shards.
pub fn safetensors_files(dir: &Path) -> Result<(Vec<PathBuf>, BTreeMap<String, String>)> {
    let single = dir.join("model.safetensors");
    let index = dir.join("model.safetensors.index.json");
    if index.is_file() {
        let text = std::fs::read_to_string(&index)
            .with_context(|| format!("reading {}", index.display()))
            .tag(Kind::Input)?;
        let v: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("{}: not valid JSON", index.display()))
            .tag(Kind::Input)?;
        let map = match v.get("weight_map").and_then(|m| m.as_object()) {
            Some(m) => m,
            None => fail!(Input, "{}: no \"weight_map\" object", index.display()),
        };
        let mut shard_of = BTreeMap::new();
        let mut files: Vec<String> = Vec::new();
        for (name, file) in map {
            let Some(file) = file.as_str() else {
                fail!(
                    Input,
                    "{}: weight_map entry '{name}' is not a file name",
                    index.display()
                );
            };
            if file.contains('/') || file.contains('\\') || file == ".." {
                fail!(
                    Input,
                    "{}: shard name '{file}' is not a plain file name",
                    index.display()
                );
            }
            if !files.iter().any(|f| f == file) {
                files.push(file.to_string());
            }
            shard_of.insert(name.clone(), file.to_string());
        }
        if files.is_empty() {
            fail!(Input, "{}: weight_map is empty", index.display());
        }
        files.sort();
        let paths = files.iter().map(|f| dir.join(f)).collect::<Vec<_>>();
        for p in &paths {
            if !p.is_file() {
                fail!(
                    Input,
                    "shard {} listed in {} is missing",
                    p.display(),
                    index.display()
                );
            }
        }
        Ok((paths, shard_of))
    } else if single.is_file() {
        Ok((vec![single], BTreeMap::new()))
    } else if single.exists() {
        fail!(Input, "{} is not a regular file", single.display())
    } else {
        fail!(
            Input,
            "{}: no model.safetensors or model.safetensors.index.json (only safetensors checkpoints are supported)",
            dir.display()
        )
    }
}

/// Read safetensors files into the store, converting every floating tensor to `store.dtype`.
pub fn load_safetensors(
    store: &mut WeightStore,
    files: &[PathBuf],
    shard_of: &BTreeMap<String, String>,
) -> Result<()> {
    for path in files {
        load_one(store, path).tag(Kind::Input)?;
    }
    if !shard_of.is_empty() {
        for name in shard_of.keys() {
            if !store.contains(name) {
                fail!(
                    Input,
                    "tensor '{name}' is listed in the index under {} but not found there",
                    shard_of[name]
                );
            }
        }
        store.shard_of = shard_of.clone();
    }
    Ok(())
}

fn load_one(store: &mut WeightStore, path: &Path) -> Result<()> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    // SAFETY: the mapping is read-only and only lives for this function; inputs are not modified
    // by sparc3 (a concurrent writer would be a user error that safetensors' checks may catch).
    let mmap = unsafe { memmap2::MmapOptions::new().map(&file) }
        .with_context(|| format!("mapping {}", path.display()))?;
    // Each tensor's pages are released once it is copied: a shard never counts twice (mapped
    // and copied) in the process's memory.
    let release = |data: &[u8]| {
        let page = 4096;
        let off = data.as_ptr() as usize - mmap.as_ptr() as usize;
        let start = off / page * page;
        let len = (off + data.len()).div_ceil(page) * page - start;
        // SAFETY: a read-only file mapping: dropped pages are read back from the file if
        // touched again.
        let _ = unsafe {
            mmap.unchecked_advise_range(
                memmap2::UncheckedAdvice::DontNeed,
                start,
                len.min(mmap.len() - start),
            )
        };
    };
    load_bytes_with(store, path, &mmap, &release)
}

/// Load one safetensors image (a mapped file or embedded bytes); `path` labels errors.
pub fn load_bytes(store: &mut WeightStore, path: &Path, bytes: &[u8]) -> Result<()> {
    load_bytes_with(store, path, bytes, &|_| {})
}

fn load_bytes_with(
    store: &mut WeightStore,
    path: &Path,
    bytes: &[u8],
    release: &(dyn Fn(&[u8]) + Sync),
) -> Result<()> {
    check_header(path, bytes)?;
    let st = safetensors::SafeTensors::deserialize(bytes)
        .map_err(|e| anyhow::anyhow!("{}: invalid safetensors file: {e}", path.display()))?;
    let mut names: Vec<(String, safetensors::tensor::TensorView<'_>)> = st.tensors();
    names.sort_by_key(|(_, v)| v.data().as_ptr() as usize);
    let converted: Vec<Result<(String, Stored)>> = {
        use rayon::prelude::*;
        names
            .par_iter()
            .map(|(name, view)| {
                let (t, disk) = view_to_tensor(path, name, view, store, release)?;
                Ok((
                    name.clone(),
                    Stored {
                        tensor: t,
                        file: path.to_path_buf(),
                        disk_dtype: disk,
                    },
                ))
            })
            .collect()
    };
    for r in converted {
        let (name, stored) = r?;
        store.insert(name, stored)?;
    }
    Ok(())
}

/// Checks the parts of the header that `safetensors` accepts but we refuse: duplicate names
/// (JSON objects keep only the last) and absurd lengths (reported clearly, before any allocation).
fn check_header(path: &Path, bytes: &[u8]) -> Result<()> {
    if bytes.len() < 8 {
        fail!(
            Input,
            "{}: truncated safetensors file ({} bytes)",
            path.display(),
            bytes.len()
        );
    }
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap());
    if n > 100_000_000 || n as usize > bytes.len() - 8 {
        fail!(
            Input,
            "{}: safetensors header length {n} exceeds the file size {} (truncated or corrupt file)",
            path.display(),
            bytes.len()
        );
    }
    let header = &bytes[8..8 + n as usize];
    let text = std::str::from_utf8(header).map_err(|_| {
        crate::error::err(
            Kind::Input,
            format!("{}: safetensors header is not UTF-8", path.display()),
        )
    })?;
    let keys: serde_json::Map<String, serde_json::Value> = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => fail!(
            Input,
            "{}: safetensors header is not a JSON object: {e}",
            path.display()
        ),
    };
    // serde_json's map dedups; count raw top-level keys with a streaming pass.
    let raw = count_top_level_keys(text);
    if let Some(raw) = raw {
        if raw != keys.len() {
            fail!(
                Input,
                "{}: safetensors header lists a tensor name twice",
                path.display()
            );
        }
    }
    // A file cut short: the header is intact but the tensor data it describes is not all there.
    let data_end = keys
        .iter()
        .filter(|(k, _)| k.as_str() != "__metadata__")
        .filter_map(|(_, v)| v.get("data_offsets")?.get(1)?.as_u64())
        .max()
        .unwrap_or(0);
    let have = (bytes.len() - 8 - n as usize) as u64;
    if data_end > have {
        fail!(
            Input,
            "{}: truncated safetensors file: the header describes {data_end} bytes of tensor data but only {have} follow it",
            path.display()
        );
    }
    Ok(())
}

/// Number of keys in a top-level JSON object, counting duplicates (None if not parseable).
fn count_top_level_keys(text: &str) -> Option<usize> {
    use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
    struct Counter;
    impl<'de> Visitor<'de> for Counter {
        type Value = usize;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("an object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<usize, A::Error> {
            let mut n = 0;
            while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {
                n += 1;
            }
            Ok(n)
        }
    }
    let mut de = serde_json::Deserializer::from_str(text);
    de.deserialize_map(Counter).ok()
}

fn view_to_tensor(
    path: &Path,
    name: &str,
    view: &safetensors::tensor::TensorView<'_>,
    store: &WeightStore,
    release: &(dyn Fn(&[u8]) + Sync),
) -> Result<(Tensor, DType)> {
    let device = &store.device;
    use safetensors::Dtype as S;
    let shape = view.shape().to_vec();
    let data = view.data();
    let (t, disk) = match view.dtype() {
        S::F32 => {
            let v: Vec<f32> = decode(data, 4, release, |c| {
                f32::from_le_bytes([c[0], c[1], c[2], c[3]])
            });
            check_finite(path, name, &v)?;
            (Tensor::from_vec(v, shape, device)?, DType::F32)
        }
        S::F16 => {
            let v: Vec<half::f16> =
                decode(data, 2, release, |c| half::f16::from_le_bytes([c[0], c[1]]));
            if v.iter().any(|x| !x.is_finite()) {
                fail!(
                    Input,
                    "{}: tensor '{name}' contains NaN or Inf",
                    path.display()
                );
            }
            (Tensor::from_vec(v, shape, device)?, DType::F16)
        }
        S::BF16 => {
            let v: Vec<half::bf16> = decode(data, 2, release, |c| {
                half::bf16::from_le_bytes([c[0], c[1]])
            });
            if v.iter().any(|x| !x.is_finite()) {
                fail!(
                    Input,
                    "{}: tensor '{name}' contains NaN or Inf",
                    path.display()
                );
            }
            (Tensor::from_vec(v, shape, device)?, DType::BF16)
        }
        S::I64 => {
            // Buffers such as position ids; keep them, architectures ignore them.
            let v: Vec<i64> = data
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
                .collect();
            return Ok((Tensor::from_vec(v, shape, device)?, DType::I64));
        }
        other => fail!(
            Input,
            "{}: tensor '{name}' has dtype {other:?}; only F32, F16 and BF16 weights are supported",
            path.display()
        ),
    };
    let dtype = store.dtype_for(disk);
    let t = if t.dtype() != dtype {
        t.to_dtype(dtype)?
    } else {
        t
    };
    Ok((t, disk))
}

/// Little-endian values of `width` bytes, decoded 64 MiB at a time with each slice's mapped
/// pages released once read: a large tensor is never held mapped and copied at once.
fn decode<T>(
    data: &[u8],
    width: usize,
    release: &(dyn Fn(&[u8]) + Sync),
    f: impl Fn(&[u8]) -> T,
) -> Vec<T> {
    const SEG: usize = 64 << 20;
    let mut v = Vec::with_capacity(data.len() / width);
    for seg in data.chunks(SEG) {
        v.extend(seg.chunks_exact(width).map(&f));
        release(seg);
    }
    v
}

pub fn check_finite(path: &Path, name: &str, v: &[f32]) -> Result<()> {
    if let Some(i) = v.iter().position(|x| !x.is_finite()) {
        fail!(
            Input,
            "{}: tensor '{name}' contains {} at flat index {i}",
            path.display(),
            if v[i].is_nan() { "NaN" } else { "Inf" }
        );
    }
    Ok(())
}
