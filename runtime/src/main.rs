//! The `genrt` binary: `serve`, `migrate`, `token` and `openapi`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use genrt_functions::TenantId;
use genrt_runtime::auth::{TokenIssuer, ALL_SCOPES, DEFAULT_TENANT_SCOPES};
use genrt_runtime::config::{Config, Overrides};
use genrt_runtime::store::Store;
use tracing_subscriber::EnvFilter;
use utoipa::OpenApi;

#[derive(Parser)]
#[command(
    name = "genrt",
    version,
    about = "Serverless runtime for generative-AI functions"
)]
struct Cli {
    /// Configuration file (default: ./genrt.toml when present).
    #[arg(long, global = true, env = "GENRT_CONFIG")]
    config: Option<PathBuf>,
    #[command(flatten)]
    overrides: OverrideArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args)]
struct OverrideArgs {
    #[arg(long, global = true, env = "GENRT_HOST")]
    host: Option<String>,
    #[arg(long, global = true, env = "GENRT_PORT")]
    port: Option<u16>,
    #[arg(long, global = true, env = "GENRT_DATA_DIR")]
    data_dir: Option<PathBuf>,
    #[arg(
        long,
        global = true,
        env = "GENRT_DATABASE_URL",
        hide_env_values = true
    )]
    database_url: Option<String>,
    #[arg(long, global = true, env = "GENRT_JWT_SECRET", hide_env_values = true)]
    jwt_secret: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server.
    Serve,
    /// Apply database migrations and exit.
    Migrate,
    /// Print a bearer token for a tenant, signed (HS256) with the configured secret.
    Token {
        #[arg(long)]
        tenant: String,
        /// A scope to grant; repeat for several. Default: every tenant scope but `admin`.
        #[arg(long = "scope", value_name = "SCOPE")]
        scopes: Vec<String>,
        /// Lifetime in seconds. Default: `auth.token_ttl_s`.
        #[arg(long)]
        ttl_s: Option<u64>,
    },
    /// Print the OpenAPI document.
    Openapi,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // `genrt model-tool ...`: the registry's child process, never a user's command.
    genrt_actors::engine::tool::serve_if_asked();
    let cli = Cli::parse();
    let o = cli.overrides;
    let overrides = Overrides {
        host: o.host,
        port: o.port,
        data_dir: o.data_dir,
        database_url: o.database_url,
        jwt_secret: o.jwt_secret,
    };
    let config = Config::load(cli.config.as_deref(), &overrides)?;
    // After the configuration, which says where traces go; the server exports them only.
    let mut telemetry = config.telemetry.clone();
    if !matches!(cli.command, Command::Serve) {
        telemetry.otlp_endpoint = None;
    }
    let traces = genrt_runtime::telemetry::init_tracing(
        &telemetry,
        EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| EnvFilter::new("info,llama_cpp_2=warn,sqlx=warn")),
    )
    .context("telemetry")?;
    match cli.command {
        Command::Serve => {
            let server = genrt_runtime::start(config, true).await?;
            let stopped = server.wait().await;
            // Spans of the shutdown itself are exported too.
            traces.shutdown().await;
            stopped.context("server stopped with an error")?;
        }
        Command::Migrate => {
            Store::connect(&config).await?;
            eprintln!("migrations applied");
        }
        Command::Token {
            tenant,
            scopes,
            ttl_s,
        } => {
            let tenant = TenantId::parse(&tenant)?;
            if let Some(unknown) = scopes.iter().find(|s| !ALL_SCOPES.contains(&s.as_str())) {
                anyhow::bail!(
                    "unknown scope `{unknown}`; known scopes: {}",
                    ALL_SCOPES.join(", ")
                );
            }
            let scopes: Vec<&str> = if scopes.is_empty() {
                DEFAULT_TENANT_SCOPES.to_vec()
            } else {
                scopes.iter().map(String::as_str).collect()
            };
            let ttl_s = ttl_s.unwrap_or(config.auth.token_ttl_s);
            let max = config.auth.max_token_ttl_s;
            if max > 0 && ttl_s > max {
                anyhow::bail!("--ttl-s {ttl_s} exceeds auth.max_token_ttl_s ({max})");
            }
            let ttl = Duration::from_secs(ttl_s);
            println!(
                "{}",
                TokenIssuer::new(&config.auth).issue(&tenant, &scopes, ttl)
            );
        }
        Command::Openapi => {
            println!(
                "{}",
                genrt_runtime::api::openapi::ApiDoc::openapi().to_pretty_json()?
            );
        }
    }
    Ok(())
}
