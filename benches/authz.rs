//! The policy decision benchmark: what one `Authorize` decision costs in
//! attestd's decision point, at 1, 100 and 10,000 Cedar policies.
//!
//! Each call is what the daemon does once a caller is admitted: resolve
//! the principal, check the task's declared intent, build the entities
//! (agent, task, resource, arguments) and evaluate every policy with
//! Cedar, in-process through the library (`attestd::authz::decide`). Not
//! included: attestation and the audit write (the Workload API benchmark
//! measures those), and the task token's signature check (the verifier is
//! a stand-in here). The policies are generated: each names one of 50
//! tools, a label and a resource pattern, so most do not apply and one
//! permits the call. attestd evaluates only the policies whose action
//! scope admits the tool asked for (and those with none), so the last set,
//! 10,000 policies with no action scope, shows the worst case. The sets
//! alternate within each round so a busy machine slows them alike. Also
//! printed: the time to load and validate each set (what a reload costs).
//!
//! ```text
//! cargo bench --bench authz              # full: 9 rounds of 400 calls per size
//! cargo bench --bench authz -- --quick   # what the test command runs
//! ```

use std::time::{Duration, Instant, SystemTime};

use clap::Parser;

use attestd::attest::Workload;
use attestd::authz::{Asker, DecisionRequest, PolicyBook, Subject, TaskTokens, decide};
use attestd::config::Config;
use attestd::registry::Policy;
use attestd::selector::Selector;
use attestd::spiffe_id::SpiffeId;
use attestd::tasks::{AgentFacts, VerifiedTask};

/// Tools the entries allow (and the policies name).
const TOOLS: usize = 50;

#[derive(Parser, Debug)]
struct Args {
    /// Rounds per size (alternating between sizes).
    #[arg(long, default_value_t = 9)]
    rounds: usize,
    /// Calls per round.
    #[arg(long, default_value_t = 400)]
    calls: usize,
    /// A short run (3 rounds of 40 calls): checks the harness works, for
    /// the test command; its figures are noisy.
    #[arg(long)]
    quick: bool,
    /// Passed by `cargo bench`. Without it the binary was started by
    /// `cargo test --all-targets`, which only checks that the harness runs
    /// (one round of a few calls, up to 100 policies, in a debug build).
    #[arg(long, hide = true)]
    bench: bool,
}

impl Args {
    /// (policy sets, rounds, calls per round) for this run.
    fn plan(&self) -> (&'static [Set], usize, usize) {
        const SMALL: &[Set] = &[Set::scoped(1), Set::scoped(100)];
        const ALL: &[Set] = &[
            Set::scoped(1),
            Set::scoped(100),
            Set::scoped(10_000),
            Set {
                size: 10_000,
                scoped: false,
            },
        ];
        match (self.bench, self.quick) {
            (false, _) => (SMALL, 1, 5),
            (true, true) => (ALL, 3, 40),
            (true, false) => (ALL, self.rounds, self.calls),
        }
    }
}

/// A generated policy set.
#[derive(Debug, Clone, Copy)]
struct Set {
    size: usize,
    /// Whether its policies name their action (all but the last).
    scoped: bool,
}

impl Set {
    const fn scoped(size: usize) -> Self {
        Self { size, scoped: true }
    }

    fn name(self) -> String {
        match self.scoped {
            true => format!("{:>6} policies", self.size),
            false => format!("{:>6} unscoped", self.size),
        }
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let (sets, rounds, calls) = args.plan();
    let dir = tempfile::tempdir()?;
    let policy = policy(dir.path())?;
    let entries = policy.entries().to_vec();
    let mut books = Vec::new();
    for (i, &set) in sets.iter().enumerate() {
        let policies = dir.path().join(format!("policies-{i}"));
        std::fs::create_dir(&policies)?;
        std::fs::write(policies.join("bench.cedar"), policy_text(set))?;
        let started = Instant::now();
        let book = PolicyBook::load(Some(&policies), &entries)?;
        let loaded = started.elapsed();
        anyhow::ensure!(
            book.len() == set.size,
            "loaded {} policies, not {}",
            book.len(),
            set.size
        );
        books.push((set, book, loaded));
    }
    let world = World::new(policy)?;
    let mut latencies: Vec<Vec<f64>> = vec![Vec::new(); books.len()];
    for _ in 0..rounds {
        for ((set, book, _), samples) in books.iter().zip(&mut latencies) {
            for _ in 0..calls / 10 + 1 {
                world.decide(book, *set)?;
            }
            for _ in 0..calls {
                let started = Instant::now();
                world.decide(book, *set)?;
                samples.push(started.elapsed().as_secs_f64() * 1e6);
            }
        }
    }
    println!(
        "Authorize decision in-process (principal, intent checks, entities, Cedar), {rounds} rounds of {calls} calls"
    );
    for ((set, _, loaded), samples) in books.iter().zip(&mut latencies) {
        samples.sort_by(f64::total_cmp);
        println!(
            "  {}   p50 {:>9.1} us   p99 {:>9.1} us   (load + validate {})",
            set.name(),
            percentile(samples, 0.50),
            percentile(samples, 0.99),
            humantime::format_duration(Duration::from_millis(loaded.as_millis() as u64)),
        );
    }
    Ok(())
}

/// An agent allowed every tool, and the config around it.
fn policy(dir: &std::path::Path) -> anyhow::Result<Policy> {
    let tools: Vec<String> = (0..TOOLS).map(|t| format!("\"tool{t}\"")).collect();
    let config = dir.join("attestd.toml");
    std::fs::write(
        &config,
        format!(
            r#"trust_domain = "bench.example"
[[entry]]
spiffe_id = "spiffe://bench.example/agent"
selectors = ["unix:uid:1000"]
owner = "bench@example.org"
labels = {{ team = "team7", agent = "reviewer" }}
tasks = {{ tools = [{}] }}
"#,
            tools.join(", ")
        ),
    )?;
    Ok(Policy::load(&Config::load(&config)?)?)
}

/// The policies of `set`; the last permits what the benchmark asks.
fn policy_text(set: Set) -> String {
    let mut text = String::new();
    for i in 0..set.size - 1 {
        let action = match set.scoped {
            true => format!("action == Attestd::Action::\"tool{}\"", i % TOOLS),
            false => "action".to_owned(),
        };
        text.push_str(&format!(
            "@id(\"p{i}\")\npermit(principal, {action}, resource)\n\
             when {{ principal.labels has team && principal.labels.team == \"team{i}\" && resource.id like \"repo-{i}-*\" }};\n"
        ));
    }
    text.push_str(
        "@id(\"reviewers\")\npermit(principal, action, resource)\n\
         when { principal.labels has agent && principal.labels.agent == \"reviewer\" && resource.type == \"repo\" \
         && context.task.delegation_depth == 0 && context.args.hasTag(\"branch\") };\n",
    );
    text
}

/// The caller, its task, and what it asks.
struct World {
    policy: Policy,
    workload: Workload,
    tokens: FixedTask,
    subject: Subject,
    request: DecisionRequest,
}

impl World {
    fn new(policy: Policy) -> anyhow::Result<Self> {
        let workload = Workload {
            pid: 4242,
            uid: 1000,
            gid: 1000,
            exe_path: None,
            sha256: None,
            selectors: [Selector::new("unix", "uid", 1000)].into_iter().collect(),
            notes: Vec::new(),
            login_uid: None,
        };
        let args = serde_json::json!({"branch": "main", "title": "fix the build", "files": 3});
        let request = DecisionRequest::parse(
            "tool7",
            "repo:repo-7-attestd",
            args.as_object().cloned().unwrap_or_default(),
        )?;
        let tokens = FixedTask(VerifiedTask {
            spiffe_id: SpiffeId::new("spiffe://bench.example/agent")?,
            audience: Vec::new(),
            task_id: "task-1".into(),
            parents: Vec::new(),
            purpose: "review".into(),
            tools: vec!["tool7".into()],
            resources: Vec::new(),
            delegated_by: Vec::new(),
            owner: "bench@example.org".into(),
            attestation: "00".repeat(32),
            jti: "jti".into(),
            expires_at: SystemTime::now() + Duration::from_secs(3600),
            agent: AgentFacts::default(),
        });
        Ok(Self {
            policy,
            workload,
            tokens,
            subject: Subject::Token("token".into()),
            request,
        })
    }

    /// One decision; it must be the allow the last policy gives.
    fn decide(&self, book: &PolicyBook, set: Set) -> anyhow::Result<()> {
        let asker = Asker {
            workload: &self.workload,
            entries: self.policy.entries(),
            policy: &self.policy,
        };
        let verdict = decide(book, &self.tokens, asker, &self.subject, &self.request);
        anyhow::ensure!(
            verdict.allowed && verdict.errors.is_empty(),
            "{}: not allowed: {verdict:?}",
            set.name()
        );
        Ok(())
    }
}

/// Every token verifies to one task (the benchmark measures decisions, not
/// signatures).
#[derive(Debug)]
struct FixedTask(VerifiedTask);

impl TaskTokens for FixedTask {
    fn verify(&self, _token: &str) -> Result<VerifiedTask, String> {
        Ok(self.0.clone())
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(index).copied().unwrap_or(f64::NAN)
}
