//! A GGUF file's header, read through ggml's own GGUF API without the tensor data: the
//! engine reads a model's layer count before loading it (to split its memory between host and
//! GPU), and the synthetic-model writer copies a tokenizer from it.

use std::ffi::{CStr, CString};
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

#[cfg(test)]
mod tests {
    use super::*;

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
