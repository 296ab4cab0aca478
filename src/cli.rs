//! The command line (the README's "Commands"): parses arguments, sets up logging and the
//! runtime, and maps every outcome to an exit code: 0 ok, 2 bad configuration or arguments,
//! 1 otherwise.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use tokio::net::TcpListener;

use crate::config::{ConfigErrors, LogFormat, RawConfig, Settings};
use crate::demo::{self, DemoAddrs};
use crate::emulator::{Emulator, EmulatorConfig};
use crate::gateway::Gateway;
use crate::logging::{self, Logging};
use crate::server::Listeners;
use crate::token::agora::TokenSpec;
use crate::vendor;

/// imgate: a gateway in front of IM vendor REST APIs.
#[derive(Debug, Parser)]
#[command(name = "imgate", version, about)]
pub struct Cli {
    /// Log format (overrides the config's `[log] format`).
    #[arg(long, global = true, value_enum)]
    log_format: Option<LogFormat>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway.
    Serve {
        /// Configuration file (TOML; see config/imgate.example.toml).
        #[arg(long)]
        config: PathBuf,
    },
    /// Run the emulator and the gateway in one process with the demo configuration.
    Demo {
        /// Gateway API address.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Gateway admin address.
        #[arg(long, default_value = "127.0.0.1:9090")]
        admin_listen: SocketAddr,
        /// Emulator address.
        #[arg(long, default_value = "127.0.0.1:8081")]
        emulator_listen: SocketAddr,
    },
    /// Validate a configuration and print it with defaults filled in and secrets masked.
    CheckConfig {
        /// Configuration file.
        #[arg(long)]
        config: PathBuf,
    },
    /// Run the vendor emulator alone (the demo identities without --config).
    Emulator {
        /// Emulator configuration file (TOML).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Address to listen on [default: the config's `listen`, else 127.0.0.1:8081].
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Serve HTTPS with this PEM certificate chain (with --tls-key), as the vendor does.
        #[arg(long, requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// The PEM private key of --tls-cert.
        #[arg(long, requires = "tls_cert")]
        tls_key: Option<PathBuf>,
    },
    /// Print a vendor app token.
    #[command(subcommand)]
    Token(TokenCommand),
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// An Agora Chat AccessToken2 app token (or user token with --user).
    Agora(AgoraTokenArgs),
}

#[derive(Debug, Args)]
struct AgoraTokenArgs {
    /// App ID (32 hex characters).
    #[arg(long)]
    app_id: String,
    /// App Certificate (32 hex characters).
    #[arg(long)]
    app_certificate: String,
    /// Lifetime in seconds (the vendor honours at most 86400).
    #[arg(long, default_value_t = vendor::MAX_AGORA_EXPIRE_SECS)]
    expire: u32,
    /// Issue time, Unix seconds [default: now].
    #[arg(long)]
    issued_at: Option<u32>,
    /// Salt [default: random in 1..=99999999].
    #[arg(long)]
    salt: Option<u32>,
    /// Make a user token for this user id instead of an app token.
    #[arg(long)]
    user: Option<String>,
}

/// Why a command failed, and so which exit code it gets.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Bad configuration or arguments: exit 2.
    #[error("{0}")]
    Config(String),
    /// Anything else: exit 1.
    #[error("{0}")]
    Runtime(String),
}

/// Runs the command line and returns the process exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("imgate: {err}");
            ExitCode::from(match err {
                CliError::Config(_) => 2,
                CliError::Runtime(_) => 1,
            })
        }
    }
}

fn run(cli: Cli) -> Result<(), CliError> {
    let log_format = cli.log_format;
    match cli.command {
        Command::Serve { config } => {
            let settings = load_settings(&config)?;
            let logging = logging::init(
                log_format.unwrap_or(settings.log_format),
                &settings.log_level,
            );
            for warning in &settings.warnings {
                tracing::warn!(%warning, "configuration");
            }
            runtime()?.block_on(serve(settings, config, logging.as_ref()))
        }
        Command::Demo {
            listen,
            admin_listen,
            emulator_listen,
        } => {
            let addrs = DemoAddrs {
                listen,
                admin_listen,
                emulator_listen,
            };
            let settings = demo::settings(addrs).map_err(|e| CliError::Config(e.to_string()))?;
            let logging = logging::init(
                log_format.unwrap_or(settings.log_format),
                &settings.log_level,
            );
            runtime()?.block_on(run_demo(addrs, settings, logging.as_ref()))
        }
        Command::CheckConfig { config } => {
            let raw = RawConfig::load(&config).map_err(|e| CliError::Config(e.to_string()))?;
            let settings = raw
                .validate()
                .map_err(|errors| config_errors(&config, &errors))?;
            for warning in &settings.warnings {
                eprintln!("warning: {warning}");
            }
            print!("{}", raw.to_masked_toml());
            Ok(())
        }
        Command::Token(TokenCommand::Agora(args)) => agora_token(args),
        Command::Emulator {
            config,
            listen,
            tls_cert,
            tls_key,
        } => {
            let config = match config {
                Some(path) => EmulatorConfig::load(&path).map_err(CliError::Config)?,
                None => EmulatorConfig::demo(),
            };
            let addr = match (listen, &config.listen) {
                (Some(addr), _) => addr,
                (None, Some(text)) => text
                    .parse()
                    .map_err(|_| CliError::Config(format!("listen: not an address: {text}")))?,
                (None, None) => SocketAddr::from(([127, 0, 0, 1], 8081)),
            };
            let tls = match (tls_cert, tls_key) {
                (Some(cert), Some(key)) => Some(
                    crate::tls::server_config(&cert, &key)
                        .map_err(|e| CliError::Config(e.to_string()))?,
                ),
                _ => None,
            };
            let _logging = logging::init(log_format.unwrap_or(LogFormat::Text), "info");
            runtime()?.block_on(async move {
                let listener = bind(addr).await?;
                let scheme = if tls.is_some() { "https" } else { "http" };
                tracing::info!(addr = %addr, scheme, apps = config.apps.len(), "imgate emulator listening");
                let emulator = Emulator::new(config);
                match tls {
                    Some(tls) => emulator.run_tls(listener, tls, shutdown_signal()).await,
                    None => emulator.run(listener, shutdown_signal()).await,
                }
                Ok(())
            })
        }
    }
}

/// Reads and validates a configuration file.
fn load_settings(path: &Path) -> Result<Settings, CliError> {
    RawConfig::load(path)
        .map_err(|e| CliError::Config(e.to_string()))?
        .validate()
        .map_err(|errors| config_errors(path, &errors))
}

/// Every error of a configuration, one `error:` line each under a line naming the file.
fn config_errors(path: &Path, errors: &ConfigErrors) -> CliError {
    let count = errors.0.len();
    let mut text = format!(
        "{}: {count} error{}",
        path.display(),
        if count == 1 { "" } else { "s" }
    );
    for error in &errors.0 {
        text.push_str("\nerror: ");
        text.push_str(&error.to_string());
    }
    CliError::Config(text)
}

async fn serve(
    settings: Settings,
    config: PathBuf,
    logging: Option<&Logging>,
) -> Result<(), CliError> {
    let listeners = bind_gateway(&settings).await?;
    let apps: Vec<String> = settings.apps.iter().map(|a| a.name.clone()).collect();
    tracing::info!(
        listen = %settings.listen,
        admin = %settings.admin_listen,
        apps = ?apps,
        clients = settings.clients.len(),
        "imgate serving"
    );
    let gateway = new_gateway(settings, Some(config), logging)?;
    reload_on_sighup(gateway.clone());
    crate::run(listeners, gateway, shutdown_signal()).await;
    Ok(())
}

async fn run_demo(
    addrs: DemoAddrs,
    settings: Settings,
    logging: Option<&Logging>,
) -> Result<(), CliError> {
    let emulator_listener = bind(addrs.emulator_listen).await?;
    let listeners = bind_gateway(&settings).await?;
    let gateway = new_gateway(settings, None, logging)?;
    let emulator = Emulator::new(EmulatorConfig::demo());
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let stopped_too = stopped.clone();
    let wait = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let banner = format!(
        "imgate demo: gateway http://{}  status page http://{}/  vendor emulator http://{}\n\
         Paste these into another terminal (Ctrl-C here stops the demo):\n{}",
        addrs.listen,
        addrs.admin_listen,
        addrs.emulator_listen,
        demo::curl_commands(addrs)
    );
    // One write, and a closed stdout (a pager quit early) is no reason to stop the demo.
    let _ = std::io::Write::write_all(&mut std::io::stdout().lock(), banner.as_bytes());
    tokio::join!(
        emulator.run(emulator_listener, wait(stopped)),
        crate::run(listeners, gateway, wait(stopped_too)),
        async move {
            shutdown_signal().await;
            let _ = stop.send(true);
        }
    );
    Ok(())
}

async fn bind_gateway(settings: &Settings) -> Result<Listeners, CliError> {
    Ok(Listeners {
        api: bind(settings.listen).await?,
        admin: bind(settings.admin_listen).await?,
    })
}

/// SIGHUP re-reads the configuration file and its secrets; a bad one keeps the running config.
fn reload_on_sighup(gateway: std::sync::Arc<Gateway>) {
    #[cfg(unix)]
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut hangups) = signal(SignalKind::hangup()) else {
            tracing::warn!("cannot listen for SIGHUP; reloads are off");
            return;
        };
        while hangups.recv().await.is_some() {
            match gateway.reload().await {
                Ok(()) => {}
                Err(err) => {
                    tracing::error!(error = %err, "configuration reload refused; the running configuration stays")
                }
            }
        }
    });
    #[cfg(not(unix))]
    drop(gateway);
}

fn new_gateway(
    settings: Settings,
    config: Option<PathBuf>,
    logging: Option<&Logging>,
) -> Result<std::sync::Arc<Gateway>, CliError> {
    let metrics_error =
        |e: prometheus::Error| CliError::Runtime(format!("cannot register metrics: {e}"));
    let registry = prometheus::Registry::new();
    if let Some(logging) = logging {
        registry
            .register(Box::new(logging.dropped_lines()))
            .map_err(metrics_error)?;
    }
    let gateway = Gateway::new(settings, registry, config)
        .map_err(|e| CliError::Runtime(format!("cannot start: {e}")))?;
    if let Some(logging) = logging {
        gateway.log_access_to(logging.access_log());
    }
    Ok(gateway)
}

fn agora_token(args: AgoraTokenArgs) -> Result<(), CliError> {
    for (name, value) in [
        ("--app-id", &args.app_id),
        ("--app-certificate", &args.app_certificate),
    ] {
        if !vendor::is_agora_hex(value) {
            return Err(CliError::Config(format!(
                "{name}: must be 32 hex characters"
            )));
        }
    }
    if args.expire > vendor::MAX_AGORA_EXPIRE_SECS {
        eprintln!(
            "imgate: warning: --expire {} is above the {} s the vendor honours",
            args.expire,
            vendor::MAX_AGORA_EXPIRE_SECS
        );
    }
    let issue_ts = match args.issued_at {
        Some(ts) => ts,
        None => u32::try_from(vendor::now_secs())
            .map_err(|_| CliError::Runtime("the clock is past 2106".into()))?,
    };
    let spec = TokenSpec {
        app_id: args.app_id,
        issue_ts,
        expire: args.expire,
        salt: args.salt.unwrap_or_else(crate::token::agora::random_salt),
        user_id: args.user,
    };
    println!("{}", spec.build(&args.app_certificate));
    Ok(())
}

fn runtime() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Runtime(format!("cannot start the runtime: {e}")))
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, CliError> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| CliError::Runtime(format!("cannot listen on {addr}: {e}")))
}

/// Completes on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutdown signal received");
}
