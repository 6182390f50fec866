//! `--check NAME=URL` and `--child-health URL`: what a check probes, parsed and validated with
//! the rest of the configuration, its credentials masked for anything that shows it.

/// The name of the `--child-health` check.
pub const CHILD: &str = "child-health";

/// What a check probes.
#[derive(Debug, Clone)]
pub enum Target {
    /// A TCP connect.
    Tcp { host: String, port: u16 },
    /// An HTTP(S) GET that must answer 2xx (and for the agent's own URL, not say it is down).
    Http { url: url::Url },
}

/// One configured check.
#[derive(Debug, Clone)]
pub struct Check {
    pub name: String,
    pub target: Target,
    /// The target as it may be shown: credentials and query masked.
    pub shown: String,
    /// The agent's own health URL, whose JSON body is also read.
    pub is_child: bool,
}

/// Why a check definition is unusable (a config error).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadCheck(pub String);

impl Check {
    /// `--check NAME=URL`.
    pub fn parse_named(spec: &str) -> Result<Check, BadCheck> {
        let (name, url) = spec.split_once('=').ok_or_else(|| {
            BadCheck("expected NAME=URL, such as redis=tcp://127.0.0.1:6379".to_string())
        })?;
        let name = name.trim();
        let valid_name = !name.is_empty()
            && name.len() <= 64
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
        if !valid_name {
            return Err(BadCheck(format!(
                "check name `{name}`: use 1 to 64 letters, digits, `-`, `_` or `.`"
            )));
        }
        if name == CHILD {
            return Err(BadCheck(format!(
                "`{CHILD}` is reserved for --child-health"
            )));
        }
        Check::parse(name, url.trim(), false)
    }

    /// `--child-health URL`.
    pub fn child(url: &str) -> Result<Check, BadCheck> {
        let check = Check::parse(CHILD, url.trim(), true)?;
        match check.target {
            Target::Http { .. } => Ok(check),
            Target::Tcp { .. } => Err(BadCheck(
                "--child-health takes an http:// or https:// URL".to_string(),
            )),
        }
    }

    fn parse(name: &str, url: &str, is_child: bool) -> Result<Check, BadCheck> {
        let parsed = url::Url::parse(url)
            .map_err(|e| BadCheck(format!("`{}`: not a URL ({e})", mask_text(url))))?;
        let shown = mask(&parsed);
        let target = match parsed.scheme() {
            "tcp" => {
                let host = parsed
                    .host_str()
                    .ok_or_else(|| BadCheck(format!("`{shown}`: no host")))?
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_string();
                let port = parsed
                    .port()
                    .ok_or_else(|| BadCheck(format!("`{shown}`: tcp:// needs a port")))?;
                Target::Tcp { host, port }
            }
            "http" | "https" => {
                if parsed.host_str().is_none() {
                    return Err(BadCheck(format!("`{shown}`: no host")));
                }
                Target::Http { url: parsed }
            }
            other => {
                return Err(BadCheck(format!(
                    "`{shown}`: scheme `{other}` is not one of tcp, http, https"
                )));
            }
        };
        Ok(Check {
            name: name.to_string(),
            target,
            shown,
            is_child,
        })
    }

    /// How the health+json format classifies it.
    pub fn component_type(&self) -> &'static str {
        match (self.is_child, &self.target) {
            (true, _) => "component",
            (false, Target::Tcp { .. }) => "datastore",
            (false, Target::Http { .. }) => "component",
        }
    }
}

/// A URL with its password, user and query replaced by `***`.
fn mask(url: &url::Url) -> String {
    let mut shown = url.clone();
    if !shown.username().is_empty() || shown.password().is_some() {
        let _ = shown.set_username("***");
        let _ = shown.set_password(None);
    }
    if shown.query().is_some() {
        shown.set_query(Some("***"));
    }
    shown.set_fragment(None);
    shown.to_string()
}

/// A `--check NAME=URL` or `--child-health URL` value as it may be shown anywhere: the URL's
/// credentials and query masked, whether or not it parses.
pub fn mask_spec(value: &str) -> String {
    let (prefix, url) = match value.split_once('=') {
        Some((name, url)) if !name.contains("://") => (format!("{name}="), url),
        _ => (String::new(), value),
    };
    match url::Url::parse(url.trim()) {
        Ok(parsed) => format!("{prefix}{}", mask(&parsed)),
        Err(_) => format!(
            "{prefix}{}",
            mask_text(url).split('?').next().unwrap_or_default()
        ),
    }
}

/// Masks anything between `://` and `@` in text that did not even parse as a URL.
fn mask_text(text: &str) -> String {
    match (text.find("://"), text.rfind('@')) {
        (Some(start), Some(at)) if at > start => {
            format!("{}***{}", &text[..start + 3], &text[at..])
        }
        _ => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_masks_credentials() {
        let c = Check::parse_named("db=http://admin:hunter2@127.0.0.1:5432/health?token=abc")
            .expect("valid");
        assert_eq!(c.name, "db");
        assert_eq!(c.shown, "http://***@127.0.0.1:5432/health?***");
        assert!(!format!("{c:?}").is_empty());
        let c = Check::parse_named("redis=tcp://127.0.0.1:6379").expect("valid");
        assert!(matches!(c.target, Target::Tcp { ref host, port: 6379 } if host == "127.0.0.1"));
        assert_eq!(c.component_type(), "datastore");
        for bad in [
            "nourl",
            "x=ftp://h/",
            "x=tcp://h",
            "=tcp://h:1",
            "child-health=tcp://h:1",
            "a b=tcp://h:1",
        ] {
            assert!(Check::parse_named(bad).is_err(), "{bad}");
        }
        let err = Check::parse_named("x=http://user:pw@[bad").expect_err("bad url");
        assert!(!err.0.contains("pw"), "{err}");
        assert_eq!(
            mask_spec("db=http://u:pw@h:1/p?token=t"),
            "db=http://***@h:1/p?***"
        );
        assert_eq!(mask_spec("http://u:pw@[bad?token=t"), "http://***@[bad");
        assert!(Check::child("tcp://127.0.0.1:1").is_err());
    }
}
