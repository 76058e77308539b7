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
