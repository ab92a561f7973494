//! The weight shards: layout, random chunks generated in parallel, streamed to disk.

use super::*;
use anyhow::Result;
use serde_json::{json, Map};
use sparc3::util::Rng;
use std::fs::File;
use std::io::{BufWriter, IsTerminal, Write};
use std::path::Path;

/// Splits the tensors, in checkpoint order, into shards of at most `max` data bytes (a tensor
/// bigger than `max` gets a shard of its own, as transformers does).
pub(crate) fn plan_shards(
    tensors: &[Tensor],
    width: usize,
    max: u64,
) -> Vec<std::ops::Range<usize>> {
    let mut shards = vec![];
    let (mut begin, mut size) = (0, 0u64);
    for (i, t) in tensors.iter().enumerate() {
        let b = (t.numel() * width) as u64;
        if i > begin && size + b > max {
            shards.push(begin..i);
            (begin, size) = (i, 0);
        }
        size += b;
    }
    shards.push(begin..tensors.len());
    shards
}

/// Writes the shards (and the index when there are several); returns the data bytes.
pub(crate) fn write_weights(tensors: &[Tensor], args: &Args, dir: &Path) -> Result<u64> {
    let width = args.dtype.size();
    let shards = plan_shards(tensors, width, parse_size(&args.shard_size)?);
    let total: u64 = tensors.iter().map(|t| (t.numel() * width) as u64).sum();
    let mut weight_map = Map::new();
    let mut progress = Progress {
        done: 0,
        total,
        tensors: 0,
        count: tensors.len(),
    };
    for (k, range) in shards.iter().enumerate() {
        let file = if shards.len() == 1 {
            "model.safetensors".to_string()
        } else {
            format!("model-{:05}-of-{:05}.safetensors", k + 1, shards.len())
        };
        let part = &tensors[range.clone()];
        write_shard(&dir.join(&file), part, args, &mut progress)?;
        for t in part {
            weight_map.insert(t.name.clone(), json!(file));
        }
        progress.show(Some(&format!("wrote {file}")));
    }
    if shards.len() > 1 {
        let index = json!({"metadata": {"total_size": total}, "weight_map": weight_map});
        write_json(&dir.join("model.safetensors.index.json"), &index)?;
    }
    Ok(total)
}

/// Tensors and bytes written so far, shown on stderr.
pub(crate) struct Progress {
    done: u64,
    total: u64,
    tensors: usize,
    count: usize,
}

impl Progress {
    /// Rewrites the status line on a terminal; ends it with `note` (always shown) if given.
    fn show(&self, note: Option<&str>) {
        let tty = std::io::stderr().is_terminal();
        let (done, total) = (self.done as f64 / 1e9, self.total as f64 / 1e9);
        let text = format!(
            "[{}/{} tensors] {done:.2}/{total:.2} GB",
            self.tensors, self.count
        );
        match note {
            Some(n) => eprintln!("{}{text} {n}", if tty { "\r" } else { "" }),
            None if tty => eprint!("\r{text}"),
            None => {}
        }
    }
}

/// The safetensors header: u64 LE length, then the JSON padded with spaces to 8 bytes.
pub(crate) fn header(tensors: &[Tensor], dtype: DType) -> Result<Vec<u8>> {
    let mut h = Map::new();
    h.insert("__metadata__".into(), json!({"format": "pt"}));
    let mut offset = 0;
    for t in tensors {
        let end = offset + t.numel() * dtype.size();
        let entry =
            json!({"dtype": dtype.safetensors(), "shape": t.shape, "data_offsets": [offset, end]});
        h.insert(t.name.clone(), entry);
        offset = end;
    }
    let mut text = serde_json::to_vec(&h)?;
    text.resize(text.len().next_multiple_of(8), b' ');
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend(text);
    Ok(out)
}

/// One independently seeded run of at most CHUNK elements of a tensor.
pub(crate) struct Piece {
    tensor: usize,
    chunk: usize,
    len: usize,
}

/// The pieces of `tensors` in file order, grouped into batches of about GROUP chunks. Batches
/// span tensor boundaries so that the many small tensors still keep every core busy.
pub(crate) fn batches(tensors: &[Tensor]) -> Vec<Vec<Piece>> {
    let (mut out, mut batch, mut size) = (vec![], vec![], 0);
    for (tensor, t) in tensors.iter().enumerate() {
        let n = t.numel();
        for chunk in 0..n.div_ceil(CHUNK) {
            let len = (n - chunk * CHUNK).min(CHUNK);
            batch.push(Piece { tensor, chunk, len });
            size += len;
            if size >= GROUP * CHUNK {
                out.push(std::mem::take(&mut batch));
                size = 0;
            }
        }
    }
    out.push(batch);
    out
}

/// Streams one shard: the header, then the batches, generating the next batch on the rayon
/// pool while the current one is written.
pub(crate) fn write_shard(
    path: &Path,
    tensors: &[Tensor],
    args: &Args,
    progress: &mut Progress,
) -> Result<()> {
    let mut file = BufWriter::with_capacity(1 << 22, File::create(path)?);
    file.write_all(&header(tensors, args.dtype)?)?;
    let hashes: Vec<u64> = tensors.iter().map(|t| fnv1a(t.name.as_bytes())).collect();
    let (mut pending, mut next) = (vec![], vec![]);
    for batch in batches(tensors) {
        let len: usize = batch.iter().map(|p| p.len).sum();
        next.resize(len * args.dtype.size(), 0);
        let (written, ()) = rayon::join(
            || file.write_all(&pending),
            || fill(&mut next, &batch, tensors, &hashes, args),
        );
        written?;
        progress.done += pending.len() as u64;
        std::mem::swap(&mut pending, &mut next);
        let last = |p: &Piece| (p.chunk + 1) * CHUNK >= tensors[p.tensor].numel();
        progress.tensors += batch.iter().filter(|p| last(p)).count();
        progress.show(None);
    }
    file.write_all(&pending)?;
    progress.done += pending.len() as u64;
    file.flush()?;
    Ok(())
}

/// Fills `buf` with the pieces of `batch`, in parallel, each from its own stream.
pub(crate) fn fill(
    buf: &mut [u8],
    batch: &[Piece],
    tensors: &[Tensor],
    hashes: &[u64],
    args: &Args,
) {
    let mut rest = buf;
    let mut slices = Vec::with_capacity(batch.len());
    for p in batch {
        let (head, tail) = rest.split_at_mut(p.len * args.dtype.size());
        slices.push(head);
        rest = tail;
    }
    slices.into_par_iter().zip(batch).for_each(|(out, p)| {
        // Consecutive SplitMix outputs: well-mixed, independent seeds per chunk.
        let base = Rng::new(args.seed ^ hashes[p.tensor]).next_u64();
        let seed = Rng::new(base.wrapping_add(p.chunk as u64)).next_u64();
        fill_chunk(out, tensors[p.tensor].init, args.dtype, Rng::new(seed));
    });
}

pub(crate) fn fill_chunk(out: &mut [u8], init: Init, dtype: DType, mut rng: Rng) {
    let width = dtype.size();
    match init {
        Init::Normal => {
            for pair in out.chunks_mut(2 * width) {
                let (a, b) = normal_pair(&mut rng);
                dtype.put(a * INIT_STD, &mut pair[..width]);
                if pair.len() == 2 * width {
                    dtype.put(b * INIT_STD, &mut pair[width..]);
                }
            }
        }
        Init::Norm => {
            for x in out.chunks_exact_mut(width) {
                let u = (rng.next_u64() >> 40) as f32 * (1.0 / (1u64 << 24) as f32);
                dtype.put(1.0 + NORM_JITTER * (2.0 * u - 1.0), x);
            }
        }
    }
}

/// Two standard normals by Marsaglia's polar form of Box–Muller: exact like the trigonometric
/// form, but one `ln` per pair and no sin/cos (measured 1.45x faster end to end).
#[inline(always)]
pub(crate) fn normal_pair(rng: &mut Rng) -> (f32, f32) {
    const SCALE: f32 = 1.0 / (1u64 << 31) as f32;
    loop {
        let bits = rng.next_u64();
        let x = (bits >> 32) as i32 as f32 * SCALE;
        let y = bits as u32 as i32 as f32 * SCALE;
        let s = x * x + y * y;
        if s < 1.0 && s > 0.0 {
            let f = (-2.0 * s.ln() / s).sqrt();
            return (x * f, y * f);
        }
    }
}

pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    })
}
