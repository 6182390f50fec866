//! `--check-config`: the effective configuration as TOML a user could paste into a config file,
//! each value with its source as a comment, and no credential ever shown.

use super::Config;
use super::check;
use super::layers::{Setting, Settings, Source};

impl Config {
    /// The effective configuration as TOML a user could paste into a config file, each value
    /// with its source as a comment.
    pub fn describe(&self, settings: &Settings) -> String {
        let mut rows: Vec<(String, String)> = settings
            .iter()
            .map(|(long, setting)| self.option_row(long, setting, settings.is_file_array(long)))
            .collect();
        rows.push(self.command_row(settings));
        let width = rows.iter().map(|(l, _)| l.len()).max().unwrap_or(0);
        let mut out = String::new();
        for (line, source) in rows {
            if source.is_empty() {
                out.push_str(&line);
            } else {
                out.push_str(&format!("{line:width$}  # {source}"));
            }
            out.push('\n');
        }
        out
    }

    /// One option's line and its source; an unset option is a comment, so the output stays
    /// valid TOML. An array from the file stays an array, even of one item.
    fn option_row(&self, long: &str, setting: Option<&Setting>, array: bool) -> (String, String) {
        let (value, source) = match (long, setting) {
            ("name", None) => (
                toml_string(&self.name),
                "derived from the command".to_string(),
            ),
            (_, None) => ("# not set".to_string(), String::new()),
            // The default endpoint follows --imds-endpoint-mode: show the one in use.
            ("imds-endpoint", Some(s))
                if s.source == Source::Default && s.values != [self.imds_endpoint.clone()] =>
            {
                (
                    toml_string(&self.imds_endpoint),
                    "derived from --imds-endpoint-mode".to_string(),
                )
            }
            (_, Some(s)) => {
                // Check URLs may carry credentials: they are never printed.
                let shown = |v: &String| match long {
                    "check" | "child-health" => toml_string(&check::mask_spec(v)),
                    _ => toml_string(v),
                };
                let value = match s.values.as_slice() {
                    [one] if long != "check" && !array => shown(one),
                    many => format!(
                        "[{}]",
                        many.iter().map(shown).collect::<Vec<_>>().join(", ")
                    ),
                };
                (value, s.source.to_string())
            }
        };
        let line = if value.starts_with('#') {
            format!("# {long} {value}")
        } else {
            format!("{long} = {value}")
        };
        (line, source)
    }

    /// The agent's command, from `--` or the config file's `command`.
    fn command_row(&self, settings: &Settings) -> (String, String) {
        let command: Vec<String> = self
            .command
            .iter()
            .map(|a| toml_string(&a.to_string_lossy()))
            .collect();
        if command.is_empty() {
            return ("# command = []".to_string(), "none given".to_string());
        }
        let source = match settings.file_command() {
            Some((file, source)) if file.len() == self.command.len() => source.to_string(),
            _ => "flag".to_string(),
        };
        (format!("command = [{}]", command.join(", ")), source)
    }
}

/// A TOML basic string.
fn toml_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_strings_escape() {
        assert_eq!(toml_string("a\"b\\c\n"), "\"a\\\"b\\\\c\\u000a\"");
    }
}
