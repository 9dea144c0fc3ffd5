//! The rules of `StartTask`: which of the caller's entries starts the task,
//! what that entry allows, and how a sub-task narrows its parent (tools,
//! resources, lifetime; never wider).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::request::{Intent, StartRequest, quoted};
use super::{StartRefusal, TaskRefusal, VerifiedTask};
use crate::authority::JwtError;
use crate::config::TasksConfig;
use crate::registry::Entry;
use crate::spiffe_id::SpiffeId;
use crate::wall_clock::unix_seconds;

/// The deepest a task tree goes: a top-level task and this many levels of
/// sub-tasks below it, less one (each level adds an ancestor id and a
/// delegator to the token).
pub const MAX_DEPTH: usize = 8;

/// The entry a task starts under, and what it allows.
pub(super) struct Grant {
    pub entry: Arc<Entry>,
    pub tasks: TasksConfig,
}

/// Picks the caller's entry that starts the task: the one `wanted` names,
/// else the first (in policy order) that allows tasks and, for a sub-task,
/// that the parent token is addressed to.
pub(super) fn choose_entry(
    entries: &[Arc<Entry>],
    wanted: Option<&SpiffeId>,
    parent: Option<&VerifiedTask>,
    now: SystemTime,
) -> Result<Grant, StartRefusal> {
    let held = entries.iter().filter(|entry| !entry.owner_expired(now));
    let grant = |entry: &Arc<Entry>| {
        entry.tasks.as_deref().map(|tasks| Grant {
            entry: Arc::clone(entry),
            tasks: tasks.clone(),
        })
    };
    let addressed = |id: &SpiffeId| parent.is_none_or(|parent| is_addressed_to(parent, id));
    let Some(wanted) = wanted else {
        let mut capable = held.filter_map(grant).peekable();
        if capable.peek().is_none() {
            return Err(StartRefusal::NoTasks);
        }
        return capable
            .find(|grant| addressed(&grant.entry.spiffe_id))
            .ok_or_else(|| not_delegated(parent));
    };
    let mut held = held.peekable();
    let entry = held
        .find(|entry| &entry.spiffe_id == wanted)
        .ok_or_else(|| StartRefusal::NotHeld(wanted.clone()))?;
    let grant = grant(entry).ok_or_else(|| StartRefusal::NoTasksFor(wanted.clone()))?;
    match addressed(wanted) {
        true => Ok(grant),
        false => Err(not_delegated(parent)),
    }
}

/// A parent token may be used by its holder, or by an agent it names in
/// its `aud` (a token handed to a sub-agent is addressed to it).
fn is_addressed_to(parent: &VerifiedTask, id: &SpiffeId) -> bool {
    &parent.spiffe_id == id || parent.audience.iter().any(|aud| aud == id.as_str())
}

fn not_delegated(parent: Option<&VerifiedTask>) -> StartRefusal {
    StartRefusal::NotDelegated {
        holder: parent.map(|p| p.spiffe_id.clone()),
    }
}

/// The token's audiences: those asked for, else the holder's own ID.
pub(super) fn audience(request: &StartRequest, grant: &Grant) -> Vec<String> {
    match request.intent.audience.is_empty() {
        true => vec![grant.entry.spiffe_id.to_string()],
        false => request.intent.audience.clone(),
    }
}

/// Checks the request against the entry: its tools, its JWT audiences (of
/// `audience`, the token's) and its `max_ttl`; returns the task's lifetime.
pub(super) fn check_entry(
    request: &StartRequest,
    audience: &[String],
    grant: &Grant,
) -> Result<Duration, StartRefusal> {
    let tools = &request.intent.tools;
    if let Some(tool) = tools.iter().find(|tool| !grant.tasks.tools.contains(tool)) {
        return Err(StartRefusal::ToolNotAllowed {
            tool: tool.clone(),
            spiffe_id: grant.entry.spiffe_id.clone(),
        });
    }
    let allowed = &grant.entry.jwt_audiences;
    if let Some(refused) = audience
        .iter()
        .find(|a| !allowed.is_empty() && !allowed.contains(a))
    {
        return Err(StartRefusal::AudienceNotAllowed(quoted(refused)));
    }
    let max = grant.tasks.max_ttl;
    match request.ttl {
        Some(ttl) if ttl > max => Err(StartRefusal::TtlTooLong {
            requested: ttl.as_secs(),
            max: max.as_secs(),
        }),
        Some(ttl) => Ok(ttl),
        None => Ok(max),
    }
}

/// Checks that a sub-task only narrows its parent; returns its expiry:
/// `lifetime` from `now`, never beyond the parent's (a lifetime asked for
/// explicitly that reaches beyond it is refused; the default is cut).
pub(super) fn check_parent(
    request: &StartRequest,
    lifetime: Duration,
    parent: &VerifiedTask,
    now: SystemTime,
) -> Result<SystemTime, StartRefusal> {
    if parent.parents.len() + 1 >= MAX_DEPTH {
        return Err(StartRefusal::TooDeep { max: MAX_DEPTH });
    }
    let Intent { tools, resources, .. } = &request.intent;
    if let Some(tool) = tools.iter().find(|tool| !parent.tools.contains(tool)) {
        return Err(StartRefusal::Widens(format!(
            "tool {tool} is not among the parent task's tools"
        )));
    }
    if !parent.resources.is_empty() {
        if resources.is_empty() {
            return Err(StartRefusal::Widens(
                "the parent task declares resources, so a sub-task must declare some of them".into(),
            ));
        }
        if let Some(resource) = resources.iter().find(|r| !parent.resources.contains(r)) {
            return Err(StartRefusal::Widens(format!(
                "resource {} is not among the parent task's resources",
                quoted(resource)
            )));
        }
    }
    let parent_end = unix_seconds(parent.expires_at);
    let remaining = parent_end.saturating_sub(unix_seconds(now));
    if remaining == 0 {
        return Err(StartRefusal::Parent(TaskRefusal::Invalid(JwtError::Expired)));
    }
    if request.ttl.is_some() && lifetime.as_secs() > remaining {
        return Err(StartRefusal::Widens(format!(
            "a lifetime of {}s would outlast the parent task, which ends in {remaining}s",
            lifetime.as_secs()
        )));
    }
    Ok(now + lifetime.min(Duration::from_secs(remaining)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tasks::AgentFacts;

    fn id(path: &str) -> SpiffeId {
        SpiffeId::new(&format!("spiffe://example.org/{path}")).unwrap()
    }

    fn entry(path: &str, tools: Option<&[&str]>) -> Arc<Entry> {
        Arc::new(Entry {
            id: crate::registry::EntryId(0),
            spiffe_id: id(path),
            selectors: Default::default(),
            owner: "o@example.org".into(),
            description: None,
            labels: Default::default(),
            x509_ttl: Duration::from_secs(60),
            jwt_ttl: Duration::from_secs(60),
            jwt_audiences: Box::default(),
            dns_names: Box::default(),
            hint: None,
            federates_with: Box::default(),
            owner_expires: None,
            tasks: tools.map(|tools| {
                Box::new(TasksConfig {
                    max_ttl: Duration::from_secs(600),
                    tools: tools.iter().map(|t| (*t).to_owned()).collect(),
                })
            }),
            may_ask_for_others: false,
            jwt_audiences_written_empty: false,
            remote_entry: None,
            location: crate::config::Location {
                file: std::path::Path::new("attestd.toml").into(),
                line: 1,
            },
        })
    }

    fn request(tools: &[&str], resources: &[&str], ttl: Option<u64>) -> StartRequest {
        StartRequest {
            intent: Intent {
                purpose: "p".into(),
                tools: tools.iter().map(|t| (*t).to_owned()).collect(),
                resources: resources.iter().map(|r| (*r).to_owned()).collect(),
                audience: vec!["aud".into()],
            },
            ttl: ttl.map(Duration::from_secs),
            parent_token: None,
            spiffe_id: None,
        }
    }

    fn parent(holder: &str, audience: &[&str], resources: &[&str], expires_in: u64) -> VerifiedTask {
        VerifiedTask {
            spiffe_id: id(holder),
            audience: audience.iter().map(|a| (*a).to_owned()).collect(),
            task_id: "p1".into(),
            parents: Vec::new(),
            purpose: "p".into(),
            tools: vec!["a".into(), "b".into()],
            resources: resources.iter().map(|r| (*r).to_owned()).collect(),
            delegated_by: Vec::new(),
            owner: "o".into(),
            attestation: "x".into(),
            jti: "j".into(),
            expires_at: SystemTime::now() + Duration::from_secs(expires_in),
            agent: AgentFacts::default(),
        }
    }

    #[test]
    fn the_entry_is_the_one_asked_for_or_the_first_that_allows_tasks() {
        let now = SystemTime::now();
        let entries = [
            entry("plain", None),
            entry("agent", Some(&["a"])),
            entry("other", Some(&["b"])),
        ];
        let chosen = |wanted: Option<&SpiffeId>, parent: Option<&VerifiedTask>| {
            choose_entry(&entries, wanted, parent, now).map(|g| g.entry.spiffe_id.clone())
        };
        assert_eq!(chosen(None, None).unwrap(), id("agent"));
        assert_eq!(chosen(Some(&id("other")), None).unwrap(), id("other"));
        assert!(matches!(
            chosen(Some(&id("plain")), None),
            Err(StartRefusal::NoTasksFor(_))
        ));
        assert!(matches!(
            chosen(Some(&id("nobody")), None),
            Err(StartRefusal::NotHeld(_))
        ));
        assert!(matches!(
            choose_entry(&entries[..1], None, None, now),
            Err(StartRefusal::NoTasks)
        ));
        // A parent addressed to "other" picks it; one addressed elsewhere
        // is refused, naming its holder.
        let to_other = parent("boss", &["spiffe://example.org/other"], &[], 60);
        assert_eq!(chosen(None, Some(&to_other)).unwrap(), id("other"));
        let elsewhere = parent("boss", &["spiffe://example.org/gateway"], &[], 60);
        let refusal = chosen(None, Some(&elsewhere)).unwrap_err();
        assert!(
            refusal.to_string().contains("spiffe://example.org/boss"),
            "{refusal}"
        );
        assert!(matches!(
            chosen(Some(&id("agent")), Some(&to_other)),
            Err(StartRefusal::NotDelegated { .. })
        ));
        // Its own token: the holder narrows its own task.
        let own = parent("agent", &["x"], &[], 60);
        assert_eq!(chosen(None, Some(&own)).unwrap(), id("agent"));
    }

    #[test]
    fn the_entry_bounds_tools_audiences_and_lifetime() {
        let grant = Grant {
            entry: entry("agent", Some(&["a", "b"])),
            tasks: *entry("agent", Some(&["a", "b"])).tasks.clone().unwrap(),
        };
        assert_eq!(
            check_entry(&request(&["a"], &[], None), &["aud".into()], &grant).unwrap(),
            Duration::from_secs(600)
        );
        assert_eq!(
            check_entry(&request(&["a"], &[], Some(60)), &["aud".into()], &grant).unwrap(),
            Duration::from_secs(60)
        );
        let refusal = check_entry(&request(&["a", "c"], &[], None), &["aud".into()], &grant).unwrap_err();
        assert_eq!(
            refusal.to_string(),
            "tool c is not among the tools spiffe://example.org/agent may declare for tasks"
        );
        let refusal = check_entry(&request(&["a"], &[], Some(601)), &["aud".into()], &grant).unwrap_err();
        assert_eq!(
            refusal.to_string(),
            "a lifetime of 601s exceeds the entry's tasks.max_ttl of 600s"
        );
        let mut limited = (*grant.entry).clone();
        limited.jwt_audiences = Box::new(["other".into()]);
        let limited = Grant {
            entry: Arc::new(limited),
            tasks: grant.tasks.clone(),
        };
        assert!(matches!(
            check_entry(&request(&["a"], &[], None), &["aud".into()], &limited),
            Err(StartRefusal::AudienceNotAllowed(_))
        ));
    }

    #[test]
    fn a_sub_task_narrows_and_never_widens() {
        let now = SystemTime::now();
        let unbounded = parent("boss", &[], &[], 300);
        let bounded = parent("boss", &[], &["repo:a", "repo:b"], 300);
        let ok = |req: StartRequest, p: &VerifiedTask| {
            check_parent(&req, req.ttl.unwrap_or(Duration::from_secs(600)), p, now)
        };
        let widens = |req: StartRequest, p: &VerifiedTask| ok(req, p).unwrap_err().to_string();

        assert!(ok(request(&["a"], &[], None), &unbounded).is_ok());
        assert!(ok(request(&["a"], &["repo:a"], None), &bounded).is_ok());
        assert!(
            widens(request(&["a", "c"], &[], None), &unbounded)
                .contains("tool c is not among the parent task's tools")
        );
        assert!(widens(request(&["a"], &[], None), &bounded).contains("must declare some of them"));
        assert!(
            widens(request(&["a"], &["repo:c"], None), &bounded).contains("resource \"repo:c\" is not among")
        );
        assert!(
            widens(request(&["a"], &[], Some(400)), &unbounded).contains("would outlast the parent task")
        );
        // The default lifetime is cut to the parent's.
        let expiry = ok(request(&["a"], &[], None), &unbounded).unwrap();
        assert!(unix_seconds(expiry) <= unix_seconds(unbounded.expires_at));
        let mut deep = unbounded.clone();
        deep.parents = vec!["x".into(); MAX_DEPTH - 1];
        assert!(matches!(
            ok(request(&["a"], &[], None), &deep),
            Err(StartRefusal::TooDeep { .. })
        ));
    }
}
