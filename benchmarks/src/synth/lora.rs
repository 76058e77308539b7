//! LoRA adapters for any llama model (`write_lora`, the file `convert_lora_to_gguf.py` would
//! write for a trained adapter of that shape) and a base with adapters merged offline
//! (`write_merged`): the reference an adapter applied at run time must reproduce.

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use anyhow::{bail, ensure, Context};
use genrt_actors::engine::gguf::GgufHeader;
use llama_cpp_sys_2 as sys;

use super::*;

/// The per-layer weights an adapter may target, by llama.cpp's tensor names
/// (`blk.N.<target>.weight`), in the order the model lists them.
pub const LORA_TARGETS: [&str; 7] = [
    "attn_q",
    "attn_k",
    "attn_v",
    "attn_output",
    "ffn_gate",
    "ffn_up",
    "ffn_down",
];

/// A random LoRA adapter to write for a base model with [`write_lora`].
#[derive(Debug, Clone, PartialEq)]
pub struct LoraSpec {
    pub rank: u32,
    /// `adapter.lora.alpha`: llama.cpp scales the update by `alpha / rank` (by 1 when 0).
    pub alpha: f32,
    /// Names from [`LORA_TARGETS`]; each is adapted in every layer.
    pub targets: Vec<String>,
    pub seed: u64,
    /// The standard deviation of each entry of the update `(alpha / rank)·B·A` at scale 1. The
    /// synthetic models' weights have 0.02, so 0.01 changes their greedy output within a few
    /// tokens while activations stay in the range the base produces.
    pub magnitude: f32,
}

/// Reads a key of a GGUF file opened with [`GgufHeader`].
fn gguf_f32(src: &GgufHeader, key: &str) -> Option<f32> {
    let id = unsafe { sys::gguf_find_key(src.as_ptr(), cstr(key).as_ptr()) };
    (id >= 0 && unsafe { sys::gguf_get_kv_type(src.as_ptr(), id) } == sys::GGUF_TYPE_FLOAT32)
        .then(|| unsafe { sys::gguf_get_val_f32(src.as_ptr(), id) })
}

/// Opens `path` as a llama-architecture model (not an adapter): the tensor names and shapes
/// this file generates adapters for are llama's.
fn open_llama_base(path: &Path) -> anyhow::Result<GgufHeader> {
    let src = GgufHeader::open(path)
        .map_err(anyhow::Error::msg)
        .with_context(|| path.display().to_string())?;
    let arch = src.str("general.architecture").unwrap_or_default();
    ensure!(
        arch == "llama",
        "{}: architecture {arch:?}; adapters are written for llama-architecture models only",
        path.display()
    );
    ensure!(
        src.str("general.type").as_deref() != Ok("adapter"),
        "{}: is an adapter, not a base model",
        path.display()
    );
    Ok(src)
}

/// A tensor listed in an open GGUF file, and where its data lies.
pub(super) struct StoredTensor {
    pub(super) desc: TensorDesc,
    /// From the start of the file.
    pub(super) offset: u64,
    pub(super) size: u64,
}

pub(super) fn stored_tensors(src: &GgufHeader) -> Vec<StoredTensor> {
    let ctx = src.as_ptr();
    let data = unsafe { sys::gguf_get_data_offset(ctx) } as u64;
    (0..unsafe { sys::gguf_get_n_tensors(ctx) })
        .map(|id| unsafe {
            let ne = std::slice::from_raw_parts(sys::gguf_get_tensor_ne(ctx, id), 4);
            StoredTensor {
                desc: TensorDesc {
                    name: std::ffi::CStr::from_ptr(sys::gguf_get_tensor_name(ctx, id))
                        .to_string_lossy()
                        .into_owned(),
                    ty: sys::gguf_get_tensor_type(ctx, id),
                    ne: [ne[0], ne[1], ne[2], ne[3]],
                },
                offset: data + sys::gguf_get_tensor_offset(ctx, id) as u64,
                size: sys::gguf_get_tensor_size(ctx, id) as u64,
            }
        })
        .collect()
}

fn read_tensor(file: &mut std::fs::File, t: &StoredTensor) -> anyhow::Result<Vec<u8>> {
    file.seek(SeekFrom::Start(t.offset))?;
    let mut bytes = vec![0u8; t.size as usize];
    file.read_exact(&mut bytes)
        .with_context(|| format!("reading {}", t.desc.name))?;
    Ok(bytes)
}

fn type_name(ty: sys::ggml_type) -> String {
    unsafe { std::ffi::CStr::from_ptr(sys::ggml_type_name(ty)) }
        .to_string_lossy()
        .into_owned()
}

/// A tensor's values as f32, through ggml's own conversion for any type but F32.
fn to_f32(t: &StoredTensor, bytes: &[u8]) -> anyhow::Result<Vec<f32>> {
    if t.desc.ty == sys::GGML_TYPE_F32 {
        return Ok(bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect());
    }
    let traits = unsafe { &*sys::ggml_get_type_traits(t.desc.ty) };
    let Some(to_float) = traits.to_float else {
        bail!(
            "{}: ggml cannot read {} as f32",
            t.desc.name,
            type_name(t.desc.ty)
        );
    };
    let mut values = vec![0f32; t.desc.elements()];
    unsafe {
        to_float(
            bytes.as_ptr().cast(),
            values.as_mut_ptr(),
            values.len() as i64,
        )
    };
    Ok(values)
}

/// Writes a LoRA adapter for `base` (any llama-architecture GGUF, quantised or not: only its
/// header is read) as llama.cpp's `convert_lora_to_gguf.py` would: for each layer and target,
/// `<weight>.lora_a` (F32, ne = [n_in, rank]) and `<weight>.lora_b` (F32, ne = [rank, n_out]),
/// uniform random values sized by `spec.magnitude`. Returns the file's size.
pub fn write_lora(base: &Path, out: &Path, spec: &LoraSpec) -> anyhow::Result<u64> {
    ensure_not_an_input(out, [base])?;
    let src = open_llama_base(base)?;
    ensure!(spec.rank > 0, "rank must be at least 1");
    ensure!(spec.alpha.is_finite(), "alpha must be finite");
    ensure!(
        spec.magnitude.is_finite() && spec.magnitude >= 0.0,
        "magnitude must be a finite standard deviation"
    );
    ensure!(!spec.targets.is_empty(), "no target weights");
    for target in &spec.targets {
        ensure!(
            LORA_TARGETS.contains(&target.as_str()),
            "unknown LoRA target {target:?}; known: {}",
            LORA_TARGETS.join(", ")
        );
    }
    let n_layer = src.block_count().map_err(anyhow::Error::msg)?;
    let base_tensors = stored_tensors(&src);
    let rank = i64::from(spec.rank);
    let mut tensors = Vec::new();
    for l in 0..n_layer {
        // In the model's order whatever the spec's, and each target once.
        for target in LORA_TARGETS
            .iter()
            .filter(|t| spec.targets.iter().any(|s| s == *t))
        {
            let name = format!("blk.{l}.{target}.weight");
            let Some(w) = base_tensors.iter().find(|t| t.desc.name == name) else {
                bail!("{}: has no tensor {name}", base.display());
            };
            let [n_in, n_out, d2, d3] = w.desc.ne;
            ensure!(d2 == 1 && d3 == 1, "{name} is not a matrix");
            let f32 = sys::GGML_TYPE_F32;
            tensors.push(TensorDesc {
                name: format!("{name}.lora_a"),
                ty: f32,
                ne: [n_in, rank, 1, 1],
            });
            tensors.push(TensorDesc {
                name: format!("{name}.lora_b"),
                ty: f32,
                ne: [rank, n_out, 1, 1],
            });
        }
    }

    let dst = Gguf(unsafe { sys::gguf_init_empty() });
    let set_str = |key: &str, v: &str| unsafe {
        sys::gguf_set_val_str(dst.0, cstr(key).as_ptr(), cstr(v).as_ptr())
    };
    set_str("general.architecture", "llama");
    set_str("general.type", "adapter");
    let name = format!(
        "genrt synthetic LoRA (rank {}, {}) for {}",
        spec.rank,
        spec.targets.join(","),
        src.str("general.name")
            .unwrap_or_else(|_| "a llama model".into())
    );
    set_str("general.name", &name);
    set_str("adapter.type", "lora");
    unsafe {
        sys::gguf_set_val_f32(dst.0, cstr("adapter.lora.alpha").as_ptr(), spec.alpha);
        // LLAMA_FTYPE_ALL_F32, as the converter records for `--outtype f32`.
        sys::gguf_set_val_u32(dst.0, cstr("general.file_type").as_ptr(), 0);
        sys::gguf_set_val_u32(dst.0, cstr("general.quantization_version").as_ptr(), 2);
    }

    // sd((alpha/rank)·B·A) = |alpha/rank|·√rank·sd(A)·sd(B); A and B get the same share. A
    // uniform value on ±a has a standard deviation of a/√3.
    let factor = f64::from(lora_factor(spec.alpha, spec.rank)).abs();
    let sd = (f64::from(spec.magnitude) / (factor * f64::from(spec.rank).sqrt())).sqrt();
    let amplitude = sd * 3f64.sqrt();
    let mut rng = Rng(spec.seed.max(1));
    let mut buf = Vec::new();
    write_gguf(&dst, &tensors, out, |i, file| {
        buf.clear();
        for _ in 0..tensors[i].elements() {
            let u = (rng.next() >> 11) as f64 / (1u64 << 53) as f64;
            buf.extend_from_slice(&(((u * 2.0 - 1.0) * amplitude) as f32).to_le_bytes());
        }
        file.write_all(&buf)?;
        Ok(())
    })
}

/// Creating `out` truncates it, so it must not be a file the writer is about to read.
fn ensure_not_an_input<'a>(
    out: &Path,
    inputs: impl IntoIterator<Item = &'a Path>,
) -> anyhow::Result<()> {
    let Ok(out_file) = out.canonicalize() else {
        return Ok(());
    };
    for input in inputs {
        ensure!(
            input.canonicalize().ok().as_ref() != Some(&out_file),
            "{} is an input; write to another file",
            out.display()
        );
    }
    Ok(())
}

/// llama.cpp's multiplier of `B·A` at adapter scale 1 (`llama_adapter_lora_weight::get_scale`).
fn lora_factor(alpha: f32, rank: u32) -> f32 {
    if alpha == 0.0 {
        1.0
    } else {
        alpha / rank as f32
    }
}

/// One adapter's update to one weight.
struct LoraUpdate {
    /// ne = [n_in, rank]: `rank` rows of `n_in`.
    a: Vec<f32>,
    /// ne = [rank, n_out]: `n_out` rows of `rank`.
    b: Vec<f32>,
    rank: usize,
    /// The run-time scale times `alpha / rank`.
    factor: f64,
}

/// Reads the LoRA pairs of the adapter at `path`, checked against `base`'s tensors as llama.cpp
/// checks them when it loads the adapter, into `updates` by base tensor name.
fn read_adapter(
    path: &Path,
    scale: f32,
    base_path: &Path,
    base: &[StoredTensor],
    updates: &mut BTreeMap<String, Vec<LoraUpdate>>,
) -> anyhow::Result<()> {
    let at = || path.display().to_string();
    let src = GgufHeader::open(path)
        .map_err(anyhow::Error::msg)
        .with_context(at)?;
    ensure!(
        src.str("general.type").as_deref() == Ok("adapter")
            && src.str("adapter.type").as_deref() == Ok("lora"),
        "{}: not a LoRA adapter",
        at()
    );
    ensure!(
        src.str("general.architecture").as_deref() == Ok("llama"),
        "{}: not an adapter for a llama-architecture model",
        at()
    );
    let alpha = gguf_f32(&src, "adapter.lora.alpha").unwrap_or(0.0);
    let tensors = stored_tensors(&src);
    let mut file = std::fs::File::open(path).with_context(at)?;
    let mut pairs: BTreeMap<&str, [Option<&StoredTensor>; 2]> = BTreeMap::new();
    for t in &tensors {
        let name = t.desc.name.as_str();
        if let Some(w) = name.strip_suffix(".lora_a") {
            pairs.entry(w).or_default()[0] = Some(t);
        } else if let Some(w) = name.strip_suffix(".lora_b") {
            pairs.entry(w).or_default()[1] = Some(t);
        } else if !name.ends_with("_norm.weight") {
            // llama.cpp ignores norm tensors in an adapter, so the merge does too.
            bail!("{}: tensor {name} is neither lora_a nor lora_b", at());
        }
    }
    for (name, pair) in pairs {
        let [Some(a), Some(b)] = pair else {
            bail!("{}: {name} lacks its lora_a or lora_b", at());
        };
        let Some(w) = base.iter().find(|t| t.desc.name == name) else {
            bail!("{}: {name} is not in the base model", at());
        };
        ensure!(
            name != "token_embd.weight",
            "{}: an update of the token embedding is not supported",
            at()
        );
        let (wn, an, bn) = (w.desc.ne, a.desc.ne, b.desc.ne);
        ensure!(
            wn[0] == an[0] && wn[1] == bn[1] && an[1] == bn[0] && wn[2..] == [1, 1],
            "{}: {name} is {:?} in the base; the adapter's lora_a {:?} and lora_b {:?} do not fit it",
            at(),
            &wn[..2],
            &an[..2],
            &bn[..2]
        );
        ensure!(
            w.desc.ty == sys::GGML_TYPE_F32 || w.desc.ty == sys::GGML_TYPE_F16,
            "{}: {name} is {}; merging needs an F32 or F16 base, since a quantized weight \
             cannot take the update without being quantized again",
            base_path.display(),
            type_name(w.desc.ty)
        );
        let rank = an[1] as usize;
        updates
            .entry(name.to_string())
            .or_default()
            .push(LoraUpdate {
                a: to_f32(a, &read_tensor(&mut file, a)?)?,
                b: to_f32(b, &read_tensor(&mut file, b)?)?,
                rank,
                factor: f64::from(scale) * f64::from(lora_factor(alpha, rank as u32)),
            });
    }
    Ok(())
}

/// Writes `base` (an F32 or F16 llama model) with `adapters` merged into its weights at the
/// given scales: W' = W + Σ scale·(alpha/rank)·B·A, computed in f64 and stored in the base's
/// type, every other key and tensor copied byte for byte. This is the reference a run-time
/// adapter is compared with. Returns the file's size.
pub fn write_merged(base: &Path, adapters: &[(&Path, f32)], out: &Path) -> anyhow::Result<u64> {
    ensure_not_an_input(
        out,
        std::iter::once(base).chain(adapters.iter().map(|(p, _)| *p)),
    )?;
    let src = open_llama_base(base)?;
    let tensors = stored_tensors(&src);
    let mut updates = BTreeMap::new();
    for (path, scale) in adapters {
        read_adapter(path, *scale, base, &tensors, &mut updates)?;
    }
    let dst = Gguf(unsafe { sys::gguf_init_empty() });
    unsafe { sys::gguf_set_kv(dst.0, src.as_ptr()) };
    let described: Vec<TensorDesc> = tensors.iter().map(|t| t.desc.clone()).collect();
    let mut file = std::fs::File::open(base).with_context(|| base.display().to_string())?;
    write_gguf(&dst, &described, out, |i, sink| {
        let t = &tensors[i];
        let bytes = read_tensor(&mut file, t)?;
        match updates.get(&t.desc.name) {
            None => sink.write_all(&bytes)?,
            Some(updates) => sink.write_all(&merge(t, &bytes, updates)?)?,
        }
        Ok(())
    })
}

/// `t`'s data with `updates` added, row by row (one output at a time) in f64.
fn merge(t: &StoredTensor, bytes: &[u8], updates: &[LoraUpdate]) -> anyhow::Result<Vec<u8>> {
    let (n_in, n_out) = (t.desc.ne[0] as usize, t.desc.ne[1] as usize);
    let weights = to_f32(t, bytes)?;
    let mut merged = Vec::with_capacity(bytes.len());
    let mut row = vec![0f64; n_in];
    for j in 0..n_out {
        for (w, x) in row.iter_mut().zip(&weights[j * n_in..(j + 1) * n_in]) {
            *w = f64::from(*x);
        }
        for u in updates {
            // ΔW[j][i] = Σ_r B[j][r]·A[r][i]: ggml's mul_mat(B, mul_mat(A, x)) written out.
            for r in 0..u.rank {
                let c = u.factor * f64::from(u.b[j * u.rank + r]);
                for (w, a) in row.iter_mut().zip(&u.a[r * n_in..(r + 1) * n_in]) {
                    *w += c * f64::from(*a);
                }
            }
        }
        for w in &row {
            if t.desc.ty == sys::GGML_TYPE_F16 {
                merged.extend_from_slice(&f16_bits(*w as f32));
            } else {
                merged.extend_from_slice(&(*w as f32).to_le_bytes());
            }
        }
    }
    Ok(merged)
}
