//! The Workload API benchmark: what a caller pays for one identity, measured
//! against the floor of the same gRPC stack with nothing behind it.
//!
//! Every round starts a fresh connection per call, sends `FetchX509SVID`
//! and waits for the first message, as an agent does when it starts. The
//! targets are measured in alternating rounds within one run (so a busy
//! machine slows them all alike) and each is reported as the median of its
//! rounds' p50s, and as a ratio to the floor measured in the same run:
//! - `floor`: a bare tonic server on the same kind of socket, answering
//!   with a fixed copy of attestd's own response (no attestation, no
//!   policy, no audit);
//! - `attestd`: this checkout's release build, with a policy of uid
//!   entries;
//! - `attestd-exe`: the same binary with an entry bound to the caller's
//!   executable (`unix:sha256`, so connection binding is on too);
//! - any `--baseline NAME=PATH` binaries (an older build, to show what a
//!   change costs; `benches/compare.sh REV` builds one from a git revision),
//!   with both policies (`NAME` and `NAME-exe`).
//!
//! Servers are pinned to CPU 0 and the load generator to CPU 1.
//!
//! ```text
//! cargo bench --bench workload_api                       # full: 9 rounds of 400 calls
//! cargo bench --bench workload_api -- --quick            # what the test command runs
//! cargo bench --bench workload_api -- --baseline main=/path/to/attestd
//! ```

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use futures::StreamExt;
use prost::Message as _;
use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::{Request, Response, Status};

use attestd::client;
use attestd::proto::spiffe_workload_api_server::{SpiffeWorkloadApi, SpiffeWorkloadApiServer};
use attestd::proto::*;

/// The CPU the servers run on; the load generator takes the other one.
const SERVER_CPU: usize = 0;
const CLIENT_CPU: usize = 1;

#[derive(Parser, Debug)]
struct Args {
    /// Rounds per target (alternating between targets).
    #[arg(long, default_value_t = 9)]
    rounds: usize,
    /// Calls per round.
    #[arg(long, default_value_t = 400)]
    calls: usize,
    /// A short run (3 rounds of 60 calls): checks the harness works, for the
    /// test command; its figures are noisy.
    #[arg(long)]
    quick: bool,
    /// Another attestd binary to measure beside this checkout's, as NAME=PATH.
    #[arg(long, value_parser = parse_baseline)]
    baseline: Vec<(String, PathBuf)>,
    /// Internal: serve the floor on SOCKET with the response in FILE.
    #[arg(long, num_args = 2, value_names = ["SOCKET", "FILE"], hide = true)]
    floor_server: Vec<PathBuf>,
    /// Passed by `cargo bench`. Without it the binary was started by
    /// `cargo test --all-targets`, which only checks that the harness runs
    /// (one round of a few calls, in a debug build).
    #[arg(long, hide = true)]
    bench: bool,
}

impl Args {
    /// (rounds, calls per round) for this run.
    fn plan(&self) -> (usize, usize) {
        match (self.bench, self.quick) {
            (false, _) => (1, 5),
            (true, true) => (3, 60),
            (true, false) => (self.rounds, self.calls),
        }
    }
}

fn parse_baseline(text: &str) -> Result<(String, PathBuf), String> {
    let (name, path) = text.split_once('=').ok_or("expected NAME=PATH")?;
    Ok((name.to_owned(), PathBuf::from(path)))
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let [socket, file] = args.floor_server.as_slice() {
        return serve_floor(socket, file);
    }
    let (rounds, calls) = args.plan();
    let dir = tempfile::tempdir()?;
    let mut targets = start_targets(dir.path(), &args.baseline)?;
    pin_to(CLIENT_CPU);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let results = runtime.block_on(measure(&mut targets, rounds, calls))?;
    report(&results, rounds, calls);
    Ok(())
}

/// One server under measurement.
struct Target {
    name: String,
    socket: PathBuf,
    process: Child,
}

impl Drop for Target {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

/// Starts every attestd variant, takes a real response from the first to
/// serve from the floor, and starts the floor.
fn start_targets(dir: &Path, baselines: &[(String, PathBuf)]) -> anyhow::Result<Vec<Target>> {
    let this = PathBuf::from(env!("CARGO_BIN_EXE_attestd"));
    let own_sha256 = sha256_of(&std::env::current_exe()?)?;
    let uid = nix::unistd::geteuid().as_raw();
    let uid_policy = format!("selectors = [\"unix:uid:{uid}\"]");
    let exe_policy = format!("selectors = [\"unix:uid:{uid}\", \"unix:sha256:{own_sha256}\"]");
    let mut targets = vec![start_attestd(dir, "attestd", &this, &uid_policy)?];
    targets.push(start_attestd(dir, "attestd-exe", &this, &exe_policy)?);
    for (name, path) in baselines {
        targets.push(start_attestd(dir, name, path, &uid_policy)?);
        targets.push(start_attestd(dir, &format!("{name}-exe"), path, &exe_policy)?);
    }
    let response = dir.join("floor-response.bin");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let first = runtime.block_on(fetch_first(&targets[0].socket))?;
    std::fs::write(&response, first.encode_to_vec())?;
    let socket = dir.join("floor.sock");
    let process = pinned(Command::new(std::env::current_exe()?))
        .arg("--floor-server")
        .arg(&socket)
        .arg(&response)
        .spawn()?;
    let floor = Target {
        name: "floor".into(),
        socket,
        process,
    };
    wait_for_socket(&floor.socket)?;
    targets.insert(0, floor);
    Ok(targets)
}

fn start_attestd(dir: &Path, name: &str, binary: &Path, selectors: &str) -> anyhow::Result<Target> {
    let home = dir.join(name);
    std::fs::create_dir_all(&home)?;
    let socket = home.join("api.sock");
    let config = home.join("attestd.toml");
    std::fs::write(
        &config,
        format!(
            r#"trust_domain = "bench.example"
socket_path = "{socket}"
data_dir = "{data}"

[[entry]]
spiffe_id = "spiffe://bench.example/agent"
{selectors}
owner = "bench@example.org"
"#,
            socket = socket.display(),
            data = home.join("data").display(),
        ),
    )?;
    let log = std::fs::File::create(home.join("attestd.log"))?;
    let process = pinned(Command::new(binary))
        .args(["run", "-c"])
        .arg(&config)
        .env("RUST_LOG", "warn")
        .stderr(log)
        .spawn()?;
    let target = Target {
        name: name.to_owned(),
        socket,
        process,
    };
    wait_for_socket(&target.socket)?;
    Ok(target)
}

/// A command that runs on the server CPU.
fn pinned(command: Command) -> Command {
    let mut taskset = Command::new("taskset");
    taskset
        .args(["-c", &SERVER_CPU.to_string()])
        .arg(command.get_program())
        .args(command.get_args())
        .stdout(Stdio::null());
    taskset
}

fn pin_to(cpu: usize) {
    let mut set = nix::sched::CpuSet::new();
    if set.set(cpu).is_ok()
        && let Err(error) = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)
    {
        eprintln!("warning: cannot pin the load generator to CPU {cpu}: {error}");
    }
}

fn wait_for_socket(path: &Path) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    anyhow::bail!("{} did not start listening", path.display())
}

fn sha256_of(path: &Path) -> anyhow::Result<String> {
    use sha2::Digest as _;
    Ok(hex::encode(sha2::Sha256::digest(std::fs::read(path)?)))
}

/// A new connection, one FetchX509SVID, its first message.
async fn fetch_first(socket: &Path) -> anyhow::Result<X509svidResponse> {
    let mut client = client::connect(socket).await?;
    Ok(client::fetch_x509(&mut client).await?)
}

/// Each target's p50 per round, in microseconds.
async fn measure(
    targets: &mut [Target],
    rounds: usize,
    calls: usize,
) -> anyhow::Result<Vec<(String, Vec<f64>)>> {
    let mut results: Vec<(String, Vec<f64>)> = targets.iter().map(|t| (t.name.clone(), Vec::new())).collect();
    for _ in 0..rounds {
        for (target, (_, p50s)) in targets.iter().zip(&mut results) {
            // Warm-up: the first calls pay for cache fills (hashing, minting).
            for _ in 0..calls / 10 + 1 {
                fetch_first(&target.socket).await?;
            }
            let mut latencies = Vec::with_capacity(calls);
            for _ in 0..calls {
                let started = Instant::now();
                let response = fetch_first(&target.socket).await?;
                latencies.push(started.elapsed().as_secs_f64() * 1e6);
                anyhow::ensure!(!response.svids.is_empty(), "{}: empty response", target.name);
            }
            p50s.push(median(&mut latencies));
        }
    }
    Ok(results)
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn report(results: &[(String, Vec<f64>)], rounds: usize, calls: usize) {
    println!(
        "new connection + first FetchX509SVID message, p50 (median of {rounds} rounds of {calls} calls)"
    );
    let medians: Vec<(String, f64)> = results
        .iter()
        .map(|(name, p50s)| (name.clone(), median(&mut p50s.clone())))
        .collect();
    let floor = medians[0].1;
    let attestd = medians[1].1;
    for (name, p50) in &medians {
        let spread = results
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, p50s)| {
                let lo = p50s.iter().copied().fold(f64::INFINITY, f64::min);
                let hi = p50s.iter().copied().fold(0.0, f64::max);
                format!("rounds {lo:.0}..{hi:.0} us")
            })
            .unwrap_or_default();
        println!(
            "  {name:<14} {p50:>8.0} us   {:>5.2}x floor   {:>5.2}x attestd   ({spread})",
            p50 / floor,
            p50 / attestd
        );
    }
}

/// The floor: the generated service answering FetchX509SVID with a fixed
/// response and nothing else.
fn serve_floor(socket: &Path, response_file: &Path) -> anyhow::Result<()> {
    let response = X509svidResponse::decode(std::fs::read(response_file)?.as_slice())?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        let listener = UnixListener::bind(socket)?;
        tonic::transport::Server::builder()
            .add_service(SpiffeWorkloadApiServer::new(Floor(Arc::new(response))))
            .serve_with_incoming(UnixListenerStream::new(listener))
            .await?;
        Ok(())
    })
}

struct Floor(Arc<X509svidResponse>);

type Stream<T> = std::pin::Pin<Box<dyn futures::Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl SpiffeWorkloadApi for Floor {
    type FetchX509SVIDStream = Stream<X509svidResponse>;
    type FetchX509BundlesStream = Stream<X509BundlesResponse>;
    type FetchJWTBundlesStream = Stream<JwtBundlesResponse>;
    type FetchWITSVIDStream = Stream<WitsvidResponse>;
    type FetchWITBundlesStream = Stream<WitBundlesResponse>;

    async fn fetch_x509svid(
        &self,
        _: Request<X509svidRequest>,
    ) -> Result<Response<Self::FetchX509SVIDStream>, Status> {
        let first = futures::stream::once(futures::future::ready(Ok((*self.0).clone())));
        // Like a real stream, it stays open after the first message.
        Ok(Response::new(first.chain(futures::stream::pending()).boxed()))
    }

    async fn fetch_x509_bundles(
        &self,
        _: Request<X509BundlesRequest>,
    ) -> Result<Response<Self::FetchX509BundlesStream>, Status> {
        Err(Status::unimplemented("floor"))
    }

    async fn fetch_jwtsvid(&self, _: Request<JwtsvidRequest>) -> Result<Response<JwtsvidResponse>, Status> {
        Err(Status::unimplemented("floor"))
    }

    async fn fetch_jwt_bundles(
        &self,
        _: Request<JwtBundlesRequest>,
    ) -> Result<Response<Self::FetchJWTBundlesStream>, Status> {
        Err(Status::unimplemented("floor"))
    }

    async fn validate_jwtsvid(
        &self,
        _: Request<ValidateJwtsvidRequest>,
    ) -> Result<Response<ValidateJwtsvidResponse>, Status> {
        Err(Status::unimplemented("floor"))
    }

    async fn fetch_witsvid(
        &self,
        _: Request<WitsvidRequest>,
    ) -> Result<Response<Self::FetchWITSVIDStream>, Status> {
        Err(Status::unimplemented("floor"))
    }

    async fn fetch_wit_bundles(
        &self,
        _: Request<WitBundlesRequest>,
    ) -> Result<Response<Self::FetchWITBundlesStream>, Status> {
        Err(Status::unimplemented("floor"))
    }
}
