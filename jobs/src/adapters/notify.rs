//! Notifications: one message per run to every target of `notify.urls` (and the older
//! `notify.webhook`), in the format each service takes — a JSON POST (generic webhooks), ntfy,
//! Slack, Discord, or an e-mail over SMTP — with a line per tenant. The URLs are written the way
//! Watchtower's and docker-volume-backup's users write them (shoutrrr's forms), so an operator
//! can paste theirs. A failing target never fails the job: it is logged with its URL cut to the
//! service and host, since webhook paths and URL user parts are secrets. No message carries a
//! secret: every URL's user part and every target's token are cut from the text before it goes.

use std::time::Duration;

use reqwest::Url;
use serde::Serialize;

use crate::config::{Format, SmtpTls, Target};

/// One tenant's line of a message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TenantLine {
    /// The tenant.
    pub tenant: String,
    /// Its outcome word in this run (`rolled`, `restored`, `failed`, …).
    pub outcome: String,
    /// Why, when the report says.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// What is sent: the JSON body of a generic webhook, and what every other format is made of.
#[derive(Debug, Clone, Serialize)]
pub struct Notification {
    /// Slack-compatible one-line summary.
    pub text: String,
    /// Job name.
    pub job: String,
    /// Run id, if any.
    pub run_id: Option<String>,
    /// Outcome word (failed, halted, person_needed, …).
    pub outcome: String,
    /// Process exit code.
    pub exit_code: u8,
    /// The job's summary or error.
    pub summary: String,
    /// Host name.
    pub host: String,
    /// A line per tenant the run touched, in the report's order.
    pub tenants: Vec<TenantLine>,
}

impl Notification {
    /// Build a notification; `text` is derived.
    pub fn new(job: &str, run_id: Option<String>, outcome: &str, exit_code: u8, summary: &str) -> Notification {
        let host =
            std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).unwrap_or_default();
        Notification {
            text: format!("slipway {job} on {host}: {outcome} (exit {exit_code}): {summary}"),
            job: job.to_string(),
            run_id,
            outcome: outcome.to_string(),
            exit_code,
            summary: summary.to_string(),
            host,
            tenants: Vec::new(),
        }
    }

    /// With a line per tenant.
    pub fn with_tenants(mut self, tenants: Vec<TenantLine>) -> Notification {
        self.tenants = tenants;
        self
    }

    /// Whether the run ended well (for the formats that show it: ntfy's priority and tags).
    fn ok(&self) -> bool {
        self.exit_code == 0
    }

    /// The title: job, host, outcome.
    pub fn title(&self) -> String {
        format!("slipway {} on {}: {}", self.job, self.host, self.outcome)
    }

    /// The message as text: the title line, the run, a table of tenants, the summary.
    pub fn body(&self) -> String {
        let mut out = format!("{} (exit {})\n", self.title(), self.exit_code);
        if let Some(r) = &self.run_id {
            out.push_str(&format!("run {r}\n"));
        }
        if !self.tenants.is_empty() {
            let w = self.tenants.iter().map(|t| t.tenant.len()).max().unwrap_or(0).max("tenant".len());
            let o = self.tenants.iter().map(|t| t.outcome.len()).max().unwrap_or(0).max("outcome".len());
            out.push_str(&format!("{:w$}  {:o$}  detail\n", "tenant", "outcome"));
            for t in &self.tenants {
                let line = format!("{:w$}  {:o$}  {}", t.tenant, t.outcome, t.detail.as_deref().unwrap_or(""));
                out.push_str(line.trim_end());
                out.push('\n');
            }
        }
        out.push_str(&self.summary);
        out
    }

    /// Every text field with each of `secrets` replaced and every URL's user part cut.
    pub fn scrubbed(&self, secrets: &[String]) -> Notification {
        let s = |t: &str| scrub(t, secrets);
        Notification {
            text: s(&self.text),
            job: self.job.clone(),
            run_id: self.run_id.clone(),
            outcome: self.outcome.clone(),
            exit_code: self.exit_code,
            summary: s(&self.summary),
            host: self.host.clone(),
            tenants: self
                .tenants
                .iter()
                .map(|t| TenantLine {
                    tenant: t.tenant.clone(),
                    outcome: t.outcome.clone(),
                    detail: t.detail.as_deref().map(s),
                })
                .collect(),
        }
    }
}

/// `text` with each secret replaced by `[redacted]` and the user part of every URL in it
/// (`https://user:token@host/…`) cut.
pub fn scrub(text: &str, secrets: &[String]) -> String {
    let mut out = text.to_string();
    for s in secrets.iter().filter(|s| s.len() >= 4) {
        out = out.replace(s.as_str(), "[redacted]");
    }
    let mut cut = String::with_capacity(out.len());
    let mut rest = out.as_str();
    while let Some(i) = rest.find("://") {
        cut.push_str(&rest[..i + 3]);
        rest = &rest[i + 3..];
        let end = rest.find(|c: char| c == '/' || c.is_whitespace() || c == '"' || c == '\'').unwrap_or(rest.len());
        if let Some(at) = rest[..end].rfind('@') {
            cut.push_str("[redacted]@");
            rest = &rest[at + 1..];
        }
    }
    cut.push_str(rest);
    cut
}

/// Send `n` to `target`; never fails, returns whether it was delivered.
pub async fn send(target: &Target, n: &Notification) -> bool {
    let r = match target {
        Target::Http { format, url, auth } => post(*format, url, auth.as_ref(), n).await,
        Target::Smtp { .. } => mail(target, n).await,
    };
    match r {
        Ok(()) => true,
        Err(why) => {
            tracing::warn!("notification to {}: {why}; the job's outcome is unchanged", target.redacted());
            false
        }
    }
}

/// The HTTP body (and headers) of `n` in `format`.
async fn post(format: Format, url: &Url, auth: Option<&(String, String)>, n: &Notification) -> Result<(), String> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| format!("cannot build an HTTP client: {e}"))?;
    let mut req = client.post(url.clone());
    if let Some((u, p)) = auth {
        req = req.basic_auth(u, Some(p));
    }
    req = match format {
        Format::Json => req.json(n),
        Format::Slack => req.json(&serde_json::json!({ "text": format!("```\n{}\n```", n.body()) })),
        Format::Discord => {
            let body: String = format!("```\n{}\n```", n.body()).chars().take(1990).collect();
            let body = if body.ends_with("```") { body } else { format!("{body}\n```") };
            req.json(&serde_json::json!({ "content": body }))
        }
        Format::Ntfy => req
            .header("Title", n.title())
            .header("Priority", if n.ok() { "default" } else { "high" })
            .header("Tags", if n.ok() { "white_check_mark" } else { "warning" })
            .body(n.body()),
    };
    match req.send().await {
        Ok(r) if r.status().is_success() => Ok(()),
        Ok(r) => Err(format!("answered HTTP {}", r.status().as_u16())),
        Err(e) if e.is_connect() => Err("connection failed".into()),
        Err(e) if e.is_timeout() => Err("timed out".into()),
        Err(_) => Err("request failed".into()),
    }
}

/// Send `n` as an e-mail through the SMTP target `t`.
async fn mail(t: &Target, n: &Notification) -> Result<(), String> {
    use lettre::transport::smtp::authentication::Credentials;
    use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
    let Target::Smtp { host, port, tls, auth, from, to } = t else { return Err("not an SMTP target".into()) };
    let mut m = Message::builder().from(from.parse().map_err(|e| format!("from={from}: {e}"))?).subject(n.title());
    for r in to {
        m = m.to(r.parse().map_err(|e| format!("to={r}: {e}"))?);
    }
    let m = m.body(n.body()).map_err(|e| format!("cannot build the message: {e}"))?;
    let builder = match tls {
        SmtpTls::Implicit => AsyncSmtpTransport::<Tokio1Executor>::relay(host),
        SmtpTls::StartTls => AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(host),
        SmtpTls::None => Ok(AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host)),
    }
    .map_err(|e| format!("cannot set up TLS: {e}"))?;
    let mut builder = builder.port(*port).timeout(Some(Duration::from_secs(10)));
    if let Some((u, p)) = auth {
        builder = builder.credentials(Credentials::new(u.clone(), p.clone()));
    }
    builder.build().send(m).await.map(|_| ()).map_err(|e| {
        // lettre's errors name the server's answer, never the credentials.
        format!("the server refused or could not be reached: {e}")
    })
}

#[cfg(test)]
mod tests {
    //! Delivery to live receivers (a JSON webhook, ntfy, Slack and Discord formats, an SMTP
    //! server) is tested end to end (tests/ops.rs); here: the URL forms, the text, the scrub.
    use super::*;

    #[tokio::test]
    async fn a_dead_target_is_only_logged_and_its_url_is_redacted() {
        let n = Notification::new("rollout", Some("20261122T030000Z-0001".into()), "halted", 3, "canary t1 failed");
        let dead = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
        assert!(!send(&Target::parse(&format!("http://{dead}/x")).unwrap(), &n).await);
        let r = |u: &str| Target::parse(u).unwrap().redacted();
        assert_eq!(r("https://hooks.example.com/services/T000/B000/XXXX"), "json https://hooks.example.com/…");
        assert_eq!(r("smtp://me:pw@mail.example.com/?from=a@b.c&to=c@d.e"), "smtp mail.example.com:587");
    }

    #[test]
    fn a_message_has_a_line_per_tenant_and_no_secret() {
        let t = Target::parse("ntfy://bob:hunter22@ntfy.example.com/alerts-0123456789").unwrap();
        let n = Notification::new(
            "rollout",
            Some("R1".into()),
            "halted",
            3,
            "fetching https://git:tok3n@git.example.com/x failed",
        )
        .with_tenants(vec![
            TenantLine { tenant: "t1".into(), outcome: "restored".into(), detail: Some("password hunter22".into()) },
            TenantLine { tenant: "tenant-22".into(), outcome: "rolled".into(), detail: None },
        ]);
        let body = n.scrubbed(&t.secrets()).body();
        assert!(!body.contains("hunter22") && !body.contains("tok3n"), "{body}");
        assert!(body.contains("https://[redacted]@git.example.com/x"), "{body}");
        let lines: Vec<&str> = body.lines().collect();
        assert_eq!(lines[0], format!("slipway rollout on {}: halted (exit 3)", n.host));
        assert_eq!(lines[1], "run R1");
        assert_eq!(lines[2], "tenant     outcome   detail");
        assert_eq!(lines[3], "t1         restored  password [redacted]");
        assert_eq!(lines[4], "tenant-22  rolled");
    }
}
