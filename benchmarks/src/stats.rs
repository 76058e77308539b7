//! Latency distributions (hdrhistogram) and process memory.

use hdrhistogram::Histogram;

/// Milliseconds, recorded with microsecond resolution.
pub struct Latencies(Histogram<u64>);

impl Default for Latencies {
    fn default() -> Self {
        Self::new()
    }
}

impl Latencies {
    pub fn new() -> Self {
        Self(Histogram::new(3).expect("valid precision"))
    }

    pub fn record_ms(&mut self, ms: f64) {
        let _ = self.0.record((ms * 1000.0).max(1.0) as u64);
    }

    pub fn len(&self) -> u64 {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn p(&self, quantile: f64) -> f64 {
        self.0.value_at_quantile(quantile) as f64 / 1000.0
    }

    /// `p50 / p90 / p99` in milliseconds.
    pub fn summary(&self) -> String {
        if self.is_empty() {
            return "n/a".into();
        }
        format!(
            "{:.1} / {:.1} / {:.1}",
            self.p(0.5),
            self.p(0.9),
            self.p(0.99)
        )
    }
}

fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

pub fn rss_mib() -> f64 {
    status_kib("VmRSS:") as f64 / 1024.0
}

pub fn peak_rss_mib() -> f64 {
    status_kib("VmHWM:") as f64 / 1024.0
}

pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Resident memory by kind of mapping, from /proc/self/smaps: the profile behind the
/// scale-to-zero memory figure.
pub fn rss_by_mapping() -> std::collections::BTreeMap<String, u64> {
    let mut out = std::collections::BTreeMap::new();
    let Ok(smaps) = std::fs::read_to_string("/proc/self/smaps") else {
        return out;
    };
    let mut kind = String::new();
    for line in smaps.lines() {
        let mut fields = line.split_whitespace();
        let first = fields.next().unwrap_or("");
        if first.contains('-') && first.chars().next().is_some_and(|c| c.is_ascii_hexdigit()) {
            // A mapping header: address perms offset dev inode [path].
            let path = line.split_whitespace().nth(5).unwrap_or("");
            kind = match path {
                "" => "anonymous (thread stacks, malloc arenas, large allocations)".into(),
                "[heap]" => "[heap] (main malloc arena)".into(),
                p if p.starts_with('[') => p.to_owned(),
                p => format!("file: {}", p.rsplit('/').next().unwrap_or(p)),
            };
        } else if first == "Rss:" {
            let kib: u64 = fields.next().and_then(|v| v.parse().ok()).unwrap_or(0);
            *out.entry(kind.clone()).or_insert(0) += kib;
        }
    }
    out
}

/// The mappings that grew most between two snapshots, in KiB.
pub fn grown(
    before: &std::collections::BTreeMap<String, u64>,
    after: &std::collections::BTreeMap<String, u64>,
) -> Vec<(String, i64)> {
    let mut diff: Vec<(String, i64)> = after
        .iter()
        .map(|(k, v)| (k.clone(), *v as i64 - *before.get(k).unwrap_or(&0) as i64))
        .filter(|(_, d)| *d != 0)
        .collect();
    diff.sort_by_key(|(_, d)| -d);
    diff.truncate(4);
    diff
}
