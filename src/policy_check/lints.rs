//! Lints for policy lines that are valid but do not do what they seem to:
//! selectors that can never match on this host, lifetimes another setting
//! caps, identities a client cannot tell apart by hint, and paths that
//! depend on the directory attestd was started from. Warnings only: what
//! an existing policy means never changes.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::config::Config;
use crate::registry::{Entry, Policy};

/// systemd's unit types: a `systemd:id` names a unit with one of these.
const UNIT_SUFFIXES: [&str; 11] = [
    ".service",
    ".socket",
    ".device",
    ".mount",
    ".automount",
    ".swap",
    ".target",
    ".path",
    ".timer",
    ".slice",
    ".scope",
];

/// Beyond this many entries sharing a hint, they are reported together
/// instead of pair by pair (the pairwise check is quadratic).
const MAX_HINT_GROUP: usize = 256;

/// Every warning about `config` and `policy` from the lints of this module.
pub(super) fn lint(config: &Config, policy: &Policy) -> Vec<String> {
    let mut warnings = relative_paths(config);
    warnings.extend(unknown_accounts(policy));
    for entry in policy.entries() {
        warnings.extend(unit_without_suffix(entry));
        warnings.extend(capped_ttls(config, entry));
        warnings.extend(any_audience_written(entry));
    }
    warnings.extend(shared_hints(policy));
    warnings
}

/// A relative `socket_path` or `data_dir` is resolved against attestd's
/// working directory, which a service manager chooses.
fn relative_paths(config: &Config) -> Vec<String> {
    [("socket_path", &config.socket_path), ("data_dir", &config.data_dir)]
        .into_iter()
        .filter(|(_, path)| path.is_relative())
        .map(|(key, path)| {
            format!(
                "{}: {key} {:?} is relative: it depends on the directory attestd starts in; write an absolute path",
                config.source.display(),
                path
            )
        })
        .collect()
}

/// `unix:user`/`unix:group` names this host does not know: no process can
/// have them (each name is looked up once).
fn unknown_accounts(policy: &Policy) -> Vec<String> {
    let mut known: BTreeMap<(&str, &str), bool> = BTreeMap::new();
    let mut warnings = Vec::new();
    for entry in policy.entries() {
        for selector in entry.selectors.iter() {
            let (kind, name) = (selector.kind(), selector.value());
            if !matches!(kind, "unix:user" | "unix:group") {
                continue;
            }
            if !*known
                .entry((kind, name))
                .or_insert_with(|| account_exists(kind, name))
            {
                let what = if kind == "unix:user" { "user" } else { "group" };
                warnings.push(format!(
                    "{}: {} names {kind}:{name}, but this host has no {what} {name:?}: the entry can never match here",
                    entry.location, entry.spiffe_id
                ));
            }
        }
    }
    warnings
}

/// Whether NSS knows the user (`unix:user`) or group named `name`. A
/// failed lookup counts as known: the lint warns only about certainties.
fn account_exists(kind: &str, name: &str) -> bool {
    let found = match kind {
        "unix:user" => nix::unistd::User::from_name(name).map(|user| user.is_some()),
        _ => nix::unistd::Group::from_name(name).map(|group| group.is_some()),
    };
    found.unwrap_or(true)
}

/// `systemd:id` is the unit's full name (`agent.service`); without the
/// type suffix it matches nothing.
fn unit_without_suffix(entry: &Entry) -> Vec<String> {
    entry
        .selectors
        .iter()
        .filter(|s| {
            s.kind() == "systemd:id" && !UNIT_SUFFIXES.iter().any(|suffix| s.value().ends_with(suffix))
        })
        .map(|s| {
            format!(
                "{}: {} names systemd:id:{}, which has no unit type: systemd names units in full \
                 (did you mean systemd:id:{}.service?)",
                entry.location,
                entry.spiffe_id,
                s.value(),
                s.value()
            )
        })
        .collect()
}

/// `jwt_audiences = []` reads like "no audience" but means any: an entry
/// restricts audiences only by listing some.
fn any_audience_written(entry: &Entry) -> Option<String> {
    entry.jwt_audiences_written_empty.then(|| {
        format!(
            "{}: {} sets jwt_audiences = [], which means any audience (the same as leaving the key out):              list the audiences its JWT-SVIDs may name, or drop the key",
            entry.location, entry.spiffe_id
        )
    })
}

/// A credential signs until a quarter of its life is left (see
/// `authority::schedule`), and nothing it signs outlives it: a lifetime
/// above a quarter of the CA's (or JWT key's) is shortened for part of
/// each rotation. An upstream CA caps by its own certificate instead.
fn capped_ttls(config: &Config, entry: &Entry) -> Vec<String> {
    let mut warnings = Vec::new();
    let mut check = |key: &str, ttl: Duration, signer: &str, signer_key: &str, signer_ttl: Duration| {
        let floor = signer_ttl / 4;
        if ttl > floor {
            warnings.push(format!(
                "{}: {} asks for {key} {}, but {signer} signs until a quarter of its {signer_key} ({}) is \
                 left and nothing outlives it: some are cut to {}; raise {signer_key} to at least {}",
                entry.location,
                entry.spiffe_id,
                humantime::format_duration(ttl),
                humantime::format_duration(signer_ttl),
                humantime::format_duration(floor),
                humantime::format_duration(ttl * 4),
            ));
        }
    };
    if config.ca.upstream.is_none() {
        check("x509_ttl", entry.x509_ttl, "a CA", "[ca] ttl", config.ca.ttl.0);
    }
    check(
        "jwt_ttl",
        entry.jwt_ttl,
        "a JWT key",
        "[ca] jwt_key_ttl",
        config.ca.jwt_key_ttl.0,
    );
    warnings
}

/// Two entries with one hint where every caller of one also matches the
/// other: the workload gets both identities under one hint, and a client
/// choosing by hint cannot tell them apart.
fn shared_hints(policy: &Policy) -> Vec<String> {
    let mut by_hint: BTreeMap<&str, Vec<&Entry>> = BTreeMap::new();
    for entry in policy.entries() {
        if let Some(hint) = entry.hint.as_deref() {
            by_hint.entry(hint).or_default().push(entry);
        }
    }
    let mut warnings = Vec::new();
    for (hint, entries) in by_hint {
        if entries.len() > MAX_HINT_GROUP {
            warnings.push(format!(
                "{} entries share the hint {hint:?}: a workload matching several cannot tell them apart by hint",
                entries.len()
            ));
            continue;
        }
        for (i, wider) in entries.iter().enumerate() {
            let wide: BTreeSet<_> = wider.selectors.iter().collect();
            for narrower in entries.iter().skip(i + 1) {
                let narrow: BTreeSet<_> = narrower.selectors.iter().collect();
                let (sub, sup) = match (wide.is_subset(&narrow), narrow.is_subset(&wide)) {
                    (true, _) => (wider, narrower),
                    (_, true) => (narrower, wider),
                    _ => continue,
                };
                warnings.push(format!(
                    "{}: {} shares the hint {hint:?} with {} ({}), and every caller of it matches that entry too: \
                     clients choosing by hint cannot tell the two apart",
                    sup.location, sup.spiffe_id, sub.spiffe_id, sub.location
                ));
            }
        }
    }
    warnings
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn warnings(text: &str) -> Vec<String> {
        let config = Config::parse(
            Path::new("p.toml"),
            &format!("trust_domain = \"example.org\"\n{text}"),
        )
        .unwrap();
        lint(&config, &Policy::load(&config).unwrap())
    }

    fn entry(id: &str, selectors: &str, extra: &str) -> String {
        format!(
            "[[entry]]\nspiffe_id = \"spiffe://example.org/{id}\"\nselectors = [{selectors}]\nowner = \"o\"\n{extra}\n"
        )
    }

    #[test]
    fn names_the_host_does_not_know_can_never_match() {
        let found = warnings(&entry(
            "a",
            "\"unix:user:root\", \"unix:group:no-such-group-xyz\"",
            "",
        ));
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].contains(
                "names unix:group:no-such-group-xyz, but this host has no group \"no-such-group-xyz\""
            ),
            "{found:?}"
        );
    }

    #[test]
    fn a_unit_needs_its_type() {
        let found = warnings(&entry("a", "\"unix:uid:0\", \"systemd:id:agent\"", ""));
        assert!(
            found[0].contains("did you mean systemd:id:agent.service?"),
            "{found:?}"
        );
        assert!(warnings(&entry("a", "\"unix:uid:0\", \"systemd:id:agent.service\"", "")).is_empty());
    }

    #[test]
    fn lifetimes_the_signer_caps_are_named_with_the_fix() {
        let found = warnings(&format!(
            "[ca]\nttl = \"4h\"\njwt_key_ttl = \"1h\"\n{}",
            entry("a", "\"unix:uid:0\"", "x509_ttl = \"2h\"\njwt_ttl = \"20m\"")
        ));
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(
            found[0].contains("x509_ttl 2h") && found[0].contains("cut to 1h; raise [ca] ttl to at least 8h"),
            "{found:?}"
        );
        assert!(
            found[1].contains("jwt_ttl 20m")
                && found[1].contains("raise [ca] jwt_key_ttl to at least 1h 20m"),
            "{found:?}"
        );
    }

    #[test]
    fn one_hint_over_nested_selectors_is_ambiguous() {
        let found = warnings(&format!(
            "{}{}{}",
            entry("wide", "\"unix:uid:0\"", "hint = \"db\""),
            entry("narrow", "\"unix:uid:0\", \"unix:gid:0\"", "hint = \"db\""),
            entry("other", "\"unix:uid:1\"", "hint = \"db\""),
        ));
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].contains(
                "spiffe://example.org/narrow shares the hint \"db\" with spiffe://example.org/wide"
            ),
            "{found:?}"
        );
    }

    #[test]
    fn an_empty_audience_list_is_said_to_mean_any() {
        let found = warnings(&entry("a", "\"unix:uid:0\"", "jwt_audiences = []"));
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].contains("sets jwt_audiences = [], which means any audience"),
            "{found:?}"
        );
        assert!(warnings(&entry("a", "\"unix:uid:0\"", "jwt_audiences = [\"svc\"]")).is_empty());
    }

    #[test]
    fn relative_paths_depend_on_the_working_directory() {
        let found = warnings(&format!(
            "socket_path = \"run/api.sock\"\n{}",
            entry("a", "\"unix:uid:0\"", "")
        ));
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].contains("socket_path \"run/api.sock\" is relative"),
            "{found:?}"
        );
    }
}
