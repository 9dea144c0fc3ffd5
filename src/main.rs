//! The `attestd` command line: parses arguments and calls into the library.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

use attestd::{client, config::Config, daemon, telemetry};

#[derive(Parser)]
#[command(
    name = "attestd",
    version,
    about = "Per-host SPIFFE Workload API: kernel-attested, short-lived workload identities"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon.
    Run {
        /// Configuration file (TOML).
        #[arg(short, long)]
        config: Option<PathBuf>,
    },
    /// Call the Workload API as the current process.
    Api {
        #[command(subcommand)]
        command: ApiCommand,
    },
}

#[derive(Subcommand)]
enum ApiCommand {
    /// Fetch once.
    Fetch {
        #[command(subcommand)]
        kind: FetchKind,
    },
    /// Stream X.509-SVID updates until interrupted.
    Watch {
        /// Workload API socket (unix:///path); default $SPIFFE_ENDPOINT_SOCKET.
        #[arg(long)]
        socket: Option<String>,
    },
}

#[derive(Subcommand)]
enum FetchKind {
    /// Fetch X.509-SVIDs and print their details.
    X509 {
        /// Workload API socket (unix:///path); default $SPIFFE_ENDPOINT_SOCKET.
        #[arg(long)]
        socket: Option<String>,
        /// Also write svid.N.pem, svid.N.key and bundle.N.pem into DIR.
        #[arg(long, value_name = "DIR")]
        write: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("attestd: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dispatch(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("attestd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn dispatch(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Run { config } => {
            let config = match config {
                Some(path) => Config::load(&path)?,
                None => return Err(Config::missing().into()),
            };
            daemon::run(config).await?;
        }
        Command::Api { command } => match command {
            ApiCommand::Fetch {
                kind: FetchKind::X509 { socket, write },
            } => {
                let mut api = client::connect(&client::socket_path(socket.as_deref())?).await?;
                let response = client::fetch_x509(&mut api).await?;
                print!("{}", client::describe_x509(&response));
                if let Some(dir) = write {
                    for path in client::write_x509(&response, &dir).context("writing PEM files")? {
                        println!("Wrote {}", path.display());
                    }
                }
            }
            ApiCommand::Watch { socket } => {
                let mut api = client::connect(&client::socket_path(socket.as_deref())?).await?;
                client::watch_x509(&mut api).await?;
            }
        },
    }
    Ok(())
}
