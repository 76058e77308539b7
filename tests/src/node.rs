//! The official `standardwebhooks` npm package, driven through `tests/node/webhooks.mjs`, so
//! that tests can check genrt's signatures with an implementation that is not ours. Its
//! packages are installed with `npm ci` on first use.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use serde_json::{json, Value};

fn node_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("node")
}

/// Checks for node once per test binary and installs the locked packages if they are missing;
/// the tests run in parallel and must not run `npm ci` over each other.
fn node_ready() {
    static READY: OnceLock<()> = OnceLock::new();
    READY.get_or_init(|| {
        let version = Command::new("node").arg("--version").output();
        assert!(
            version.as_ref().is_ok_and(|out| out.status.success()),
            "node is required for the webhook interop tests and was not found on PATH; \
             `scripts/install-deps.sh` (run by `make test`) installs nodejs and npm"
        );
        if !node_dir().join("node_modules/standardwebhooks").is_dir() {
            let status = Command::new("npm")
                .args(["ci", "--no-audit", "--no-fund", "--prefix"])
                .arg(node_dir())
                .status()
                .expect("npm is required to install tests/node's packages and was not found");
            assert!(status.success(), "`npm ci --prefix tests/node` failed");
        }
    });
}

/// Runs `node webhooks.mjs <command>` with `input` on stdin and returns its JSON answer.
pub fn node(command: &str, input: Value) -> Value {
    node_ready();
    let mut child = Command::new("node")
        .arg(node_dir().join("webhooks.mjs"))
        .arg(command)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start node");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "node webhooks.mjs {command} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("node answered JSON")
}

/// Headers signed by the npm package, as pairs for our verifier.
pub fn node_sign(secret: &str, msg_id: &str, timestamp: i64, body: &str) -> Vec<(String, String)> {
    let answer = node(
        "sign",
        json!({ "secret": secret, "msg_id": msg_id, "timestamp": timestamp, "body": body }),
    );
    answer["headers"]
        .as_object()
        .expect("headers object")
        .iter()
        .map(|(name, value)| (name.clone(), value.as_str().unwrap().to_owned()))
        .collect()
}
