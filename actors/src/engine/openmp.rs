//! How llama.cpp's CPU threads wait for each other.
//!
//! ggml, built with OpenMP (llama-cpp-2's default), synchronises a replica's threads with an
//! OpenMP barrier after every graph node: hundreds per decode step. libgomp lets a thread that
//! reaches a barrier first spin a while, then sleep on a futex; and when the process holds
//! more OpenMP threads than CPUs, which a runtime with a few replicas, models and embedding
//! threads always does (the thread that starts the program counts too), it spins only 100
//! times (about a microsecond) before sleeping. Waking it costs more than the node it waited
//! for, so the second thread of a replica mostly slept: on the 2-core machines, 16 streams on
//! two engine threads decoded 107-122 tokens/s with libgomp's defaults and 159-178 with the
//! settings below, and 16 streams over 4 LoRA adapters (4 times the decode steps) 61-66
//! against 117-121 (runs of `genrt-bench-models`, benchmarks/MODELS.md).
//!
//! `OMP_WAIT_POLICY=ACTIVE` raises that short spin to 1000; `GOMP_SPINCOUNT` keeps the spin
//! of a process with fewer threads than CPUs at libgomp's default (300000, a few
//! milliseconds), where `ACTIVE` alone would keep idle threads spinning for minutes after each
//! request. libgomp reads both once, when it is loaded with the engine's libraries, before
//! `main` runs: a binary that runs the engine therefore executes itself again with those of
//! them its environment does not set (the operator's choice wins).

use std::ffi::OsString;
use std::os::unix::process::CommandExt;

/// What the engine wants libgomp to read, unless the environment says otherwise.
pub const ENV: [(&str, &str); 2] = [("OMP_WAIT_POLICY", "ACTIVE"), ("GOMP_SPINCOUNT", "300000")];

/// Executes the running program again, same arguments, with [`ENV`] added where unset. Returns
/// only when nothing was missing, or when the program cannot be executed again (then the engine
/// runs with libgomp's defaults, slower, and this says so on stderr). Call it first in `main`.
pub fn reexec_with_env() {
    let missing: Vec<_> = ENV
        .iter()
        .filter(|(key, _)| std::env::var_os(key).is_none())
        .collect();
    if missing.is_empty() {
        return;
    }
    let mut args = std::env::args_os();
    let arg0 = args.next().unwrap_or_else(|| OsString::from("genrt"));
    // The running image itself, even when its file was replaced or removed since it started
    // (an upgrade in place), which `current_exe` would name "... (deleted)".
    let mut command = std::process::Command::new("/proc/self/exe");
    command.arg0(arg0).args(args);
    for (key, value) in missing {
        command.env(key, value);
    }
    // Replaces this process (same pid) on success.
    let err = command.exec();
    eprintln!("cannot execute this program again to set OpenMP's waiting policy ({err}); running with libgomp's defaults");
}
