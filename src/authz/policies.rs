//! The policy set in effect: every `*.cedar` file of `policy_dir` (sorted by
//! name), parsed and validated as a whole against the schema for the
//! current entries, in Cedar's strict mode. Any error in any file fails the
//! whole set, naming each problem's file and line; a set that loads is
//! immutable, and replaced whole.
//!
//! A policy's id is its `@id("...")` annotation, unique across the files,
//! or else `<file name>:<line>`. Decisions name the policies that
//! determined them by these ids.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use cedar_policy::{
    ActionConstraint, EntityUid, Policy, PolicyId, PolicySet, Schema, ValidationMode, Validator,
};
use miette::Diagnostic;

use super::source::{self, Lines};
use super::{AuthzError, schema};
use crate::registry::Entry;

/// One problem in the policy files: where, and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyProblem {
    /// The file.
    pub file: PathBuf,
    /// The 1-based line (0 when the problem concerns the file as a whole).
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for PolicyProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            0 => write!(f, "{}: {}", self.file.display(), self.message),
            line => write!(f, "{}:{line}: {}", self.file.display(), self.message),
        }
    }
}

/// The validated policies and the schema they were validated against.
#[derive(Debug)]
pub struct PolicyBook {
    schema: Schema,
    policies: PolicySet,
    slices: Slices,
    /// The tools the schema declares actions for.
    tools: BTreeSet<String>,
    /// Whether some policy mentions `exe_sha256`.
    needs_exe_hash: bool,
}

impl PolicyBook {
    /// Loads `dir` (none: no policies, so every decision is a deny) against
    /// the schema for `entries`.
    pub fn load(dir: Option<&Path>, entries: &[Arc<Entry>]) -> Result<Self, AuthzError> {
        let (schema, tools) = schema::build(entries)?;
        let files = match dir {
            Some(dir) => read_dir(dir)?,
            None => Vec::new(),
        };
        let mut parsed = Parsed::default();
        for (path, text) in &files {
            parsed.add_file(path, text);
        }
        let Parsed {
            policies,
            origins,
            mut problems,
            ..
        } = parsed;
        problems.extend(validate(&schema, &policies, &origins, &files));
        if !problems.is_empty() {
            problems.sort_by(|a, b| (&a.file, a.line).cmp(&(&b.file, b.line)));
            return Err(AuthzError::Policies(problems));
        }
        let needs_exe_hash = policies
            .policies()
            .any(|policy| policy.to_string().contains("exe_sha256"));
        Ok(Self {
            slices: Slices::cut(&policies, &tools)?,
            schema,
            policies,
            tools,
            needs_exe_hash,
        })
    }

    /// The schema the policies were validated against.
    pub fn schema(&self) -> &Schema {
        &self.schema
    }

    /// The policies.
    pub fn policies(&self) -> &PolicySet {
        &self.policies
    }

    /// The policies that can apply to `tool`: those whose action scope
    /// names it, and those with no action scope. Together they decide
    /// exactly as the whole set does (see [`Slices`]).
    pub fn slices(&self, tool: &str) -> [&PolicySet; 2] {
        [
            self.slices.by_tool.get(tool).unwrap_or(&self.slices.none),
            &self.slices.any,
        ]
    }

    /// How many policies are in effect.
    pub fn len(&self) -> usize {
        self.policies.num_of_policies()
    }

    /// Whether no policy is in effect (every decision is a deny).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the schema declares an action for `tool` (some entry allows
    /// it).
    pub fn has_action(&self, tool: &str) -> bool {
        self.tools.contains(tool)
    }

    /// Whether some policy mentions `exe_sha256`: callers are then hashed
    /// (and their executable proven bound to the connection) whatever the
    /// entries name. A mention in a comment counts too: hashing more than
    /// needed is safe, less is not.
    pub fn needs_exe_hash(&self) -> bool {
        self.needs_exe_hash
    }
}

/// The policy set cut by action scope. Cedar evaluates every policy of the
/// set it is given, yet a policy whose action scope excludes the request's
/// action can never apply, nor error (the scope is checked before the
/// conditions): each decision evaluates only the slice of its action and
/// the policies with no action scope, which at 10,000 policies over 50
/// tools is fifty times fewer. Exact, since actions have no groups in
/// attestd's schema (`action in [..]` is membership in the list).
#[derive(Debug, Default)]
struct Slices {
    /// Policies scoped to actions, under each action they name.
    by_tool: HashMap<String, PolicySet>,
    /// Policies with no action scope.
    any: PolicySet,
    /// For a tool no policy names.
    none: PolicySet,
}

impl Slices {
    fn cut(policies: &PolicySet, tools: &BTreeSet<String>) -> Result<Self, AuthzError> {
        let mut slices = Self::default();
        let add = |set: &mut PolicySet, policy: &Policy| {
            // Ids are unique in the whole set, so in every slice.
            set.add(policy.clone())
                .map_err(|e| AuthzError::Schema(format!("slicing the policy set: {e}")))
        };
        for policy in policies.policies() {
            let named = match policy.action_constraint() {
                ActionConstraint::Any => {
                    add(&mut slices.any, policy)?;
                    continue;
                }
                ActionConstraint::Eq(action) => vec![action],
                ActionConstraint::In(actions) => actions,
            };
            let mut named: Vec<&str> = named.iter().filter_map(|uid| tool_of(uid, tools)).collect();
            named.sort_unstable();
            named.dedup();
            for tool in named {
                add(slices.by_tool.entry(tool.to_owned()).or_default(), policy)?;
            }
        }
        Ok(slices)
    }
}

/// The tool an action names, if it is one of `tools` (validation has
/// refused any other).
fn tool_of<'a>(action: &EntityUid, tools: &'a BTreeSet<String>) -> Option<&'a str> {
    tools.get(action.id().unescaped()).map(String::as_str)
}

/// The `*.cedar` files of `dir`, sorted, with their text.
fn read_dir(dir: &Path) -> Result<Vec<(PathBuf, String)>, AuthzError> {
    let problem = |file: &Path, error: std::io::Error| {
        AuthzError::Policies(vec![PolicyProblem {
            file: file.to_owned(),
            line: 0,
            message: format!("cannot read: {error}"),
        }])
    };
    let mut paths = Vec::new();
    for item in std::fs::read_dir(dir).map_err(|e| problem(dir, e))? {
        let path = item.map_err(|e| problem(dir, e))?.path();
        if path.extension().is_some_and(|ext| ext == "cedar") && path.is_file() {
            paths.push(path);
        }
    }
    paths.sort();
    paths
        .into_iter()
        .map(|path| match std::fs::read_to_string(&path) {
            Ok(text) => Ok((path, text)),
            Err(error) => Err(problem(&path, error)),
        })
        .collect()
}

/// Where a policy comes from: its file (an index into the files), its
/// piece's offset in it, and where the policy itself starts.
#[derive(Debug, Clone, Copy)]
struct Origin {
    file: usize,
    offset: usize,
    start: usize,
    line: usize,
}

/// The policies parsed so far, where each came from, and the problems met.
#[derive(Default)]
struct Parsed {
    policies: PolicySet,
    origins: HashMap<PolicyId, Origin>,
    problems: Vec<PolicyProblem>,
    /// The files added so far.
    paths: Vec<PathBuf>,
}

impl Parsed {
    fn add_file(&mut self, path: &Path, text: &str) {
        let file = self.paths.len();
        self.paths.push(path.to_owned());
        let lines = Lines::new(text);
        for piece in source::pieces(text) {
            let problem = |offset: usize, message: String| PolicyProblem {
                file: path.to_owned(),
                line: lines.line_of(offset),
                message,
            };
            let policy = match Policy::parse(None, piece.text) {
                Ok(policy) => policy,
                Err(errors) => {
                    for error in errors.iter() {
                        let at = piece.offset + first_label(error).unwrap_or(piece.start - piece.offset);
                        self.problems.push(problem(at, describe(error)));
                    }
                    continue;
                }
            };
            let line = lines.line_of(piece.start);
            let id = match policy.annotation("id") {
                Some(id) => PolicyId::new(id),
                None => PolicyId::new(format!("{}:{line}", file_name(path))),
            };
            if let Some(first) = self.origins.get(&id) {
                let message = format!(
                    "duplicate policy id \"{id}\": the policy at {}:{} has it already",
                    self.paths[first.file].display(),
                    first.line
                );
                self.problems.push(problem(piece.start, message));
                continue;
            }
            let origin = Origin {
                file,
                offset: piece.offset,
                start: piece.start,
                line,
            };
            if let Err(error) = self.policies.add(policy.new_id(id.clone())) {
                self.problems.push(problem(piece.start, error.to_string()));
                continue;
            }
            self.origins.insert(id, origin);
        }
    }
}

/// Strict validation of the whole set; each error placed at its line.
fn validate(
    schema: &Schema,
    policies: &PolicySet,
    origins: &HashMap<PolicyId, Origin>,
    files: &[(PathBuf, String)],
) -> Vec<PolicyProblem> {
    let result = Validator::new(schema.clone()).validate(policies, ValidationMode::Strict);
    if result.validation_passed_without_warnings() {
        return Vec::new();
    }
    let lines: Vec<Lines> = files.iter().map(|(_, text)| Lines::new(text)).collect();
    let place = |id: &PolicyId, label: Option<usize>| {
        origins.get(id).map(|origin| {
            let at = label.map_or(origin.start, |offset| origin.offset + offset);
            (files[origin.file].0.clone(), lines[origin.file].line_of(at))
        })
    };
    for warning in result.validation_warnings() {
        if let Some((file, line)) = place(warning.policy_id(), first_label(warning)) {
            tracing::warn!(file = %file.display(), line, "policy warning: {}", describe(warning));
        }
    }
    result
        .validation_errors()
        .map(|error| {
            let (file, line) = place(error.policy_id(), first_label(error)).unwrap_or_default();
            PolicyProblem {
                file,
                line,
                message: describe(error),
            }
        })
        .collect()
}

/// The byte offset (within the text it was parsed from) a diagnostic
/// points at.
fn first_label(diagnostic: &dyn Diagnostic) -> Option<usize> {
    diagnostic.labels()?.next().map(|label| label.offset())
}

/// A diagnostic's message, with its help when it has one.
fn describe(diagnostic: &dyn Diagnostic) -> String {
    match diagnostic.help() {
        Some(help) => format!("{diagnostic} ({help})"),
        None => diagnostic.to_string(),
    }
}

fn file_name(path: &Path) -> String {
    path.file_name().map_or_else(
        || path.display().to_string(),
        |name| name.to_string_lossy().into_owned(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authz::schema::tests::entry;

    fn entries() -> Vec<Arc<Entry>> {
        vec![
            entry(
                "reviewer",
                &[("agent", "reviewer")],
                &["github.create_pr", "jira.comment"],
            ),
            entry("gateway", &[], &[]),
        ]
    }

    fn dir(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        dir
    }

    fn problems(files: &[(&str, &str)]) -> Vec<String> {
        let dir = dir(files);
        match PolicyBook::load(Some(dir.path()), &entries()) {
            Err(AuthzError::Policies(problems)) => problems
                .iter()
                .map(|p| format!("{}:{}: {}", file_name(&p.file), p.line, p.message))
                .collect(),
            other => panic!("{other:?}"),
        }
    }

    const PERMIT: &str = "permit(principal, action == Attestd::Action::\"github.create_pr\", resource);\n";

    #[test]
    fn every_policy_file_in_order_with_ids_from_annotations_or_file_and_line() {
        let dir = dir(&[
            (
                "b.cedar",
                "\n// second file\n@id(\"reviewers may comment\")\npermit(principal, action == Attestd::Action::\"jira.comment\", resource)\nwhen { principal.labels has agent && principal.labels.agent == \"reviewer\" };\n",
            ),
            (
                "a.cedar",
                &format!(
                    "{PERMIT}\nforbid(principal, action, resource)\nwhen {{ context.args.hasTag(\"branch\") && context.args.getTag(\"branch\") == \"main\" && resource.type == \"repo\" && context.task.delegation_depth > 0 }};\n"
                ),
            ),
            ("notes.txt", "not a policy"),
        ]);
        let book = PolicyBook::load(Some(dir.path()), &entries()).unwrap();
        let mut ids: Vec<String> = book.policies().policies().map(|p| p.id().to_string()).collect();
        ids.sort();
        assert_eq!(ids, ["a.cedar:1", "a.cedar:3", "reviewers may comment"]);
        assert!(book.has_action("jira.comment") && !book.has_action("nope"));
        assert!(!book.needs_exe_hash());
    }

    #[test]
    fn no_policy_dir_is_an_empty_set() {
        let book = PolicyBook::load(None, &entries()).unwrap();
        assert!(book.is_empty());
        assert!(book.has_action("github.create_pr"));
    }

    #[test]
    fn a_parse_error_names_its_file_and_line() {
        let found = problems(&[
            ("ok.cedar", PERMIT),
            (
                "bad.cedar",
                &format!("{PERMIT}\npermit(principal, action, resource)\nwhen {{ principal.owner == }};\n"),
            ),
        ]);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].starts_with("bad.cedar:4: "), "{found:?}");
    }

    #[test]
    fn a_validation_error_names_the_line_of_the_offending_expression() {
        let text = "permit(principal, action, resource)\nwhen {\n  principal.owner == \"x\" &&\n  principal.nickname == \"y\"\n};\n";
        let found = problems(&[("v.cedar", text)]);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].starts_with("v.cedar:4: "), "{found:?}");
        assert!(found[0].contains("nickname"), "{found:?}");

        // A label no entry uses, an action no entry allows, an unknown type.
        let found = problems(&[(
            "w.cedar",
            "permit(principal, action, resource) when { principal.labels.team == \"x\" };\npermit(principal, action == Attestd::Action::\"rm.rf\", resource);\npermit(principal is Attestd::User, action, resource);\n",
        )]);
        let lines: Vec<&str> = found.iter().map(|p| p.split(": ").next().unwrap()).collect();
        assert_eq!(lines, ["w.cedar:1", "w.cedar:2", "w.cedar:3"], "{found:?}");
    }

    #[test]
    fn policy_ids_are_unique_across_files() {
        let one = "@id(\"same\")\npermit(principal, action, resource);\n";
        let found = problems(&[("a.cedar", one), ("b.cedar", &format!("\n\n{one}"))]);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].starts_with("b.cedar:3: duplicate policy id \"same\": the policy at "),
            "{found:?}"
        );
        assert!(found[0].ends_with("a.cedar:1 has it already"), "{found:?}");
    }

    #[test]
    fn templates_are_refused() {
        let found = problems(&[("t.cedar", "permit(principal == ?principal, action, resource);\n")]);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].starts_with("t.cedar:1: "), "{found:?}");
    }

    #[test]
    fn a_policy_naming_the_exe_hash_makes_callers_hashed() {
        let text = "permit(principal, action, resource) when { principal has exe_sha256 && principal.exe_sha256 == \"ab\" };\n";
        let dir = dir(&[("h.cedar", text)]);
        assert!(
            PolicyBook::load(Some(dir.path()), &entries())
                .unwrap()
                .needs_exe_hash()
        );
    }

    /// The example policies of the README's "Policy decisions" section
    /// validate against the schema for entries with the labels and tools
    /// they name.
    #[test]
    fn the_readme_examples_validate() {
        let readme = include_str!("../../README.md");
        let examples = readme
            .split_once("For example:\n\n```cedar\n")
            .and_then(|(_, rest)| rest.split_once("```"))
            .map(|(examples, _)| examples)
            .expect("the README's example policies");
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("readme.cedar"), examples).unwrap();
        let entries = [entry(
            "reviewer",
            &[("agent", "reviewer")],
            &["github.create_pr", "jira.comment"],
        )];
        let book = PolicyBook::load(Some(dir.path()), &entries).unwrap();
        assert_eq!(book.len(), 3);
        assert!(book.needs_exe_hash());
    }
}
