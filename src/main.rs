//! The `srs-proxy` binary: parse config, set up logging, run the library.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use srs_proxy::config;
use srs_proxy::context::Context;
use srs_proxy::logging::{self, report};
use srs_proxy::server::{self, Stopped};
use srs_proxy::shutdown;

/// Exit code for a configuration error (EX_USAGE).
const EXIT_CONFIG: u8 = 64;

#[derive(Parser, Debug)]
#[command(
    name = "srs-proxy",
    version,
    about = "Proxy that turns a pool of SRS origins into one origin cluster"
)]
struct Args {
    /// YAML config file (unknown keys are errors).
    #[arg(long, short = 'c')]
    config: Option<PathBuf>,
    /// Print the effective configuration as YAML and exit (64 if invalid).
    #[arg(long)]
    check_config: bool,
    /// HTTP streaming listener (PROXY_HTTP_SERVER).
    #[arg(long)]
    http_server: Option<String>,
    /// RTMP listener (PROXY_RTMP_SERVER).
    #[arg(long)]
    rtmp_server: Option<String>,
    /// System API listener (PROXY_SYSTEM_API).
    #[arg(long)]
    system_api: Option<String>,
    /// memory or redis (PROXY_LOAD_BALANCER_TYPE).
    #[arg(long)]
    load_balancer_type: Option<String>,
    /// least-streams, random or consistent-hash (PROXY_BALANCE_POLICY).
    #[arg(long)]
    balance_policy: Option<String>,
    /// text or json (PROXY_LOG_FORMAT).
    #[arg(long)]
    log_format: Option<String>,
    /// Any other setting by its YAML name, e.g. --set redis.prefix=prod:
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
}

impl Args {
    fn overrides(&self) -> Result<Vec<(String, String, String)>, String> {
        let mut out = Vec::new();
        let named = [
            ("--http-server", "http_server", &self.http_server),
            ("--rtmp-server", "rtmp_server", &self.rtmp_server),
            ("--system-api", "system_api", &self.system_api),
            ("--load-balancer-type", "load_balancer_type", &self.load_balancer_type),
            ("--balance-policy", "balance_policy", &self.balance_policy),
            ("--log-format", "log_format", &self.log_format),
        ];
        for (flag, key, value) in named {
            if let Some(v) = value {
                out.push((flag.to_string(), key.to_string(), v.clone()));
            }
        }
        for kv in &self.set {
            let (k, v) = kv
                .split_once('=')
                .ok_or_else(|| format!("--set {kv:?}: expected KEY=VALUE"))?;
            out.push(("--set".to_string(), k.trim().to_string(), v.to_string()));
        }
        Ok(out)
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    // As the Go proxy does: variables from ./.env, never over the real env.
    let _ = dotenvy::dotenv();
    let env: BTreeMap<String, String> = std::env::vars().filter(|(k, _)| k.starts_with("PROXY_")).collect();
    let overrides = match args.overrides() {
        Ok(o) => o,
        Err(e) => {
            report(&format!("srs-proxy: configuration error: {e}"));
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let config = match config::load(args.config.as_deref(), &env, &overrides) {
        Ok(c) => c,
        Err(e) => {
            report(&format!("srs-proxy: configuration error: {e}"));
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if args.check_config {
        match serde_yaml::to_string(&config::redacted(&config)) {
            Ok(yaml) => {
                // `--check-config | head` closes stdout early: not an error.
                let _ = std::io::Write::write_all(&mut std::io::stdout(), yaml.as_bytes());
                return ExitCode::SUCCESS;
            }
            Err(e) => {
                report(&format!("srs-proxy: cannot print configuration: {e}"));
                return ExitCode::FAILURE;
            }
        }
    }
    logging::init(config.log_format);
    // One thread to run on (one core, or a pod limited to one CPU): the
    // single-threaded scheduler, which has no work-stealing queues to
    // keep or scheduler statistics to take around every batch of tasks.
    let workers = match config.worker_threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let mut builder = if workers == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(workers);
        b
    };
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            report(&format!("srs-proxy: cannot start runtime: {e}"));
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(async_main(config));
    // Whatever is still running after a forced quit (a hung DNS lookup on a
    // blocking thread) must not hold the exit.
    runtime.shutdown_background();
    code
}

async fn async_main(config: config::Config) -> ExitCode {
    let store = match server::build_store(&config).await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let listeners = match server::Listeners::bind(&config).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let ctx = Context::new(config, store);
    let signal = shutdown::os_signals(ctx.shutdown.clone());
    match server::run(ctx, listeners, signal).await {
        Stopped::Clean => {
            tracing::info!("stopped");
            ExitCode::SUCCESS
        }
        Stopped::Forced => ExitCode::FAILURE,
    }
}
