//! spiffe-helper's command-line habits. It parses flags with Go's `flag`
//! package, where long flags take one dash (`-config helper.conf`,
//! `-daemon-mode=false`); clap would read `-config` as `-c onfig`. So the
//! helper's arguments are rewritten into clap's spelling before parsing.

use std::ffi::OsString;

/// spiffe-helper's long flags (Go accepts `-name` and `--name` alike).
const GO_LONG_FLAGS: [&str; 3] = ["config", "daemon-mode", "help"];

/// `args` (the whole command line) with the `helper` subcommand's
/// single-dash long flags given two dashes; anything else is unchanged.
pub fn go_style_flags(args: impl IntoIterator<Item = OsString>) -> Vec<OsString> {
    let mut args: Vec<OsString> = args.into_iter().collect();
    if args.get(1).is_none_or(|subcommand| subcommand != "helper") {
        return args;
    }
    for arg in args.iter_mut().skip(2) {
        let Some(text) = arg.to_str() else { continue };
        if text == "--" {
            break;
        }
        let Some(flag) = text.strip_prefix('-').filter(|rest| !rest.starts_with('-')) else {
            continue;
        };
        let name = flag.split_once('=').map_or(flag, |(name, _)| name);
        if GO_LONG_FLAGS.contains(&name) {
            *arg = format!("--{flag}").into();
        }
    }
    args
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rewrite(line: &str) -> Vec<String> {
        go_style_flags(line.split(' ').map(OsString::from))
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect()
    }

    #[test]
    fn single_dash_long_flags_of_the_helper_get_two_dashes() {
        assert_eq!(
            rewrite("attestd helper -config helper.conf -daemon-mode=false"),
            [
                "attestd",
                "helper",
                "--config",
                "helper.conf",
                "--daemon-mode=false"
            ]
        );
        assert_eq!(
            rewrite("attestd helper -c x.toml"),
            ["attestd", "helper", "-c", "x.toml"]
        );
        assert_eq!(
            rewrite("attestd helper --config=a"),
            ["attestd", "helper", "--config=a"]
        );
    }

    #[test]
    fn other_commands_and_values_are_untouched() {
        assert_eq!(
            rewrite("attestd run -config x"),
            ["attestd", "run", "-config", "x"]
        );
        assert_eq!(
            rewrite("attestd helper -- -config"),
            ["attestd", "helper", "--", "-config"]
        );
    }
}
