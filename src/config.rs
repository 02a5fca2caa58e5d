//! The configuration file (`--config FILE`, TOML) of `serve`, `fetch` and `recover`.
//!
//! Every flag of a command is a key of its section, spelt as the flag without its dashes
//! (`write-limit` or `write_limit`); a flag given on the command line wins over the file. The
//! file is turned into the flags it stands for, ahead of the command line's, so one parser
//! (clap's) reads both and a file cannot mean anything a flag set cannot. `[stores.NAME]`
//! sections hold the per-store policy ([`StoreTable`]) the engine takes as is. Whatever is
//! wrong — a key no flag has, a value its flag refuses, a TOML error — is reported with the
//! file's line.
//!
//! ```toml
//! [serve]
//! data-dir = "/var/lib/quicstrap"
//! allow = ["node-a.example", "node-b.example"]
//! write-limit = 200_000_000
//!
//! [stores.orders]
//! serve = false
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::{ArgAction, Command};
use toml::de::{DeTable, DeValue};

use quicstrap::control::stores::{StorePolicy, StoreTable};

/// The commands a file may configure, each its own section.
pub const SECTIONS: [&str; 3] = ["serve", "fetch", "recover"];

/// Keys that change on a running `serve` when the file is reloaded (SIGHUP, admin
/// `reload`); every other key of `[serve]` needs a restart.
pub const LIVE_SERVE_KEYS: [&str; 2] = ["allow", "write-limit"];

/// One key of a section: where it is and the flag values it stands for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The key, dashed (`write-limit`).
    pub key: String,
    /// Its line in the file (1-based).
    pub line: usize,
    /// The value as flag arguments: one per array element, else one.
    pub values: Vec<String>,
    /// A boolean `true`/`false` (a switch such as `adaptive-throttle`).
    pub boolean: Option<bool>,
}

/// A configuration file, read and checked for TOML and section structure.
#[derive(Clone, Debug)]
pub struct ConfigFile {
    /// Where it was read from.
    pub path: PathBuf,
    /// The command line it configures (`quicstrap`, its subcommands and their flags).
    pub command: Command,
    /// The keys of each command's section.
    pub sections: BTreeMap<String, Vec<Entry>>,
    /// The per-store policy of `[stores.NAME]`.
    pub stores: StoreTable,
}

impl ConfigFile {
    /// Reads and parses `path`, a file for `command`; the error names the file and line.
    pub fn load(path: &Path, command: &Command) -> Result<Self, String> {
        let text =
            std::fs::read_to_string(path).map_err(|e| format!("config {}: {e}", path.display()))?;
        Self::parse(path, &text, command)
    }

    /// Parses `text`, read from `path`, a file for `command`.
    pub fn parse(path: &Path, text: &str, command: &Command) -> Result<Self, String> {
        let at = |offset: usize| format!("{}:{}", path.display(), line_of(text, offset));
        let root = DeTable::parse(text).map_err(|e| {
            let line = e
                .span()
                .map_or(String::new(), |s| format!(":{}", line_of(text, s.start)));
            format!("config {}{line}: {}", path.display(), e.message())
        })?;
        let mut sections = BTreeMap::new();
        let mut stores = StoreTable::default();
        for (key, value) in root.get_ref() {
            let name = key.get_ref().as_ref();
            let DeValue::Table(table) = value.get_ref() else {
                return Err(format!(
                    "{}: `{name}` must be a section ([serve], [fetch], [recover], [stores.NAME])",
                    at(key.span().start)
                ));
            };
            if name == "stores" {
                stores = parse_stores(text, path, table)?;
                continue;
            }
            if !SECTIONS.contains(&name) {
                return Err(format!(
                    "{}: unknown section [{name}]: expected [serve], [fetch], [recover] or [stores.NAME]",
                    at(key.span().start)
                ));
            }
            let mut entries = Vec::new();
            for (k, v) in table {
                let line = line_of(text, k.span().start);
                let key = k.get_ref().replace('_', "-");
                let (values, boolean) = flag_values(v.get_ref()).ok_or_else(|| {
                    format!(
                        "{}:{line}: [{name}] {key}: expected a string, number, boolean or array of them",
                        path.display()
                    )
                })?;
                entries.push(Entry {
                    key,
                    line,
                    values,
                    boolean,
                });
            }
            sections.insert(name.to_owned(), entries);
        }
        let file = Self {
            path: path.to_owned(),
            command: command.clone(),
            sections,
            stores,
        };
        for section in SECTIONS {
            file.args(section, &BTreeSet::new())?;
        }
        Ok(file)
    }

    /// The flags `[section]` stands for, less the ones in `given` (long names the command
    /// line sets itself, which win). A key no flag of the command has is the error.
    pub fn args(&self, section: &str, given: &BTreeSet<String>) -> Result<Vec<String>, String> {
        let Some(entries) = self.sections.get(section).filter(|e| !e.is_empty()) else {
            return Ok(Vec::new());
        };
        let sub = self
            .command
            .find_subcommand(section)
            .ok_or_else(|| format!("no command {section}"))?;
        let mut out = Vec::new();
        for e in entries {
            let where_ = format!("{}:{}: [{section}] {}", self.path.display(), e.line, e.key);
            let arg = sub
                .get_arguments()
                .find(|a| a.get_long() == Some(e.key.as_str()) && e.key != "config")
                .ok_or_else(|| {
                    format!("{where_}: unknown key (no flag --{} of `{section}`)", e.key)
                })?;
            if given.contains(&e.key) {
                continue;
            }
            let flag = format!("--{}", e.key);
            match arg.get_action() {
                ArgAction::SetTrue => match e.boolean {
                    Some(true) => out.push(flag),
                    Some(false) => {}
                    None => return Err(format!("{where_}: expected true or false")),
                },
                ArgAction::Append => {
                    out.extend(e.values.iter().map(|v| format!("{flag}={v}")));
                }
                _ => out.push(format!("{flag}={}", e.values.join(","))),
            }
        }
        Ok(out)
    }

    /// Checks every section's values with the flags' own parsers, as if alone on a command
    /// line; flags a section does not set (such as a required `--data-dir` given on the
    /// command line) are not asked for.
    pub fn check_values(&self) -> Result<(), String> {
        for section in SECTIONS {
            for e in self.sections.get(section).into_iter().flatten() {
                let mut only = self.clone();
                only.sections = BTreeMap::from([(section.to_owned(), vec![e.clone()])]);
                if let Some(err) = only.refused(section)? {
                    let (path, line, key) = (self.path.display(), e.line, &e.key);
                    return Err(format!("{path}:{line}: [{section}] {key}: {err}"));
                }
            }
            // Then the section whole, for rules between keys (conflicts such as
            // `no-shuffle` with `peer-order`). Flags the command line may add are not
            // asked for, so a `requires` of a key on one the file does not set passes here.
            if let Some(err) = self.refused(section)? {
                return Err(format!("{}: [{section}]: {err}", self.path.display()));
            }
        }
        Ok(())
    }

    /// What the command's parser says of `[section]`'s flags alone, if it refuses them for
    /// anything but a required flag they do not set.
    fn refused(&self, section: &str) -> Result<Option<String>, String> {
        use clap::error::ErrorKind::*;
        let args = self.args(section, &BTreeSet::new())?;
        if args.is_empty() {
            return Ok(None);
        }
        let argv = ["quicstrap", section]
            .into_iter()
            .map(String::from)
            .chain(args);
        let Err(err) = self.command.clone().try_get_matches_from(argv) else {
            return Ok(None);
        };
        if matches!(
            err.kind(),
            MissingRequiredArgument | DisplayHelpOnMissingArgumentOrSubcommand
        ) {
            return Ok(None);
        }
        let msg = err.to_string();
        let first = msg.lines().next().unwrap_or_default();
        Ok(Some(first.trim_start_matches("error: ").to_owned()))
    }
}

/// The 1-based line of byte `offset`.
fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// A value as flag arguments, and as a boolean when it is one; `None` for a nested table.
fn flag_values(v: &DeValue<'_>) -> Option<(Vec<String>, Option<bool>)> {
    let scalar = |v: &DeValue<'_>| -> Option<String> {
        Some(match v {
            DeValue::String(s) => s.to_string(),
            DeValue::Integer(i) => i64::from_str_radix(i.as_str(), i.radix())
                .map_or_else(|_| i.as_str().to_owned(), |n| n.to_string()),
            DeValue::Float(f) => f.as_str().to_owned(),
            DeValue::Boolean(b) => b.to_string(),
            DeValue::Datetime(d) => d.to_string(),
            DeValue::Array(_) | DeValue::Table(_) => return None,
        })
    };
    match v {
        DeValue::Array(items) => {
            let values = items
                .iter()
                .map(|i| scalar(i.get_ref()))
                .collect::<Option<Vec<_>>>()?;
            Some((values, None))
        }
        DeValue::Boolean(b) => Some((vec![b.to_string()], Some(*b))),
        other => Some((vec![scalar(other)?], None)),
    }
}

/// `[stores.NAME]` sections, each checked by the engine's own [`StoreTable`] type.
fn parse_stores(text: &str, path: &Path, table: &DeTable<'_>) -> Result<StoreTable, String> {
    // The engine's type decides what a store section may hold; errors point at the line.
    let mut stores = StoreTable::default();
    for (name, value) in table {
        let line = line_of(text, name.span().start);
        let span = value.span();
        let body = &text[span.start.min(text.len())..span.end.min(text.len())];
        let header = text
            .lines()
            .nth(line - 1)
            .is_some_and(|l| l.trim_start().starts_with('['));
        if let DeValue::Table(keys) = value.get_ref() {
            // A store's settings are values; a table under it (`[stores.x.y]`) is not one.
            if let Some((k, _)) = keys
                .iter()
                .find(|(_, v)| matches!(v.get_ref(), DeValue::Table(_)))
            {
                return Err(format!(
                    "{}:{}: [stores.{}] {}: a store's settings are values, not sections",
                    path.display(),
                    line_of(text, k.span().start),
                    name.get_ref(),
                    k.get_ref()
                ));
            }
        }
        let policy = match value.get_ref() {
            // `[stores.NAME]`: the keys between its header and the next one.
            DeValue::Table(_) if header => section_policy(text, name.get_ref(), line),
            // `NAME = { ... }` under `[stores]`.
            DeValue::Table(_) => {
                toml::from_str::<BTreeMap<String, StorePolicy>>(&format!("x = {body}"))
                    .map(|mut m| m.remove("x").unwrap_or_default())
                    .map_err(|e| e.message().to_owned())
            }
            _ => Err("must be a section [stores.NAME]".to_owned()),
        }
        .map_err(|e| format!("{}:{line}: [stores.{}] {e}", path.display(), name.get_ref()))?;
        stores.0.insert(name.get_ref().to_string(), policy);
    }
    Ok(stores)
}

/// Deserializes the keys of `[stores.NAME]`, whose header is on `line`, with errors on the
/// offending key's line.
fn section_policy(text: &str, name: &str, line: usize) -> Result<StorePolicy, String> {
    let lines: Vec<&str> = text.lines().collect();
    let start = line; // the line after the header (0-based index `line`)
    let end = (start..lines.len())
        .find(|&i| lines[i].trim_start().starts_with('['))
        .unwrap_or(lines.len());
    let body = lines[start.min(lines.len())..end].join("\n");
    toml::from_str(&body).map_err(|e: toml::de::Error| {
        let at = e
            .span()
            .map(|s| line + line_of(&body, s.start))
            .map_or(String::new(), |l| format!("line {l}: "));
        format!("{at}{} (store {name})", e.message())
    })
}

/// The long flags the command line sets itself (`--x` or `--x=v`), which win over the file.
pub fn given_flags(tokens: &[OsString]) -> BTreeSet<String> {
    tokens
        .iter()
        .filter_map(|t| t.to_str())
        .filter_map(|t| t.strip_prefix("--"))
        .map(|t| t.split('=').next().unwrap_or(t).to_owned())
        .collect()
}

/// Where `--config` points in a command line after the subcommand, if it does.
fn config_path(tokens: &[OsString]) -> Option<PathBuf> {
    let mut it = tokens.iter();
    while let Some(t) = it.next() {
        let s = t.to_string_lossy();
        if s == "--config" {
            return it.next().map(PathBuf::from);
        }
        if let Some(p) = s.strip_prefix("--config=") {
            return Some(PathBuf::from(p));
        }
    }
    None
}

/// A command line with its `--config` file's section spliced in ahead of the command line's
/// own flags: what clap then parses. Unchanged when there is no `--config`.
pub fn expand(
    argv: Vec<OsString>,
    command: &Command,
) -> Result<(Vec<OsString>, Option<ConfigFile>), String> {
    let Some(sub) = argv.get(1).and_then(|s| s.to_str()).map(str::to_owned) else {
        return Ok((argv, None));
    };
    if !SECTIONS.contains(&sub.as_str()) {
        return Ok((argv, None));
    }
    let tokens = &argv[2..];
    let Some(path) = config_path(tokens) else {
        return Ok((argv, None));
    };
    let file = ConfigFile::load(&path, command)?;
    file.check_values()?;
    let args = file.args(&sub, &given_flags(tokens))?;
    let mut out = argv[..2].to_vec();
    out.extend(args.into_iter().map(OsString::from));
    out.extend(tokens.iter().cloned());
    Ok((out, Some(file)))
}

/// The `[serve]` keys whose values differ between two versions of a file, by name.
pub fn changed_keys(old: &ConfigFile, new: &ConfigFile, section: &str) -> Vec<String> {
    let map = |f: &ConfigFile| -> BTreeMap<String, (Vec<String>, Option<bool>)> {
        f.sections
            .get(section)
            .into_iter()
            .flatten()
            .map(|e| (e.key.clone(), (e.values.clone(), e.boolean)))
            .collect()
    };
    let (a, b) = (map(old), map(new));
    let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    keys.into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .cloned()
        .collect()
}

/// `quicstrap config check FILE`: the file parses, every key is a flag of its command and
/// every value passes its flag's parser; prints what it configures.
pub fn check(path: &Path, command: &Command) -> Result<String, String> {
    let file = ConfigFile::load(path, command)?;
    file.check_values()?;
    let mut parts: Vec<String> = file
        .sections
        .iter()
        .map(|(s, e)| format!("[{s}] {} keys", e.len()))
        .collect();
    if !file.stores.0.is_empty() {
        let names: Vec<&str> = file.stores.0.keys().map(String::as_str).collect();
        parts.push(format!("stores {}", names.join(", ")));
    }
    Ok(format!("{}: ok ({})", path.display(), parts.join("; ")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A command line shaped like quicstrap's, with the kinds of flags it has (a value, a
    /// parsed number, a switch, a repeatable one, two that conflict); the real one is
    /// checked end to end in the integration tests (`cli::config_check_...`).
    fn command() -> Command {
        use clap::{value_parser, Arg};
        let value = |n: &'static str| Arg::new(n).long(n);
        let switch = |n: &'static str| Arg::new(n).long(n).action(ArgAction::SetTrue);
        Command::new("quicstrap")
            .subcommand(
                Command::new("serve")
                    .arg(value("data-dir").required(true))
                    .arg(value("allow"))
                    .arg(value("write-limit").value_parser(value_parser!(u64)))
                    .arg(switch("adaptive-throttle"))
                    .arg(value("also-listen").action(ArgAction::Append))
                    .arg(value("config")),
            )
            .subcommand(
                Command::new("fetch")
                    .arg(value("min-rate").value_parser(value_parser!(u64)))
                    .arg(value("peer-order"))
                    .arg(switch("no-shuffle").conflicts_with("peer-order")),
            )
    }

    fn parse(text: &str) -> Result<ConfigFile, String> {
        ConfigFile::parse(Path::new("q.toml"), text, &command())
    }

    #[test]
    fn keys_become_flags_and_the_command_line_wins() {
        let f = parse(
            "[serve]\ndata-dir = \"/d\"\nallow = [\"a\", \"b\"]\nwrite_limit = 5\n\
             adaptive-throttle = true\nalso-listen = [\"127.0.0.1:1\", \"127.0.0.1:2\"]\n",
        )
        .unwrap();
        let args = f.args("serve", &BTreeSet::new()).unwrap();
        assert_eq!(
            args,
            // In the order of the keys, sorted.
            [
                "--adaptive-throttle",
                "--allow=a,b",
                "--also-listen=127.0.0.1:1",
                "--also-listen=127.0.0.1:2",
                "--data-dir=/d",
                "--write-limit=5",
            ]
        );
        let given = given_flags(&["--write-limit=9".into(), "--allow".into(), "x".into()]);
        let args = f.args("serve", &given).unwrap();
        assert!(!args
            .iter()
            .any(|a| a.starts_with("--write-limit") || a.starts_with("--allow")));
    }

    #[test]
    fn a_bad_key_or_value_points_at_its_line() {
        let e = parse("[serve]\nallow = \"*\"\n\nwrite-limt = 5\n").unwrap_err();
        assert!(
            e.starts_with("q.toml:4: [serve] write-limt: unknown key"),
            "{e}"
        );
        let e = parse("[serve]\n\nwrite-limit = \"fast\"\n")
            .unwrap()
            .check_values()
            .unwrap_err();
        assert!(e.starts_with("q.toml:3: [serve] write-limit:"), "{e}");
        let e = parse("[serve]\nallow = \"*\"\n[srve]\nx = 1\n").unwrap_err();
        assert!(e.starts_with("q.toml:3: unknown section [srve]"), "{e}");
        let e = parse("[serve]\nallow = \n").unwrap_err();
        assert!(e.starts_with("config q.toml:2:"), "{e}");
        let e =
            parse("[stores.orders]\nserve = false\n[stores.orders.x]\nserve = 1\n").unwrap_err();
        assert!(
            e.contains("q.toml:3: [stores.orders] x: a store's settings are values"),
            "{e}"
        );
        let e = parse("[fetch]\nno-shuffle = true\npeer-order = \"listed\"\n")
            .unwrap()
            .check_values()
            .unwrap_err();
        assert!(
            e.starts_with("q.toml: [fetch]:") && e.contains("cannot be used with"),
            "{e}"
        );
        let e = parse("[stores.orders]\nserve = false\n\nserv = true\n").unwrap_err();
        assert!(
            e.contains("q.toml:1: [stores.orders]") && e.contains("line 4"),
            "{e}"
        );
        assert!(e.contains("serv"), "{e}");
    }

    #[test]
    fn store_sections_become_the_engines_table() {
        let f = parse(
            "[stores.orders]\nserve = false\nwrite-limit = 1000\n\n[stores.users]\nchecksum = \"blake3\"\n",
        )
        .unwrap();
        assert!(!f.stores.get("orders").serve);
        assert_eq!(f.stores.get("orders").write_limit, Some(1000));
        assert_eq!(
            f.stores.get("users").checksum,
            Some(quicstrap::store::checksum::ChecksumAlgo::Blake3)
        );
        assert!(f.stores.get("other").serve);
    }
}
