//! Relevance files: per-weight relevance (mean over samples) in safetensors, tensors named as
//! the model's weights, plus `neurons.*` (MLP hidden units), `heads.*` (attention heads) and
//! `tokens.*` (per-token input relevance), with the full protocol in the metadata. Shards of one
//! run merge into the file a single run would have written.

use crate::error::{Kind, Tag};
use crate::fail;
use crate::model::{layers::Mlp, DecoderModel};
use crate::relevance::accum::{Accumulators, Aggregation};
use anyhow::{Context, Result};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

pub const FORMAT: &str = "sparc3-relevance/1";

/// Everything that identifies a relevance run.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RelMeta {
    pub format: String,
    pub model: String,
    pub config_sha256: String,
    pub data_file: String,
    pub data_sha256: String,
    pub recipe: String,
    pub target: String,
    pub rule: String,
    pub epsilon: Option<f32>,
    pub aggregation: Aggregation,
    pub seq_len: usize,
    pub seed: u64,
    /// Samples of the whole run, and those covered by this file.
    pub samples_total: usize,
    pub samples: usize,
    /// Shards covered by this file (`[i]` for shard i; all of them after a merge).
    pub shards: Vec<usize>,
    pub shard_count: usize,
    pub sparc3_version: String,
    /// `neuron`/`head`: only the unit tensors (`neurons.*`, `heads.*`) were accumulated
    /// (absent for per-weight files, which are unchanged).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub units_only: Option<crate::prune::structured::Granularity>,
}

impl RelMeta {
    /// The target's name (`next-token`, `last`, …): `target` holds the target as JSON.
    pub fn target_name(&self) -> String {
        serde_json::from_str::<serde_json::Value>(&self.target)
            .ok()
            .and_then(|v| v["kind"].as_str().map(str::to_string))
            .unwrap_or_else(|| self.target.clone())
    }

    /// The fields that must agree for two files to be merged or compared.
    fn run_key(&self) -> serde_json::Value {
        serde_json::json!([
            self.format,
            self.config_sha256,
            self.data_sha256,
            self.recipe,
            self.target,
            self.rule,
            self.epsilon,
            self.aggregation,
            self.seq_len,
            self.seed,
            self.samples_total,
            self.shard_count,
            self.units_only
        ])
    }
}

/// Per-sample token ids and input relevance, for inspection.
pub struct TokenTable {
    /// Global index of the first sample (its position in the whole run's sample list).
    pub first_index: usize,
    pub ids: Vec<Vec<u32>>,
    pub relevance: Vec<Vec<f32>>,
}

pub struct RelevanceFile {
    pub meta: RelMeta,
    /// name → (shape, values)
    pub tensors: BTreeMap<String, (Vec<usize>, Vec<f32>)>,
}

/// A relevance file opened for reading tensor by tensor (a large model's per-weight relevance
/// need not fit in memory at once).
pub struct RelevanceReader {
    pub meta: RelMeta,
    reader: crate::util::stfile::Reader,
    infos: HashMap<String, safetensors::tensor::TensorInfo>,
}

impl RelevanceReader {
    pub fn open(path: &Path) -> Result<Self> {
        let reader = crate::util::stfile::Reader::open(path)
            .with_context(|| format!("cannot read relevance file {}", path.display()))
            .tag(Kind::Input)?;
        let meta = RelevanceFile::read_meta(path, &reader)?;
        let infos = reader.tensors().into_iter().collect();
        Ok(Self {
            meta,
            reader,
            infos,
        })
    }

    /// A tensor's shape (None: the file does not hold it).
    pub fn shape(&self, name: &str) -> Option<&[usize]> {
        self.infos.get(name).map(|i| i.shape.as_slice())
    }

    /// The file's metadata and token tables, with every other tensor's shape but no values:
    /// what merging checks and concatenates, the rest being read tensor by tensor.
    fn outline(&self) -> Result<RelevanceFile> {
        let mut tensors = BTreeMap::new();
        for (name, info) in &self.infos {
            let v = if name.starts_with("tokens.") {
                self.values(name)?
            } else {
                Vec::new()
            };
            tensors.insert(name.clone(), (info.shape.clone(), v));
        }
        Ok(RelevanceFile {
            meta: self.meta.clone(),
            tensors,
        })
    }

    /// A tensor's values, read now.
    pub fn values(&self, name: &str) -> Result<Vec<f32>> {
        let Some(info) = self.infos.get(name) else {
            fail!(Input, "relevance file holds no tensor '{name}'");
        };
        self.reader.f32s(name, info).tag(Kind::Input)
    }
}

impl RelevanceFile {
    /// Means over the accumulated samples, named after the model's weights. The accumulators'
    /// buffers are taken over and divided in place: no second copy of the relevance is made.
    pub fn from_accumulators(
        meta: RelMeta,
        model: &DecoderModel,
        acc: Accumulators,
        tokens: Option<TokenTable>,
    ) -> Result<Self> {
        let mut tensors = BTreeMap::new();
        let all = 0..model.blocks.len();
        for (name, shape, v) in block_means(model, acc, all)? {
            tensors.insert(name, (shape, v));
        }
        for (name, shape, v) in tokens.map(token_tensors).unwrap_or_default() {
            tensors.insert(name, (shape, v));
        }
        Ok(Self { meta, tensors })
    }

    /// Write tensor by tensor (no serialised copy of the file in memory), atomically.
    pub fn write(&self, path: &Path) -> Result<()> {
        use crate::util::stfile::{Spec, Writer};
        let specs: Vec<Spec> = self
            .tensors
            .iter()
            .map(|(k, (s, _))| Spec::new(k.clone(), safetensors::Dtype::F32, s.clone()))
            .collect();
        let mut md = HashMap::new();
        // One metadata key: safetensors writes its metadata map in hash order, and outputs
        // must be byte-identical from run to run.
        md.insert("sparc3".to_string(), serde_json::to_string(&self.meta)?);
        let mut w = Writer::create(path, &specs, Some(md), true)?;
        for (k, (_, v)) in &self.tensors {
            w.write_f32(k, v, None)?;
        }
        w.finish()
    }

    /// Read a relevance file, tensor by tensor.
    pub fn read(path: &Path) -> Result<Self> {
        let r = crate::util::stfile::Reader::open(path)
            .with_context(|| format!("cannot read relevance file {}", path.display()))
            .tag(Kind::Input)?;
        let meta = Self::read_meta(path, &r)?;
        let mut tensors = BTreeMap::new();
        for (name, info) in r.tensors() {
            let v = r.f32s(&name, &info).tag(Kind::Input)?;
            tensors.insert(name, (info.shape.clone(), v));
        }
        Ok(Self { meta, tensors })
    }

    fn read_meta(path: &Path, r: &crate::util::stfile::Reader) -> Result<RelMeta> {
        let md = r.metadata();
        Ok(
            match md
                .and_then(|m| m.get("sparc3"))
                .map(|s| serde_json::from_str::<RelMeta>(s))
            {
                Some(Ok(m)) if m.format == FORMAT => m,
                Some(Ok(m)) => fail!(
                    Input,
                    "{}: relevance file format {} is not {FORMAT}",
                    path.display(),
                    m.format
                ),
                _ => fail!(
                    Input,
                    "{}: not a sparc3 relevance file (no sparc3 metadata)",
                    path.display()
                ),
            },
        )
    }

    /// Merge shards of one run: weighted means by sample counts; token tables concatenated in
    /// shard order.
    pub fn merge(mut files: Vec<(String, RelevanceFile)>) -> Result<RelevanceFile> {
        if files.len() < 2 {
            fail!(Usage, "merge needs at least two relevance files");
        }
        files.sort_by_key(|(_, f)| f.meta.shards.first().copied().unwrap_or(0));
        let shards = check_same_run(&files)?;
        let total: usize = files.iter().map(|(_, f)| f.meta.samples).sum();
        let mut out = weighted_means(&files, total);
        merge_token_tables(&files, &mut out);
        let mut meta = files[0].1.meta.clone();
        meta.samples = total;
        meta.shards = shards.into_iter().collect();
        Ok(RelevanceFile { meta, tensors: out })
    }
}

type Tensors = BTreeMap<String, (Vec<usize>, Vec<f32>)>;

/// Merge shard files into `out` tensor by tensor (one tensor of each input in memory at a
/// time): the same checks, means and token tables as [`RelevanceFile::merge`], the same bytes.
pub fn merge_into(
    inputs: &[(String, &Path)],
    out: &Path,
) -> Result<(RelMeta, super::staged::Staged)> {
    if inputs.len() < 2 {
        fail!(Usage, "merge needs at least two relevance files");
    }
    let mut files = Vec::new();
    for (label, p) in inputs {
        let r = RelevanceReader::open(p)?;
        files.push((label.clone(), r.outline()?, r));
    }
    files.sort_by_key(|(_, f, _)| f.meta.shards.first().copied().unwrap_or(0));
    let (readers, outlines): (Vec<_>, Vec<_>) =
        files.into_iter().map(|(l, f, r)| (r, (l, f))).unzip();
    let shards = check_same_run(&outlines)?;
    let total: usize = outlines.iter().map(|(_, f)| f.meta.samples).sum();
    let mut tokens = Tensors::new();
    merge_token_tables(&outlines, &mut tokens);
    let mut meta = outlines[0].1.meta.clone();
    meta.samples = total;
    meta.shards = shards.into_iter().collect();
    let weights: Vec<(&String, &Vec<usize>)> = outlines[0]
        .1
        .tensors
        .iter()
        .filter(|(k, _)| !k.starts_with("tokens."))
        .map(|(k, (s, _))| (k, s))
        .collect();
    let mut specs: Vec<(String, Vec<usize>)> = weights
        .iter()
        .map(|(k, s)| ((*k).clone(), (*s).clone()))
        .collect();
    specs.extend(tokens.iter().map(|(k, (s, _))| (k.clone(), s.clone())));
    let mut staged = super::staged::Staged::with_tensors(out, &meta, &specs)?;
    for (name, shape) in weights {
        let mut acc = vec![0f64; shape.iter().product()];
        for ((_, f), r) in outlines.iter().zip(&readers) {
            let w = f.meta.samples as f64 / total as f64;
            for (a, v) in acc.iter_mut().zip(&r.values(name)?) {
                *a += w * *v as f64;
            }
        }
        let v: Vec<f32> = acc.into_iter().map(|x| x as f32).collect();
        staged.write(name, &v)?;
    }
    for (name, (_, v)) in &tokens {
        staged.write(name, v)?;
    }
    Ok((meta, staged))
}

/// Refuse files (sorted by shard) that are not shards of one run, repeat a shard or hold
/// different tensors; returns the shards they cover.
fn check_same_run(files: &[(String, RelevanceFile)]) -> Result<BTreeSet<usize>> {
    let (first_name, first) = &files[0];
    let key = first.meta.run_key();
    let mut seen = BTreeSet::new();
    for (name, f) in files {
        if f.meta.run_key() != key {
            let (a, b) = (&first.meta, &f.meta);
            let what = if a.config_sha256 != b.config_sha256 {
                "different models"
            } else if a.target != b.target {
                "different targets"
            } else if a.aggregation != b.aggregation {
                "different aggregations"
            } else if a.rule != b.rule || a.epsilon != b.epsilon {
                "different rules"
            } else {
                "different data, seeds, sequence lengths or shard counts"
            };
            fail!(
                Input,
                "{name} and {first_name} do not belong to the same run ({what})"
            );
        }
        for s in &f.meta.shards {
            if !seen.insert(*s) {
                fail!(
                    Input,
                    "shard {s} appears twice among the files to merge ({name})"
                );
            }
        }
        let weights = |x: &RelevanceFile| -> Vec<String> {
            x.tensors
                .keys()
                .filter(|k| !k.starts_with("tokens."))
                .cloned()
                .collect()
        };
        if weights(f) != weights(first) {
            fail!(Input, "{name} and {first_name} hold different tensors");
        }
    }
    Ok(seen)
}

/// Every tensor but the token tables: the mean over the files weighted by their sample counts
/// (`total` in all).
fn weighted_means(files: &[(String, RelevanceFile)], total: usize) -> Tensors {
    let first = &files[0].1;
    let mut out = Tensors::new();
    for (name, (shape, _)) in &first.tensors {
        if name.starts_with("tokens.") {
            continue;
        }
        let mut acc = vec![0f64; shape.iter().product()];
        for (_, f) in files {
            let w = f.meta.samples as f64 / total as f64;
            for (a, v) in acc.iter_mut().zip(&f.tensors[name].1) {
                *a += w * *v as f64;
            }
        }
        out.insert(
            name.clone(),
            (shape.clone(), acc.into_iter().map(|x| x as f32).collect()),
        );
    }
    out
}

/// The token tables of every file, put back in the run's sample order (only when every file
/// has them, with one sequence length).
fn merge_token_tables(files: &[(String, RelevanceFile)], out: &mut Tensors) {
    let has_tokens = |f: &RelevanceFile| {
        ["tokens.ids", "tokens.relevance", "tokens.index"]
            .iter()
            .all(|k| f.tensors.contains_key(*k))
    };
    if !files.iter().all(|(_, f)| has_tokens(f)) {
        return;
    }
    let t = files[0].1.tensors["tokens.ids"].0[1];
    if !files.iter().all(|(_, f)| f.tensors["tokens.ids"].0[1] == t) {
        return;
    }
    // Rows of every file, put back in the run's sample order.
    let mut rows: Vec<(f32, &[f32], &[f32])> = Vec::new();
    for (_, f) in files {
        let idx = &f.tensors["tokens.index"].1;
        let ids = &f.tensors["tokens.ids"].1;
        let rel = &f.tensors["tokens.relevance"].1;
        for (r, &ix) in idx.iter().enumerate() {
            rows.push((ix, &ids[r * t..(r + 1) * t], &rel[r * t..(r + 1) * t]));
        }
    }
    rows.sort_by(|a, b| a.0.total_cmp(&b.0));
    let n = rows.len();
    out.insert(
        "tokens.index".into(),
        (vec![n], rows.iter().map(|r| r.0).collect()),
    );
    out.insert(
        "tokens.ids".into(),
        (
            vec![n, t],
            rows.iter().flat_map(|r| r.1.iter().copied()).collect(),
        ),
    );
    out.insert(
        "tokens.relevance".into(),
        (
            vec![n, t],
            rows.iter().flat_map(|r| r.2.iter().copied()).collect(),
        ),
    );
}

/// A block's unit tensors: `neurons.<mlp>` with the layer whose inputs are those neurons
/// (`down`/`fc2`), and `heads.<attention>`.
pub(super) fn unit_names(
    block: &crate::model::Block,
) -> (String, &crate::model::layers::Linear, String) {
    let (down, prefix) = match &block.mlp {
        Mlp::Gated { down, .. } => (down, down.name.trim_end_matches(".down_proj")),
        Mlp::Plain { fc2, .. } => (fc2, fc2.name.trim_end_matches(".fc2")),
    };
    let o = &block.attn.o;
    let heads = o.name.rsplit_once('.').map(|(p, _)| p).unwrap_or(&o.name);
    (format!("neurons.{prefix}"), down, format!("heads.{heads}"))
}

/// One named tensor of a relevance file: name, shape, values.
pub(super) type Named = (String, Vec<usize>, Vec<f32>);

/// The relevance tensors of `blocks`, as means over the accumulated samples: each linear's
/// weight (and bias) relevance, its block's neurons (`neurons.*`, the inputs of `down`/`fc2`)
/// and heads (`heads.*`, the input slices of `o`). The accumulators' buffers are taken over
/// and divided in place.
pub(super) fn block_means(
    model: &DecoderModel,
    mut acc: Accumulators,
    blocks: std::ops::Range<usize>,
) -> Result<Vec<Named>> {
    use rayon::prelude::*;
    let n = acc.samples.max(1) as f32;
    let mean = |mut v: Vec<f32>| {
        v.par_chunks_mut(1 << 16)
            .for_each(|c| c.iter_mut().for_each(|x| *x /= n));
        v
    };
    let mut out = Vec::new();
    for block in &model.blocks[blocks] {
        let (neurons, down, heads_name) = unit_names(block);
        let o = &block.attn.o;
        let (Some(a), Some(ao)) = (acc.layers.get(&down.name), acc.layers.get(&o.name)) else {
            fail!(
                Input,
                "no relevance was accumulated for block {}",
                neurons.trim_start_matches("neurons.")
            );
        };
        out.push((neurons, vec![a.inputs.len()], mean(a.inputs.clone())));
        let heads: Vec<f32> = ao
            .inputs
            .chunks(block.attn.head_dim)
            .map(|c| c.iter().sum::<f32>() / n)
            .collect();
        out.push((heads_name, vec![heads.len()], heads));
        for lin in block.linears() {
            let Some(a) = acc.layers.remove(&lin.name) else {
                fail!(Input, "no relevance was accumulated for {}", lin.name);
            };
            if acc.per_weight {
                out.push((
                    format!("{}.weight", lin.name),
                    a.shape.to_vec(),
                    mean(a.weight),
                ));
            }
            if let Some(b) = a.bias {
                out.push((format!("{}.bias", lin.name), vec![b.len()], mean(b)));
            }
        }
    }
    Ok(out)
}

/// The token tables (`tokens.ids`, `tokens.relevance`, `tokens.index`), when every sample has
/// one length.
pub(super) fn token_tensors(tt: TokenTable) -> Vec<Named> {
    let ids = &tt.ids;
    let t = ids.first().map_or(0, |r| r.len());
    if t == 0 || !ids.iter().all(|r| r.len() == t) {
        return Vec::new();
    }
    let flat_ids: Vec<f32> = ids.iter().flatten().map(|&x| x as f32).collect();
    let flat_rel: Vec<f32> = tt.relevance.into_iter().flatten().collect();
    let index: Vec<f32> = (0..ids.len())
        .map(|i| (tt.first_index + i) as f32)
        .collect();
    vec![
        ("tokens.ids".into(), vec![ids.len(), t], flat_ids),
        ("tokens.relevance".into(), vec![ids.len(), t], flat_rel),
        ("tokens.index".into(), vec![ids.len()], index),
    ]
}
