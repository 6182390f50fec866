//! The layers a value can come from (flag, environment, config file, default), merged into raw
//! [`Settings`] that remember each value's [`Source`]; nothing here knows what a value means.
//!
//! The layers are merged generically over the options clap knows, so the file, the environment
//! fallback, provenance and the unknown-key check come with every new option in `cli.rs`.
//! Precedence: flag > env > file > default.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use clap::parser::ValueSource;
use clap::{ArgMatches, Command};

use super::ConfigError;
use crate::cli::META_OPTIONS;

/// Where a value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A command-line flag.
    Flag,
    /// An environment variable, by name.
    Env(String),
    /// The config file, with the line of the key.
    File { path: PathBuf, line: usize },
    /// The built-in default.
    Default,
    /// Worked out from other values (the name from the command).
    Derived(&'static str),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Flag => f.write_str("flag"),
            Source::Env(var) => write!(f, "env {var}"),
            Source::File { path, line } => write!(f, "file {}:{line}", path.display()),
            Source::Default => f.write_str("default"),
            Source::Derived(from) => write!(f, "derived from {from}"),
        }
    }
}

/// One option's raw value(s) and their source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    pub values: Vec<String>,
    pub source: Source,
}

/// Every option by long name, in `--help` order; `None` where nothing set it and it has no
/// default.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    entries: Vec<(String, Option<Setting>)>,
    /// `command = [...]` from the config file: the agent, when none follows `--`.
    file_command: Option<(Vec<String>, Source)>,
    /// Options whose value came from a TOML array in the file: a one-item array is not the
    /// same as a string where an option tells the two apart (`on-drain`).
    file_arrays: Vec<String>,
}

impl Settings {
    /// The setting of option `long`, if any.
    pub fn get(&self, long: &str) -> Option<&Setting> {
        self.entries
            .iter()
            .find(|(name, _)| name == long)
            .and_then(|(_, s)| s.as_ref())
    }

    fn set(&mut self, long: &str, setting: Setting) {
        match self.entries.iter_mut().find(|(name, _)| name == long) {
            Some((_, slot)) => *slot = Some(setting),
            None => self.entries.push((long.to_string(), Some(setting))),
        }
    }

    /// Whether `long` is an option at all (set or not).
    fn knows(&self, long: &str) -> bool {
        self.entries.iter().any(|(name, _)| name == long)
    }

    /// Every option with its setting, in `--help` order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, Option<&Setting>)> {
        self.entries.iter().map(|(n, s)| (n.as_str(), s.as_ref()))
    }

    /// Whether the value of `long` is an array written in the config file.
    pub fn is_file_array(&self, long: &str) -> bool {
        self.file_arrays.iter().any(|a| a == long)
    }

    /// The config file's `command`, with where it was written.
    pub fn file_command(&self) -> Option<&(Vec<String>, Source)> {
        self.file_command.as_ref()
    }

    /// Parses the single value of `long` with `parse`; `None` if unset.
    pub fn parse<T>(
        &self,
        long: &str,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Result<Option<T>, ConfigError> {
        let Some(setting) = self.get(long) else {
            return Ok(None);
        };
        let value = match setting.values.as_slice() {
            [one] => one,
            _ => {
                return Err(ConfigError::Invalid {
                    option: long.to_string(),
                    value: setting.values.join(","),
                    origin: setting.source.clone(),
                    why: "expected exactly one value".to_string(),
                });
            }
        };
        parse(value).map(Some).map_err(|why| ConfigError::Invalid {
            option: long.to_string(),
            value: value.clone(),
            origin: setting.source.clone(),
            why,
        })
    }

    /// Like `parse`, for options that always have a value (a default in `cli.rs`).
    pub fn require<T>(
        &self,
        long: &str,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Result<T, ConfigError> {
        self.parse(long, parse)?
            .ok_or_else(|| ConfigError::Missing(long.to_string()))
    }
}

/// The flag and environment layers, and the defaults, from clap: `command` is the one that
/// parsed `matches` (passed in rather than built again: building it is most of the start-up's
/// argument handling).
pub fn from_matches(command: &Command, matches: &ArgMatches) -> Result<Settings, ConfigError> {
    let mut settings = Settings::default();
    for arg in command.get_arguments() {
        let Some(long) = arg.get_long() else {
            continue; // the positional command
        };
        if META_OPTIONS.contains(&long) {
            continue;
        }
        let id = arg.get_id().as_str();
        let source = match matches.value_source(id) {
            Some(ValueSource::CommandLine) => Source::Flag,
            Some(ValueSource::EnvVariable) => Source::Env(
                arg.get_env()
                    .map(|e| e.to_string_lossy().into_owned())
                    .unwrap_or_default(),
            ),
            Some(ValueSource::DefaultValue) => Source::Default,
            _ => {
                settings.entries.push((long.to_string(), None));
                continue;
            }
        };
        let values = matches
            .get_raw(id)
            .into_iter()
            .flatten()
            .map(|raw| {
                raw.to_str()
                    .map(str::to_string)
                    .ok_or_else(|| ConfigError::Invalid {
                        option: long.to_string(),
                        value: raw.to_string_lossy().into_owned(),
                        origin: source.clone(),
                        why: "not valid UTF-8".to_string(),
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        settings
            .entries
            .push((long.to_string(), Some(Setting { values, source })));
    }
    Ok(settings)
}

/// The largest config file read. A config is a few dozen lines; a megabyte is a mistake.
pub const MAX_FILE: u64 = 1 << 20;

/// Reads the config file: a regular file of at most [`MAX_FILE`] bytes of UTF-8. A device, fifo
/// or directory is refused before anything is read from it (`--config /dev/zero` would otherwise
/// be read until memory runs out, and a fifo would block the start), and a file that grows while
/// it is read is cut at the limit and refused.
pub fn read_file(path: &Path) -> std::io::Result<String> {
    use std::io::{Error, ErrorKind, Read};
    use std::os::unix::fs::OpenOptionsExt;
    // O_NONBLOCK: opening a fifo must not wait for a writer. It changes nothing for a file.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            "not a regular file (a device, fifo or directory is never read as configuration)",
        ));
    }
    let too_large = || {
        Error::new(
            ErrorKind::InvalidData,
            format!(
                "larger than {} KiB, too large for a config file",
                MAX_FILE >> 10
            ),
        )
    };
    if meta.len() > MAX_FILE {
        return Err(too_large());
    }
    let mut bytes = Vec::new();
    file.take(MAX_FILE + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_FILE {
        return Err(too_large());
    }
    String::from_utf8(bytes).map_err(|_| Error::new(ErrorKind::InvalidData, "not UTF-8"))
}

/// The file layer: fills every option that only has its default (or nothing).
pub fn apply_file(settings: &mut Settings, path: &Path, text: &str) -> Result<(), ConfigError> {
    type Spanned<T> = toml::Spanned<T>;
    let line_of = |offset: usize| text[..offset.min(text.len())].matches('\n').count() + 1;
    let table: BTreeMap<Spanned<String>, Spanned<toml::Value>> =
        toml::from_str(text).map_err(|e| ConfigError::FileSyntax {
            path: path.to_path_buf(),
            line: e.span().map_or(1, |s| line_of(s.start)),
            message: e.message().trim().to_string(),
        })?;
    for (key, value) in table {
        let line = line_of(key.span().start);
        let source = Source::File {
            path: path.to_path_buf(),
            line,
        };
        if key.get_ref() == "command" {
            let command = file_command(value.get_ref()).ok_or_else(|| ConfigError::FileSyntax {
                path: path.to_path_buf(),
                line,
                message: "`command` must be a non-empty array of strings, such as [\"/opt/worker/bin/worker\", \"--queue\", \"jobs\"]".to_string(),
            })?;
            settings.file_command = Some((command, source));
            continue;
        }
        let long = key.get_ref().replace('_', "-");
        if !settings.knows(&long) {
            return Err(ConfigError::UnknownKey {
                path: path.to_path_buf(),
                line,
                key: key.into_inner(),
            });
        }
        let values = file_values(value.get_ref()).ok_or_else(|| ConfigError::FileSyntax {
            path: path.to_path_buf(),
            line,
            message: format!(
                "`{}` must be a string, number, boolean or array of those",
                key.get_ref()
            ),
        })?;
        let overridden = matches!(
            settings.get(&long).map(|s| &s.source),
            Some(Source::Flag | Source::Env(_))
        );
        if !overridden {
            if matches!(value.get_ref(), toml::Value::Array(_)) {
                settings.file_arrays.push(long.clone());
            }
            settings.set(&long, Setting { values, source });
        }
    }
    Ok(())
}

/// The file's `command`: a non-empty array of strings, else `None`.
fn file_command(value: &toml::Value) -> Option<Vec<String>> {
    match value {
        toml::Value::Array(items) => items
            .iter()
            .map(|v| v.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .filter(|c| !c.is_empty()),
        _ => None,
    }
}

/// A file value as the strings a flag would have given: scalars as written, arrays item by item;
/// `None` for what no flag can say (tables, dates, nested arrays).
fn file_values(value: &toml::Value) -> Option<Vec<String>> {
    match value {
        toml::Value::String(s) => Some(vec![s.clone()]),
        toml::Value::Integer(i) => Some(vec![i.to_string()]),
        toml::Value::Float(f) => Some(vec![f.to_string()]),
        toml::Value::Boolean(b) => Some(vec![b.to_string()]),
        toml::Value::Array(items) => items
            .iter()
            .map(|v| file_values(v).and_then(|mut one| (one.len() == 1).then(|| one.remove(0))))
            .collect(),
        toml::Value::Datetime(_) | toml::Value::Table(_) => None,
    }
}

/// Variables from the wider ecosystem that also set an option, below every layer of our own:
/// `RUST_LOG` for `--log-level`, the AWS SDK's IMDS endpoint and endpoint mode for
/// `--imds-endpoint` and `--imds-endpoint-mode`.
const FOREIGN_ENV: &[(&str, &str)] = &[
    ("log-level", "RUST_LOG"),
    ("imds-endpoint", "AWS_EC2_METADATA_SERVICE_ENDPOINT"),
    (
        "imds-endpoint-mode",
        "AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE",
    ),
];

/// The foreign layer: each [`FOREIGN_ENV`] variable fills its option if only the default set it.
pub fn apply_foreign_env(settings: &mut Settings) {
    for (long, var) in FOREIGN_ENV {
        let defaulted = matches!(
            settings.get(long).map(|s| &s.source),
            Some(Source::Default) | None
        );
        if let (true, Ok(value)) = (defaulted, std::env::var(var))
            && !value.trim().is_empty()
        {
            settings.set(
                long,
                Setting {
                    values: vec![value],
                    source: Source::Env(var.to_string()),
                },
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_regular_file_of_reasonable_size_is_read() {
        let err = read_file(Path::new("/dev/zero")).expect_err("a device");
        assert!(err.to_string().starts_with("not a regular file"), "{err}");
        let dir = tempfile::tempdir().expect("tempdir");
        let err = read_file(dir.path()).expect_err("a directory");
        assert!(err.to_string().starts_with("not a regular file"), "{err}");
        let big = dir.path().join("big.toml");
        std::fs::write(&big, vec![b'#'; MAX_FILE as usize + 1]).expect("write");
        let err = read_file(&big).expect_err("too large");
        assert!(err.to_string().contains("too large"), "{err}");
        let fine = dir.path().join("fine.toml");
        std::fs::write(&fine, "stop-timeout = \"5s\"\n").expect("write");
        assert_eq!(read_file(&fine).expect("read"), "stop-timeout = \"5s\"\n");
    }

    #[test]
    fn file_errors_name_file_line_and_key() {
        let mut s = Settings {
            entries: vec![("stop-timeout".to_string(), None)],
            ..Settings::default()
        };
        let err = apply_file(&mut s, Path::new("a.toml"), "\n\nstop_timout = 3\n")
            .expect_err("unknown key");
        assert_eq!(
            err.to_string(),
            "config file a.toml:3: unknown key `stop_timout` (keys are the long option names, see --help)"
        );
        let err = apply_file(&mut s, Path::new("a.toml"), "stop-timeout = \n").expect_err("syntax");
        assert!(
            err.to_string().starts_with("config file a.toml:1: "),
            "{err}"
        );
    }
}
