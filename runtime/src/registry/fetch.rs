//! Bytes into the model store: downloads, uploads and hashing, each streamed in chunks (a
//! model file is never held in memory) and hashed as it goes, with progress written to the
//! registry row at most twice a second.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{Stream, StreamExt};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;
use url::Url;

use super::Failure;
use crate::error::ErrorCode;
use crate::store::{Attempt, ModelRow, Store};
use crate::webhooks::ssrf::{GuardedResolver, UrlGuard};

/// A file's size and sha256 (lower-case hex).
#[derive(Debug, Clone)]
pub struct Hashed {
    pub bytes: u64,
    pub sha256: String,
}

const PROGRESS_EVERY: Duration = Duration::from_millis(500);
const CHUNK: usize = 1 << 20;
/// Redirects a model URL may take (hosting sites redirect to their CDN); each one is checked
/// by the SSRF guard like the first URL.
const MAX_REDIRECTS: usize = 5;
/// A download stalled this long fails.
const READ_TIMEOUT: Duration = Duration::from_secs(60);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The client for model URLs: the webhooks' guarded resolver (every address connected to is
/// checked when connecting), no proxies from the environment, redirects followed only to
/// URLs the guard accepts, no overall timeout (a model takes as long as it takes) but a
/// bound on each read.
pub(super) fn client(guard: Arc<UrlGuard>) -> Result<reqwest::Client, reqwest::Error> {
    let redirect_guard = Arc::clone(&guard);
    reqwest::Client::builder()
        .dns_resolver(Arc::new(GuardedResolver::new(guard)))
        .redirect(reqwest::redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() >= MAX_REDIRECTS {
                attempt.error("too many redirects")
            } else if let Err(err) = redirect_guard.check_url(attempt.url().as_str()) {
                attempt.error(err.to_string())
            } else {
                attempt.follow()
            }
        }))
        .no_proxy()
        .connect_timeout(CONNECT_TIMEOUT)
        .read_timeout(READ_TIMEOUT)
        .user_agent(concat!("genrt-registry/", env!("CARGO_PKG_VERSION")))
        .build()
}

/// Writes progress to a registry row, at most every [`PROGRESS_EVERY`].
pub(super) struct Progress {
    store: Store,
    id: String,
    attempt: String,
    last: std::sync::Mutex<Option<Instant>>,
}

impl Progress {
    pub(super) fn new(store: Store, row: &ModelRow) -> Self {
        Self {
            store,
            id: row.id.clone(),
            attempt: row.attempt.clone(),
            last: std::sync::Mutex::new(None),
        }
    }

    pub(super) async fn report(&self, done: u64, size: u64, last: bool) {
        {
            let mut at = self.last.lock().expect("progress lock");
            if !last && at.is_some_and(|t| t.elapsed() < PROGRESS_EVERY) {
                return;
            }
            *at = Some(Instant::now());
        }
        let at = Attempt {
            id: &self.id,
            attempt: &self.attempt,
        };
        if let Err(err) = self.store.model_progress(at, done, size).await {
            tracing::debug!(model = %self.id, error = %err, "progress not recorded");
        }
    }
}

pub(super) fn mismatch(expected: &str, actual: &str) -> Failure {
    Failure::new(
        ErrorCode::ModelSha256Mismatch,
        format!("the file's sha256 is {actual}, not the expected {expected}"),
    )
}

fn too_large(limit: u64) -> Failure {
    Failure::new(
        ErrorCode::ModelTooLarge,
        format!(
            "the file is larger than registry.max_file_mb ({} MiB)",
            limit >> 20
        ),
    )
}

fn io(err: std::io::Error) -> Failure {
    Failure::new(ErrorCode::Internal, format!("model store: {err}"))
}

pub(super) fn cancelled() -> Failure {
    Failure::new(
        ErrorCode::ModelDraining,
        "the registration was deleted while in progress",
    )
}

/// Streams `body` to `partial`, hashing it; with the right sha256 and size, moves it to
/// `dest`. `partial` is removed on every failure.
#[allow(clippy::too_many_arguments)]
async fn store_stream<S, E>(
    mut body: S,
    size: u64,
    partial: &Path,
    dest: &Path,
    expected: &str,
    limit: u64,
    progress: &Progress,
    cancel: &CancellationToken,
    read_error: ErrorCode,
) -> Result<Hashed, Failure>
where
    S: Stream<Item = Result<bytes::Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    let result = async {
        let mut file = tokio::fs::File::create(partial).await.map_err(io)?;
        let mut hasher = Sha256::new();
        let mut done = 0u64;
        loop {
            let chunk = tokio::select! {
                () = cancel.cancelled() => return Err(cancelled()),
                chunk = body.next() => chunk,
            };
            let Some(chunk) = chunk else { break };
            let chunk = chunk.map_err(|e| {
                Failure::new(
                    read_error,
                    format!("the transfer broke off after {done} bytes: {e}"),
                )
            })?;
            done += chunk.len() as u64;
            if done > limit {
                return Err(too_large(limit));
            }
            hasher.update(&chunk);
            file.write_all(&chunk).await.map_err(io)?;
            progress.report(done, size.max(done), false).await;
        }
        file.flush().await.map_err(io)?;
        file.sync_all().await.map_err(io)?;
        progress.report(done, done, true).await;
        let sha256 = hex::encode(hasher.finalize());
        if sha256 != expected {
            return Err(mismatch(expected, &sha256));
        }
        if size > 0 && done != size {
            return Err(Failure::new(
                ErrorCode::ModelTruncated,
                format!("received {done} of {size} bytes"),
            ));
        }
        tokio::fs::rename(partial, dest).await.map_err(io)?;
        Ok(Hashed {
            bytes: done,
            sha256,
        })
    }
    .await;
    if result.is_err() {
        let _ = tokio::fs::remove_file(partial).await;
    }
    result
}

/// An upload's body into the store.
pub(super) async fn receive<S, E>(
    body: S,
    partial: &Path,
    dest: &Path,
    expected: &str,
    limit: u64,
    progress: &Progress,
    cancel: &CancellationToken,
) -> Result<Hashed, Failure>
where
    S: Stream<Item = Result<bytes::Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    store_stream(
        body,
        0,
        partial,
        dest,
        expected,
        limit,
        progress,
        cancel,
        ErrorCode::ModelTruncated,
    )
    .await
}

/// A URL into the store. Restartable rather than resumable: a registration interrupted by a
/// restart starts its download again (most model hosts would allow a `Range` resume; a
/// partial file of unknown provenance is not worth trusting).
#[allow(clippy::too_many_arguments)]
pub(super) async fn download(
    http: &reqwest::Client,
    url: Url,
    partial: &Path,
    dest: &Path,
    expected: &str,
    limit: u64,
    progress: &Progress,
    cancel: &CancellationToken,
) -> Result<Hashed, Failure> {
    let failed = |why: String| Failure::new(ErrorCode::ModelDownloadFailed, why);
    let response = tokio::select! {
        () = cancel.cancelled() => return Err(cancelled()),
        response = http.get(url.clone()).send() => response,
    }
    .map_err(|e| failed(format!("{url}: {e}")))?;
    if !response.status().is_success() {
        return Err(failed(format!("{url} answered {}", response.status())));
    }
    let size = response.content_length().unwrap_or(0);
    if size > limit {
        return Err(too_large(limit));
    }
    store_stream(
        response.bytes_stream().boxed(),
        size,
        partial,
        dest,
        expected,
        limit,
        progress,
        cancel,
        ErrorCode::ModelDownloadFailed,
    )
    .await
}

/// Hashes the file at `path` in chunks.
pub(super) async fn hash_file(
    path: &Path,
    progress: Option<&Progress>,
    cancel: &CancellationToken,
) -> Result<Hashed, Failure> {
    let mut file = tokio::fs::File::open(path).await.map_err(|e| {
        Failure::new(
            ErrorCode::InvalidModelSource,
            format!("{}: {e}", path.display()),
        )
    })?;
    let size = file.metadata().await.map_err(io)?.len();
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut done = 0u64;
    loop {
        if cancel.is_cancelled() {
            return Err(cancelled());
        }
        let n = file.read(&mut buf).await.map_err(io)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        done += n as u64;
        if let Some(progress) = progress {
            progress.report(done, size, false).await;
        }
    }
    if let Some(progress) = progress {
        progress.report(done, size, true).await;
    }
    Ok(Hashed {
        bytes: done,
        sha256: hex::encode(hasher.finalize()),
    })
}
