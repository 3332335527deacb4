//! The configuration file: TOML whose keys are qtapd's long flags without
//! their dashes (`socket = "/run/qtap/qtapd.sock"`, `idle-timeout = 600`).
//!
//! The file's values become flags placed before the command line's, and the
//! command (`args_override_self`) lets a later flag override an earlier one:
//! so the file gets exactly the flags' checks, and the command line (and an
//! environment variable a flag reads) wins over the file.

use std::{
    ffi::OsString,
    fmt::Write as _,
    path::{Path, PathBuf},
};

use clap::{builder::ArgAction, Arg, Command, CommandFactory, FromArgMatches, Parser};

use super::Args;

/// Read when it exists and `--config` is not given.
pub const DEFAULT_PATH: &str = "/etc/qtap/qtapd.toml";

/// Flags that only make sense on a command line.
const COMMAND_LINE_ONLY: &[&str] = &[
    "bpf-trace",
    "capture-bytes",
    "config",
    "print-config",
    "print-man",
    "help",
    "version",
];

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Toml {
        path: PathBuf,
        source: toml::de::Error,
    },
    #[error(
        "{path}: unknown key `{key}`; the keys are qtapd's flags without their dashes: {known}"
    )]
    UnknownKey {
        path: PathBuf,
        key: String,
        known: String,
    },
    #[error("{path}: `{key}` must be a string, an integer or true/false")]
    Type { path: PathBuf, key: String },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// The flags a file may set.
fn settable(command: &Command) -> impl Iterator<Item = &Arg> {
    command.get_arguments().filter(|arg| {
        arg.get_long()
            .is_some_and(|long| !COMMAND_LINE_ONLY.contains(&long))
    })
}

/// The flags that the file `text` (read from `path`) stands for.
///
/// # Errors
/// The TOML is malformed, a key is not a settable flag, or a value is not
/// a string, integer or boolean.
pub fn flags(command: &Command, path: &Path, text: &str) -> Result<Vec<OsString>, ConfigError> {
    let table: toml::Table = text.parse().map_err(|source| ConfigError::Toml {
        path: path.to_owned(),
        source,
    })?;
    let mut flags = Vec::new();
    for (key, value) in table {
        let Some(arg) = settable(command).find(|a| a.get_long() == Some(key.as_str())) else {
            let known: Vec<&str> = settable(command).filter_map(Arg::get_long).collect();
            return Err(ConfigError::UnknownKey {
                path: path.to_owned(),
                key,
                known: known.join(", "),
            });
        };
        // An environment variable the flag reads beats the file.
        if arg
            .get_env()
            .is_some_and(|name| std::env::var_os(name).is_some())
        {
            continue;
        }
        let flag = format!("--{key}");
        match value {
            toml::Value::Boolean(true) if matches!(arg.get_action(), ArgAction::SetTrue) => {
                flags.push(flag.into());
            }
            toml::Value::Boolean(false) if matches!(arg.get_action(), ArgAction::SetTrue) => {}
            toml::Value::String(s) => flags.extend([flag.into(), s.into()]),
            toml::Value::Integer(n) => flags.extend([flag.into(), n.to_string().into()]),
            _ => {
                return Err(ConfigError::Type {
                    path: path.to_owned(),
                    key,
                })
            }
        }
    }
    Ok(flags)
}

/// Parses the command line `argv` over the configuration file: the one
/// `--config` names, else [`DEFAULT_PATH`] if it exists.
///
/// # Errors
/// `Err(Ok(_))`: the command line is wrong (clap's error, to be shown as
/// clap shows it); `Err(Err(_))`: the file is.
pub fn parse(argv: Vec<OsString>) -> Result<Args, Result<clap::Error, ConfigError>> {
    let given = Args::try_parse_from(&argv).map_err(Ok)?;
    let path = match &given.config {
        Some(path) => path.clone(),
        None if Path::new(DEFAULT_PATH).exists() => PathBuf::from(DEFAULT_PATH),
        None => return Ok(given),
    };
    if given.print_config || given.print_man {
        return Ok(given);
    }
    let text = std::fs::read_to_string(&path).map_err(|source| {
        Err(ConfigError::Read {
            path: path.clone(),
            source,
        })
    })?;
    let command = Args::command();
    let file = flags(&command, &path, &text).map_err(Err)?;
    let mut all = argv;
    let rest = all.split_off(1.min(all.len()));
    all.extend(file);
    all.extend(rest);
    command
        .try_get_matches_from(all)
        .and_then(|matches| Args::from_arg_matches(&matches))
        .map_err(|e| {
            // The command line alone parsed, so the file is at fault.
            let message = e.to_string();
            let what: Vec<&str> = message
                .lines()
                .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect();
            Err(ConfigError::Invalid {
                path,
                message: what.join(" ").trim_start_matches("error: ").to_owned(),
            })
        })
}

/// The commented example file: every settable flag with its help and its
/// default, generated from the flags themselves (`qtapd --print-config`;
/// `packaging/qtapd.toml` is its output, checked by a test).
#[must_use]
pub fn example(command: &Command) -> String {
    let mut out = String::from(
        "# qtapd's configuration (TOML), read from /etc/qtap/qtapd.toml or the\n\
         # file --config names. Each key is a qtapd flag without its dashes; a\n\
         # flag given on the command line wins. Unknown keys are errors.\n\
         # Generated by `qtapd --print-config`.\n",
    );
    for arg in settable(command) {
        out.push('\n');
        let help = arg
            .get_long_help()
            .or_else(|| arg.get_help())
            .map(ToString::to_string)
            .unwrap_or_default();
        for line in help.lines() {
            let _ = writeln!(out, "{}", format!("# {line}").trim_end());
        }
        let possible: Vec<String> = arg
            .get_possible_values()
            .iter()
            .map(|v| v.get_name().to_owned())
            .collect();
        if !possible.is_empty() && !matches!(arg.get_action(), ArgAction::SetTrue) {
            let _ = writeln!(out, "# One of: {}.", possible.join(", "));
        }
        let key = arg.get_long().unwrap_or_default();
        let value = if matches!(arg.get_action(), ArgAction::SetTrue) {
            "false".to_owned()
        } else if let Some(default) = arg.get_default_values().first() {
            let default = default.to_string_lossy();
            if default.parse::<i64>().is_ok() {
                default.into_owned()
            } else {
                toml::Value::String(default.into_owned()).to_string()
            }
        } else {
            let name = arg
                .get_value_names()
                .and_then(|names| names.first())
                .map_or_else(|| key.to_uppercase(), ToString::to_string);
            toml::Value::String(format!("<{name}>")).to_string()
        };
        let _ = writeln!(out, "# {key} = {value}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(args: &[&str]) -> Vec<OsString> {
        std::iter::once("qtapd")
            .chain(args.iter().copied())
            .map(OsString::from)
            .collect()
    }

    /// Parses `args` over a file holding `text`.
    fn with_file(text: &str, args: &[&str]) -> Result<Args, String> {
        let dir = std::env::temp_dir().join(format!("qtapd-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!(
            "{:x}.toml",
            crate::filter::compile::hash(text.as_bytes())
        ));
        std::fs::write(&path, text).unwrap();
        let mut all = vec!["--config", path.to_str().unwrap()];
        all.extend(args);
        let parsed = parse(argv(&all)).map_err(|e| match e {
            Ok(clap) => clap.to_string(),
            Err(file) => file.to_string(),
        });
        let _ = std::fs::remove_file(&path);
        parsed
    }

    #[test]
    fn the_shipped_example_is_what_qtapd_prints() {
        assert_eq!(
            include_str!("../../../packaging/qtapd.toml"),
            example(&Args::command()),
            "regenerate it: qtapd --print-config > packaging/qtapd.toml"
        );
    }

    /// Uncommenting every key of the example that has a real default gives
    /// a file qtapd accepts, with the same values as no file.
    #[test]
    fn the_example_uncommented_is_valid_and_changes_nothing() {
        let text: String = example(&Args::command())
            .lines()
            .filter_map(|l| l.strip_prefix("# "))
            .filter(|l| l.contains(" = ") && !l.contains("\"<"))
            .fold(String::new(), |mut text, l| {
                let _ = writeln!(text, "{l}");
                text
            });
        assert!(text.contains("idle-timeout = 600"), "{text}");
        let from_file = with_file(&text, &[]).unwrap();
        let plain = Args::try_parse_from(argv(&[])).unwrap();
        assert_eq!(
            format!("{:?}", from_file.socket),
            format!("{:?}", plain.socket)
        );
        assert_eq!(from_file.idle_timeout, plain.idle_timeout);
        assert_eq!(from_file.socket_group, plain.socket_group);
    }

    #[test]
    fn the_file_sets_and_flags_win() {
        let text = "idle-timeout = 5\nsocket-group = \"ops\"\nlog-level = \"debug\"\n";
        let args = with_file(text, &[]).unwrap();
        assert_eq!(args.idle_timeout, 5);
        assert_eq!(args.socket_group, "ops");
        assert_eq!(args.log_level, super::super::Level::Debug);
        let args = with_file(text, &["--idle-timeout", "7"]).unwrap();
        assert_eq!(args.idle_timeout, 7);
        assert_eq!(args.socket_group, "ops");
    }

    #[test]
    fn mistakes_in_the_file_are_errors_naming_it() {
        let unknown = with_file("idle_timeout = 5\n", &[]).unwrap_err();
        assert!(unknown.contains("unknown key `idle_timeout`"), "{unknown}");
        assert!(
            unknown.contains("idle-timeout"),
            "lists the keys: {unknown}"
        );
        let only_flag = with_file("bpf-trace = \"pid:1\"\n", &[]).unwrap_err();
        assert!(only_flag.contains("unknown key `bpf-trace`"), "{only_flag}");
        let value = with_file("idle-timeout = \"ten\"\n", &[]).unwrap_err();
        assert!(value.contains(".toml: invalid value 'ten'"), "{value}");
        let kind = with_file("idle-timeout = [1]\n", &[]).unwrap_err();
        assert!(kind.contains("must be a string"), "{kind}");
        let toml = with_file("idle-timeout = \n", &[]).unwrap_err();
        assert!(toml.contains(".toml: "), "{toml}");
        let tls = with_file("tls-cert = \"/x.pem\"\n", &[]).unwrap_err();
        assert!(tls.contains("--listen-tcp"), "needs the listener: {tls}");
    }

    /// The config in the Kubernetes manifest's `ConfigMap` is one qtapd takes.
    #[test]
    fn the_kubernetes_config_map_holds_a_valid_file() {
        let manifest = include_str!("../../../packaging/kubernetes/qtapd.yaml");
        let text = manifest
            .lines()
            .skip_while(|l| !l.ends_with("qtapd.toml: |"))
            .skip(1)
            .take_while(|l| l.starts_with("    "))
            .fold(String::new(), |mut text, l| {
                let _ = writeln!(text, "{}", &l[4..]);
                text
            });
        assert!(text.contains("metrics-listen"), "{text}");
        let args = with_file(&text, &[]).unwrap();
        assert!(args.metrics_listen.is_some());
    }

    #[test]
    fn a_missing_file_named_by_config_is_an_error() {
        let missing = parse(argv(&["--config", "/nonexistent/qtapd.toml"]));
        assert!(
            matches!(missing, Err(Err(ConfigError::Read { .. }))),
            "{missing:?}"
        );
    }
}
