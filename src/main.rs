//! The `attestd` command line: parses arguments and calls into the library.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{CommandFactory, Parser, Subcommand, ValueEnum};

use attestd::audit::trace::{self, Select, TraceQuery};
use attestd::authority::BundleDocument;
use attestd::cli_docs::{self, Shell};
use attestd::registry::Policy;
use attestd::{audit, authz, client, config::Config, daemon, explain, helper, oidc, policy_check, telemetry};

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
        /// Fleet mode: the join token to attest this node with (instead of
        /// `[server] join_token`); needed only until the node is attested.
        #[arg(long, env = "ATTESTD_JOIN_TOKEN", hide_env_values = true)]
        join_token: Option<String>,
    },
    /// Call the Workload API as the current process.
    Api {
        #[command(subcommand)]
        command: ApiCommand,
    },
    /// Start, end and list tasks (task-bound credentials) as the calling
    /// process; agents usually do this through a client library.
    Task {
        #[command(subcommand)]
        command: TaskCommand,
    },
    /// Exit 0 if the Workload API answers, 1 if not (for scripts and probes).
    Healthcheck {
        #[command(flatten)]
        socket: SocketArg,
        /// How long to wait for an answer.
        #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
        #[command(flatten)]
        output: OutputArg,
    },
    /// Show a process's selectors, the entries it matches, and why others don't.
    Explain {
        /// The process to explain.
        #[arg(long)]
        pid: i32,
        /// attestd's configuration file (the policy).
        #[arg(short, long)]
        config: PathBuf,
        #[command(flatten)]
        output: OutputArg,
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
    /// spiffe-helper's flags work as spelled there: `-config helper.conf`,
    /// `-daemon-mode=false`.
    Helper {
        /// Helper configuration: spiffe-helper's `helper.conf` (HCL) as it
        /// is, or the same keys in TOML.
        #[arg(short, long, default_value = "helper.conf")]
        config: PathBuf,
        /// Overrides the file's daemon_mode.
        #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
        daemon_mode: Option<bool>,
    },
    /// Ask the running attestd to reload its policy (sends it SIGHUP; the
    /// systemd unit's ExecReload, so no /bin/kill is needed).
    Reload {
        /// The daemon's process id (systemd: $MAINPID).
        #[arg(long)]
        pid: u32,
    },
    /// Write the man pages or a shell's completions (for packaging).
    #[command(hide = true)]
    Generate {
        #[command(subcommand)]
        what: GenerateKind,
    },
}

#[derive(Subcommand)]
enum GenerateKind {
    /// attestd.1 and a page per subcommand, into DIR.
    Man {
        /// Where to write the pages.
        dir: PathBuf,
    },
    /// A shell's completion script, on standard output.
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: Shell,
    },
}

#[derive(Subcommand)]
enum ApiCommand {
    /// Fetch once.
    Fetch {
        #[command(subcommand)]
        kind: FetchKind,
    },
    /// Stream X.509-SVID updates until interrupted (JSON: one line each).
    Watch {
        #[command(flatten)]
        socket: SocketArg,
        #[command(flatten)]
        output: OutputArg,
    },
    /// Ask attestd to validate a credential.
    Validate {
        #[command(subcommand)]
        kind: ValidateKind,
    },
}

#[derive(Subcommand)]
enum TaskCommand {
    /// Start a task for the caller's identity; prints its id and token.
    Start {
        #[command(flatten)]
        socket: SocketArg,
        /// What the task is for, in words.
        #[arg(long)]
        purpose: String,
        /// Tools the task will use (repeated, or several after one --tool).
        #[arg(long = "tool", value_name = "NAME", required = true, num_args = 1.., value_delimiter = ',')]
        tools: Vec<String>,
        /// A resource (type:id) the task will act on (repeatable; none: any
        /// the policy allows).
        #[arg(long = "resource", value_name = "R")]
        resources: Vec<String>,
        /// An audience of the token (repeatable; none: the caller's own
        /// SPIFFE ID).
        #[arg(long = "audience", value_name = "A")]
        audience: Vec<String>,
        /// Lifetime (default: the entry's tasks.max_ttl).
        #[arg(long, value_parser = humantime::parse_duration)]
        ttl: Option<std::time::Duration>,
        /// The parent task's token: start a sub-task of it.
        #[arg(long, value_name = "TOKEN")]
        parent_token: Option<String>,
        /// Which of the caller's identities starts the task.
        #[arg(long)]
        spiffe_id: Option<String>,
        /// JSON: {"task_id", "token", "expires_at"}.
        #[command(flatten)]
        output: OutputArg,
    },
    /// End a task and every task below it.
    End {
        #[command(flatten)]
        socket: SocketArg,
        /// The task's id.
        id: String,
    },
    /// List the caller's tasks and those it delegated (root: all).
    List {
        #[command(flatten)]
        socket: SocketArg,
        #[command(flatten)]
        output: OutputArg,
    },
}

/// `--output json` (or SPIRE's `-output json`, or `--json`): the stable
/// JSON shapes of the README's "Scriptable output".
#[derive(clap::Args)]
struct OutputArg {
    /// text for people, json for scripts.
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    output: OutputFormat,
    /// The same as --output json.
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, ValueEnum)]
enum OutputFormat {
    Text,
    Json,
}

impl OutputArg {
    fn json(&self) -> bool {
        self.json || matches!(self.output, OutputFormat::Json)
    }
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
        #[command(flatten)]
        output: OutputArg,
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
        /// Print only the tokens, one per line, for scripts:
        /// `T=$(attestd api fetch jwt --audience A --spiffe-id ID --raw)`.
        #[arg(long, conflicts_with_all = ["output", "json"])]
        raw: bool,
        #[command(flatten)]
        output: OutputArg,
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
        #[command(flatten)]
        output: OutputArg,
    },
}

#[derive(Subcommand)]
enum EntryCommand {
    /// Print every entry as attestd reads it.
    List {
        /// attestd's configuration file.
        #[arg(short, long)]
        config: PathBuf,
        /// Instead, list the entries whose owner expires within this window
        /// (e.g. 30d) or has expired; exits 1 if there are any.
        #[arg(long, value_name = "WINDOW", value_parser = humantime::parse_duration)]
        expiring: Option<std::time::Duration>,
        #[command(flatten)]
        output: OutputArg,
    },
    /// Validate the policy (exit 1 on an error) and warn about weak entries.
    Check {
        /// attestd's configuration file.
        #[arg(short, long)]
        config: PathBuf,
        #[command(flatten)]
        output: OutputArg,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Check the hash chain of audit files (oldest first, e.g. audit.jsonl.2
    /// audit.jsonl.1 audit.jsonl); exits 1 and names each broken record.
    Verify {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        #[command(flatten)]
        output: OutputArg,
    },
    /// Rebuild agents' tasks from audit files (oldest first) as a tree:
    /// process, entry and owner, intent, tokens, every decision, sub-tasks.
    /// Exits 1 if no task matches.
    #[command(group(clap::ArgGroup::new("select").required(true).args(["task", "spiffe_id"])))]
    Trace {
        /// This task and everything under it (the tasks above it summarised).
        #[arg(long, value_name = "ID")]
        task: Option<String>,
        /// Every task tree of this identity.
        #[arg(long, value_name = "ID")]
        spiffe_id: Option<String>,
        /// Only tasks active since TIME (RFC 3339, or a duration ago: 2h, 1d).
        #[arg(long, value_name = "TIME")]
        since: Option<String>,
        /// JSON: one document (stable field names, for a SIEM).
        #[command(flatten)]
        output: OutputArg,
        /// Audit files, oldest first (audit.jsonl.2 audit.jsonl.1 audit.jsonl).
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
        /// JSON: {"decision": "allow"|"deny", "decision_id", "reasons", ...}.
        #[command(flatten)]
        output: OutputArg,
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
        /// spiffe: the SPIFFE bundle JSON; pem: the X.509 authorities;
        /// jwks: the JWT keys as the OIDC listener serves them (for static
        /// hosting at <jwt_issuer>/keys); openid-configuration: the OIDC
        /// discovery document (for <jwt_issuer>/.well-known/openid-configuration).
        #[arg(long, value_enum, default_value_t = BundleFormat::Spiffe)]
        format: BundleFormat,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum BundleFormat {
    Spiffe,
    Pem,
    Jwks,
    OpenidConfiguration,
}

fn main() -> ExitCode {
    let cli = Cli::parse_from(attestd::go_flags::go_style_flags(std::env::args_os()));
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
            eprintln!("attestd: {}", client::with_causes(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

async fn dispatch(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Run { config, join_token } => {
            let mut config = match config {
                Some(path) => Config::load(&path)?,
                None => return Err(Config::missing().into()),
            };
            if let Some(token) = join_token {
                config.set_join_token(token)?;
            }
            daemon::run(config).await?;
        }
        Command::Api { command } => api(command).await?,
        Command::Task { command } => task(command).await?,
        Command::Healthcheck {
            socket,
            timeout,
            output,
        } => {
            let path = client::socket_path(socket.socket.as_deref())?;
            client::healthcheck(&path, timeout).await?;
            match output.json() {
                true => println!("{}", serde_json::json!({ "healthy": true, "socket": path })),
                false => println!("healthy: {}", path.display()),
            }
        }
        Command::Entry {
            command:
                EntryCommand::List {
                    config,
                    expiring: None,
                    output,
                },
        } => {
            let config = Config::load(&config)?;
            let (policy, not_served) = match &config.server {
                Some(server) => attestd::fleet::list(&config, server).await?,
                None => (Policy::load(&config)?, None),
            };
            match output.json() {
                true => println!("{}", policy_check::list_json(&policy, not_served.as_deref())),
                false => {
                    print!("{}", policy_check::list_policy(&policy));
                    if let Some(line) = not_served {
                        println!("\n{line}");
                    }
                }
            }
        }
        Command::Entry {
            command:
                EntryCommand::List {
                    config,
                    expiring: Some(window),
                    output,
                },
        } => {
            let expiring = policy_check::expiring(&Config::load(&config)?, window)?;
            match output.json() {
                true => println!("{}", expiring.to_json()),
                false => print!("{expiring}"),
            }
            if !expiring.due.is_empty() {
                anyhow::bail!(
                    "{} entries need their owner renewed or retired",
                    expiring.due.len()
                );
            }
        }
        Command::Entry {
            command: EntryCommand::Check { config, output },
        } => {
            let config = Config::load(&config)?;
            let warnings = match &config.server {
                Some(server) => attestd::fleet::check(&config, server).await?,
                None => policy_check::check(&config)?,
            };
            if output.json() {
                println!("{}", serde_json::json!({ "ok": true, "warnings": warnings }));
            } else {
                for warning in warnings {
                    println!("warning: {warning}");
                }
                println!("policy OK");
            }
        }
        Command::Audit {
            command: AuditCommand::Verify { files, output },
        } => {
            let report = audit::verify(&files).context("reading the audit trail")?;
            match output.json() {
                true => println!("{}", report.to_json()),
                false => print!("{report}"),
            }
            if !report.problems.is_empty() {
                anyhow::bail!("the audit trail's hash chain is broken");
            }
        }
        Command::Audit {
            command:
                AuditCommand::Trace {
                    task,
                    spiffe_id,
                    since,
                    output,
                    files,
                },
        } => {
            let select = task
                .map(Select::Task)
                .or(spiffe_id.map(Select::SpiffeId))
                .context("--task or --spiffe-id is required")?;
            let since = since
                .map(|since| trace::parse_since(&since, std::time::SystemTime::now()))
                .transpose()?;
            let trace = trace::trace(&files, &TraceQuery { select, since });
            for problem in &trace.problems {
                eprintln!("warning: {problem}");
            }
            match output.json() {
                true => println!("{}", serde_json::to_string(&trace)?),
                false => print!("{trace}"),
            }
            if trace.trees.is_empty() {
                anyhow::bail!("no task matched");
            }
        }
        Command::Explain { pid, config, output } => {
            let config = Config::load(&config)?;
            let explanation = match &config.server {
                Some(server) => {
                    let policy = attestd::fleet::server_policy(&config, server).await?;
                    explain::explain_with(&config, &policy, pid)?
                }
                None => explain::explain(&config, pid)?,
            };
            match output.json() {
                true => println!("{}", explanation.to_json()),
                false => print!("{explanation}"),
            }
        }
        Command::Bundle {
            command: BundleCommand::Show { config, format },
        } => {
            let config = Config::load(&config)?;
            let bundle = || BundleDocument::read(&daemon::bundle_file(&config.data_dir));
            match format {
                BundleFormat::Spiffe => println!("{}", bundle()?.to_json()),
                BundleFormat::Pem => print!("{}", bundle()?.to_pem()),
                BundleFormat::Jwks => print!("{}", oidc::jwks_document(&bundle()?.jwt_authorities())),
                BundleFormat::OpenidConfiguration => print!("{}", oidc::static_discovery_document(&config)?),
            }
        }
        Command::Helper { config, daemon_mode } => {
            helper::run(helper::HelperConfig::load(&config, daemon_mode)?).await?
        }
        Command::Reload { pid } => daemon::request_reload(pid)?,
        Command::Generate {
            what: GenerateKind::Man { dir },
        } => {
            for page in cli_docs::write_man_pages(Cli::command(), &dir)? {
                println!("{}", page.display());
            }
        }
        Command::Generate {
            what: GenerateKind::Completions { shell },
        } => std::io::stdout()
            .write_all(&cli_docs::completions(Cli::command(), shell))
            .context("writing the completions")?,
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
            output,
        } => {
            let path = client::socket_path(socket.socket.as_deref())?;
            let response = client::authorize(&path, action, resource, context.as_deref(), token).await?;
            match output.json() {
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
            kind:
                FetchKind::X509 {
                    socket,
                    write,
                    output,
                },
        } => {
            let response = client::fetch_x509(&mut connect(&socket).await?).await?;
            let written = match write {
                Some(dir) => client::write_x509(&response, &dir).context("writing PEM files")?,
                None => Vec::new(),
            };
            if output.json() {
                let mut json = client::x509_json(&response);
                json["written"] = serde_json::json!(written);
                println!("{json}");
            } else {
                print!("{}", client::describe_x509(&response));
                for path in written {
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
                    raw,
                    output,
                },
        } => {
            let response = client::fetch_jwt(&mut connect(&socket).await?, audience, spiffe_id).await?;
            match (raw, output.json()) {
                (true, _) => print!("{}", client::raw_jwts(&response)),
                (false, true) => println!("{}", client::jwt_json(&response)),
                (false, false) => print!("{}", client::describe_jwt(&response)),
            }
        }
        ApiCommand::Watch { socket, output } => {
            client::watch_x509(&mut connect(&socket).await?, output.json()).await?
        }
        ApiCommand::Validate {
            kind:
                ValidateKind::Jwt {
                    socket,
                    audience,
                    svid,
                    output,
                },
        } => {
            let response = client::validate_jwt(&mut connect(&socket).await?, audience, svid).await?;
            match output.json() {
                true => println!("{}", client::validation_json(&response)),
                false => print!("{}", client::describe_validation(&response)),
            }
        }
    }
    Ok(())
}

async fn connect_tasks(socket: &SocketArg) -> anyhow::Result<client::tasks::Client> {
    Ok(client::tasks::connect(&client::socket_path(socket.socket.as_deref())?).await?)
}

async fn task(command: TaskCommand) -> anyhow::Result<()> {
    match command {
        TaskCommand::Start {
            socket,
            purpose,
            tools,
            resources,
            audience,
            ttl,
            parent_token,
            spiffe_id,
            output,
        } => {
            let args = client::tasks::StartArgs {
                purpose,
                tools,
                resources,
                audience,
                ttl,
                parent_token,
                spiffe_id,
            };
            let started = client::tasks::start(&mut connect_tasks(&socket).await?, args).await?;
            match output.json() {
                true => println!("{}", client::tasks::started_json(&started)),
                false => print!("{}", client::tasks::describe_started(&started)),
            }
        }
        TaskCommand::End { socket, id } => {
            let ended = client::tasks::end(&mut connect_tasks(&socket).await?, id).await?;
            print!("{}", client::tasks::describe_ended(&ended));
        }
        TaskCommand::List { socket, output } => {
            let list = client::tasks::list(&mut connect_tasks(&socket).await?).await?;
            match output.json() {
                true => println!("{}", client::tasks::list_json(&list)),
                false => print!("{}", client::tasks::describe_list(&list)),
            }
        }
    }
    Ok(())
}
