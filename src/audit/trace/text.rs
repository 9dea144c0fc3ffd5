//! The trace as text: one tree per task shown, its facts first, then what
//! happened in the order of the trail (decisions, events, sub-tasks, the
//! end).
//!
//! Much of a record is chosen by local callers (a purpose, a resource, an
//! executable's path): every such value is printed with its control
//! characters escaped, so a record cannot move the cursor or forge lines
//! on the responder's terminal.

use std::fmt::{self, Write as _};

use super::{Decision, Ended, Event, TaskNode, Trace};

/// One line of the tree and the lines under it.
struct Item {
    text: String,
    children: Vec<Item>,
}

impl Item {
    fn leaf(text: String) -> Self {
        Self {
            text,
            children: Vec::new(),
        }
    }
}

impl fmt::Display for Trace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.trees.is_empty() {
            let what = match (&self.query.task, &self.query.spiffe_id) {
                (Some(task), _) => format!("task {}", clean(task)),
                (None, Some(id)) => format!("task of {}", clean(id)),
                (None, None) => "task".to_owned(),
            };
            let since = self
                .query
                .since
                .as_ref()
                .map(|s| format!(" since {s}"))
                .unwrap_or_default();
            return writeln!(f, "no {what}{since} in {} records", self.records);
        }
        for (i, tree) in self.trees.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            if !tree.ancestors.is_empty() {
                let path: Vec<String> = tree
                    .ancestors
                    .iter()
                    .map(|a| {
                        let mut text = format!("task {}", clean(&a.task_id));
                        if let Some(purpose) = &a.purpose {
                            let _ = write!(text, " {purpose:?}");
                        }
                        if let Some(id) = &a.spiffe_id {
                            let _ = write!(text, " of {}", clean(id));
                        }
                        text
                    })
                    .collect();
                writeln!(f, "under {}", path.join(" > "))?;
            }
            let root = task(&tree.task, "task");
            writeln!(f, "{}", root.text)?;
            write_items(f, &root.children, "")?;
        }
        Ok(())
    }
}

fn write_items(f: &mut fmt::Formatter<'_>, items: &[Item], prefix: &str) -> fmt::Result {
    for (i, item) in items.iter().enumerate() {
        let last = i + 1 == items.len();
        let (branch, indent) = if last {
            ("└─ ", "   ")
        } else {
            ("├─ ", "│  ")
        };
        writeln!(f, "{prefix}{branch}{}", item.text)?;
        write_items(f, &item.children, &format!("{prefix}{indent}"))?;
    }
    Ok(())
}

/// A task: its facts, then its timeline.
fn task(node: &TaskNode, label: &str) -> Item {
    let started = match &node.started_at {
        Some(at) => format!("started {}", clean(at)),
        None => "start not in the trail".to_owned(),
    };
    let mut children = facts(node);
    let mut timeline: Vec<(u64, Item)> = Vec::new();
    let order = |seq: Option<u64>| seq.unwrap_or(u64::MAX);
    timeline.extend(node.decisions.iter().map(|d| (order(d.seq), decision(d))));
    timeline.extend(node.events.iter().map(|e| (order(e.seq), event(e))));
    timeline.extend(node.subtasks.iter().map(|t| (order(t.seq), task(t, "sub-task"))));
    timeline.extend(node.ended.iter().map(|e| (order(e.seq), ended(e))));
    timeline.sort_by_key(|(seq, _)| *seq);
    children.extend(timeline.into_iter().map(|(_, item)| item));
    Item {
        text: format!("{label} {}  {started}", clean(&node.task_id)),
        children,
    }
}

/// Process, entry and owner, intent, tokens.
fn facts(node: &TaskNode) -> Vec<Item> {
    let mut items = Vec::new();
    if let Some(p) = &node.process {
        let mut text = String::from("process  ");
        let ids = [
            ("pid", p.pid.map(i64::from)),
            ("uid", p.uid.map(i64::from)),
            ("gid", p.gid.map(i64::from)),
        ];
        let ids: Vec<String> = ids
            .iter()
            .filter_map(|(k, v)| v.map(|v| format!("{k} {v}")))
            .collect();
        text.push_str(&ids.join(", "));
        for (label, value) in [
            ("exe", &p.exe_path),
            ("sha256", &p.sha256),
            ("unit", &p.systemd_unit),
            ("container", &p.container_id),
        ] {
            if let Some(value) = value {
                let _ = write!(text, ", {label} {}", clean(value));
            }
        }
        items.push(Item::leaf(text));
    }
    if let Some(entry) = &node.entry {
        let id = entry
            .spiffe_id
            .as_deref()
            .map_or_else(|| "(no SPIFFE ID)".to_owned(), clean);
        let location = entry
            .location
            .as_deref()
            .map(|l| format!(" [{}]", clean(l)))
            .unwrap_or_default();
        items.push(Item::leaf(format!("entry    {id}{location}")));
        let owner = entry
            .owner
            .as_deref()
            .map_or_else(|| "(none recorded)".to_owned(), clean);
        items.push(Item::leaf(format!("owner    {owner}")));
    }
    let intent = &node.intent;
    let mut text = format!("intent   {:?}", intent.purpose);
    if !intent.tools.is_empty() {
        let _ = write!(text, "; tools {}", list(&intent.tools));
    }
    if !intent.resources.is_empty() {
        let _ = write!(text, "; resources {}", list(&intent.resources));
    }
    if !intent.delegated_by.is_empty() {
        let chain: Vec<String> = intent.delegated_by.iter().map(|d| clean(d)).collect();
        let _ = write!(text, "; delegated by {}", chain.join(" > "));
    }
    items.push(Item::leaf(text));
    for token in &node.tokens {
        let mut text = format!(
            "token    jti {}",
            token.jti.as_deref().map_or_else(|| "?".to_owned(), clean)
        );
        if let Some(exp) = &token.expires_at {
            let _ = write!(text, ", expires {}", clean(exp));
        }
        if !token.audience.is_empty() {
            let _ = write!(text, ", audience {}", list(&token.audience));
        }
        items.push(Item::leaf(text));
    }
    items
}

fn decision(d: &Decision) -> Item {
    let verdict = if d.decision == "allow" { "ALLOW" } else { "DENY " };
    let mut text = format!(
        "{}  {verdict} {} on {}",
        clean(&d.time),
        clean(&d.action),
        clean(&d.resource)
    );
    if !d.policies.is_empty() {
        let _ = write!(text, "  policies {}", list(&d.policies));
    }
    if !d.reason.is_empty() {
        let _ = write!(text, "  reason {:?}", d.reason);
    }
    if !d.errors.is_empty() {
        let _ = write!(text, "  errors {:?}", d.errors);
    }
    if let Some(gateway) = &d.asked_by {
        let _ = write!(text, "  asked by {}", clean(gateway));
    }
    let _ = write!(text, "  (decision {})", clean(&d.decision_id));
    Item::leaf(text)
}

fn event(e: &Event) -> Item {
    let mut text = format!("{}  {} {}", clean(&e.time), clean(&e.rpc), clean(&e.outcome));
    if let Some(pid) = e.pid {
        let _ = write!(text, " (pid {pid})");
    }
    if !e.reason.is_empty() {
        let _ = write!(text, ": {:?}", e.reason);
    }
    Item::leaf(text)
}

fn ended(e: &Ended) -> Item {
    let mut text = format!("{}  ended", clean(&e.time));
    if !e.reason.is_empty() {
        let _ = write!(text, ": {:?}", e.reason);
    }
    Item::leaf(text)
}

fn list(values: &[String]) -> String {
    values.iter().map(|v| clean(v)).collect::<Vec<_>>().join(", ")
}

/// `value` with control characters and bidirectional overrides escaped
/// (`\n`, `\u{1b}`, `\u{202e}`), as `{:?}` does inside quotes.
fn clean(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            c if c.is_control() => out.extend(c.escape_debug()),
            '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' => {
                out.extend(c.escape_unicode())
            }
            c => out.push(c),
        }
    }
    out
}
