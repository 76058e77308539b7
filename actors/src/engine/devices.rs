//! Compute devices and where a model's layers go.
//!
//! llama.cpp is built with dynamic backends: the CPU backend and any GPU backend are shared
//! libraries loaded at start (see `llama.rs`), so one binary runs on the CPU everywhere and
//! offloads to a GPU wherever a GPU backend library and its driver are present. What got
//! loaded is only known at run time, so every placement decision is made here from the
//! device list, not from build flags.

use crate::ModelConfig;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceKind {
    Cpu,
    Gpu,
    IntegratedGpu,
    Accelerator,
}

impl DeviceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cpu => "cpu",
            Self::Gpu => "gpu",
            Self::IntegratedGpu => "integrated_gpu",
            Self::Accelerator => "accelerator",
        }
    }
}

/// One device of a loaded backend, as llama.cpp reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct Device {
    /// llama.cpp's device index (across all backends).
    pub index: usize,
    /// e.g. `CUDA0`, `CPU`.
    pub name: String,
    /// e.g. `NVIDIA H200`.
    pub description: String,
    /// The backend that owns it, e.g. `CUDA`, `CPU`.
    pub backend: String,
    pub kind: DeviceKind,
    pub memory_total_bytes: u64,
    pub memory_free_bytes: u64,
}

impl Device {
    /// Whether layers can be offloaded to it (llama.cpp offloads to GPUs, discrete or not).
    pub fn takes_layers(&self) -> bool {
        matches!(self.kind, DeviceKind::Gpu | DeviceKind::IntegratedGpu)
    }

    /// What the fake engine and a machine without device information report.
    pub fn host_cpu() -> Self {
        Self {
            index: 0,
            name: "CPU".into(),
            description: "host CPU".into(),
            backend: "CPU".into(),
            kind: DeviceKind::Cpu,
            memory_total_bytes: 0,
            memory_free_bytes: 0,
        }
    }
}

/// The offload devices in llama.cpp's order: a model's `main_gpu` indexes this list.
pub fn gpus(devices: &[Device]) -> Vec<&Device> {
    devices.iter().filter(|d| d.takes_layers()).collect()
}

/// Where one model's layers go.
#[derive(Debug, Clone, PartialEq)]
pub struct Placement {
    /// The GPU the offloaded layers, their KV cache and the compute buffers live on; `None`
    /// when the model runs on the CPU alone.
    pub gpu: Option<GpuTarget>,
    /// Layers requested on the GPU; `u32::MAX` means all of them. 0 when `gpu` is `None`.
    pub n_gpu_layers: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct GpuTarget {
    /// Position among the offload devices: llama.cpp's `main_gpu`.
    pub ordinal: usize,
    pub device: Device,
}

impl Placement {
    pub fn cpu() -> Self {
        Self {
            gpu: None,
            n_gpu_layers: 0,
        }
    }

    /// Decides where `model` runs on a machine with `devices`. `n_gpu_layers` unset means all
    /// layers when a GPU backend is loaded and none otherwise, so that one configuration
    /// serves a laptop and a GPU node alike. An explicit request for GPU layers on a machine
    /// without a GPU runs on the CPU (llama.cpp would do the same) and says so in the log;
    /// a `main_gpu` beyond the GPUs present is a configuration error.
    pub fn decide(model: &ModelConfig, devices: &[Device]) -> Result<Self, String> {
        let gpus = gpus(devices);
        if model.n_gpu_layers == Some(0) {
            return Ok(Self::cpu());
        }
        if gpus.is_empty() {
            if model.n_gpu_layers.is_some() || model.main_gpu > 0 {
                tracing::warn!(model = %model.id, "n_gpu_layers/main_gpu set but no GPU backend is loaded: running on the CPU");
            }
            return Ok(Self::cpu());
        }
        let ordinal = model.main_gpu as usize;
        let Some(device) = gpus.get(ordinal) else {
            return Err(format!(
                "model `{}`: main_gpu is {} but only {} GPU{} present ({})",
                model.id,
                model.main_gpu,
                gpus.len(),
                if gpus.len() == 1 { " is" } else { "s are" },
                gpus.iter()
                    .map(|d| d.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        };
        Ok(Self {
            gpu: Some(GpuTarget {
                ordinal,
                device: (*device).clone(),
            }),
            n_gpu_layers: model.n_gpu_layers.unwrap_or(u32::MAX),
        })
    }

    /// Share of the model's weights and KV cache on the GPU, for a model of `n_layer`
    /// repeating layers. llama.cpp counts the output layer as one more offloadable layer.
    pub fn gpu_share(&self, n_layer: u32) -> f64 {
        if self.gpu.is_none() || self.n_gpu_layers == 0 {
            return 0.0;
        }
        let offloadable = u64::from(n_layer) + 1;
        (u64::from(self.n_gpu_layers).min(offloadable)) as f64 / offloadable as f64
    }

    /// Whether every layer of a model of `n_layer` repeating layers, the output layer
    /// included, is on the GPU: its CPU threads then have next to nothing to compute.
    pub fn all_on_gpu(&self, n_layer: u32) -> bool {
        self.gpu_layers(n_layer) > n_layer
    }

    /// Layers actually offloaded for a model of `n_layer` repeating layers.
    pub fn gpu_layers(&self, n_layer: u32) -> u32 {
        if self.gpu.is_none() {
            0
        } else {
            self.n_gpu_layers.min(n_layer.saturating_add(1))
        }
    }

    /// `CPU`, or the GPU's name and description, e.g. `CUDA0 (NVIDIA H200)`.
    pub fn label(&self) -> String {
        match &self.gpu {
            None => "CPU".into(),
            Some(g) => format!("{} ({})", g.device.name, g.device.description),
        }
    }
}

/// `bytes` split into the part on the host and the part on the GPU.
pub fn split(bytes: u64, gpu_share: f64) -> (u64, u64) {
    let gpu = (bytes as f64 * gpu_share).round() as u64;
    (bytes - gpu.min(bytes), gpu.min(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gpu(index: usize, name: &str) -> Device {
        Device {
            index,
            name: name.into(),
            description: "NVIDIA H200".into(),
            backend: "CUDA".into(),
            kind: DeviceKind::Gpu,
            memory_total_bytes: 140 << 30,
            memory_free_bytes: 139 << 30,
        }
    }

    fn model(n_gpu_layers: Option<u32>, main_gpu: u32) -> ModelConfig {
        let mut m = ModelConfig::new("m", "/m.gguf");
        m.n_gpu_layers = n_gpu_layers;
        m.main_gpu = main_gpu;
        m
    }

    #[test]
    fn unset_layers_mean_all_on_a_gpu_and_none_on_a_cpu() {
        let cpu_only = [Device::host_cpu()];
        assert_eq!(
            Placement::decide(&model(None, 0), &cpu_only).unwrap(),
            Placement::cpu()
        );
        let with_gpu = [gpu(0, "CUDA0"), Device::host_cpu()];
        let p = Placement::decide(&model(None, 0), &with_gpu).unwrap();
        assert_eq!(p.n_gpu_layers, u32::MAX);
        assert_eq!(p.label(), "CUDA0 (NVIDIA H200)");
        assert_eq!(p.gpu_layers(30), 31);
        assert!((p.gpu_share(30) - 1.0).abs() < 1e-9);
        assert!(p.all_on_gpu(30));
        assert!(!Placement::cpu().all_on_gpu(30));
    }

    #[test]
    fn explicit_layers_are_kept_and_zero_means_cpu() {
        let with_gpu = [gpu(0, "CUDA0"), Device::host_cpu()];
        let p = Placement::decide(&model(Some(10), 0), &with_gpu).unwrap();
        assert_eq!(p.gpu_layers(30), 10);
        assert!(!p.all_on_gpu(30));
        assert!((p.gpu_share(29) - 10.0 / 30.0).abs() < 1e-9);
        // As many as the repeating layers leaves the first on the CPU: llama.cpp offloads
        // the last `n_gpu_layers` of the layers and the output layer.
        let p = Placement::decide(&model(Some(30), 0), &with_gpu).unwrap();
        assert!(!p.all_on_gpu(30));
        let p = Placement::decide(&model(Some(31), 0), &with_gpu).unwrap();
        assert!(p.all_on_gpu(30));
        assert_eq!(
            Placement::decide(&model(Some(0), 0), &with_gpu).unwrap(),
            Placement::cpu()
        );
        // Asked for GPU layers where there is no GPU: the CPU serves it.
        let p = Placement::decide(&model(Some(10), 0), &[Device::host_cpu()]).unwrap();
        assert_eq!(p.gpu_share(30), 0.0);
        assert_eq!(p.label(), "CPU");
    }

    #[test]
    fn main_gpu_picks_among_gpus_and_is_checked() {
        let devices = [gpu(0, "CUDA0"), gpu(1, "CUDA1"), Device::host_cpu()];
        let p = Placement::decide(&model(None, 1), &devices).unwrap();
        let target = p.gpu.unwrap();
        assert_eq!((target.ordinal, target.device.name.as_str()), (1, "CUDA1"));
        let err = Placement::decide(&model(None, 2), &devices).unwrap_err();
        assert!(
            err.contains("main_gpu is 2 but only 2 GPUs are present (CUDA0, CUDA1)"),
            "{err}"
        );
    }

    #[test]
    fn split_never_loses_or_invents_bytes() {
        assert_eq!(split(1000, 0.0), (1000, 0));
        assert_eq!(split(1000, 1.0), (0, 1000));
        let (host, gpu) = split(1001, 1.0 / 3.0);
        assert_eq!(host + gpu, 1001);
        assert_eq!(gpu, 334);
    }
}
