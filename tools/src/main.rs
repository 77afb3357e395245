//! `spate`: the command line of the spate runtime (daemons, reader, benchmarks, diagnostics).
#![forbid(unsafe_code)]

mod cmd;
mod exit;
mod logging;
mod metrics;
mod signals;

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{CommandFactory as _, Parser};

#[derive(Parser)]
#[command(
    name = "spate",
    version,
    about = "Constrained, high-throughput data streams",
    after_long_help = exit_help()
)]
struct Cli {
    /// Log line format on stderr (also SPATE_LOG_FORMAT). Daemons log at INFO, other commands
    /// at WARN; SPATE_LOG=debug (or any tracing filter) overrides.
    #[arg(
        long,
        global = true,
        value_enum,
        env = "SPATE_LOG_FORMAT",
        default_value = "text"
    )]
    log_format: logging::LogFormat,
    #[command(subcommand)]
    cmd: Top,
}

fn exit_help() -> String {
    exit::help_text()
}

#[derive(clap::Subcommand)]
// Parsed once per process: boxing the commands buys nothing.
#[allow(clippy::large_enum_variant)]
enum Top {
    #[command(flatten)]
    Cmd(cmd::Cmd),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell) to stdout.
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff) to stdout, or write one page per command into --out DIR.
    Man {
        /// Write spate.1 and spate-COMMAND.1 for every command into this directory.
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
    },
}

fn main() {
    let cli = Cli::parse();
    let daemon = matches!(
        &cli.cmd,
        Top::Cmd(cmd::Cmd::Scheduler(_)) | Top::Cmd(cmd::Cmd::Node(_))
    );
    logging::init(cli.log_format, daemon);
    let r = match cli.cmd {
        Top::Cmd(c) => cmd::run(c),
        Top::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "spate", &mut std::io::stdout());
            Ok(exit::OK)
        }
        Top::Man { out } => man(out),
    };
    match r {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("spate: error: {}", exit::message(&e));
            std::process::exit(exit::code_of(&e));
        }
    }
}

fn man(out: Option<PathBuf>) -> anyhow::Result<i32> {
    let top = Cli::command();
    let Some(dir) = out else {
        clap_mangen::Man::new(top).render(&mut std::io::stdout())?;
        return Ok(exit::OK);
    };
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("cannot create the directory {}", dir.display()))?;
    let mut written = Vec::new();
    let mut write = |name: String, cmd: clap::Command| -> anyhow::Result<()> {
        let path = dir.join(format!("{name}.1"));
        let mut buf = Vec::new();
        clap_mangen::Man::new(cmd).render(&mut buf)?;
        std::fs::write(&path, buf).with_context(|| format!("cannot write {}", path.display()))?;
        written.push(path);
        Ok(())
    };
    for sub in top.get_subcommands().filter(|s| !s.is_hide_set()) {
        // clap wants a 'static name; a few short strings live as long as the process.
        let name: &'static str = Box::leak(format!("spate-{}", sub.get_name()).into_boxed_str());
        write(name.to_string(), sub.clone().name(name).bin_name(name))?;
    }
    write("spate".into(), top.clone())?;
    for p in &written {
        println!("wrote {}", p.display());
    }
    Ok(exit::OK)
}
