//! Everything `correct` prepares before ranking: the undesired set split into attributed and
//! held-out prompts, what each attributed record explains, the general windows, the
//! evaluation protocol and the dense model's behaviour.

use super::{Amount, Config, Explain};
use crate::eval::behaviour::{Behaviour, BehaviourEval, Lexicon};
use crate::eval::generate::GenConfig;
use crate::jobs::prepare::{defaults, EvalInfo};
use crate::jobs::{DataRef, Progress};
use crate::lrp::{Target, TokenSet};
use crate::prune::structured::{self, Granularity};
use crate::source::Loaded;
use crate::tasks::calib::{self, Calib};
use crate::tasks::undesired::{self, UndesiredSet};
use crate::{fail, invalid};
use anyhow::Result;
use std::sync::Arc;

/// The inputs read before the model is loaded (a bad file fails at once).
pub struct Inputs {
    pub set: UndesiredSet,
    pub lexicon: Lexicon,
}

pub fn read_inputs(cfg: &Config) -> Result<Inputs> {
    let set = undesired::read(&cfg.toxic_set, cfg.holdout, cfg.seed)?;
    let lexicon = match &cfg.lexicon {
        Some(p) => {
            let (t, sha) = crate::data::read_utf8(p, "lexicon")?;
            Lexicon::parse(&t, &p.display().to_string(), sha)?
        }
        None => Lexicon::builtin(),
    };
    Ok(Inputs { set, lexicon })
}

/// What the sweep needs: prompts, targets, general windows, the behaviour protocol and the
/// dense model's behaviour.
pub struct Prepared {
    pub inputs: Inputs,
    pub components: usize,
    pub counts: Vec<usize>,
    pub general: Calib,
    pub eval: EvalInfo,
    eval_ids: Vec<u32>,
    /// `prompt ++ continuation` with what relevance explains in it.
    pub attr_targets: Vec<(Vec<u32>, Target)>,
    pub token_set: Option<Arc<TokenSet>>,
    held_prompts: Vec<Vec<u32>>,
    held_seqs: Vec<(Vec<u32>, usize)>,
    eos: Vec<u32>,
    pub dense: Behaviour,
    /// When the job's work began (reports time the whole job).
    pub started: std::time::Instant,
}

impl Prepared {
    /// The behaviour measurement (held-out prompts, sampling, perplexity).
    pub fn behaviour<'a>(&'a self, loaded: &'a Loaded, cfg: &Config) -> BehaviourEval<'a> {
        BehaviourEval {
            prompts: &self.held_prompts,
            continuations: &self.held_seqs,
            lexicon: &self.inputs.lexicon,
            tokenizer: &loaded.tokenizer,
            eos: &self.eos,
            sampling: sampling(cfg),
            greedy_tokens: cfg.new_tokens,
            ppl: Some((&self.eval_ids, self.eval.seq_len, self.eval.windows)),
        }
    }

    pub fn evaluated_prompts(&self) -> usize {
        self.held_seqs.len()
    }

    pub fn data_refs(&self) -> Vec<DataRef> {
        let set = &self.inputs.set.info;
        let lex = &self.inputs.lexicon;
        vec![
            DataRef::new("undesired", &set.file, &set.sha256),
            DataRef::new(
                "general",
                &self.general.info.file,
                &self.general.info.sha256,
            ),
            DataRef::new("lexicon", &lex.label, &lex.sha256),
            DataRef::new("eval", &self.eval.file, &self.eval.sha256),
        ]
    }
}

pub fn sampling(cfg: &Config) -> GenConfig {
    GenConfig {
        new_tokens: cfg.new_tokens,
        samples: cfg.k,
        temperature: cfg.temperature,
        seed: cfg.seed,
    }
}

/// Components that can be removed at this granularity within the selected layers.
fn components(loaded: &Loaded, cfg: &Config) -> Result<usize> {
    let selected = |name: &str| cfg.layers.selects(name);
    let n = match cfg.granularity {
        Granularity::Neuron => structured::unit_groups(&loaded.model, cfg.granularity, selected)
            .iter()
            .map(|g| g.count)
            .sum::<usize>(),
        _ => loaded
            .model
            .linears()
            .iter()
            .filter(|l| selected(&l.name))
            .map(|l| l.weight.elem_count())
            .sum(),
    };
    if n == 0 {
        invalid!(Layers, "matches none of the model's prunable layers");
    }
    Ok(n)
}

/// The removal counts of the sweep, ascending.
fn counts(cfg: &Config, components: usize) -> Result<Vec<usize>> {
    let mut counts: Vec<usize> = match &cfg.amount {
        Amount::Ratios(r) => r
            .iter()
            .map(|r| ((r * components as f64).round() as usize).max(1))
            .collect(),
        Amount::Counts(c) => c.clone(),
        Amount::Default => vec![100.min(components)],
    };
    counts.sort_unstable();
    counts.dedup();
    if let Some(&c) = counts.iter().find(|&&c| c > components) {
        invalid!(
            Count,
            "{c} is larger than the number of {} components ({components})",
            cfg.granularity.name()
        );
    }
    Ok(counts)
}

pub fn prepare(
    loaded: &Loaded,
    cfg: &Config,
    inputs: Inputs,
    progress: &dyn Progress,
) -> Result<Prepared> {
    let started = std::time::Instant::now();
    let components = components(loaded, cfg)?;
    let counts = counts(cfg, components)?;
    let max_pos = loaded.model.dims.max_positions;
    if cfg.seq_len < 2 || cfg.seq_len > max_pos {
        invalid!(SeqLen, "must be in [2, {max_pos}], got {}", cfg.seq_len);
    }
    let tok = &loaded.tokenizer;
    let general = calib::sample(
        cfg.general_set.as_deref(),
        crate::data::builtin_eval_text,
        tok,
        cfg.general_samples,
        cfg.seq_len,
        cfg.seed,
    )?;
    let eval_src = match &cfg.eval.file {
        Some(p) => crate::data::read_text(p)?,
        None => crate::data::builtin_eval_text(),
    };
    let eval = EvalInfo {
        file: eval_src.label.clone(),
        sha256: eval_src.sha256.clone(),
        seq_len: cfg
            .eval
            .seq_len
            .unwrap_or_else(|| defaults::seq_len(loaded))
            .min(max_pos),
        windows: cfg.eval.windows.or(cfg.eval.file.is_none().then_some(64)),
    };
    let eval_ids = crate::data::encode_plain(tok, &eval_src.text)?;
    let (attr, held) = encode_prompts(loaded, cfg, &inputs.set)?;
    let held_prompts: Vec<Vec<u32>> = held.iter().map(|p| p.prompt.clone()).collect();
    progress.stage("dense", 0);
    let attr_seqs = super::rank::complete(&loaded.model, attr, cfg.new_tokens)?;
    let (attr_targets, token_set) = targets(loaded, cfg, &inputs, attr_seqs)?;
    let held_seqs = super::rank::complete(&loaded.model, held, cfg.new_tokens)?;
    let mut prep = Prepared {
        inputs,
        components,
        counts,
        general,
        eval,
        eval_ids,
        attr_targets,
        token_set,
        held_prompts,
        held_seqs,
        eos: eos_ids(&loaded.config),
        dense: Behaviour::default(),
        started,
    };
    prep.dense = prep
        .behaviour(loaded, cfg)
        .run(&loaded.model, |w| progress.message(&format!("dense {w}")))?;
    progress.done();
    Ok(prep)
}

type Encoded = Vec<undesired::Encoded>;

/// The attributed and held-out records, tokenized, each leaving room for the new tokens.
fn encode_prompts(loaded: &Loaded, cfg: &Config, set: &UndesiredSet) -> Result<(Encoded, Encoded)> {
    let tok = &loaded.tokenizer;
    let label = &set.info.file;
    let mut attr_recs = set.attribution.clone();
    if let Some(n) = cfg.samples {
        attr_recs.truncate(n);
    }
    let attr = undesired::encode(tok, &attr_recs, cfg.continuation_tokens, label)?;
    let mut held_recs = set.evaluation.clone();
    if let Some(n) = cfg.eval_prompts {
        held_recs.truncate(n);
    }
    let held = undesired::encode(tok, &held_recs, cfg.continuation_tokens, label)?;
    let max_pos = loaded.model.dims.max_positions;
    if let Some(p) = attr
        .iter()
        .chain(&held)
        .find(|p| p.prompt.len() + cfg.new_tokens > max_pos)
    {
        fail!(
            Input,
            "{label}: a prompt of {} tokens leaves no room for {} new tokens ({max_pos} positions)",
            p.prompt.len(),
            cfg.new_tokens
        );
    }
    Ok((attr, held))
}

type Targets = (Vec<(Vec<u32>, Target)>, Option<Arc<TokenSet>>);

/// What each attributed record explains.
fn targets(
    loaded: &Loaded,
    cfg: &Config,
    inputs: &Inputs,
    seqs: Vec<(Vec<u32>, usize)>,
) -> Result<Targets> {
    let tok = &loaded.tokenizer;
    let lexicon = &inputs.lexicon;
    let token_set = match cfg.explain {
        Explain::Lexicon => Some(Arc::new(lexicon.token_set(tok)?)),
        _ => None,
    };
    let mut out = Vec::with_capacity(seqs.len());
    for (ids, plen) in seqs {
        match cfg.explain {
            Explain::Continuation => out.push((ids, cfg.objective.undesired_target(plen, None))),
            Explain::Flagged => {
                let f = lexicon.flagged_tokens(tok, &ids[plen..])?;
                if !f.is_empty() {
                    let positions = f.iter().map(|i| plen + i).collect();
                    out.push((ids, cfg.objective.undesired_target(plen, Some(positions))));
                }
            }
            Explain::Lexicon => {
                let set = token_set.clone().expect("built above");
                out.push((
                    ids,
                    Target::SetMass {
                        prompt_len: plen,
                        set,
                    },
                ));
            }
        }
    }
    if out.is_empty() {
        fail!(
            Input,
            "{}: no attributed continuation contains a word of the lexicon ({}); explain the whole continuation instead",
            inputs.set.info.file,
            lexicon.label
        );
    }
    Ok((out, token_set))
}

fn eos_ids(cfg: &serde_json::Value) -> Vec<u32> {
    use serde_json::Value;
    match cfg.get("eos_token_id") {
        Some(Value::Number(n)) => n.as_u64().map(|v| vec![v as u32]).unwrap_or_default(),
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|v| v.as_u64())
            .map(|v| v as u32)
            .collect(),
        _ => Vec::new(),
    }
}
