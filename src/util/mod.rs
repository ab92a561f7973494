//! Generic helpers with no knowledge of models: system queries, process tuning, hashing, the
//! seeded RNG, atomic file writes and signal handling. A leaf: nothing here uses another
//! module of the crate except `error`.

pub mod fs;
pub mod interrupt;
pub mod rng;
pub mod stfile;

pub use rng::Rng;

use sha2::{Digest, Sha256};

/// Lower-case hex sha256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(bytes);
    format!("{:x}", h.finalize())
}

/// A `/proc/meminfo` field (`MemAvailable`, `MemTotal`), in bytes (Linux).
fn meminfo(key: &str) -> Option<usize> {
    let s = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = s.lines().find(|l| l.starts_with(key))?;
    let kb: usize = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// A cgroup v2 memory file of this process's group (`memory.max`; None when unlimited).
fn cgroup(file: &str) -> Option<usize> {
    std::fs::read_to_string(format!("/sys/fs/cgroup/{file}"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The memory this process may still allocate: `MemAvailable`, capped by what the cgroup's
/// limit leaves (a batch scheduler's job) and by `SPARC3_MEMORY_AVAILABLE` (bytes, or with a
/// KiB/MiB/GiB suffix; for planning as if on a smaller machine).
pub fn mem_available() -> Option<usize> {
    let mut avail = meminfo("MemAvailable:")?;
    if let (Some(max), Some(cur)) = (cgroup("memory.max"), cgroup("memory.current")) {
        avail = avail.min(max.saturating_sub(cur));
    }
    if let Some(v) = std::env::var("SPARC3_MEMORY_AVAILABLE")
        .ok()
        .and_then(|v| parse_size(&v))
    {
        avail = avail.min(v);
    }
    Some(avail)
}

/// The machine's memory (`MemTotal`), or the cgroup's limit when lower, in bytes (Linux).
pub fn mem_total() -> Option<usize> {
    let total = meminfo("MemTotal:")?;
    Some(cgroup("memory.max").map_or(total, |c| c.min(total)))
}

/// `123`, `4KiB`, `512MiB`, `6GiB` (also `K`, `M`, `G`, `KB`, `MB`, `GB` as binary units).
pub fn parse_size(s: &str) -> Option<usize> {
    let s = s.trim();
    let i = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(i);
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" | "kib" => 1024.0,
        "m" | "mb" | "mib" => (1u64 << 20) as f64,
        "g" | "gb" | "gib" => (1u64 << 30) as f64,
        _ => return None,
    };
    num.parse::<f64>().ok().map(|n| (n * mult) as usize)
}

/// Peak resident set size of this process, in bytes (Linux).
pub fn peak_rss() -> Option<usize> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: usize = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Process-wide tuning; call first thing in `main`, before any other thread starts (it may set
/// an environment variable).
///
/// - Keep large freed buffers in the heap instead of returning them to the kernel: the forward
///   and backward passes allocate many same-sized activations, and fresh mmap'd pages cost a
///   page fault each (measured: a third of the wall time of a small model's evaluation went to
///   the kernel). One arena for all threads: the passes run on rayon's workers, and with an
///   arena per thread each worker's arena grew to the whole working set (peak RSS of a
///   512-token attribution 2.15 GB against 1.87 GB).
/// - candle's elementwise thread pool spins 25 000 `pause`s after every operation before it
///   parks. Our matrix products run on rayon's threads in between, so that spinning thread
///   takes a core from them: on 2 cores it cost a third of an attribution's wall time (0.51 s
///   against 0.33 s at 128 tokens). A short spin keeps candle's hand-offs quick without the
///   theft; `CANDLE_BARRIER_POOL_SPIN_LIMIT` set by the user wins.
pub fn tune_process() {
    if std::env::var_os(SPIN_LIMIT_VAR).is_none() {
        std::env::set_var(SPIN_LIMIT_VAR, SPIN_LIMIT.to_string());
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        extern "C" {
            fn mallopt(param: i32, value: i32) -> i32;
        }
        const M_TRIM_THRESHOLD: i32 = -1;
        const M_MMAP_THRESHOLD: i32 = -3;
        const M_ARENA_MAX: i32 = -8;
        // SAFETY: mallopt only changes glibc malloc tuning parameters.
        unsafe {
            mallopt(M_MMAP_THRESHOLD, 1 << 30);
            mallopt(M_TRIM_THRESHOLD, i32::MAX);
            mallopt(M_ARENA_MAX, 1);
        }
    }
}

const SPIN_LIMIT_VAR: &str = "CANDLE_BARRIER_POOL_SPIN_LIMIT";
/// Measured on SmolLM2 attribution, 2 cores: 25 000 (candle's default) 0.47–0.51 s, 1 000
/// 0.33–0.36 s, 300 0.33–0.34 s, 0 (park at once) 0.40–0.42 s.
const SPIN_LIMIT: u32 = 300;
