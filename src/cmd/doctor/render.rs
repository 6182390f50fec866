//! The doctor's answer as people and scripts read it: one line per check (the fix after each
//! `warn` and `FAIL`) and a last line with the counts, or the same as one JSON document.

use serde::Serialize;

use super::judge::{Check, Status};

/// Who and where, for the heading.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Subject {
    /// The guard's `--name`.
    pub name: String,
    pub instance_id: Option<String>,
    pub group: Option<String>,
    pub region: Option<String>,
}

/// The whole answer.
#[derive(Debug, Serialize)]
pub struct Report<'a> {
    #[serde(flatten)]
    pub subject: Subject,
    /// `pass` when nothing FAILs, else `fail`.
    pub result: &'static str,
    pub counts: Counts,
    pub checks: &'a [Check],
}

/// How many checks came out each way.
#[derive(Debug, Default, Serialize)]
pub struct Counts {
    pub ok: usize,
    pub warn: usize,
    pub fail: usize,
}

impl<'a> Report<'a> {
    pub fn new(subject: Subject, checks: &'a [Check]) -> Report<'a> {
        let mut counts = Counts::default();
        for check in checks {
            match check.status {
                Status::Ok => counts.ok += 1,
                Status::Warn => counts.warn += 1,
                Status::Fail => counts.fail += 1,
            }
        }
        Report {
            subject,
            result: if counts.fail == 0 { "pass" } else { "fail" },
            counts,
            checks,
        }
    }

    /// The text answer.
    pub fn text(&self) -> String {
        let s = &self.subject;
        let mut out = format!("agent-guard doctor: {}", s.name);
        if let Some(id) = &s.instance_id {
            out.push_str(&format!(" on {id}"));
        }
        if let Some(group) = &s.group {
            out.push_str(&format!(", group {group}"));
        }
        if let Some(region) = &s.region {
            out.push_str(&format!(", {region}"));
        }
        out.push_str("\n\n");
        let width = self.checks.iter().map(|c| c.name.len()).max().unwrap_or(0);
        for check in self.checks {
            out.push_str(&format!(
                "{:<4}  {:<width$}  {}",
                check.status.label(),
                check.name,
                check.detail
            ));
            if let Some(fix) = &check.fix {
                out.push_str(&format!(". Fix: {fix}."));
            }
            out.push('\n');
        }
        let c = &self.counts;
        let verdict = if c.fail == 0 {
            "nothing FAILs"
        } else {
            "the deployment does not fit these options"
        };
        out.push_str(&format!(
            "\n{} FAIL, {} warn, {} ok: {verdict}\n",
            c.fail, c.warn, c.ok
        ));
        out
    }

    /// The same as one JSON document.
    pub fn json(&self) -> String {
        // Plain data always serializes; `{}` is the harmless fallback should it not.
        let mut text = serde_json::to_string_pretty(self).unwrap_or_else(|_| "{}".to_string());
        text.push('\n');
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checks() -> Vec<Check> {
        vec![
            Check {
                name: "imds",
                status: Status::Ok,
                detail: "IMDSv2".to_string(),
                fix: None,
            },
            Check {
                name: "terminate-hook",
                status: Status::Fail,
                detail: "the group w has no hook h".to_string(),
                fix: Some("create it".to_string()),
            },
        ]
    }

    #[test]
    fn one_line_per_check_with_the_fix_then_the_counts() {
        let checks = checks();
        let subject = Subject {
            name: "worker".to_string(),
            instance_id: Some("i-1".to_string()),
            group: Some("w".to_string()),
            region: Some("us-east-1".to_string()),
        };
        let text = Report::new(subject, &checks).text();
        assert_eq!(
            text,
            "agent-guard doctor: worker on i-1, group w, us-east-1\n\n\
             ok    imds            IMDSv2\n\
             FAIL  terminate-hook  the group w has no hook h. Fix: create it.\n\
             \n1 FAIL, 0 warn, 1 ok: the deployment does not fit these options\n"
        );
    }

    #[test]
    fn json_holds_the_same() {
        let checks = checks();
        let report = Report::new(Subject::default(), &checks);
        let doc: serde_json::Value = serde_json::from_str(&report.json()).expect("JSON");
        assert_eq!(doc["result"], "fail");
        assert_eq!(doc["counts"]["fail"], 1);
        assert_eq!(doc["checks"][1]["name"], "terminate-hook");
        assert_eq!(doc["checks"][1]["status"], "fail");
        assert_eq!(doc["checks"][1]["fix"], "create it");
        assert_eq!(doc["checks"][0]["fix"], serde_json::Value::Null);
    }
}
