//! The `attestd` command line: parses arguments and calls into the library.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};

use attestd::authority::BundleDocument;
use attestd::registry::Policy;
use attestd::{audit, authz, client, config::Config, daemon, explain, helper, policy_check, telemetry};

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
    /// Exit 0 if the Workload API answers, 1 if not (for scripts and probes).
    Healthcheck {
        #[command(flatten)]
        socket: SocketArg,
        /// How long to wait for an answer.
        #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
    },
    /// Show a process's selectors, the entries it matches, and why others don't.
    Explain {
        /// The process to explain.
        #[arg(long)]
        pid: i32,
        /// attestd's configuration file (the policy).
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Show or lint the registration entries (the policy).
    Entry {
        #[command(subcommand)]
        command: EntryCommand,
    },
    /// Work with the audit trail.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// The trust bundle attestd keeps in <data_dir>/bundle.json.
    Bundle {
        #[command(subcommand)]
        command: BundleCommand,
    },
    /// Ask the policy decision point (Cedar), or show what policies are
    /// validated against.
    Authz {
        #[command(subcommand)]
        command: AuthzCommand,
    },
    /// Sidecar (spiffe-helper compatible): write rotated SVIDs to files,
    /// start a program and signal it on every rotation.
    Helper {
        /// Helper configuration file (TOML, spiffe-helper's keys).
        #[arg(short, long)]
        config: PathBuf,
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
        #[command(flatten)]
        socket: SocketArg,
    },
    /// Ask attestd to validate a credential.
    Validate {
        #[command(subcommand)]
        kind: ValidateKind,
    },
}

#[derive(clap::Args)]
struct SocketArg {
    /// Workload API socket (unix:///path); default $SPIFFE_ENDPOINT_SOCKET.
    #[arg(long)]
    socket: Option<String>,
}

#[derive(Subcommand)]
enum FetchKind {
    /// Fetch X.509-SVIDs and print their details.
    X509 {
        #[command(flatten)]
        socket: SocketArg,
        /// Also write svid.N.pem, svid.N.key and bundle.N.pem into DIR.
        #[arg(long, value_name = "DIR")]
        write: Option<PathBuf>,
    },
    /// Fetch JWT-SVIDs for one or more audiences.
    Jwt {
        #[command(flatten)]
        socket: SocketArg,
        /// Audiences, comma-separated or repeated.
        #[arg(long, required = true, value_delimiter = ',')]
        audience: Vec<String>,
        /// Only this identity (default: every identity the caller holds).
        #[arg(long)]
        spiffe_id: Option<String>,
    },
}

#[derive(Subcommand)]
enum ValidateKind {
    /// Validate a JWT-SVID for an audience.
    Jwt {
        #[command(flatten)]
        socket: SocketArg,
        /// The audience the token must name.
        #[arg(long)]
        audience: String,
        /// The token (JWS compact serialization).
        #[arg(long)]
        svid: String,
    },
}

#[derive(Subcommand)]
enum EntryCommand {
    /// Print every entry as attestd reads it.
    List {
        /// attestd's configuration file.
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Validate the policy (exit 1 on an error) and warn about weak entries.
    Check {
        /// attestd's configuration file.
        #[arg(short, long)]
        config: PathBuf,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Check the hash chain of audit files (oldest first, e.g. audit.jsonl.2
    /// audit.jsonl.1 audit.jsonl); exits 1 and names each broken record.
    Verify {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

#[derive(Subcommand)]
enum AuthzCommand {
    /// Ask, as the current process, whether a tool may act on a resource
    /// within a task; exits 0 on allow, 1 on deny.
    Check {
        #[command(flatten)]
        socket: SocketArg,
        /// The tool (a Cedar action).
        #[arg(long)]
        action: String,
        /// The resource.
        #[arg(long, value_name = "TYPE:ID")]
        resource: String,
        /// The tool call's arguments, a JSON object (Cedar's context.args).
        #[arg(long, value_name = "JSON")]
        context: Option<String>,
        /// The task token the decision is bound to.
        #[arg(long, env = "ATTESTD_TASK_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// Print {"decision": "allow"|"deny", "decision_id", "reasons", ...}.
        #[arg(long)]
        json: bool,
    },
    /// Print the Cedar schema the policies are validated against: the
    /// shipped part and what the entries generate.
    Schema {
        /// attestd's configuration file (the entries).
        #[arg(short, long)]
        config: PathBuf,
    },
}

#[derive(Subcommand)]
enum BundleCommand {
    /// Print the trust bundle.
    Show {
        /// attestd's configuration file (for data_dir).
        #[arg(short, long)]
        config: PathBuf,
        /// spiffe: the SPIFFE bundle JSON; pem: the X.509 authorities.
        #[arg(long, value_enum, default_value_t = BundleFormat::Spiffe)]
        format: BundleFormat,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum BundleFormat {
    Spiffe,
    Pem,
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
        Ok(code) => code,
        Err(e) => {
            eprintln!("attestd: {}", describe(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, skipping causes whose text the
/// message already includes (attestd's errors name their cause).
fn describe(error: &anyhow::Error) -> String {
    let mut text = error.to_string();
    for cause in error.chain().skip(1).map(ToString::to_string) {
        if !text.contains(&cause) {
            text = format!("{text}: {cause}");
        }
    }
    text
}

async fn dispatch(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Run { config } => {
            let config = match config {
                Some(path) => Config::load(&path)?,
                None => return Err(Config::missing().into()),
            };
            daemon::run(config).await?;
        }
        Command::Api { command } => api(command).await?,
        Command::Healthcheck { socket, timeout } => {
            let path = client::socket_path(socket.socket.as_deref())?;
            client::healthcheck(&path, timeout).await?;
            println!("healthy: {}", path.display());
        }
        Command::Entry {
            command: EntryCommand::List { config },
        } => print!("{}", policy_check::list(&Config::load(&config)?)?),
        Command::Entry {
            command: EntryCommand::Check { config },
        } => {
            for warning in policy_check::check(&Config::load(&config)?)? {
                println!("warning: {warning}");
            }
            println!("policy OK");
        }
        Command::Audit {
            command: AuditCommand::Verify { files },
        } => {
            let report = audit::verify(&files).context("reading the audit trail")?;
            print!("{report}");
            if !report.problems.is_empty() {
                anyhow::bail!("the audit trail's hash chain is broken");
            }
        }
        Command::Explain { pid, config } => {
            print!("{}", explain::explain(&Config::load(&config)?, pid)?);
        }
        Command::Bundle {
            command: BundleCommand::Show { config, format },
        } => {
            let config = Config::load(&config)?;
            let document = BundleDocument::read(&daemon::bundle_file(&config.data_dir))?;
            match format {
                BundleFormat::Spiffe => println!("{}", document.to_json()),
                BundleFormat::Pem => print!("{}", document.to_pem()),
            }
        }
        Command::Helper { config } => helper::run(helper::HelperConfig::load(&config)?).await?,
        Command::Authz { command } => return authz_command(command).await,
    }
    Ok(ExitCode::SUCCESS)
}

async fn authz_command(command: AuthzCommand) -> anyhow::Result<ExitCode> {
    match command {
        AuthzCommand::Check {
            socket,
            action,
            resource,
            context,
            token,
            json,
        } => {
            let path = client::socket_path(socket.socket.as_deref())?;
            let response = client::authorize(&path, action, resource, context.as_deref(), token).await?;
            match json {
                true => println!("{}", client::decision_json(&response)),
                false => print!("{}", client::describe_decision(&response)),
            }
            Ok(match client::allowed(&response) {
                true => ExitCode::SUCCESS,
                false => ExitCode::FAILURE,
            })
        }
        AuthzCommand::Schema { config } => {
            let entries = Policy::load(&Config::load(&config)?)?;
            print!("{}", authz::schema::text(entries.entries())?);
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn connect(socket: &SocketArg) -> anyhow::Result<client::Client> {
    Ok(client::connect(&client::socket_path(socket.socket.as_deref())?).await?)
}

async fn api(command: ApiCommand) -> anyhow::Result<()> {
    match command {
        ApiCommand::Fetch {
            kind: FetchKind::X509 { socket, write },
        } => {
            let response = client::fetch_x509(&mut connect(&socket).await?).await?;
            print!("{}", client::describe_x509(&response));
            if let Some(dir) = write {
                for path in client::write_x509(&response, &dir).context("writing PEM files")? {
                    println!("Wrote {}", path.display());
                }
            }
        }
        ApiCommand::Fetch {
            kind:
                FetchKind::Jwt {
                    socket,
                    audience,
                    spiffe_id,
                },
        } => {
            let response = client::fetch_jwt(&mut connect(&socket).await?, audience, spiffe_id).await?;
            print!("{}", client::describe_jwt(&response));
        }
        ApiCommand::Watch { socket } => client::watch_x509(&mut connect(&socket).await?).await?,
        ApiCommand::Validate {
            kind:
                ValidateKind::Jwt {
                    socket,
                    audience,
                    svid,
                },
        } => {
            let response = client::validate_jwt(&mut connect(&socket).await?, audience, svid).await?;
            print!("{}", client::describe_validation(&response));
        }
    }
    Ok(())
}
