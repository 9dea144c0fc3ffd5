//! The command-line habits of SPIRE and spiffe-helper users. Both parse
//! flags with Go's `flag` package, where long flags take one dash
//! (`spire-agent api fetch -output json`, `spiffe-helper -config
//! helper.conf -daemon-mode=false`); clap would read `-config` as
//! `-c onfig`. So those flags are rewritten into clap's spelling before
//! parsing.

use std::ffi::OsString;

/// Long flags every command takes in Go's spelling too.
const EVERYWHERE: [&str; 1] = ["output"];

/// spiffe-helper's long flags, for `attestd helper`.
const HELPER: [&str; 3] = ["config", "daemon-mode", "help"];

/// `args` (the whole command line) with Go-style single-dash long flags
/// given two dashes; anything else is unchanged.
pub fn go_style_flags(args: impl IntoIterator<Item = OsString>) -> Vec<OsString> {
    let mut args: Vec<OsString> = args.into_iter().collect();
    let helper = args.get(1).is_some_and(|subcommand| subcommand == "helper");
    for arg in args.iter_mut().skip(2) {
        let Some(text) = arg.to_str() else { continue };
        if text == "--" {
            break;
        }
        let Some(flag) = text.strip_prefix('-').filter(|rest| !rest.starts_with('-')) else {
            continue;
        };
        let name = flag.split_once('=').map_or(flag, |(name, _)| name);
        if EVERYWHERE.contains(&name) || (helper && HELPER.contains(&name)) {
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
