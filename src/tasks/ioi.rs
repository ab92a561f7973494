//! Indirect object identification prompts from templates (`configs/ioi.toml`, built in; any
//! file of the same shape with `--task-config`). Names, places and objects that are not one
//! token for the loaded tokenizer are dropped; generation is seeded and prompts are unique, so
//! attribution and held-out prompts never share a prompt.

use super::task::{encode_prompt, single_token, TaskInfo, TaskPrompt, TaskSet};
use crate::fail;
use crate::util::Rng;
use anyhow::Result;
use std::collections::HashSet;
use std::path::Path;
use tokenizers::Tokenizer;

pub const BUILTIN: &str = include_str!("../../configs/ioi.toml");

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IoiConfig {
    pub templates: Vec<String>,
    pub names: Vec<String>,
    #[serde(default)]
    pub places: Vec<String>,
    #[serde(default)]
    pub objects: Vec<String>,
}

impl IoiConfig {
    pub fn parse(text: &str, label: &str) -> Result<Self> {
        let c: IoiConfig = match toml::from_str(text) {
            Ok(c) => c,
            Err(e) => fail!(Input, "{label}: {}", e.message()),
        };
        if c.templates.is_empty() {
            fail!(Input, "{label}: no templates");
        }
        for t in &c.templates {
            for key in ["{A}", "{B}", "{S}"] {
                if !t.contains(key) {
                    fail!(Input, "{label}: template {t:?} lacks {key}");
                }
            }
            if t.contains("{PLACE}") && c.places.is_empty() {
                fail!(
                    Input,
                    "{label}: template {t:?} uses {{PLACE}} but no places are listed"
                );
            }
            if t.contains("{OBJECT}") && c.objects.is_empty() {
                fail!(
                    Input,
                    "{label}: template {t:?} uses {{OBJECT}} but no objects are listed"
                );
            }
        }
        Ok(c)
    }
}

/// Keep the words that are one token with a leading space.
fn one_token_words(tok: &Tokenizer, words: &[String]) -> Result<Vec<(String, u32)>> {
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    for w in words {
        if let Some(id) = single_token(tok, &format!(" {w}"))? {
            if seen.insert(id) {
                out.push((w.clone(), id));
            }
        }
    }
    Ok(out)
}

/// Generate `n_attr + n_eval` unique IOI prompts and split them.
pub fn generate(
    config: Option<&Path>,
    tok: &Tokenizer,
    n_attr: usize,
    n_eval: usize,
    seed: u64,
) -> Result<TaskSet> {
    let (text, label, sha256) = match config {
        Some(p) => {
            let (t, sha) = crate::data::read_utf8(p, "IOI config")?;
            (t, p.display().to_string(), sha)
        }
        None => (
            BUILTIN.to_string(),
            "built-in configs/ioi.toml".to_string(),
            crate::util::sha256_hex(BUILTIN.as_bytes()),
        ),
    };
    let cfg = IoiConfig::parse(&text, &label)?;
    let words = Words::usable(&cfg, tok, &label)?;
    let mut all = words.prompts(tok, &label, n_attr + n_eval, seed)?;
    // Generated in random order already: the first n_attr attribute, the rest evaluate.
    let evaluation = all.split_off(n_attr);
    Ok(TaskSet {
        info: TaskInfo {
            name: "ioi".into(),
            source: label,
            sha256,
            seed,
            attribution_prompts: all.len(),
            evaluation_prompts: evaluation.len(),
            details: serde_json::json!({
                "templates": words.templates.len(),
                "names": words.names.len(),
                "names_listed": cfg.names.len(),
                "places": words.places.len(),
                "objects": words.objects.len(),
            }),
        },
        attribution: all,
        evaluation,
    })
}

/// The names, places and objects that are one token for the tokenizer, and the templates
/// they can fill.
struct Words<'a> {
    names: Vec<(String, u32)>,
    places: Vec<String>,
    objects: Vec<String>,
    templates: Vec<&'a String>,
}

impl<'a> Words<'a> {
    fn usable(cfg: &'a IoiConfig, tok: &Tokenizer, label: &str) -> Result<Self> {
        let names = one_token_words(tok, &cfg.names)?;
        let places: Vec<String> = one_token_words(tok, &cfg.places)?
            .into_iter()
            .map(|p| p.0)
            .collect();
        let objects: Vec<String> = one_token_words(tok, &cfg.objects)?
            .into_iter()
            .map(|p| p.0)
            .collect();
        if names.len() < 2 {
            fail!(
                Input,
                "{label}: only {} of {} names are one token for this tokenizer; IOI needs at least 2",
                names.len(),
                cfg.names.len()
            );
        }
        let templates: Vec<&String> = cfg
            .templates
            .iter()
            .filter(|t| {
                (!t.contains("{PLACE}") || !places.is_empty())
                    && (!t.contains("{OBJECT}") || !objects.is_empty())
            })
            .collect();
        if templates.is_empty() {
            fail!(
                Input,
                "{label}: no template is usable: its places or objects are not one token for this tokenizer"
            );
        }
        Ok(Self {
            names,
            places,
            objects,
            templates,
        })
    }

    /// `want` distinct prompts, in the seeded random order.
    fn prompts(
        &self,
        tok: &Tokenizer,
        label: &str,
        want: usize,
        seed: u64,
    ) -> Result<Vec<TaskPrompt>> {
        let mut rng = Rng::new(seed);
        let mut seen = HashSet::new();
        let mut all = Vec::with_capacity(want);
        let mut tries = 0usize;
        while all.len() < want {
            tries += 1;
            if tries > want * 50 + 1000 {
                fail!(
                    Input,
                    "{label}: the templates and word lists give only {} distinct prompts; asked for {want}",
                    all.len()
                );
            }
            let (p, io, s) = self.draw(&mut rng);
            if !seen.insert(p.clone()) {
                continue;
            }
            all.push(TaskPrompt {
                ids: encode_prompt(tok, &p)?,
                prompt: p,
                target: format!(" {}", io.0),
                foil: format!(" {}", s.0),
                target_id: io.1,
                foil_id: s.1,
            });
        }
        Ok(all)
    }

    /// One random prompt with its indirect object (the answer) and subject (the foil).
    fn draw(&self, rng: &mut Rng) -> (String, &(String, u32), &(String, u32)) {
        let (names, places, objects) = (&self.names, &self.places, &self.objects);
        let t = self.templates[rng.below(self.templates.len() as u64) as usize];
        let io = rng.below(names.len() as u64) as usize;
        let mut s = rng.below(names.len() as u64 - 1) as usize;
        if s >= io {
            s += 1;
        }
        let (io, s) = (&names[io], &names[s]);
        let io_first = rng.below(2) == 0;
        let (a, b) = if io_first { (io, s) } else { (s, io) };
        let mut p = t
            .replace("{A}", &a.0)
            .replace("{B}", &b.0)
            .replace("{S}", &s.0);
        if p.contains("{PLACE}") {
            p = p.replace("{PLACE}", &places[rng.below(places.len() as u64) as usize]);
        }
        if p.contains("{OBJECT}") {
            p = p.replace(
                "{OBJECT}",
                &objects[rng.below(objects.len() as u64) as usize],
            );
        }
        (p, io, s)
    }
}
