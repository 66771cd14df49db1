//! The `herald` binary.

use clap::Parser;
use herald::app::{self, config::Cli, config::Command, config::Config};

#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() {
    let cli = Cli::parse();
    // An invalid HERALD_LOG is refused rather than quietly ignored.
    let filter = match std::env::var("HERALD_LOG") {
        Ok(v) => match tracing_subscriber::EnvFilter::builder().parse(&v) {
            Ok(f) => f,
            Err(e) => {
                eprintln!("herald: HERALD_LOG=`{v}` is not a log filter ({e}); use e.g. `info`, `debug` or `herald=debug,warn`");
                std::process::exit(2);
            }
        },
        Err(_) => "info".into(),
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let config = match Config::load(&cli.flags, std::env::vars()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("herald: {e:#}");
            std::process::exit(2);
        }
    };
    let result = match cli.command.unwrap_or(Command::Serve) {
        Command::Config => config.redacted().map(|s| print!("{s}")),
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
