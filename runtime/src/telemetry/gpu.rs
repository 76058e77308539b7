//! GPU utilisation and memory, from NVML where the NVIDIA driver provides it. NVML is loaded at
//! run time (nvml-wrapper opens `libnvidia-ml.so` itself), so the same binary runs where there
//! is no driver and simply exports no GPU metrics there.
//!
//! The names follow OpenTelemetry's hardware conventions (`hw.gpu.*`), which the Prometheus
//! exporter turns into `hw_gpu_utilization_ratio`, `hw_gpu_memory_usage_bytes` and
//! `hw_gpu_memory_limit_bytes`, labelled by `hw_id` (the GPU's index, as `nvidia-smi` counts)
//! and `hw_name`.

use std::sync::Arc;

use opentelemetry::metrics::Meter;
use opentelemetry::KeyValue;

/// One GPU as read at one scrape.
#[derive(Debug, Clone, PartialEq)]
pub struct GpuSample {
    pub index: u32,
    pub name: String,
    /// Share of the last sample period in which a kernel ran, 0 to 1.
    pub utilization: f64,
    pub memory_used_bytes: u64,
    pub memory_total_bytes: u64,
}

/// Where GPU samples come from: NVML in production, a fixed list in tests.
pub trait GpuReader: Send + Sync + 'static {
    fn read(&self) -> Vec<GpuSample>;
}

struct Nvml(nvml_wrapper::Nvml);

impl GpuReader for Nvml {
    fn read(&self) -> Vec<GpuSample> {
        let count = self.0.device_count().unwrap_or(0);
        (0..count)
            .filter_map(|index| {
                let device = self.0.device_by_index(index).ok()?;
                let memory = device.memory_info().ok()?;
                Some(GpuSample {
                    index,
                    name: device.name().unwrap_or_default(),
                    utilization: device
                        .utilization_rates()
                        .map_or(0.0, |u| f64::from(u.gpu) / 100.0),
                    memory_used_bytes: memory.used,
                    memory_total_bytes: memory.total,
                })
            })
            .collect()
    }
}

/// NVML, when the driver's library is present and answers.
pub fn nvml() -> Option<Arc<dyn GpuReader>> {
    match nvml_wrapper::Nvml::init() {
        Ok(nvml) => {
            tracing::info!(
                gpus = nvml.device_count().unwrap_or(0),
                "NVML found: exporting GPU metrics"
            );
            Some(Arc::new(Nvml(nvml)))
        }
        Err(err) => {
            tracing::debug!(error = %err, "no NVML: no GPU metrics");
            None
        }
    }
}

pub(super) fn observe(meter: &Meter, reader: Arc<dyn GpuReader>) {
    let attrs = |s: &GpuSample| {
        [
            KeyValue::new("hw.id", s.index.to_string()),
            KeyValue::new("hw.name", s.name.clone()),
        ]
    };
    let utilization = Arc::clone(&reader);
    meter
        .f64_observable_gauge("hw.gpu.utilization")
        .with_unit("1")
        .with_description("Share of time a kernel was running on the GPU, 0 to 1 (NVML)")
        .with_callback(move |observer| {
            for s in utilization.read() {
                observer.observe(s.utilization, &attrs(&s));
            }
        })
        .build();
    let used = Arc::clone(&reader);
    meter
        .u64_observable_gauge("hw.gpu.memory.usage")
        .with_unit("By")
        .with_description("GPU memory in use, by every process on the card (NVML)")
        .with_callback(move |observer| {
            for s in used.read() {
                observer.observe(s.memory_used_bytes, &attrs(&s));
            }
        })
        .build();
    meter
        .u64_observable_gauge("hw.gpu.memory.limit")
        .with_unit("By")
        .with_description("GPU memory in all (NVML)")
        .with_callback(move |observer| {
            for s in reader.read() {
                observer.observe(s.memory_total_bytes, &attrs(&s));
            }
        })
        .build();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::{Metrics, TelemetryConfig};

    struct Fixed(Vec<GpuSample>);

    impl GpuReader for Fixed {
        fn read(&self) -> Vec<GpuSample> {
            self.0.clone()
        }
    }

    #[test]
    fn gpu_samples_are_exported_per_device_in_prometheus_form() {
        let sample = |index, used| GpuSample {
            index,
            name: "NVIDIA H200".into(),
            utilization: 0.25 * f64::from(index + 1),
            memory_used_bytes: used,
            memory_total_bytes: 150_754_820_096,
        };
        let reader = Fixed(vec![sample(0, 1 << 30), sample(1, 3 << 30)]);
        let metrics =
            Metrics::with_gpus(&TelemetryConfig::default(), Some(Arc::new(reader))).unwrap();
        let text = metrics.render();
        for line in [
            r#"hw_gpu_utilization_ratio{hw_id="0",hw_name="NVIDIA H200"} 0.25"#,
            r#"hw_gpu_utilization_ratio{hw_id="1",hw_name="NVIDIA H200"} 0.5"#,
            r#"hw_gpu_memory_usage_bytes{hw_id="1",hw_name="NVIDIA H200"} 3221225472"#,
            r#"hw_gpu_memory_limit_bytes{hw_id="0",hw_name="NVIDIA H200"} 150754820096"#,
        ] {
            assert!(
                text.lines()
                    .any(|l| l.starts_with(line.split('}').next().unwrap())
                        && l.ends_with(line.rsplit(' ').next().unwrap())),
                "missing `{line}` in:\n{text}"
            );
        }
        // Without a reader (no NVML), nothing GPU-shaped is exported.
        let none = Metrics::with_gpus(&TelemetryConfig::default(), None).unwrap();
        assert!(!none.render().contains("hw_gpu"), "{}", none.render());
    }
}
