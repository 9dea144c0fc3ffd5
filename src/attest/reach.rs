//! Whether attestd can attest processes of users other than its own, asked
//! once at start. Reading another user's `/proc/<pid>/exe` and
//! `/proc/<pid>/fd` takes ptrace read access (`CAP_SYS_PTRACE`), and hashing
//! an executable root's uid alone cannot read takes `CAP_DAC_READ_SEARCH`.
//! Without them every such caller is refused per call (`Unavailable`, fail
//! closed) and nothing else would say why: so the daemon says it at start.

/// A capability attestation of other users' processes needs.
#[derive(Debug)]
struct Needed {
    name: &'static str,
    /// Its bit in the `CapEff` mask (`<linux/capability.h>`).
    bit: u32,
    why: &'static str,
}

const NEEDED: [Needed; 2] = [
    Needed {
        name: "CAP_SYS_PTRACE",
        bit: 19,
        why: "open /proc/<pid>/exe and /proc/<pid>/fd of other users",
    },
    Needed {
        name: "CAP_DAC_READ_SEARCH",
        bit: 2,
        why: "hash executables and walk /proc/<pid> of other users",
    },
];

/// What stops attestd from attesting other users' processes, if anything.
#[derive(Debug)]
pub struct Reach {
    /// The needed capabilities missing from the effective set.
    missing: Vec<&'static Needed>,
}

impl Reach {
    /// Reads attestd's own effective capabilities (`/proc/self/status`).
    /// If they cannot be read, says so as if none were held: the warning
    /// is then at worst needless, never missing.
    pub fn of_this_process() -> Self {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        Self::from_status(&status)
    }

    /// From the text of a `/proc/<pid>/status` file.
    fn from_status(status: &str) -> Self {
        let effective = status
            .lines()
            .find_map(|line| line.strip_prefix("CapEff:"))
            .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
            .unwrap_or(0);
        let missing = NEEDED
            .iter()
            .filter(|needed| effective & (1 << needed.bit) == 0)
            .collect();
        Self { missing }
    }

    /// Whether callers of every uid can be attested.
    pub fn is_complete(&self) -> bool {
        self.missing.is_empty()
    }

    /// The missing capabilities, comma-separated (empty if none).
    pub fn missing(&self) -> String {
        let names: Vec<_> = self.missing.iter().map(|needed| needed.name).collect();
        names.join(", ")
    }

    /// What to tell the operator: what is missing, what it is for, what
    /// callers will see, and how to grant it. `None` when nothing is missing.
    pub fn warning(&self) -> Option<String> {
        if self.is_complete() {
            return None;
        }
        let uses: Vec<_> = self
            .missing
            .iter()
            .map(|needed| format!("{} ({})", needed.name, needed.why))
            .collect();
        Some(format!(
            "attestd cannot attest processes of other users: its effective capabilities lack {}; \
             callers of other uids (and any holding capabilities attestd lacks) will be refused \
             with Unavailable. Run it as root with these capabilities: the shipped systemd unit grants \
             them (CapabilityBoundingSet=); in a container add them (podman/docker run --cap-add \
             SYS_PTRACE,DAC_READ_SEARCH)",
            uses.join(" and ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(cap_eff: &str) -> String {
        format!("Name:\tattestd\nCapInh:\t0000000000000000\nCapPrm:\t{cap_eff}\nCapEff:\t{cap_eff}\n")
    }

    #[test]
    fn full_root_reaches_everyone() {
        let reach = Reach::from_status(&status("000001ffffffffff"));
        assert!(reach.is_complete());
        assert_eq!(reach.warning(), None);
    }

    #[test]
    fn the_units_bounding_set_reaches_everyone() {
        // CAP_DAC_READ_SEARCH (2), CAP_NET_BIND_SERVICE (10), CAP_SYS_PTRACE (19).
        let mask = (1u64 << 2) | (1 << 10) | (1 << 19);
        assert!(Reach::from_status(&status(&format!("{mask:016x}"))).is_complete());
    }

    #[test]
    fn podmans_default_set_lacks_both() {
        // podman's defaults: CHOWN DAC_OVERRIDE FOWNER FSETID KILL NET_BIND_SERVICE
        // SETFCAP SETGID SETPCAP SETUID SYS_CHROOT.
        let reach = Reach::from_status(&status("00000000800405fb"));
        assert_eq!(reach.missing(), "CAP_SYS_PTRACE, CAP_DAC_READ_SEARCH");
        let warning = reach.warning().unwrap();
        assert!(
            warning.contains("cannot attest processes of other users"),
            "{warning}"
        );
        assert!(
            warning.contains("--cap-add SYS_PTRACE,DAC_READ_SEARCH"),
            "{warning}"
        );
    }

    #[test]
    fn one_missing_is_named_alone() {
        let reach = Reach::from_status(&status(&format!("{:016x}", 1u64 << 19)));
        assert_eq!(reach.missing(), "CAP_DAC_READ_SEARCH");
    }

    #[test]
    fn an_unreadable_mask_counts_as_none() {
        assert!(!Reach::from_status("Name:\tattestd\n").is_complete());
    }
}
