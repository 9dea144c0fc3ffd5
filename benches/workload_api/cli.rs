//! The command line, and the plan of a run it makes: which modes, how many
//! rounds, how long each phase.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

/// What to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// A new connection per call, FetchX509SVID, its first message.
    NewConn,
    /// FetchX509SVID's first message, repeated on open connections.
    SameConn,
    /// FetchJWTSVID on open connections.
    Jwt,
    /// Many open FetchX509SVID streams: server memory per stream, and
    /// whether every stream gets the rotation push.
    Streams,
    /// Every mode above, in that order (not the soak modes below).
    All,
    /// Streams held through many rotations: every push on time, memory
    /// and descriptors flat; then stalled clients beside them.
    Soak,
    /// Mixed load for `--duration`: fetches, JWTs, streams opening and
    /// closing, policy edits, beside streams held throughout.
    Mixed,
}

impl Mode {
    /// The modes `self` stands for.
    pub fn expand(self) -> Vec<Mode> {
        match self {
            Self::All => vec![Self::NewConn, Self::SameConn, Self::Jwt, Self::Streams],
            mode => vec![mode],
        }
    }

    /// The name given on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Self::NewConn => "new-conn",
            Self::SameConn => "same-conn",
            Self::Jwt => "jwt",
            Self::Streams => "streams",
            Self::All => "all",
            Self::Soak => "soak",
            Self::Mixed => "mixed",
        }
    }
}

/// The Workload API benchmark: attestd beside the bare gRPC floor (see
/// benches/README.md).
#[derive(Parser, Debug)]
// A wrapper script's defaults (benches/spire.sh) may be given again: the
// last one counts.
#[command(args_override_self = true)]
pub struct Args {
    /// Which measurement to run.
    #[arg(long, value_enum, default_value_t = Mode::All)]
    pub mode: Mode,
    /// Rounds per target (alternating between targets).
    #[arg(long, default_value_t = 9)]
    pub rounds: usize,
    /// Calls per round in the latency phase (one client, one call at a time).
    #[arg(long, default_value_t = 400)]
    pub calls: usize,
    /// Seconds per round in the throughput phase.
    #[arg(long, default_value_t = 1.0)]
    pub seconds: f64,
    /// Concurrent clients in the throughput phase.
    #[arg(long, default_value_t = 16)]
    pub clients: usize,
    /// same-conn and jwt: the clients share one connection (as many
    /// concurrent HTTP/2 streams) instead of holding one connection each.
    #[arg(long)]
    pub one_connection: bool,
    /// streams: how many FetchX509SVID streams to hold open.
    #[arg(long, default_value_t = 5000)]
    pub streams: usize,
    /// streams: streams per connection (at most attestd's default
    /// max_concurrent_streams, 16). Above 1, fewer descriptors hold as many
    /// streams: attestd needs two per connection.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=16))]
    pub streams_per_connection: u16,
    /// streams, soak, mixed: the X.509-SVID lifetime of the entry attestd
    /// serves (at least 5s; default 5s for streams, 20s for soak, 30s for
    /// mixed, 10s for a short soak or mixed run); attestd renews at about
    /// half of it and pushes to every stream.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub x509_ttl: Option<Duration>,
    /// soak: rotations every stream must get, all of them reading.
    #[arg(long, default_value_t = 10)]
    pub rotations: usize,
    /// soak: streams held by clients that stop reading (16 per connection),
    /// opened after the rotations above; 0 skips that phase.
    #[arg(long, default_value_t = 1024)]
    pub stalled: usize,
    /// soak: rotations measured with the stalled clients open (enough for
    /// their socket buffers to fill: about 1 KiB per message, 16 streams
    /// per connection).
    #[arg(long, default_value_t = 20)]
    pub stalled_rotations: usize,
    /// mixed: how long the load runs.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// streams: how long, once every stream is open, each may take to get a
    /// message after its first (default: the TTL plus 10s). Set it for an
    /// external server whose SVIDs live longer.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub push_deadline: Option<Duration>,
    /// A short run (3 rounds, 60 calls, 0.2 s, 500 streams; soak: 3
    /// rotations, then 2 beside 64 stalled streams; mixed: 90 s; SVIDs
    /// living 10s): checks the harness
    /// works, for the test command; its figures are noisy, and the soak
    /// modes then fail on missed or late pushes, descriptor growth or a
    /// crash, never on memory.
    #[arg(long)]
    pub quick: bool,
    /// Another attestd binary to measure beside this checkout's, as
    /// NAME=PATH (both policies: NAME and NAME-exe).
    #[arg(long, value_parser = parse_baseline)]
    pub baseline: Vec<(String, PathBuf)>,
    /// A Workload API server the harness does not start (SPIRE agent, say),
    /// as NAME=SOCKET or NAME=SOCKET:PID; with a pid its memory and CPU
    /// are read too.
    #[arg(long, value_parser = parse_external)]
    pub external: Vec<External>,
    /// Also measure the floor with attestd's HTTP/2 settings (windows,
    /// stream and header limits), served from a runtime worker as attestd
    /// is, as `floor-tuned`. In the floor's own
    /// process (internal): serve with those settings.
    #[arg(long)]
    pub floor_tuned: bool,
    /// Internal: serve the floor on SOCKET with the responses in DIR.
    #[arg(long, num_args = 2, value_names = ["SOCKET", "DIR"], hide = true)]
    pub floor_server: Vec<PathBuf>,
    /// Passed by `cargo bench`. Without it the binary was started by
    /// `cargo test --all-targets`, which only checks that the harness runs
    /// (one tiny round of each mode, in a debug build).
    #[arg(long, hide = true)]
    pub bench: bool,
}

/// A server given with `--external`.
#[derive(Debug, Clone)]
pub struct External {
    pub name: String,
    pub socket: PathBuf,
    pub pid: Option<i32>,
}

fn parse_baseline(text: &str) -> Result<(String, PathBuf), String> {
    let (name, path) = text.split_once('=').ok_or("expected NAME=PATH")?;
    Ok((name.to_owned(), PathBuf::from(path)))
}

fn parse_external(text: &str) -> Result<External, String> {
    let (name, rest) = text.split_once('=').ok_or("expected NAME=SOCKET[:PID]")?;
    // A socket path may itself contain ':'; a pid is the digits after the
    // last one.
    let (socket, pid) = match rest.rsplit_once(':') {
        Some((socket, pid)) if !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()) => {
            let pid = pid.parse().map_err(|e| format!("pid {pid:?}: {e}"))?;
            (socket, Some(pid))
        }
        _ => (rest, None),
    };
    let socket = socket.strip_prefix("unix://").unwrap_or(socket);
    if !socket.starts_with('/') {
        return Err(format!("socket {socket:?}: expected an absolute path"));
    }
    Ok(External {
        name: name.to_owned(),
        socket: PathBuf::from(socket),
        pid,
    })
}

/// What one run does.
#[derive(Debug, Clone)]
pub struct Plan {
    pub modes: Vec<Mode>,
    pub rounds: usize,
    /// Calls per latency phase.
    pub calls: usize,
    /// Length of each throughput phase.
    pub window: Duration,
    pub clients: usize,
    pub one_connection: bool,
    pub streams: usize,
    pub streams_per_connection: usize,
    pub x509_ttl: Duration,
    pub push_deadline: Duration,
    /// soak: rotations with every client reading, then with stalled ones.
    pub rotations: usize,
    pub stalled: usize,
    pub stalled_rotations: usize,
    /// mixed: how long the load runs.
    pub duration: Duration,
    /// A short soak (`--quick` or under `cargo test`): memory drift is
    /// reported, never a failure.
    pub short: bool,
}

impl Plan {
    /// The plan `args` ask for: as given under `cargo bench`, shortened by
    /// `--quick`, and tiny under `cargo test`.
    pub fn new(args: &Args) -> Self {
        let x509_ttl = args
            .x509_ttl
            .unwrap_or(match (args.mode, args.quick || !args.bench) {
                (Mode::Soak | Mode::Mixed, true) => Duration::from_secs(10),
                (Mode::Soak, false) => Duration::from_secs(20),
                (Mode::Mixed, false) => Duration::from_secs(30),
                _ => Duration::from_secs(5),
            });
        let full = Self {
            modes: args.mode.expand(),
            rounds: args.rounds.max(1),
            calls: args.calls.max(1),
            window: Duration::from_secs_f64(args.seconds.max(0.01)),
            clients: args.clients.max(1),
            one_connection: args.one_connection,
            streams: args.streams.max(1),
            streams_per_connection: usize::from(args.streams_per_connection),
            x509_ttl,
            push_deadline: args.push_deadline.unwrap_or(x509_ttl + Duration::from_secs(10)),
            rotations: args.rotations.max(1),
            stalled: args.stalled,
            stalled_rotations: args.stalled_rotations.max(1),
            duration: args.duration,
            short: !args.bench || args.quick,
        };
        match (args.bench, args.quick) {
            (false, _) => Self {
                rounds: 1,
                calls: 5,
                window: Duration::from_millis(50),
                clients: full.clients.min(4),
                streams: 20,
                rotations: 2,
                stalled: full.stalled.min(16),
                stalled_rotations: 1,
                duration: full.duration.min(Duration::from_secs(20)),
                ..full
            },
            (true, true) => Self {
                rounds: 3,
                calls: 60,
                window: Duration::from_millis(200),
                streams: 500,
                rotations: full.rotations.min(3),
                stalled: full.stalled.min(64),
                stalled_rotations: full.stalled_rotations.min(2),
                duration: full.duration.min(Duration::from_secs(90)),
                ..full
            },
            (true, false) => full,
        }
    }

    /// Connections the streams mode opens.
    pub fn stream_connections(&self) -> usize {
        self.streams.div_ceil(self.streams_per_connection)
    }
}
