//! Human-readable result tables of `circuit` and `correct` (the reports hold the same
//! numbers for scripts).

use crate::eval::behaviour::Behaviour;
use crate::jobs::circuit::survivors::Survivors;

/// Where the circuit lives: kept heads, living neurons, the layers kept most.
pub fn print_where(s: &Survivors) {
    let mut heads: Vec<(f64, String)> = s
        .heads
        .iter()
        .flat_map(|b| {
            b.kept
                .iter()
                .enumerate()
                .map(move |(h, &k)| (k, format!("L{}.H{h}", b.block)))
        })
        .collect();
    let binary = heads.iter().all(|h| h.0 == 0.0 || h.0 == 1.0);
    let all_heads = heads.iter().all(|h| h.0 >= 1.0);
    if binary && !all_heads {
        // Whole heads removed: list, per layer, the heads that survive.
        let per: Vec<String> = s
            .heads
            .iter()
            .map(|b| {
                let kept: Vec<String> = (0..b.kept.len())
                    .filter(|&h| b.kept[h] == 1.0)
                    .map(|h| h.to_string())
                    .collect();
                format!(
                    "L{}:{}",
                    b.block,
                    if kept.is_empty() {
                        "-".into()
                    } else {
                        kept.join(",")
                    }
                )
            })
            .collect();
        outln!("             heads kept: {}", per.join(" "));
    }
    let neurons: Vec<String> = s
        .neurons
        .iter()
        .filter(|b| b.alive != b.of)
        .map(|b| format!("L{}:{}", b.block, b.alive))
        .collect();
    if !neurons.is_empty() {
        outln!(
            "             neurons alive per layer: {}",
            neurons.join(" ")
        );
    }
    heads.sort_by(|a, b| b.0.total_cmp(&a.0));
    if !binary && !all_heads {
        let top: Vec<String> = heads
            .iter()
            .take(12)
            .filter(|h| h.0 > 0.0)
            .map(|h| format!("{} {:.2}", h.1, h.0))
            .collect();
        outln!("             heads kept most: {}", top.join(", "));
    }
    let mut layers: Vec<(f64, &str)> = s
        .layers
        .iter()
        .map(|l| (l.kept, l.layer.as_str()))
        .collect();
    layers.sort_by(|a, b| b.0.total_cmp(&a.0));
    let top: Vec<String> = layers
        .iter()
        .take(6)
        .map(|l| format!("{} {:.3}", l.1, l.0))
        .collect();
    outln!("             layers kept most: {}", top.join(", "));
}

/// The behaviour table of `correct`: the dense model, then one row per sweep point.
pub fn print_table(dense: &Behaviour, rows: &[(&str, usize, &Behaviour)]) {
    outln!(
        "{:<20} {:>6} {:>10} {:>10} {:>10} {:>10} {:>8} {:>9}",
        "method",
        "count",
        "logp/tok",
        "flag-smp",
        "flag-pr",
        "flag-grd",
        "uniq",
        "ppl"
    );
    let line = |name: &str, c: String, b: &Behaviour| {
        outln!(
            "{:<20} {:>6} {:>10.4} {:>10.4} {:>10.4} {:>10.4} {:>8.3} {:>9}",
            name,
            c,
            b.logprob_per_token,
            b.flagged_sample_rate,
            b.flagged_prompt_rate,
            b.greedy_flagged_rate,
            b.greedy_unique_ratio,
            b.ppl.map_or("-".into(), |p| format!("{p:.4}"))
        );
    };
    line("dense", "0".into(), dense);
    for (m, c, b) in rows {
        line(m, c.to_string(), b);
    }
}
