//! `cairn server --config FILE`: the server's flags from a TOML file.
//!
//! Every flag of `cairn server` is also a key, by its long name (`data-dir` or `data_dir`):
//!
//! ```toml
//! id = 1
//! data-dir = "/var/lib/cairn"
//! listen = "10.0.0.1:7001"
//! join = ["10.0.0.2:7001", "10.0.0.3:7001"]
//! quiesce = true
//! ```
//!
//! A flag on the command line, or its `CAIRN_…` variable, wins over the file: one file can
//! serve every node and a flag can still change one of them. The file's keys become flags
//! inserted after `server`, so clap checks their values exactly as it checks typed ones.

use anyhow::{Context, bail};
use std::collections::HashSet;
use std::ffi::OsString;
use std::path::PathBuf;

/// `args` with the flags of `cairn server`'s config file (`--config` or `CAIRN_CONFIG`)
/// inserted after `server`, less those the command line or the environment gives; `args`
/// unchanged when there is no such file.
pub(crate) fn expand(args: Vec<OsString>, cli: &clap::Command) -> anyhow::Result<Vec<OsString>> {
    let Some(at) = subcommand_at(&args).filter(|i| args[*i] == "server") else {
        return Ok(args);
    };
    let typed = &args[at + 1..];
    if typed.iter().any(|a| a == "--help" || a == "-h") {
        return Ok(args);
    }
    let path = typed
        .iter()
        .enumerate()
        .find_map(|(i, a)| {
            let a = a.to_str()?;
            if a == "--config" {
                // A missing value (`--config --id 1`) is clap's to report.
                let value = typed.get(i + 1);
                Some(
                    value
                        .filter(|v| !v.to_string_lossy().starts_with('-'))
                        .map(PathBuf::from),
                )
            } else {
                a.strip_prefix("--config=").map(|v| Some(PathBuf::from(v)))
            }
        })
        .unwrap_or_else(|| {
            std::env::var_os("CAIRN_CONFIG")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        });
    let Some(path) = path else {
        return Ok(args);
    };
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read the config file {}", path.display()))?;
    let Some(server) = cli.find_subcommand("server") else {
        return Ok(args);
    };
    // Global flags the server reads too (`--certs-dir`) are keys as well; `--endpoints` is
    // for the client commands.
    let mut server = server.clone();
    for g in cli
        .get_arguments()
        .filter(|a| a.is_global_set() && !matches!(a.get_long(), Some("endpoints" | "token")))
    {
        server = server.arg(g.clone());
    }
    let flags = flags_from(&text, &path.display().to_string(), &server, |name, env| {
        given(typed, name) || env.is_some_and(|e| std::env::var_os(e).is_some())
    })?;
    let mut out = args[..=at].to_vec();
    out.extend(flags.into_iter().map(OsString::from));
    out.extend_from_slice(typed);
    Ok(out)
}

/// Where the subcommand is in `args`: the first word after the program's name that is
/// neither an option nor the value of the one global option that takes a value.
fn subcommand_at(args: &[OsString]) -> Option<usize> {
    let mut i = 1;
    while let Some(a) = args.get(i) {
        if a == "--endpoints" || a == "--certs-dir" || a == "--token" {
            i += 2;
        } else if a.to_string_lossy().starts_with('-') {
            i += 1;
        } else {
            return Some(i);
        }
    }
    None
}

/// Whether the typed arguments give the flag `--name`.
fn given(typed: &[OsString], name: &str) -> bool {
    typed.iter().filter_map(|a| a.to_str()).any(|a| {
        a.strip_prefix("--")
            .is_some_and(|f| f.split('=').next() == Some(name))
    })
}

/// The flags the TOML `text` (of the file `file`) sets for `server`, skipping those for
/// which `overridden(long name, env variable)` holds.
fn flags_from(
    text: &str,
    file: &str,
    server: &clap::Command,
    overridden: impl Fn(&str, Option<&str>) -> bool,
) -> anyhow::Result<Vec<String>> {
    let table: toml::Table = text
        .parse()
        .with_context(|| format!("{file} is not valid TOML"))?;
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for (key, value) in &table {
        let name = key.replace('_', "-");
        let arg = server.get_arguments().find(|a| {
            a.get_long() == Some(name.as_str()) && !matches!(name.as_str(), "config" | "help")
        });
        let Some(arg) = arg else {
            let keys: Vec<&str> = server
                .get_arguments()
                .filter_map(|a| a.get_long())
                .filter(|l| !matches!(*l, "config" | "help"))
                .collect();
            bail!(
                "unknown key `{key}` in {file}; the keys are the flags of `cairn server --help`: {}",
                keys.join(", ")
            );
        };
        if !seen.insert(name.clone()) {
            bail!("{file} sets `{name}` twice (once as `{key}`)");
        }
        let env = arg.get_env().and_then(|e| e.to_str());
        if overridden(&name, env) {
            continue;
        }
        let takes_value = arg.get_action().takes_values();
        let scalar = |v: &toml::Value| match v {
            toml::Value::String(s) => Ok(s.clone()),
            toml::Value::Integer(i) => Ok(i.to_string()),
            toml::Value::Float(f) => Ok(f.to_string()),
            toml::Value::Boolean(b) => Ok(b.to_string()),
            _ => bail!("`{key}` in {file} must be a string, a number, a boolean or a list of them"),
        };
        match value {
            toml::Value::Boolean(b) if !takes_value => {
                if *b {
                    out.push(format!("--{name}"));
                }
            }
            _ if !takes_value => bail!("`{key}` in {file} is a switch: give true or false"),
            toml::Value::Array(items) => {
                let items = items
                    .iter()
                    .map(scalar)
                    .collect::<anyhow::Result<Vec<_>>>()?;
                out.push(format!("--{name}={}", items.join(",")));
            }
            v => out.push(format!("--{name}={}", scalar(v)?)),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{Args, Command};

    #[derive(Args)]
    struct Flags {
        #[arg(long, env = "CAIRN_TEST_CONFIG_ID")]
        id: u64,
        #[arg(long)]
        data_dir: String,
        #[arg(long, value_delimiter = ',')]
        join: Vec<String>,
        #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
        quiesce: bool,
        #[arg(long)]
        fault_skip_fsync: bool,
        #[arg(long)]
        config: Option<String>,
    }

    fn server() -> Command {
        Flags::augment_args(Command::new("server"))
    }

    #[test]
    fn every_kind_of_key_becomes_its_flag() {
        let text = r#"
            id = 3
            data_dir = "/var/lib/cairn"
            join = ["a:7001", "b:7001"]
            quiesce = false
            fault-skip-fsync = true
        "#;
        let flags = flags_from(text, "c.toml", &server(), |_, _| false).unwrap();
        let mut flags = flags;
        flags.sort();
        assert_eq!(
            flags,
            [
                "--data-dir=/var/lib/cairn",
                "--fault-skip-fsync",
                "--id=3",
                "--join=a:7001,b:7001",
                "--quiesce=false"
            ]
        );
        let off = flags_from("fault_skip_fsync = false", "c.toml", &server(), |_, _| {
            false
        });
        assert!(off.unwrap().is_empty(), "a switch set false is left off");
    }

    #[test]
    fn a_typed_flag_or_its_variable_wins_over_the_file() {
        let text = "id = 3\ndata-dir = \"/d\"";
        let flags = flags_from(text, "c.toml", &server(), |name, env| {
            name == "data-dir" || env == Some("CAIRN_TEST_CONFIG_ID")
        })
        .unwrap();
        assert!(flags.is_empty(), "{flags:?}");
        let typed: Vec<OsString> = ["--data-dir", "/x", "--id=2"].map(OsString::from).to_vec();
        assert!(given(&typed, "data-dir") && given(&typed, "id"));
        assert!(!given(&typed, "join"));
    }

    #[test]
    fn mistakes_are_named() {
        let err = |text: &str| {
            flags_from(text, "c.toml", &server(), |_, _| false)
                .unwrap_err()
                .to_string()
        };
        let e = err("datadir = \"/d\"");
        assert!(
            e.contains("unknown key `datadir` in c.toml") && e.contains("data-dir"),
            "{e}"
        );
        assert!(err("config = \"other.toml\"").contains("unknown key"));
        assert!(err("id = ").contains("not valid TOML"));
        assert!(err("fault-skip-fsync = \"yes\"").contains("a switch"));
        assert!(err("join = { a = 1 }").contains("must be a string"));
        assert!(err("[server]\nid = 1").contains("unknown key `server`"));
        assert!(err("data-dir = \"/a\"\ndata_dir = \"/b\"").contains("twice"));
    }

    #[test]
    fn the_file_goes_after_server_and_before_the_typed_flags() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cairn.toml");
        std::fs::write(&path, "id = 7\ndata-dir = \"/from-file\"").unwrap();
        let cli = Command::new("cairn").subcommand(server());
        let args: Vec<OsString> = vec![
            "cairn".into(),
            "server".into(),
            "--config".into(),
            path.clone().into(),
            "--data-dir=/typed".into(),
        ];
        let out = expand(args, &cli).unwrap();
        let out: Vec<String> = out
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            out[..3],
            ["cairn".to_string(), "server".into(), "--id=7".into()]
        );
        assert_eq!(out.last().map(String::as_str), Some("--data-dir=/typed"));
        assert!(!out.iter().any(|a| a == "--data-dir=/from-file"));
        // `server` as a word of another command is not the subcommand.
        for other in [
            vec![
                "cairn",
                "get",
                "t",
                "server",
                "--config",
                "/nonexistent.toml",
            ],
            vec!["cairn", "--endpoints", "server", "put", "t", "k", "v"],
        ] {
            let args: Vec<OsString> = other.iter().map(OsString::from).collect();
            assert_eq!(expand(args.clone(), &cli).unwrap(), args);
        }
        let m = cli.try_get_matches_from(&out).unwrap();
        let (_, s) = m.subcommand().unwrap();
        assert_eq!(s.get_one::<u64>("id"), Some(&7));
        assert_eq!(
            s.get_one::<String>("data_dir").map(String::as_str),
            Some("/typed")
        );
        let missing = vec![
            OsString::from("cairn"),
            "server".into(),
            "--config=/nonexistent.toml".into(),
        ];
        let e = expand(missing, &Command::new("cairn").subcommand(server())).unwrap_err();
        assert!(format!("{e:#}").contains("cannot read the config file /nonexistent.toml"));
    }
}
