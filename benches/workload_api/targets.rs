//! The servers under measurement: started fresh for each mode (the floor,
//! attestd with each policy, older builds) or given (`--external`), the
//! servers pinned to one CPU and the load generator to the other.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use prost::Message as _;
use tokio::runtime::Runtime;

use attestd::client;

use crate::cli::{Args, External};
use crate::floor;

/// The CPU the servers run on; the load generator takes the other one.
const SERVER_CPU: usize = 0;
pub const CLIENT_CPU: usize = 1;

/// The audience every FetchJWTSVID asks for.
pub const JWT_AUDIENCE: &str = "spiffe://bench.example/relying-party";

/// Connections attestd is configured to allow beyond the streams' (the
/// warm-up and the calls that read its memory), and how many of those are
/// its reserve for other uids.
const SPARE_CONNECTIONS: usize = 256;
const SPARE_RESERVE: usize = 64;
/// Descriptors a server needs besides its connections (attestd keeps 64
/// plus 8 per concurrent attestation; this leaves room for both).
const DESCRIPTORS_BESIDES: u64 = 256;

/// What kind of server a target is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The bare floor: fixed answers, never rotates.
    Floor,
    /// An attestd this harness started.
    Attestd,
    /// A server given with `--external`.
    External,
}

/// One server under measurement.
pub struct Target {
    pub name: String,
    pub socket: PathBuf,
    /// Known for the servers started here and for externals given with one:
    /// their memory and CPU time are read from `/proc`.
    pub pid: Option<i32>,
    pub kind: Kind,
    process: Option<Child>,
}

impl Drop for Target {
    fn drop(&mut self) {
        if let Some(process) = &mut self.process {
            let _ = process.kill();
            let _ = process.wait();
        }
    }
}

/// How the attestd instances are configured.
#[derive(Debug, Clone, Copy)]
pub enum Setup {
    /// Default limits; each build with a uid policy and an executable-bound
    /// one.
    Requests,
    /// Connection caps raised to hold `connections`, the entry's SVIDs
    /// living `x509_ttl`, the uid policy only: the executable-bound policy
    /// scans every process's descriptors for each attestation, and the load
    /// generator's own thousands of sockets would make that scan the
    /// figure.
    Streams { connections: usize, x509_ttl: Duration },
    /// As `Streams`, plus an `entries_dir` (`entries.d` beside the config)
    /// whose files the soak modes edit while attestd runs.
    Soak { connections: usize, x509_ttl: Duration },
}

/// The entries directory of an attestd started with [`Setup::Soak`] in
/// `dir` (by [`start_alone`]).
pub fn entries_dir(dir: &Path) -> PathBuf {
    dir.join("attestd").join("entries.d")
}

/// This checkout's attestd alone, with the uid policy: the soak modes
/// measure it over time, not beside a floor.
pub fn start_alone(dir: &Path, setup: Setup) -> anyhow::Result<Target> {
    let uid = nix::unistd::geteuid().as_raw();
    let binary = PathBuf::from(env!("CARGO_BIN_EXE_attestd"));
    if matches!(setup, Setup::Soak { .. }) {
        std::fs::create_dir_all(entries_dir(dir))?;
    }
    start_attestd(
        dir,
        "attestd",
        &binary,
        &format!("selectors = [\"unix:uid:{uid}\"]"),
        setup,
    )
}

/// Starts every target for one mode: attestd (each build, each policy),
/// then the floor serving attestd's own responses, then the externals.
/// The floor comes first: ratios are to it.
pub fn start(dir: &Path, args: &Args, setup: Setup, runtime: &Runtime) -> anyhow::Result<Vec<Target>> {
    let builds = std::iter::once(("attestd".to_owned(), PathBuf::from(env!("CARGO_BIN_EXE_attestd"))))
        .chain(args.baseline.iter().cloned());
    let uid = nix::unistd::geteuid().as_raw();
    let uid_policy = format!("selectors = [\"unix:uid:{uid}\"]");
    let exe_policy = format!(
        "selectors = [\"unix:uid:{uid}\", \"unix:sha256:{}\"]",
        sha256_of(&std::env::current_exe()?)?
    );
    let mut attestds = Vec::new();
    for (name, binary) in builds {
        attestds.push(start_attestd(dir, &name, &binary, &uid_policy, setup)?);
        if matches!(setup, Setup::Requests) {
            attestds.push(start_attestd(
                dir,
                &format!("{name}-exe"),
                &binary,
                &exe_policy,
                setup,
            )?);
        }
    }
    let responses = dir.join("floor");
    std::fs::create_dir_all(&responses)?;
    runtime.block_on(save_responses(&attestds[0].socket, &responses))?;
    let mut targets = vec![start_floor(dir, "floor", &responses, false)?];
    if args.floor_tuned {
        targets.push(start_floor(dir, "floor-tuned", &responses, true)?);
    }
    targets.extend(attestds);
    targets.extend(args.external.iter().map(external));
    Ok(targets)
}

fn external(given: &External) -> Target {
    Target {
        name: given.name.clone(),
        socket: given.socket.clone(),
        pid: given.pid,
        kind: Kind::External,
        process: None,
    }
}

/// Saves one real answer of each kind from attestd, for the floor to serve.
async fn save_responses(socket: &Path, dir: &Path) -> anyhow::Result<()> {
    let mut client = client::connect(socket).await?;
    let x509 = client::fetch_x509(&mut client).await?;
    let jwt = client::fetch_jwt(&mut client, vec![JWT_AUDIENCE.to_owned()], None).await?;
    std::fs::write(dir.join(floor::X509_RESPONSE), x509.encode_to_vec())?;
    std::fs::write(dir.join(floor::JWT_RESPONSE), jwt.encode_to_vec())?;
    Ok(())
}

fn start_floor(dir: &Path, name: &str, responses: &Path, tuned: bool) -> anyhow::Result<Target> {
    let socket = dir.join(format!("{name}.sock"));
    let mut command = Command::new(std::env::current_exe()?);
    command.arg("--floor-server").arg(&socket).arg(responses);
    if tuned {
        command.arg("--floor-tuned");
    }
    spawn(name, Kind::Floor, socket, pinned(&command), None)
}

fn start_attestd(
    dir: &Path,
    name: &str,
    binary: &Path,
    selectors: &str,
    setup: Setup,
) -> anyhow::Result<Target> {
    let home = dir.join(name);
    std::fs::create_dir_all(&home)?;
    let socket = home.join("api.sock");
    let config = home.join("attestd.toml");
    std::fs::write(&config, attestd_config(&home, &socket, selectors, setup))?;
    let log = home.join("attestd.log");
    let mut command = Command::new(binary);
    command.args(["run", "-c"]).arg(&config).env("RUST_LOG", "warn");
    let mut command = pinned(&command);
    command.stderr(std::fs::File::create(&log)?);
    spawn(name, Kind::Attestd, socket, command, Some(&log))
}

fn attestd_config(home: &Path, socket: &Path, selectors: &str, setup: Setup) -> String {
    let (limits, ttl) = match setup {
        Setup::Requests => (String::new(), String::new()),
        Setup::Streams {
            connections,
            x509_ttl,
        }
        | Setup::Soak {
            connections,
            x509_ttl,
        } => (
            format!(
                "[limits]\nmax_connections = {max}\nmax_connections_per_uid = {max}\n\
                 connection_reserve = {SPARE_RESERVE}\n",
                max = connections + SPARE_CONNECTIONS,
            ),
            format!("x509_ttl = \"{}\"\n", humantime::format_duration(x509_ttl)),
        ),
    };
    let entries = match setup {
        Setup::Soak { .. } => format!("entries_dir = \"{}\"\n", home.join("entries.d").display()),
        _ => String::new(),
    };
    format!(
        r#"trust_domain = "bench.example"
socket_path = "{socket}"
data_dir = "{data}"
{entries}
{limits}
[[entry]]
spiffe_id = "spiffe://bench.example/agent"
{selectors}
owner = "bench@example.org"
{ttl}"#,
        socket = socket.display(),
        data = home.join("data").display(),
    )
}

/// Starts `command` and waits for it to listen on `socket`.
fn spawn(
    name: &str,
    kind: Kind,
    socket: PathBuf,
    mut command: Command,
    log: Option<&Path>,
) -> anyhow::Result<Target> {
    let process = command.spawn().with_context(|| format!("starting {name}"))?;
    let mut target = Target {
        name: name.to_owned(),
        socket,
        pid: Some(process.id() as i32),
        kind,
        process: Some(process),
    };
    wait_until_listening(&mut target).with_context(|| match log {
        Some(log) => format!("{name} (its log: {})", log.display()),
        None => name.to_owned(),
    })?;
    Ok(target)
}

fn wait_until_listening(target: &mut Target) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if std::os::unix::net::UnixStream::connect(&target.socket).is_ok() {
            return Ok(());
        }
        if let Some(process) = &mut target.process
            && let Some(status) = process.try_wait()?
        {
            anyhow::bail!("exited ({status}) before listening");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    anyhow::bail!("did not listen on {} within 20 s", target.socket.display())
}

/// `command`, run on the server CPU by taskset (which execs it: the pid is
/// the server's).
fn pinned(command: &Command) -> Command {
    let mut taskset = Command::new("taskset");
    taskset
        .args(["-c", &SERVER_CPU.to_string()])
        .arg(command.get_program())
        .args(command.get_args())
        .envs(command.get_envs().filter_map(|(k, v)| Some((k, v?))))
        .stdout(Stdio::null());
    taskset
}

/// Pins this process (the load generator) to `cpu`.
pub fn pin_to(cpu: usize) {
    let mut set = nix::sched::CpuSet::new();
    if set.set(cpu).is_ok()
        && let Err(error) = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)
    {
        eprintln!("warning: cannot pin the load generator to CPU {cpu}: {error}");
    }
}

/// The descriptor limit a streams run on `connections` needs in every
/// process: attestd holds two per connection (its socket and a pidfd) and
/// keeps 64 and more for the rest; the load generator one per connection.
pub fn descriptors_for(connections: usize) -> u64 {
    2 * (connections + SPARE_CONNECTIONS) as u64 + DESCRIPTORS_BESIDES
}

/// The connections a descriptor limit of `limit` allows.
pub fn connections_within(limit: u64) -> usize {
    (limit.saturating_sub(DESCRIPTORS_BESIDES) / 2).saturating_sub(SPARE_CONNECTIONS as u64) as usize
}

/// Raises this process's descriptor limit (which the servers it starts
/// inherit) to `wanted` if it may, and returns the soft limit in effect.
/// Raising the hard limit needs CAP_SYS_RESOURCE (root); without it the
/// soft limit goes up to the hard one.
pub fn raise_descriptor_limit(wanted: u64) -> anyhow::Result<u64> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft >= wanted {
        return Ok(soft);
    }
    if setrlimit(Resource::RLIMIT_NOFILE, wanted, wanted.max(hard)).is_ok() {
        return Ok(wanted);
    }
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    Ok(hard)
}

fn sha256_of(path: &Path) -> anyhow::Result<String> {
    use sha2::Digest as _;
    Ok(hex::encode(sha2::Sha256::digest(std::fs::read(path)?)))
}
