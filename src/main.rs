//! The `herald` binary.

use clap::Parser;
use herald::app::{self, config::Cli, config::Command, config::Config, config::LogFormat};

#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// A log filter, refusing what would parse but log nothing a person meant: a bare word
/// that is neither a level nor one of herald's targets (`warning`, `herald:debug`).
fn log_filter(v: &str) -> Result<tracing_subscriber::EnvFilter, String> {
    const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];
    for d in v.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        let bare = !d.contains('=') && !d.contains('[');
        let known = LEVELS.iter().any(|l| d.eq_ignore_ascii_case(l))
            || d == "herald"
            || d.starts_with("herald::");
        if bare && !known {
            return Err(format!(
                "`{d}` is neither a level ({}) nor TARGET=LEVEL",
                LEVELS.join(", ")
            ));
        }
    }
    tracing_subscriber::EnvFilter::builder()
        .parse(v)
        .map_err(|e| e.to_string())
}

fn main() {
    let cli = Cli::parse();
    // An invalid HERALD_LOG is refused rather than quietly ignored.
    let filter = match std::env::var("HERALD_LOG") {
        Ok(v) if v.trim().is_empty() => "info".into(),
        Ok(v) => match log_filter(&v) {
            Ok(f) => f,
            Err(e) => {
                eprintln!("herald: HERALD_LOG=`{v}` is not a log filter ({e}); use e.g. `info`, `debug` or `herald=debug,warn`");
                std::process::exit(2);
            }
        },
        Err(_) => "info".into(),
    };
    // The log format is a setting: read the configuration once quietly to learn it, then
    // again with logging on, so that what loading says is written in that format.
    // The file is read once: it may be a pipe.
    let file = match Config::read_file(&cli.flags) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("herald: {e:#}");
            std::process::exit(2);
        }
    };
    let format =
        tracing::subscriber::with_default(tracing::subscriber::NoSubscriber::default(), || {
            Config::load_with(&cli.flags, file.as_deref(), std::env::vars())
                .map_or(LogFormat::Text, |c| c.log.format)
        });
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => logs.json().flatten_event(true).init(),
        LogFormat::Text => logs
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
    }
    let config = match Config::load_with(&cli.flags, file.as_deref(), std::env::vars()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("herald: {e:#}");
            std::process::exit(2);
        }
    };
    let result = match cli.command.unwrap_or(Command::Serve) {
        Command::Config => config.redacted().map(|s| print!("{s}")),
        Command::CheckConfig => match app::tools::check(&config) {
            Ok(summary) => {
                // What a start would warn about, without failing the check.
                for w in config.warnings() {
                    eprintln!("herald: warning: {w}");
                }
                println!("{summary}");
                Ok(())
            }
            Err(e) => {
                eprintln!("herald: {e:#}");
                std::process::exit(2);
            }
        },
        Command::GenConfig => app::tools::gen_config().map(|s| print!("{s}")),
        Command::Token { user, ttl } => {
            app::tools::token(&config, &user, &ttl).map(|t| println!("{t}"))
        }
        // The server runs as a task on the runtime's workers: on the main thread the
        // accept loop would hand every connection across threads.
        Command::Serve => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(anyhow::Error::from)
            .and_then(|rt| {
                rt.block_on(async { tokio::spawn(app::serve(config)).await })
                    .map_err(anyhow::Error::from)?
            }),
    };
    if let Err(e) = result {
        eprintln!("herald: {e:#}");
        std::process::exit(1);
    }
}
