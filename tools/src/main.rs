//! `spate`: the command line of the spate runtime (daemons, reader, benchmarks, diagnostics).
#![forbid(unsafe_code)]

mod cmd;

use clap::Parser;

#[derive(Parser)]
#[command(
    name = "spate",
    version,
    about = "Constrained, high-throughput data streams"
)]
struct Cli {
    #[command(subcommand)]
    cmd: cmd::Cmd,
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SPATE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cmd::run(cli.cmd) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("spate: error: {e:#}");
            std::process::exit(1);
        }
    }
}
