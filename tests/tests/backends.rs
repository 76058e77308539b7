//! The dynamic-backend build, proven on the CPU: llama.cpp's backends are shared libraries that
//! the process loads at start (`libggml-cpu.so` or `libggml-cpu-<variant>.so`, and `libggml-cuda.so` where one was
//! built), from `engine.backends_dir` or the binary's own folder. These tests run the real
//! model through a loaded CPU module, through a folder chosen in the configuration, and check
//! that a folder without a CPU module stops the start with a message that says so.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use genrt_tests::process::{base_config, genrt_binary, ServerProcess};
use genrt_tests::{token, Db, TempDir, TestServer, MODEL};
use reqwest::Method;
use serde_json::{json, Value};

fn cpu_modules(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| {
                    let name = p.file_name().unwrap().to_string_lossy().into_owned();
                    name.starts_with("libggml-cpu") && name.ends_with(".so")
                })
                .collect()
        })
        .unwrap_or_default()
}

fn greeting() -> Value {
    json!({
        "name": "greeting",
        "model": MODEL,
        "prompt": "Say hi to {{ name }}.",
        "params": {"max_tokens": 4, "temperature": 0},
        "cache": {"enabled": false}
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_run_on_the_cpu_module_loaded_at_start_and_the_api_says_so() {
    let s = TestServer::start(Db::Sqlite).await;
    let t = token("acme");
    let (status, devices) = s.call(Method::GET, "/v1/devices", &t, None).await;
    assert_eq!(status, 200, "{devices}");
    assert_eq!(devices["backends"], json!(["CPU"]), "{devices}");
    assert_eq!(devices["gpu_offload"], false, "{devices}");
    let dir = PathBuf::from(devices["backends_dir"].as_str().unwrap());
    assert!(
        !cpu_modules(&dir).is_empty(),
        "no CPU module in the reported folder {}",
        dir.display()
    );
    let list = devices["devices"].as_array().unwrap();
    assert!(
        list.iter()
            .any(|d| d["kind"] == "cpu" && d["backend"] == "CPU"),
        "{devices}"
    );
    assert!(list.iter().all(|d| d["gpu"] == false), "{devices}");

    let (status, body) = s
        .call(Method::POST, "/v1/functions", &t, Some(greeting()))
        .await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = s
        .invoke(&t, "greeting", json!({"input": {"name": "Ada"}}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(body["usage"]["completion_tokens"].as_u64().unwrap() > 0);
    let model = s.model(&t, MODEL).await;
    assert_eq!(model["device"], "CPU", "{model}");
    // n_gpu_layers unset and no GPU backend: nothing offloaded, all memory on the host.
    assert_eq!(model["gpu_layers"], 0, "{model}");
    assert_eq!(model["gpu_memory_bytes"], 0, "{model}");
    assert!(model["memory_bytes"].as_u64().unwrap() > 0, "{model}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configured_backends_folder_is_used_and_one_without_a_cpu_module_stops_the_start() {
    let binary = genrt_binary();
    let shipped = cpu_modules(binary.parent().unwrap());
    assert!(
        !shipped.is_empty(),
        "the build put no CPU backend module beside {}",
        binary.display()
    );

    // A folder with one CPU module only: the baseline x86-64 variant where there is one (every
    // x86-64 processor runs it), else every variant the build made.
    let dir = TempDir::new("genrt-backends");
    let modules = dir.0.join("modules");
    std::fs::create_dir_all(&modules).unwrap();
    let baseline: Vec<_> = shipped
        .iter()
        .filter(|p| p.ends_with("libggml-cpu-x64.so"))
        .cloned()
        .collect();
    for module in if baseline.is_empty() {
        &shipped
    } else {
        &baseline
    } {
        std::fs::copy(module, modules.join(module.file_name().unwrap())).unwrap();
    }
    // A GPU module that cannot be opened (here: not a library at all, as a CUDA module without
    // the CUDA runtime beside it would be) leaves the node on the CPU, and the log says why.
    std::fs::write(modules.join("libggml-cuda.so"), b"not a shared library").unwrap();
    let config = format!(
        "{}[engine]\nbackends_dir = {:?}\n",
        base_config(&dir.0, &Db::Sqlite),
        modules.display().to_string()
    );
    let server = ServerProcess::start(&dir.0, &config).await;
    let log = server.log_tail(200);
    assert!(
        log.contains("backend module could not be loaded") && log.contains("libggml-cuda.so"),
        "{log}"
    );
    let t = token("acme");
    let (status, devices) = server.call(Method::GET, "/v1/devices", &t, None).await;
    assert_eq!(status, 200, "{devices}");
    assert_eq!(
        devices["backends_dir"],
        modules.display().to_string(),
        "{devices}"
    );
    assert_eq!(devices["backends"], json!(["CPU"]), "{devices}");
    assert_eq!(devices["gpu_offload"], false, "{devices}");
    let (status, body) = server
        .call(Method::POST, "/v1/functions", &t, Some(greeting()))
        .await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = server
        .call(
            Method::POST,
            "/v1/functions/greeting/invoke",
            &t,
            Some(json!({"input": {"name": "Ada"}})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    drop(server);

    // An empty folder: no CPU backend, so no start, and the log says which folder.
    let empty = dir.0.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let config_path = dir.0.join("empty.toml");
    let config = format!(
        "{}[engine]\nbackends_dir = {:?}\n",
        base_config(&dir.0, &Db::Sqlite),
        empty.display().to_string()
    );
    std::fs::write(&config_path, config).unwrap();
    let mut child = Command::new(&binary)
        .args(["serve", "--config"])
        .arg(&config_path)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            panic!("genrt kept running without a CPU backend");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let output = child.wait_with_output().unwrap();
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(!status.success(), "{log}");
    assert!(
        log.contains(&format!(
            "no CPU backend could be loaded from {}",
            empty.display()
        )),
        "{log}"
    );
}
