//! After each kill: every file attestd keeps in `data_dir` must parse, and
//! no root or JWT key may vanish before its expiry (a lost `ca.json` would
//! make attestd sign with a root nobody holds: a split trust bundle).
//!
//! Checked independently of attestd's code: JSON by serde_json, PEM by
//! `pem`, certificates by x509-parser, keys by rcgen (ring).

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use x509_parser::prelude::{FromDer, X509Certificate};

/// What a check remembers for the next one.
#[derive(Default)]
pub struct StateCheck {
    /// Roots (DER) and JWT key ids seen in the files, with their expiry.
    roots: HashMap<Vec<u8>, SystemTime>,
    kids: HashMap<String, SystemTime>,
    /// Once a file existed it must keep existing.
    seen_ca: bool,
    seen_keys: bool,
    seen_bundle: bool,
    /// Temporary files attestd's atomic writes left behind (never read).
    pub leftover_temps: usize,
    /// What `bundle.json` held at the last check: the X.509 roots (DER)
    /// and the JWT keys.
    pub bundle_roots: Vec<Vec<u8>>,
    pub bundle_jwt_keys: Option<spiffe::JwtBundleSet>,
}

/// A little grace on expiry: attestd drops a credential when its time has
/// come, by its own clock reading.
const EXPIRY_GRACE: Duration = Duration::from_secs(2);

impl StateCheck {
    /// Checks `data_dir`; returns the problems found.
    pub fn check(&mut self, data_dir: &Path) -> Vec<String> {
        let mut problems = Vec::new();
        let now = SystemTime::now();
        match self.check_ca(&data_dir.join("ca.json"), now) {
            Ok(()) => {}
            Err(problem) => problems.push(problem),
        }
        match self.check_keys(&data_dir.join("jwt_keys.json"), now) {
            Ok(()) => {}
            Err(problem) => problems.push(problem),
        }
        match self.check_bundle(&data_dir.join("bundle.json")) {
            Ok(()) => {}
            Err(problem) => problems.push(problem),
        }
        self.leftover_temps = std::fs::read_dir(data_dir)
            .map(|dir| {
                dir.filter_map(Result::ok)
                    .filter(|e| {
                        let name = e.file_name().to_string_lossy().into_owned();
                        name.starts_with('.') && name.ends_with(".tmp")
                    })
                    .count()
            })
            .unwrap_or(0);
        problems
    }

    fn check_ca(&mut self, path: &Path, now: SystemTime) -> Result<(), String> {
        let Some(json) = read_json(path, &mut self.seen_ca)? else {
            return Ok(());
        };
        let bad = |what: String| format!("{}: {what}", path.display());
        let cas = json["cas"].as_array().ok_or_else(|| bad("no cas array".into()))?;
        let mut roots = HashMap::new();
        for (i, ca) in cas.iter().enumerate() {
            let cert_pem = ca["certificate"]
                .as_str()
                .ok_or_else(|| bad(format!("cas[{i}]: no certificate")))?;
            let der = pem::parse(cert_pem)
                .map_err(|e| bad(format!("cas[{i}].certificate: {e}")))?
                .into_contents();
            let (_, cert) =
                X509Certificate::from_der(&der).map_err(|e| bad(format!("cas[{i}].certificate: {e}")))?;
            let key_pem = ca["private_key"]
                .as_str()
                .ok_or_else(|| bad(format!("cas[{i}]: no private_key")))?;
            let key =
                rcgen::KeyPair::from_pem(key_pem).map_err(|e| bad(format!("cas[{i}].private_key: {e}")))?;
            if cert.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
                return Err(bad(format!("cas[{i}]: the key is not the certificate's")));
            }
            let not_after =
                SystemTime::UNIX_EPOCH + Duration::from_secs(cert.validity().not_after.timestamp() as u64);
            roots.insert(der.clone(), not_after);
        }
        for (root, not_after) in &self.roots {
            if *not_after > now + EXPIRY_GRACE && !roots.contains_key(root) {
                return Err(bad(format!(
                    "a root valid until {} is gone before its expiry (serial {})",
                    humantime::format_rfc3339_seconds(*not_after),
                    crate::clients::serial(root)
                )));
            }
        }
        self.roots = roots;
        Ok(())
    }

    fn check_keys(&mut self, path: &Path, now: SystemTime) -> Result<(), String> {
        let Some(json) = read_json(path, &mut self.seen_keys)? else {
            return Ok(());
        };
        let bad = |what: String| format!("{}: {what}", path.display());
        let keys = json["keys"]
            .as_array()
            .ok_or_else(|| bad("no keys array".into()))?;
        let mut kids = HashMap::new();
        for (i, key) in keys.iter().enumerate() {
            let kid = key["kid"]
                .as_str()
                .ok_or_else(|| bad(format!("keys[{i}]: no kid")))?;
            let pkcs8 = base64::engine::general_purpose::STANDARD
                .decode(key["pkcs8"].as_str().unwrap_or_default())
                .map_err(|e| bad(format!("keys[{i}].pkcs8: {e}")))?;
            rcgen::KeyPair::try_from(pkcs8.as_slice()).map_err(|e| bad(format!("keys[{i}].pkcs8: {e}")))?;
            let not_after = key["not_after"]
                .as_u64()
                .ok_or_else(|| bad(format!("keys[{i}]: no not_after")))?;
            kids.insert(
                kid.to_owned(),
                SystemTime::UNIX_EPOCH + Duration::from_secs(not_after),
            );
        }
        for (kid, not_after) in &self.kids {
            if *not_after > now + EXPIRY_GRACE && !kids.contains_key(kid) {
                return Err(bad(format!("JWT key {kid} is gone before its expiry")));
            }
        }
        self.kids = kids;
        Ok(())
    }

    fn check_bundle(&mut self, path: &Path) -> Result<(), String> {
        self.bundle_roots.clear();
        self.bundle_jwt_keys = None;
        let Some(json) = read_json(path, &mut self.seen_bundle)? else {
            return Ok(());
        };
        let bad = |what: String| format!("{}: {what}", path.display());
        let keys = json["keys"]
            .as_array()
            .ok_or_else(|| bad("no keys array".into()))?;
        if keys.is_empty() {
            return Err(bad("no authority".into()));
        }
        let mut roots = Vec::new();
        let mut jwt_keys = Vec::new();
        for (i, key) in keys.iter().enumerate() {
            for (j, cert) in key["x5c"].as_array().into_iter().flatten().enumerate() {
                let der = base64::engine::general_purpose::STANDARD
                    .decode(cert.as_str().unwrap_or_default())
                    .map_err(|e| bad(format!("keys[{i}].x5c[{j}]: {e}")))?;
                X509Certificate::from_der(&der).map_err(|e| bad(format!("keys[{i}].x5c[{j}]: {e}")))?;
                roots.push(der);
            }
            if key["use"] == "jwt-svid" {
                jwt_keys.push(key.clone());
            }
        }
        // The JWT keys by the spiffe crate, as a relying party reads them.
        let trust_domain =
            spiffe::TrustDomain::new(crate::daemon::TRUST_DOMAIN).map_err(|e| bad(e.to_string()))?;
        let jwks = serde_json::to_vec(&serde_json::json!({ "keys": jwt_keys })).unwrap_or_default();
        let bundle = spiffe::JwtBundle::from_jwt_authorities(trust_domain, &jwks)
            .map_err(|e| bad(format!("the JWT keys: {e}")))?;
        let mut set = spiffe::JwtBundleSet::new();
        set.add_bundle(bundle);
        self.bundle_jwt_keys = Some(set);
        self.bundle_roots = roots;
        Ok(())
    }
}

/// The file as JSON; none if it does not exist and never did.
fn read_json(path: &Path, seen: &mut bool) -> Result<Option<serde_json::Value>, String> {
    match std::fs::read(path) {
        Ok(bytes) => {
            *seen = true;
            serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| format!("{}: not JSON ({} bytes): {e}", path.display(), bytes.len()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !*seen => Ok(None),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}
