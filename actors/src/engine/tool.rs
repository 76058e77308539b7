//! The model tool: llama.cpp's loader and quantizer run on files that tenants and operators
//! bring, in a child process (`genrt model-tool ...`) rather than in the server.
//!
//! Why a child: a registered file is untrusted input to C++ code that parses it. A file that
//! makes llama.cpp's loader or quantizer abort or fault would otherwise end the server and
//! every stream it carries; in a child it ends the child, and the registration fails with a
//! code. And llama.cpp's quantizer cannot be interrupted: in a child, deleting the model
//! kills it at once instead of waiting minutes for it to finish. The child also returns
//! whatever memory the quantizer used when it exits.
//!
//! The protocol is the exit status: 0 when the file passed; 1 when it did not, the child's
//! last line on stdout saying why; 2 (arguments not understood, a binary that is not
//! `genrt`) and 3 (llama.cpp could not be set up) for the tool's own failures, not the
//! file's; anything else, a signal above all, a crash on the file (stderr carries llama.cpp's
//! own log, kept for its message). The children see no GPU: the file is checked on the host,
//! and the GPUs' memory belongs to the server's replicas.

use std::ffi::OsString;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::LlamaModel;

/// The subcommand of the `genrt` binary that runs the child's side.
pub const SUBCOMMAND: &str = "model-tool";
/// How long a probe may take: it reads the file's tables and checks every tensor against them
/// without reading the weights (`no_alloc`), so even a large model takes seconds; a child
/// still running then is killed.
const PROBE_TIMEOUT: Duration = Duration::from_secs(120);
/// How often a waiting parent looks at its child (and at cancellation).
const POLL: Duration = Duration::from_millis(20);
/// Lines of the child's stderr kept for the message of a crash.
const STDERR_LINES: usize = 6;

/// Where the `genrt` binary is, and what its children need to know: cheap to clone.
#[derive(Debug, Clone)]
pub struct ModelTool {
    binary: PathBuf,
    backends_dir: Option<PathBuf>,
}

/// Why the tool did not succeed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolError {
    /// The file was refused: the child's own message.
    Refused(String),
    /// The child ended without answering (a crash on the file, most likely): what it said last.
    Crashed(String),
    /// Cancelled by the caller; the child was killed.
    Cancelled,
    /// The child could not be started or did not run the tool (a wrong `tool_binary`).
    Unavailable(String),
}

impl std::fmt::Display for ToolError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Refused(m) | Self::Crashed(m) | Self::Unavailable(m) => f.write_str(m),
            Self::Cancelled => f.write_str("cancelled"),
        }
    }
}

/// One command of the child's side.
#[derive(Debug, Clone, PartialEq)]
pub enum ToolCommand {
    /// Load `path` as a replica would, every tensor checked and none read (`no_alloc`).
    Probe { path: PathBuf },
    /// Load LoRA adapter `adapter` onto model `base` as a replica would (the base's weights
    /// mapped, on the host).
    ProbeAdapter { base: PathBuf, adapter: PathBuf },
    /// Quantize `input` to `output` (see [`super::quantize::quantize`]).
    Quantize {
        input: PathBuf,
        output: PathBuf,
        type_name: String,
        requantize: bool,
        threads: u32,
    },
}

impl ModelTool {
    /// `binary` is a `genrt` executable (it runs [`run`] for `genrt model-tool`);
    /// `backends_dir` is `engine.backends_dir`, passed on.
    pub fn new(binary: PathBuf, backends_dir: Option<PathBuf>) -> Self {
        Self {
            binary,
            backends_dir,
        }
    }

    /// Whether llama.cpp loads the model at `path`: its architecture known, every tensor it
    /// expects present with its shape, within the file (the weights themselves not read).
    /// Blocking.
    pub fn probe(&self, path: &Path, cancelled: &dyn Fn() -> bool) -> Result<(), ToolError> {
        let command = ToolCommand::Probe {
            path: path.to_owned(),
        };
        self.check(&command, cancelled)
    }

    /// Whether llama.cpp loads `adapter` onto `base` (genrt's own reader has checked the
    /// shapes first; this is the file through llama.cpp's loader, outside the server).
    /// Blocking.
    pub fn probe_adapter(
        &self,
        base: &Path,
        adapter: &Path,
        cancelled: &dyn Fn() -> bool,
    ) -> Result<(), ToolError> {
        let command = ToolCommand::ProbeAdapter {
            base: base.to_owned(),
            adapter: adapter.to_owned(),
        };
        self.check(&command, cancelled)
    }

    /// A check, killed when `cancelled` says so or after [`PROBE_TIMEOUT`].
    fn check(&self, command: &ToolCommand, cancelled: &dyn Fn() -> bool) -> Result<(), ToolError> {
        let deadline = Instant::now() + PROBE_TIMEOUT;
        self.run_child(command, &|| cancelled() || Instant::now() >= deadline)
            .map_err(|e| match e {
                ToolError::Cancelled if !cancelled() => ToolError::Crashed(format!(
                    "llama.cpp took over {} s to load the file",
                    PROBE_TIMEOUT.as_secs()
                )),
                other => other,
            })
    }

    /// Quantizes in a child, killed as soon as `cancelled` says so. Blocking, for as long as
    /// the quantization takes.
    pub fn quantize(
        &self,
        command: &ToolCommand,
        cancelled: &dyn Fn() -> bool,
    ) -> Result<(), ToolError> {
        self.run_child(command, cancelled)
    }

    fn run_child(
        &self,
        command: &ToolCommand,
        cancelled: &dyn Fn() -> bool,
    ) -> Result<(), ToolError> {
        self.run_args(self.args(command), cancelled)
    }

    fn run_args(&self, args: Vec<OsString>, cancelled: &dyn Fn() -> bool) -> Result<(), ToolError> {
        let mut command = Command::new(&self.binary);
        command
            .args(args)
            .env("CUDA_VISIBLE_DEVICES", "")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // The child ends with the thread that waits for it (the server stopping, killed, or
        // crashing included): an orphaned quantizer would go on writing into the store.
        #[cfg(target_os = "linux")]
        {
            let parent = std::process::id();
            // SAFETY: `prctl` and `getppid` are system calls, safe between fork and exec, and
            // the closure allocates nothing.
            unsafe {
                use std::os::unix::process::CommandExt;
                command.pre_exec(move || {
                    if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                        return Err(std::io::Error::last_os_error());
                    }
                    // The parent may have ended before the signal was asked for. (An error made
                    // from a number: nothing may be allocated here.)
                    if libc::getppid() as u32 != parent {
                        return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
                    }
                    Ok(())
                });
            }
        }
        let mut child = command.spawn().map_err(|e| {
            ToolError::Unavailable(format!(
                "cannot start the model tool {}: {e} (registry.tool_binary)",
                self.binary.display()
            ))
        })?;
        // Read both pipes while waiting, so that a chatty child never blocks on a full pipe.
        let out = drain(child.stdout.take());
        let err = drain(child.stderr.take());
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if cancelled() => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(ToolError::Cancelled);
                }
                Ok(None) => std::thread::sleep(POLL),
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(ToolError::Unavailable(format!(
                        "cannot wait for the model tool: {e}"
                    )));
                }
            }
        };
        let out = out.join().unwrap_or_default();
        let err = err.join().unwrap_or_default();
        answer(status, &out, &err, &self.binary)
    }

    fn args(&self, command: &ToolCommand) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec![SUBCOMMAND.into()];
        if let Some(dir) = &self.backends_dir {
            args.push("--backends-dir".into());
            args.push(dir.into());
        }
        match command {
            ToolCommand::Probe { path } => {
                args.push("probe".into());
                args.push(path.into());
            }
            ToolCommand::ProbeAdapter { base, adapter } => {
                args.extend(["probe-adapter".into(), base.into(), adapter.into()]);
            }
            ToolCommand::Quantize {
                input,
                output,
                type_name,
                requantize,
                threads,
            } => {
                args.extend(["quantize".into(), input.into(), output.into()]);
                args.extend(["--type".into(), type_name.into()]);
                args.extend(["--threads".into(), threads.to_string().into()]);
                if *requantize {
                    args.push("--requantize".into());
                }
            }
        }
        args
    }
}

/// A pipe read to its end on a thread of its own.
fn drain<R: Read + Send + 'static>(pipe: Option<R>) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut text = String::new();
        if let Some(mut pipe) = pipe {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            text = String::from_utf8_lossy(&bytes).into_owned();
        }
        text
    })
}

/// What the child's exit and output mean.
fn answer(status: ExitStatus, out: &str, err: &str, binary: &Path) -> Result<(), ToolError> {
    let last = |text: &str| {
        text.lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .map(str::trim)
            .map(str::to_owned)
    };
    if status.success() {
        return Ok(());
    }
    match (status.code(), last(out)) {
        (Some(1), Some(reason)) => Err(ToolError::Refused(reason)),
        // A usage error (clap's too): the binary is not a `genrt` that knows the tool.
        (Some(2), _) => Err(ToolError::Unavailable(format!(
            "{} does not run `genrt {SUBCOMMAND}` (registry.tool_binary must name the genrt binary): {}",
            binary.display(),
            last(err).unwrap_or_default()
        ))),
        (Some(3), reason) => Err(ToolError::Unavailable(format!(
            "the model tool could not set up llama.cpp: {}",
            reason.unwrap_or_default()
        ))),
        _ => {
            let said: Vec<&str> = err
                .lines()
                .filter(|l| !l.trim().is_empty())
                .collect();
            let tail = said[said.len().saturating_sub(STDERR_LINES)..].join(" | ");
            Err(ToolError::Crashed(format!(
                "llama.cpp ended without an answer on this file ({}){}",
                describe(status),
                if tail.is_empty() {
                    String::new()
                } else {
                    format!(": {tail}")
                }
            )))
        }
    }
}

fn describe(status: ExitStatus) -> String {
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(signal) = status.signal() {
            return format!("signal {signal}");
        }
    }
    match status.code() {
        Some(code) => format!("exit status {code}"),
        None => "no exit status".to_owned(),
    }
}

/// The child's side, for the `main` of every binary that may be a [`ModelTool`]'s: when the
/// process was started as `<binary> model-tool ...`, runs that and exits (0, or 1 with the
/// reason as the last line on stdout, or 2 for arguments it does not understand); otherwise
/// returns at once. Parsed by hand rather than with clap so that the same few lines serve
/// the `genrt` binary and the benchmarks alike, and never show in anyone's `--help`.
pub fn serve_if_asked() {
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    if args.first().map(|a| a.as_os_str()) != Some(SUBCOMMAND.as_ref()) {
        return;
    }
    let code = match parse(&args[1..]) {
        Err(usage) => {
            eprintln!("genrt {SUBCOMMAND}: {usage}");
            2
        }
        Ok((command, backends_dir)) => match run(&command, backends_dir.as_deref()) {
            Ok(()) => 0,
            Err((code, reason)) => {
                // One line: the parent reports the last.
                println!("{}", reason.replace('\n', " "));
                code
            }
        },
    };
    std::process::exit(code);
}

/// `[--backends-dir DIR] probe PATH`, `[--backends-dir DIR] probe-adapter BASE ADAPTER` or
/// `[--backends-dir DIR] quantize IN OUT --type T --threads N [--requantize]`.
fn parse(args: &[OsString]) -> Result<(ToolCommand, Option<PathBuf>), String> {
    let mut words = args.iter().cloned().peekable();
    let mut backends_dir = None;
    if words.peek().is_some_and(|w| w == "--backends-dir") {
        words.next();
        backends_dir = Some(PathBuf::from(
            words.next().ok_or("--backends-dir needs a folder")?,
        ));
    }
    let mut next = |what: &str| words.next().ok_or_else(|| format!("missing {what}"));
    let command = match next("a command")?.to_str() {
        Some("probe") => ToolCommand::Probe {
            path: next("the file")?.into(),
        },
        Some("probe-adapter") => ToolCommand::ProbeAdapter {
            base: next("the base model")?.into(),
            adapter: next("the adapter")?.into(),
        },
        Some("quantize") => {
            let (input, output) = (
                PathBuf::from(next("the input")?),
                PathBuf::from(next("the output")?),
            );
            let (mut type_name, mut threads, mut requantize) = (None, 0, false);
            while let Ok(flag) = next("") {
                match flag.to_str() {
                    Some("--type") => type_name = next("a type")?.into_string().ok(),
                    Some("--threads") => {
                        threads = next("a thread count")?
                            .to_str()
                            .and_then(|t| t.parse().ok())
                            .ok_or("--threads takes a number")?
                    }
                    Some("--requantize") => requantize = true,
                    _ => return Err(format!("unexpected argument {flag:?}")),
                }
            }
            ToolCommand::Quantize {
                input,
                output,
                type_name: type_name.ok_or("--type is required")?,
                requantize,
                threads,
            }
        }
        other => {
            return Err(format!(
                "unknown command {other:?}: probe, probe-adapter or quantize"
            ))
        }
    };
    Ok((command, backends_dir))
}

/// The child's side: runs `command` in this process. `Err` is the exit code (1: the file, 3:
/// llama.cpp could not be set up) and the message the parent reports.
fn run(command: &ToolCommand, backends_dir: Option<&Path>) -> Result<(), (i32, String)> {
    let setup = |e: super::EngineError| (3, e.to_string());
    super::load_backends(backends_dir).map_err(setup)?;
    let backend = super::llama_backend().map_err(setup)?;
    errors::capture();
    // llama.cpp says why only in its log (its API answers a null model or a return code).
    run_command(command, &backend).map_err(|e| match errors::last() {
        Some(said) => (1, format!("{said} ({e})")),
        None => (1, e),
    })
}

fn run_command(
    command: &ToolCommand,
    backend: &llama_cpp_2::llama_backend::LlamaBackend,
) -> Result<(), String> {
    match command {
        ToolCommand::Probe { path } => {
            // Every tensor looked up and checked against the architecture and the file's
            // bounds, as a replica's load does, but none allocated or read (`no_alloc`): a
            // quick check whatever the model's size, and no GPU (none is visible here).
            let params = LlamaModelParams::default()
                .with_n_gpu_layers(0)
                .with_no_alloc(true);
            LlamaModel::load_from_file(backend, path, &params)
                .map(drop)
                .map_err(|e| e.to_string())
        }
        ToolCommand::ProbeAdapter { base, adapter } => probe_adapter(base, adapter),
        ToolCommand::Quantize {
            input,
            output,
            type_name,
            requantize,
            threads,
        } => super::quantize::quantize(input, output, type_name, *requantize, *threads),
    }
}

/// The base described as a replica loads it on the host (its weights not read), then the
/// adapter loaded onto it, as `load_adapter` does. Through llama.cpp's C API: llama-cpp-2's
/// model parameters expose neither `use_extra_bufts` nor `load_mode`.
fn probe_adapter(base: &Path, adapter: &Path) -> Result<(), String> {
    use std::os::unix::ffi::OsStrExt;

    use llama_cpp_sys_2 as sys;

    let c_path =
        |p: &Path| std::ffi::CString::new(p.as_os_str().as_bytes()).map_err(|e| e.to_string());
    let (base, adapter) = (c_path(base)?, c_path(adapter)?);
    // SAFETY: default parameters changed field by field; the model is freed below, after the
    // adapter, and nothing else holds either.
    unsafe {
        let mut params = sys::llama_model_default_params();
        params.n_gpu_layers = 0;
        // The base's tensors described, not read (on the host's buffer type, as a CPU
        // replica's adapter tensors are); the adapter's own tensors are allocated and read.
        params.use_extra_bufts = false;
        params.no_alloc = true;
        params.load_mode = sys::LLAMA_LOAD_MODE_NONE;
        let model = sys::llama_model_load_from_file(base.as_ptr(), params);
        if model.is_null() {
            return Err("the base model does not load".into());
        }
        let lora = sys::llama_adapter_lora_init(model, adapter.as_ptr());
        let loaded = !lora.is_null();
        if loaded {
            sys::llama_adapter_lora_free(lora);
        }
        sys::llama_model_free(model);
        match loaded {
            true => Ok(()),
            false => Err("llama.cpp does not load it as a LoRA adapter of this model".into()),
        }
    }
}

/// llama.cpp's log in the child: all of it goes to stderr (for a crash's message), and the
/// error line that says why a load or a quantization failed is kept for the answer.
mod errors {
    use std::ffi::{c_char, c_void, CStr};
    use std::sync::Mutex;

    use llama_cpp_sys_2 as sys;

    /// What precedes the reason in llama.cpp's own error lines: the loader's and the
    /// quantizer's. A line with one of them wins over any other error line.
    const MARKERS: [&str; 3] = [
        "error loading model: ",
        "failed to quantize: ",
        "failed to apply lora adapter: ",
    ];

    /// The reason so far, and whether a marked line gave it.
    static LAST: Mutex<Option<(String, bool)>> = Mutex::new(None);

    pub(super) fn capture() {
        // SAFETY: a plain function with the callback's signature, for the process's lifetime.
        unsafe { sys::llama_log_set(Some(on_log), std::ptr::null_mut()) };
    }

    pub(super) fn last() -> Option<String> {
        LAST.lock().ok()?.clone().map(|(why, _)| why)
    }

    unsafe extern "C" fn on_log(level: sys::ggml_log_level, text: *const c_char, _: *mut c_void) {
        if text.is_null() {
            return;
        }
        // SAFETY: llama.cpp passes a NUL-terminated message.
        let bytes = unsafe { CStr::from_ptr(text) }.to_bytes();
        // As written (progress dots included), and never a panic if stderr is gone.
        let _ = std::io::Write::write_all(&mut std::io::stderr(), bytes);
        if level != sys::GGML_LOG_LEVEL_ERROR {
            return;
        }
        let text = String::from_utf8_lossy(bytes);
        let text = text.trim();
        if text.is_empty() || text.chars().all(|c| c == '=' || c.is_whitespace()) {
            return;
        }
        let marked = MARKERS
            .iter()
            .find_map(|m| text.split_once(m).map(|(_, why)| why.to_owned()));
        if let Ok(mut last) = LAST.lock() {
            match marked {
                Some(why) => *last = Some((why, true)),
                // The latest unmarked line, unless a marked one came before it (llama.cpp
                // follows the reason with a generic "failed to load model").
                None if !last.as_ref().is_some_and(|(_, marked)| *marked) => {
                    *last = Some((text.to_owned(), false))
                }
                None => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: i32) -> ExitStatus {
        use std::os::unix::process::ExitStatusExt;
        ExitStatus::from_raw(code << 8)
    }

    #[test]
    fn a_refusal_is_the_childs_last_line_and_a_crash_quotes_its_log() {
        let bin = Path::new("genrt");
        assert_eq!(answer(status(0), "", "", bin), Ok(()));
        assert_eq!(
            answer(
                status(1),
                "noise\nunknown model architecture: 'x'\n",
                "",
                bin
            ),
            Err(ToolError::Refused("unknown model architecture: 'x'".into()))
        );
        let crashed = {
            use std::os::unix::process::ExitStatusExt;
            ExitStatus::from_raw(11) // killed by SIGSEGV
        };
        match answer(crashed, "", "a\nb\nGGML_ASSERT(x) failed\n", bin) {
            Err(ToolError::Crashed(m)) => {
                assert!(
                    m.contains("signal 11") && m.contains("GGML_ASSERT(x) failed"),
                    "{m}"
                )
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            answer(
                status(2),
                "",
                "error: unrecognized subcommand 'model-tool'",
                bin
            ),
            Err(ToolError::Unavailable(_))
        ));
    }

    #[test]
    fn the_child_parses_what_the_parent_passes() {
        let tool = ModelTool::new(PathBuf::from("genrt"), Some(PathBuf::from("/opt/b")));
        for command in [
            ToolCommand::Probe {
                path: PathBuf::from("/m/a b.gguf"),
            },
            ToolCommand::ProbeAdapter {
                base: PathBuf::from("/m/base.gguf"),
                adapter: PathBuf::from("/m/lora.gguf"),
            },
            ToolCommand::Quantize {
                input: PathBuf::from("/m/in.gguf"),
                output: PathBuf::from("/m/out.gguf"),
                type_name: "Q8_0".into(),
                requantize: true,
                threads: 3,
            },
        ] {
            let args = tool.args(&command);
            assert_eq!(args[0], SUBCOMMAND);
            assert_eq!(
                parse(&args[1..]),
                Ok((command, Some(PathBuf::from("/opt/b"))))
            );
        }
        assert!(parse(&["quantize".into(), "a".into()]).is_err());
        assert!(parse(&["merge".into()]).is_err());
    }

    #[test]
    fn a_binary_that_is_not_there_is_unavailable_and_a_cancelled_child_is_killed() {
        let missing = ModelTool::new(PathBuf::from("/nonexistent/genrt"), None);
        assert!(matches!(
            missing.probe(Path::new("/tmp/x.gguf"), &|| false),
            Err(ToolError::Unavailable(_))
        ));
        // `sleep` stands in for a long quantization: cancelled, it must end at once.
        let sleeper = ModelTool::new(PathBuf::from("sleep"), None);
        let started = Instant::now();
        let result = sleeper.run_args(vec!["30".into()], &|| {
            started.elapsed() > Duration::from_millis(100)
        });
        assert_eq!(result, Err(ToolError::Cancelled));
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
