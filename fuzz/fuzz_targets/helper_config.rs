//! The sidecar helper's configuration (`HelperConfig::parse`, from text:
//! spiffe-helper's HCL, translated, or TOML).
//! Never panics; an error names the file and a line that exists; every
//! output file that loads is one path component inside `cert_dir` (not
//! `.`, nor a name starting with `..`, which the helper keeps for itself),
//! with permission bits only.
#![no_main]

use std::path::Path;

use attestd::helper::HelperConfig;
use libfuzzer_sys::fuzz_target;

const PATH: &str = "/etc/attestd/helper.conf";

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match HelperConfig::parse(Path::new(PATH), text, None) {
        Ok(config) => {
            let files = config
                .x509
                .iter()
                .flat_map(|x| [&x.svid, &x.key, &x.bundle])
                .chain(&config.jwt_bundle)
                .chain(config.jwt_svids.iter().map(|j| &j.file));
            for file in files {
                assert!(file.mode <= 0o777, "mode {:o}", file.mode);
                let name = &file.name;
                assert!(!name.is_empty() && !name.contains('/') && !name.starts_with("..") && name != ".");
            }
        }
        Err(error) => {
            assert_eq!(error.file, Path::new(PATH));
            if let Some(line) = error.line {
                assert!(
                    line >= 1 && line <= text.lines().count().max(1) + 1,
                    "line {line}"
                );
            }
        }
    }
});
