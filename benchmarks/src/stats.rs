//! Latency distributions (hdrhistogram) and process memory.

use hdrhistogram::Histogram;

/// Milliseconds, recorded with microsecond resolution.
pub struct Latencies(Histogram<u64>);

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

    pub fn p(&self, quantile: f64) -> f64 {
        self.0.value_at_quantile(quantile) as f64 / 1000.0
    }

    /// `p50 / p90 / p99` in milliseconds.
    pub fn summary(&self) -> String {
        if self.0.is_empty() {
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
