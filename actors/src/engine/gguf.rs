//! A GGUF file's header, read through ggml's own GGUF API without the tensor data: the
//! engine reads a model's layer count before loading it (to split its memory between host and
//! GPU), the synthetic-model writer copies a tokenizer from it, and the model registry
//! validates a file with [`inspect`] before anything loads it.

use std::collections::BTreeMap;
use std::ffi::{CStr, CString};
use std::io::Read;
use std::path::Path;

use llama_cpp_sys_2 as sys;

/// An open GGUF header; freed on drop.
pub struct GgufHeader(*mut sys::gguf_context);

impl Drop for GgufHeader {
    fn drop(&mut self) {
        unsafe { sys::gguf_free(self.0) }
    }
}

impl GgufHeader {
    /// Errors do not name the file: callers say which file they opened.
    pub fn open(path: &Path) -> Result<Self, String> {
        let name = CString::new(path.to_string_lossy().as_bytes()).map_err(|e| e.to_string())?;
        let params = sys::gguf_init_params {
            no_alloc: true,
            ctx: std::ptr::null_mut(),
        };
        let ctx = unsafe { sys::gguf_init_from_file(name.as_ptr(), params) };
        if ctx.is_null() {
            return Err("not a readable GGUF file".into());
        }
        Ok(Self(ctx))
    }

    /// The raw context, for ggml's GGUF functions this type does not wrap (`gguf_set_kv`).
    pub fn as_ptr(&self) -> *const sys::gguf_context {
        self.0
    }

    /// The id of `key` when it holds a value of type `ty`.
    fn key(&self, key: &str, ty: sys::gguf_type) -> Result<i64, String> {
        let ckey = CString::new(key).map_err(|e| e.to_string())?;
        let id = unsafe { sys::gguf_find_key(self.0, ckey.as_ptr()) };
        if id < 0 || unsafe { sys::gguf_get_kv_type(self.0, id) } != ty {
            return Err(format!("no {key}"));
        }
        Ok(id)
    }

    pub fn str(&self, key: &str) -> Result<String, String> {
        let id = self.key(key, sys::GGUF_TYPE_STRING)?;
        let value = unsafe { CStr::from_ptr(sys::gguf_get_val_str(self.0, id)) };
        Ok(value.to_string_lossy().into_owned())
    }

    pub fn f32(&self, key: &str) -> Result<f32, String> {
        let id = self.key(key, sys::GGUF_TYPE_FLOAT32)?;
        Ok(unsafe { sys::gguf_get_val_f32(self.0, id) })
    }

    pub fn u32(&self, key: &str) -> Result<u32, String> {
        let id = self.key(key, sys::GGUF_TYPE_UINT32)?;
        Ok(unsafe { sys::gguf_get_val_u32(self.0, id) })
    }

    /// Elements of the array under `key`.
    pub fn array_len(&self, key: &str) -> Result<u64, String> {
        let id = self.key(key, sys::GGUF_TYPE_ARRAY)?;
        Ok(unsafe { sys::gguf_get_arr_n(self.0, id) } as u64)
    }

    /// `<architecture>.block_count`: the model's repeating layers.
    pub fn block_count(&self) -> Result<u32, String> {
        let arch = self.str("general.architecture")?;
        self.u32(&format!("{arch}.block_count"))
    }
}

/// What [`inspect`] read from a GGUF file.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct GgufInfo {
    /// GGUF format version (2 or 3).
    pub version: u32,
    /// `general.architecture`, e.g. `llama`.
    pub architecture: String,
    /// Weights, counted from the tensor table.
    pub parameters: u64,
    /// The type holding most of the weights' bytes (ggml's name: `q4_1`, `q8_0`, `f16`, ...).
    pub quantization: String,
    /// `<architecture>.context_length`: the context the model was trained for.
    pub context_length: Option<u32>,
    /// Whether the file carries `tokenizer.chat_template` (without one, chat prompts use a
    /// plain layout).
    pub chat_template: bool,
    /// `general.type`: `model`, or `adapter` for a LoRA adapter.
    pub kind: String,
    pub tensors: u64,
    pub file_bytes: u64,
}

/// Why [`inspect`] refused a file. Each is a different problem for the person who sent it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GgufProblem {
    #[error("not a GGUF file (its first bytes are not the GGUF magic)")]
    NotGguf,
    #[error("GGUF version {0} is not supported (2 and 3 are)")]
    Version(u32),
    #[error("the file is truncated or corrupt: {0}")]
    Truncated(String),
    #[error("cannot read the file: {0}")]
    Io(String),
}

/// The GGUF versions ggml reads.
const GGUF_VERSIONS: [u32; 2] = [2, 3];

/// Checks that `path` is a whole GGUF file and reads what it says about itself: magic and
/// version first (so that a text file gets a clear answer rather than ggml's parse error),
/// then the header and tensor table through ggml, then that every tensor's data lies inside
/// the file (ggml does not check this when it reads no data, and a download cut short passes
/// everything else).
pub fn inspect(path: &Path) -> Result<GgufInfo, GgufProblem> {
    let file_bytes = std::fs::metadata(path)
        .map_err(|e| GgufProblem::Io(e.to_string()))?
        .len();
    let mut head = [0u8; 8];
    let mut file = std::fs::File::open(path).map_err(|e| GgufProblem::Io(e.to_string()))?;
    let mut read = 0;
    while read < head.len() {
        match file.read(&mut head[read..]) {
            Ok(0) => break,
            Ok(n) => read += n,
            Err(e) => return Err(GgufProblem::Io(e.to_string())),
        }
    }
    if read < 4 || &head[..4] != b"GGUF" {
        return Err(GgufProblem::NotGguf);
    }
    if read < 8 {
        return Err(GgufProblem::Truncated(
            "the header ends after the magic".into(),
        ));
    }
    let version = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
    if !GGUF_VERSIONS.contains(&version) {
        return Err(GgufProblem::Version(version));
    }
    let header = GgufHeader::open(path)
        .map_err(|_| GgufProblem::Truncated("the header or tensor table is unreadable".into()))?;
    let ctx = header.0;
    let data_offset = unsafe { sys::gguf_get_data_offset(ctx) } as u64;
    let n_tensors = unsafe { sys::gguf_get_n_tensors(ctx) };
    let mut data_end = data_offset;
    let mut parameters = 0u64;
    let mut bytes_by_type: BTreeMap<String, u64> = BTreeMap::new();
    for i in 0..n_tensors {
        let offset = unsafe { sys::gguf_get_tensor_offset(ctx, i) } as u64;
        let size = unsafe { sys::gguf_get_tensor_size(ctx, i) } as u64;
        data_end = data_end.max(data_offset + offset + size);
        let ty = unsafe { sys::gguf_get_tensor_type(ctx, i) };
        let (type_size, block) = unsafe { (sys::ggml_type_size(ty), sys::ggml_blck_size(ty)) };
        if type_size > 0 {
            parameters += size / type_size as u64 * block as u64;
        }
        let name = unsafe { CStr::from_ptr(sys::ggml_type_name(ty)) }
            .to_string_lossy()
            .into_owned();
        *bytes_by_type.entry(name).or_default() += size;
    }
    if data_end > file_bytes {
        return Err(GgufProblem::Truncated(format!(
            "its tensors need {data_end} bytes and the file has {file_bytes}"
        )));
    }
    let architecture = header.str("general.architecture").unwrap_or_default();
    let quantization = bytes_by_type
        .into_iter()
        .max_by_key(|(_, bytes)| *bytes)
        .map(|(name, _)| name)
        .unwrap_or_default();
    Ok(GgufInfo {
        version,
        context_length: header.u32(&format!("{architecture}.context_length")).ok(),
        chat_template: header.str("tokenizer.chat_template").is_ok(),
        kind: header
            .str("general.type")
            .unwrap_or_else(|_| "model".into()),
        architecture,
        parameters,
        quantization,
        tensors: n_tensors.max(0) as u64,
        file_bytes,
    })
}

/// Every tensor's name and shape (ggml's `ne`), read from the header without the data.
pub fn tensor_shapes(path: &Path) -> Result<BTreeMap<String, [i64; 4]>, String> {
    let name = CString::new(path.to_string_lossy().as_bytes()).map_err(|e| e.to_string())?;
    let mut meta: *mut sys::ggml_context = std::ptr::null_mut();
    let params = sys::gguf_init_params {
        no_alloc: true,
        ctx: &raw mut meta,
    };
    let ctx = unsafe { sys::gguf_init_from_file(name.as_ptr(), params) };
    if ctx.is_null() {
        return Err("not a readable GGUF file".into());
    }
    let header = GgufHeader(ctx);
    let mut shapes = BTreeMap::new();
    // SAFETY: `meta` holds the descriptions (no data) of the file's tensors, freed below.
    unsafe {
        let n = sys::gguf_get_n_tensors(header.0);
        for i in 0..n {
            let tensor_name = sys::gguf_get_tensor_name(header.0, i);
            let tensor = sys::ggml_get_tensor(meta, tensor_name);
            if tensor.is_null() {
                continue;
            }
            let key = CStr::from_ptr(tensor_name).to_string_lossy().into_owned();
            shapes.insert(key, (*tensor).ne);
        }
        sys::ggml_free(meta);
    }
    Ok(shapes)
}

/// What [`check_adapter`] read from a LoRA adapter.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AdapterFileInfo {
    /// The architecture it was trained for, the base model's.
    pub architecture: String,
    /// The rank of its low-rank products (the largest, if they differ).
    pub rank: u32,
    /// `adapter.lora.alpha`; the effective scale is `scale × alpha / rank` (0: `scale`).
    pub alpha: f32,
    /// The kinds of weights it adapts: `attn_q`, `attn_v`, `ffn_up`, ...
    pub targets: Vec<String>,
    /// Adapted weights (pairs of `lora_a` and `lora_b` tensors).
    pub weights: u64,
    pub parameters: u64,
    pub file_bytes: u64,
}

/// Why [`check_adapter`] refused a file.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AdapterProblem {
    #[error(transparent)]
    File(#[from] GgufProblem),
    #[error("not a LoRA adapter: {0}")]
    NotAdapter(String),
    #[error("the adapter does not fit the model: {0}")]
    Mismatch(String),
}

/// Checks that `adapter` is a whole GGUF LoRA adapter for the model at `base`: the same
/// architecture, and every adapted weight present in the base with matching shapes (what
/// llama.cpp checks when it loads one, answered here before anything loads).
pub fn check_adapter(adapter: &Path, base: &Path) -> Result<AdapterFileInfo, AdapterProblem> {
    let info = inspect(adapter)?;
    if info.kind != "adapter" {
        return Err(AdapterProblem::NotAdapter(format!(
            "general.type is `{}`, not `adapter`",
            info.kind
        )));
    }
    let header = GgufHeader::open(adapter).map_err(GgufProblem::Truncated)?;
    let kind = header.str("adapter.type").unwrap_or_default();
    if kind != "lora" {
        return Err(AdapterProblem::NotAdapter(format!(
            "adapter.type is `{kind}`, not `lora`"
        )));
    }
    let alpha = header.f32("adapter.lora.alpha").unwrap_or(0.0);
    let base_header = GgufHeader::open(base)
        .map_err(|e| AdapterProblem::Mismatch(format!("the model's file: {e}")))?;
    let base_arch = base_header.str("general.architecture").unwrap_or_default();
    if info.architecture != base_arch {
        return Err(AdapterProblem::Mismatch(format!(
            "it was made for architecture `{}` and the model is `{base_arch}`",
            info.architecture
        )));
    }
    let shapes = tensor_shapes(adapter).map_err(GgufProblem::Truncated)?;
    let model = tensor_shapes(base).map_err(AdapterProblem::Mismatch)?;
    let (mut rank, mut weights) = (0i64, 0u64);
    let mut targets = std::collections::BTreeSet::new();
    for (name, a) in &shapes {
        let Some(weight) = name.strip_suffix(".lora_a") else {
            if !name.ends_with(".lora_b") {
                return Err(AdapterProblem::NotAdapter(format!(
                    "tensor `{name}` is neither a lora_a nor a lora_b"
                )));
            }
            if !shapes.contains_key(&format!("{}.lora_a", &name[..name.len() - 7])) {
                return Err(AdapterProblem::Mismatch(format!("`{name}` has no lora_a")));
            }
            continue;
        };
        let b = shapes
            .get(&format!("{weight}.lora_b"))
            .ok_or_else(|| AdapterProblem::Mismatch(format!("`{weight}` has no lora_b")))?;
        let w = model.get(weight).ok_or_else(|| {
            AdapterProblem::Mismatch(format!("the model has no weight `{weight}`"))
        })?;
        // The token embedding's pair is stored the other way round (llama.cpp reads it so).
        let fits = match weight.ends_with("token_embd.weight") {
            true => w[0] == b[1] && w[1] == a[1],
            false => w[0] == a[0] && w[1] == b[1] && a[1] == b[0],
        };
        if !fits {
            return Err(AdapterProblem::Mismatch(format!(
                "`{weight}` is {}×{} in the model; the adapter's lora_a is {}×{} and lora_b {}×{}",
                w[0], w[1], a[0], a[1], b[0], b[1]
            )));
        }
        rank = rank.max(a[1]);
        weights += 1;
        let target = weight
            .strip_suffix(".weight")
            .unwrap_or(weight)
            .rsplit('.')
            .next()
            .unwrap_or(weight);
        targets.insert(target.to_owned());
    }
    if weights == 0 {
        return Err(AdapterProblem::NotAdapter("it adapts no weight".into()));
    }
    Ok(AdapterFileInfo {
        architecture: info.architecture,
        rank: rank as u32,
        alpha,
        targets: targets.into_iter().collect(),
        weights,
        parameters: info.parameters,
        file_bytes: info.file_bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inspect_reads_smollm2_and_names_each_problem() {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/SmolLM2-135M-Instruct.Q4_1.gguf");
        let info = inspect(&path).unwrap();
        assert_eq!(info.architecture, "llama");
        assert_eq!(info.quantization, "q4_1");
        assert!(info.chat_template);
        assert_eq!(info.context_length, Some(8192));
        assert!(
            (130_000_000..140_000_000).contains(&info.parameters),
            "{}",
            info.parameters
        );
        let dir = std::env::temp_dir().join(format!("genrt-inspect-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let text = dir.join("text.gguf");
        std::fs::write(&text, b"this is not a model").unwrap();
        assert_eq!(inspect(&text), Err(GgufProblem::NotGguf));
        let v1 = dir.join("v1.gguf");
        std::fs::write(&v1, b"GGUF\x01\0\0\0rest").unwrap();
        assert_eq!(inspect(&v1), Err(GgufProblem::Version(1)));
        // Cut inside the tensor data, and inside the header.
        let bytes = std::fs::read(&path).unwrap();
        let cut = dir.join("cut.gguf");
        std::fs::write(&cut, &bytes[..bytes.len() - 1000]).unwrap();
        assert!(matches!(inspect(&cut), Err(GgufProblem::Truncated(_))));
        std::fs::write(&cut, &bytes[..5000]).unwrap();
        assert!(matches!(inspect(&cut), Err(GgufProblem::Truncated(_))));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn reads_smollm2s_header_and_refuses_what_is_not_gguf() {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/SmolLM2-135M-Instruct.Q4_1.gguf");
        assert!(
            path.is_file(),
            "{} is missing: run `make model`",
            path.display()
        );
        let header = GgufHeader::open(&path).unwrap();
        assert_eq!(header.str("general.architecture").unwrap(), "llama");
        assert_eq!(header.block_count().unwrap(), 30);
        assert_eq!(header.array_len("tokenizer.ggml.tokens").unwrap(), 49152);
        // A key of another type is as absent as a missing one.
        assert_eq!(
            header.u32("general.architecture").unwrap_err(),
            "no general.architecture"
        );
        let not_gguf = std::env::temp_dir().join(format!("genrt-not-gguf-{}", std::process::id()));
        std::fs::write(&not_gguf, b"plain text").unwrap();
        assert_eq!(
            GgufHeader::open(&not_gguf).err().unwrap(),
            "not a readable GGUF file"
        );
        std::fs::remove_file(&not_gguf).unwrap();
    }
}
