//! The task claims of a task token (see the module doc of [`super`]): built
//! from a task when its token is minted, read back from a validated token.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::selector::SelectorSet;
use crate::spiffe_id::SpiffeId;

/// The claims a task token carries besides the JWT-SVID's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct TaskClaims {
    pub task_id: String,
    /// Ancestors' ids, root first; absent for a top-level task.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub task_parents: Vec<String>,
    pub purpose: String,
    pub tools: Vec<String>,
    pub resources: Vec<String>,
    pub owner: String,
    pub attestation: String,
    /// RFC 8693 actor: the agent that delegated the task; absent for a
    /// top-level task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub act: Option<Actor>,
}

/// An RFC 8693 `act` claim: the delegating agent, and the one before it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Actor {
    pub sub: SpiffeId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub act: Option<Box<Actor>>,
}

impl Actor {
    /// The `act` chain of delegators listed outermost (the root task's
    /// holder) first: the most recent delegator is the outer `act`.
    pub fn chain(delegated_by: &[SpiffeId]) -> Option<Self> {
        delegated_by.iter().fold(None, |before, sub| {
            Some(Self {
                sub: sub.clone(),
                act: before.map(Box::new),
            })
        })
    }

    /// The delegators, outermost first.
    pub fn delegators(&self) -> Vec<SpiffeId> {
        let mut chain = Vec::new();
        let mut actor = Some(self);
        while let Some(current) = actor {
            chain.push(current.sub.clone());
            actor = current.act.as_deref();
        }
        chain.reverse();
        chain
    }
}

impl TaskClaims {
    /// The claims as a JSON object, for minting.
    pub fn to_map(&self) -> Map<String, Value> {
        match serde_json::to_value(self) {
            Ok(Value::Object(map)) => map,
            // A struct of strings, lists and objects always serializes to
            // an object.
            _ => Map::new(),
        }
    }

    /// The task claims of a validated token: `None` when it names no task
    /// (a plain JWT-SVID), an error when it names one but the claims are
    /// not a task's.
    pub fn of(claims: &Map<String, Value>) -> Option<Result<Self, String>> {
        claims.get("task_id")?;
        Some(serde_json::from_value(Value::Object(claims.clone())).map_err(|e| e.to_string()))
    }
}

/// The `attestation` claim: lowercase hex sha256 over the caller's sorted
/// selector strings joined by newlines.
pub fn attestation_digest(selectors: &SelectorSet) -> String {
    let mut lines = selectors.to_strings();
    lines.sort();
    hex::encode(Sha256::digest(lines.join("\n").as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::selector::Selector;

    fn id(path: &str) -> SpiffeId {
        SpiffeId::new(&format!("spiffe://example.org/{path}")).unwrap()
    }

    #[test]
    fn the_act_chain_nests_the_latest_delegator_outermost() {
        let chain = Actor::chain(&[id("root"), id("middle")]).unwrap();
        let json = serde_json::to_value(&chain).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"sub": "spiffe://example.org/middle", "act": {"sub": "spiffe://example.org/root"}})
        );
        assert_eq!(chain.delegators(), [id("root"), id("middle")]);
        assert_eq!(Actor::chain(&[]), None);
    }

    #[test]
    fn claims_round_trip_and_a_top_level_task_has_no_parents_or_act() {
        let claims = TaskClaims {
            task_id: "t1".into(),
            task_parents: Vec::new(),
            purpose: "p".into(),
            tools: vec!["a".into()],
            resources: Vec::new(),
            owner: "o@example.org".into(),
            attestation: "ab".into(),
            act: None,
        };
        let map = claims.to_map();
        assert!(!map.contains_key("task_parents") && !map.contains_key("act"));
        assert_eq!(map["resources"], serde_json::json!([]));
        let mut token = map.clone();
        token.insert("sub".into(), "spiffe://example.org/a".into());
        assert_eq!(TaskClaims::of(&token).unwrap().unwrap(), claims);
        token.insert("tools".into(), Value::from(3));
        assert!(TaskClaims::of(&token).unwrap().is_err());
        token.remove("task_id");
        assert!(TaskClaims::of(&token).is_none());
    }

    #[test]
    fn the_attestation_digest_is_over_sorted_lines() {
        let set: SelectorSet = ["unix:uid:1000", "unix:gid:1000"]
            .iter()
            .map(|s| s.parse::<Selector>().unwrap())
            .collect();
        let expected = hex::encode(Sha256::digest(b"unix:gid:1000\nunix:uid:1000"));
        assert_eq!(attestation_digest(&set), expected);
    }
}
