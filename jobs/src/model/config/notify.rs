//! `[notify]` of the host config: where notifications go and when. Each of `notify.urls` is
//! parsed here, when the config is read, so a URL slipway cannot send to is refused before any
//! job runs (naming the entry, never printing its token or password); the adapter
//! (`adapters/notify.rs`) sends.
//!
//! The URL forms are shoutrrr's, as Watchtower's and docker-volume-backup's users write them,
//! plus a format before an HTTP URL for self-hosted services.

use reqwest::Url;
use serde::{Deserialize, Serialize};

/// When a run is notified.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NotifyLevel {
    /// Failures, halts, a person needed, interruptions (the default).
    #[default]
    Failures,
    /// Every run of a job that records one, successes too.
    All,
}

/// The format a target takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// The [`Notification`] as JSON (generic webhooks; Slack-compatible `text`).
    Json,
    /// ntfy: the text as the body, the title and priority as headers.
    Ntfy,
    /// Slack's incoming webhook: `{"text": …}`.
    Slack,
    /// Discord's webhook: `{"content": …}` (2000 characters at most).
    Discord,
}

/// How an SMTP connection is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmtpTls {
    /// TLS from the first byte (port 465).
    Implicit,
    /// STARTTLS, required.
    StartTls,
    /// None: only to a relay on this host.
    None,
}

/// One place a notification goes, parsed from its URL.
#[derive(Clone, PartialEq, Eq)]
pub enum Target {
    /// An HTTP POST.
    Http {
        /// Its format.
        format: Format,
        /// Where.
        url: Url,
        /// Basic auth (ntfy's `user:password@`).
        auth: Option<(String, String)>,
    },
    /// An e-mail.
    Smtp {
        /// The server.
        host: String,
        /// Its port.
        port: u16,
        /// How the connection is secured.
        tls: SmtpTls,
        /// Login.
        auth: Option<(String, String)>,
        /// Sender address.
        from: String,
        /// Recipients.
        to: Vec<String>,
    },
}

impl std::fmt::Debug for Target {
    // Never the URL's path, token or password: only what `redacted` shows.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl Target {
    /// Parse one `notify.urls` entry. The forms (shoutrrr's, and a format before an HTTP URL):
    /// `https://…` or `generic://host/path` (JSON; `?disabletls=yes` for http), `ntfy://[user:pass@]host/topic`
    /// (`?scheme=http`), `slack://[botname@]T…/B…/X…`, `discord://token@id`,
    /// `smtp://[user:pass@]host[:port]/?from=…&to=a,b[&encryption=Auto|ImplicitTLS|ExplicitTLS|None]`,
    /// and `json+https://…`, `ntfy+https://…`, `slack+https://…`, `discord+https://…` for that
    /// format to that URL (a self-hosted ntfy, Mattermost's Slack-compatible hooks).
    pub fn parse(raw: &str) -> Result<Target, String> {
        let raw = raw.trim();
        let (scheme, rest) = raw.split_once("://").ok_or("is not a URL (no \"scheme://\")")?;
        let http = |format: Format, url: &str| -> Result<Target, String> {
            let url = Url::parse(url).map_err(|e| format!("is not a valid URL: {e}"))?;
            if url.host_str().is_none_or(str::is_empty) {
                return Err("has no host".into());
            }
            let auth = (!url.username().is_empty())
                .then(|| (decode(url.username()), url.password().map(decode).unwrap_or_default()));
            let mut url = url;
            let _ = url.set_username("");
            let _ = url.set_password(None);
            Ok(Target::Http { format, url, auth })
        };
        match scheme.to_ascii_lowercase().as_str() {
            "http" | "https" => http(Format::Json, raw),
            s if s.contains('+') => {
                let (f, transport) = s.split_once('+').unwrap_or_default();
                if transport != "http" && transport != "https" {
                    return Err(format!("\"{s}\": after the '+' comes http or https"));
                }
                let format = match f {
                    "json" | "generic" => Format::Json,
                    "ntfy" => Format::Ntfy,
                    "slack" => Format::Slack,
                    "discord" => Format::Discord,
                    _ => return Err(format!("\"{f}\" is not a format slipway sends; use json, ntfy, slack or discord")),
                };
                http(format, &format!("{transport}://{rest}"))
            }
            "generic" => {
                let (u, plain) = take_query(rest, "disabletls");
                let t = if plain.as_deref().is_some_and(|v| v.eq_ignore_ascii_case("yes")) { "http" } else { "https" };
                http(Format::Json, &format!("{t}://{u}"))
            }
            "ntfy" => {
                let (u, sch) = take_query(rest, "scheme");
                let t = match sch.as_deref() {
                    None | Some("https") => "https",
                    Some("http") => "http",
                    Some(o) => return Err(format!("scheme={o}: use http or https")),
                };
                let target = http(Format::Ntfy, &format!("{t}://{u}"))?;
                match &target {
                    Target::Http { url, .. } if url.path().trim_matches('/').is_empty() => {
                        Err("names no topic; write ntfy://host/topic".into())
                    }
                    _ => Ok(target),
                }
            }
            "slack" => {
                let path = rest.split('?').next().unwrap_or_default();
                let tokens = path.rsplit_once('@').map_or(path, |(_, t)| t).trim_matches('/');
                let parts: Vec<&str> = tokens.split('/').collect();
                if parts.len() != 3 || parts.iter().any(|p| p.is_empty() || !p.chars().all(|c| c.is_ascii_alphanumeric())) {
                    return Err("is not slack://T…/B…/X… (the three parts of the incoming webhook's URL)".into());
                }
                http(Format::Slack, &format!("https://hooks.slack.com/services/{}", parts.join("/")))
            }
            "discord" => {
                let path = rest.split('?').next().unwrap_or_default().trim_end_matches('/');
                let (token, id) = path.split_once('@').ok_or("is not discord://token@id (the webhook's token and id)")?;
                let ok = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
                if !ok(token) || !ok(id) {
                    return Err("is not discord://token@id (the webhook's token and id)".into());
                }
                http(Format::Discord, &format!("https://discord.com/api/webhooks/{id}/{token}"))
            }
            "smtp" => smtp(rest),
            s => Err(format!(
                "\"{s}://\" is not a service slipway sends to; use https://, generic://, ntfy://, slack://, discord:// or smtp://"
            )),
        }
    }

    /// The target for logs and errors: its service and host, never a path, token or password.
    pub fn redacted(&self) -> String {
        match self {
            Target::Http { format, url, .. } => {
                let f = match format {
                    Format::Json => "json",
                    Format::Ntfy => "ntfy",
                    Format::Slack => "slack",
                    Format::Discord => "discord",
                };
                format!("{f} {}://{}/…", url.scheme(), url.host_str().unwrap_or("?"))
            }
            Target::Smtp { host, port, .. } => format!("smtp {host}:{port}"),
        }
    }

    /// What of this target must never appear in a message: its password, its URL's path and
    /// query parts (webhook tokens).
    pub fn secrets(&self) -> Vec<String> {
        let mut out = Vec::new();
        match self {
            Target::Http { url, auth, .. } => {
                out.extend(auth.iter().map(|(_, p)| p.clone()));
                out.extend(url.path_segments().into_iter().flatten().filter(|s| s.len() >= 8).map(str::to_string));
                out.extend(url.query_pairs().map(|(_, v)| v.into_owned()).filter(|v| v.len() >= 8));
            }
            Target::Smtp { auth, .. } => out.extend(auth.iter().map(|(_, p)| p.clone())),
        }
        out
    }
}

/// `rest` without its query parameter `key` (case-insensitive), and that parameter's value.
fn take_query(rest: &str, key: &str) -> (String, Option<String>) {
    let Some((base, q)) = rest.split_once('?') else { return (rest.to_string(), None) };
    let mut value = None;
    let kept: Vec<&str> = q
        .split('&')
        .filter(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            if k.eq_ignore_ascii_case(key) {
                value = Some(v.to_ascii_lowercase());
                false
            } else {
                true
            }
        })
        .collect();
    if kept.is_empty() {
        (base.to_string(), value)
    } else {
        (format!("{base}?{}", kept.join("&")), value)
    }
}

/// Percent-decoded text of a URL part.
fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(b) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `smtp://[user:pass@]host[:port]/?from=…&to=a,b[&encryption=…]`.
fn smtp(rest: &str) -> Result<Target, String> {
    let url = Url::parse(&format!("smtp://{rest}")).map_err(|e| format!("is not a valid URL: {e}"))?;
    let host = url.host_str().filter(|h| !h.is_empty()).ok_or("has no host")?.to_string();
    let q = |k: &str| url.query_pairs().find(|(key, _)| key.eq_ignore_ascii_case(k)).map(|(_, v)| v.into_owned());
    let from = q("from").filter(|f| f.contains('@')).ok_or("needs ?from=sender@example.com")?;
    let to: Vec<String> =
        q("to").unwrap_or_default().split(',').map(str::trim).filter(|t| !t.is_empty()).map(str::to_string).collect();
    if to.is_empty() || to.iter().any(|t| !t.contains('@')) {
        return Err("needs &to=one@example.com[,two@example.com]".into());
    }
    let port = url.port();
    let tls = match q("encryption").as_deref().map(str::to_ascii_lowercase).as_deref() {
        None | Some("auto") => {
            if port == Some(465) {
                SmtpTls::Implicit
            } else {
                SmtpTls::StartTls
            }
        }
        Some("implicittls") => SmtpTls::Implicit,
        Some("explicittls") => SmtpTls::StartTls,
        Some("none") => SmtpTls::None,
        Some(o) => return Err(format!("encryption={o}: use Auto, ImplicitTLS, ExplicitTLS or None")),
    };
    let auth =
        (!url.username().is_empty()).then(|| (decode(url.username()), url.password().map(decode).unwrap_or_default()));
    let loopback = matches!(host.as_str(), "localhost" | "127.0.0.1" | "[::1]" | "::1");
    if tls == SmtpTls::None && !loopback {
        return Err(format!(
            "encryption=None to {host}: a message (and a password) in the clear over the network; use \
             ExplicitTLS or ImplicitTLS, or a relay on this host"
        ));
    }
    let port = port.unwrap_or(match tls {
        SmtpTls::Implicit => 465,
        SmtpTls::StartTls => 587,
        SmtpTls::None => 25,
    });
    Ok(Target::Smtp { host, port, tls, auth, from, to })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shoutrrr_forms_map_to_each_services_own_url() {
        let url = |raw: &str| match Target::parse(raw).unwrap() {
            Target::Http { format, url, auth } => (format, url.to_string(), auth),
            t => panic!("{t:?}"),
        };
        assert_eq!(
            url("slack://T0001/B0002/XXXX1234"),
            (Format::Slack, "https://hooks.slack.com/services/T0001/B0002/XXXX1234".into(), None)
        );
        assert_eq!(url("slack://bot@T0001/B0002/XXXX1234").1, "https://hooks.slack.com/services/T0001/B0002/XXXX1234");
        assert_eq!(
            url("discord://Tok_en-1@123456"),
            (Format::Discord, "https://discord.com/api/webhooks/123456/Tok_en-1".into(), None)
        );
        assert_eq!(
            url("ntfy://bob:s3cr%40t@ntfy.example.com/alerts"),
            (Format::Ntfy, "https://ntfy.example.com/alerts".into(), Some(("bob".into(), "s3cr@t".into())))
        );
        assert_eq!(url("ntfy://127.0.0.1:8080/alerts?scheme=http").1, "http://127.0.0.1:8080/alerts");
        assert_eq!(url("generic://hooks.example.com/x?disabletls=yes").1, "http://hooks.example.com/x");
        assert_eq!(url("generic://hooks.example.com/x?a=b").1, "https://hooks.example.com/x?a=b");
        assert_eq!(url("slack+https://chat.example.com/hooks/abc").0, Format::Slack);
        assert_eq!(url("https://example.com/hook").0, Format::Json);
        let Target::Smtp { host, port, tls, auth, from, to } =
            Target::parse("smtp://me:p%40ss@mail.example.com/?from=slipway@example.com&to=a@example.com,b@example.com")
                .unwrap()
        else {
            panic!()
        };
        assert_eq!((host.as_str(), port, tls), ("mail.example.com", 587, SmtpTls::StartTls));
        assert_eq!(auth, Some(("me".into(), "p@ss".into())));
        assert_eq!((from.as_str(), to.len()), ("slipway@example.com", 2));
        assert!(matches!(
            Target::parse("smtp://mail.example.com:465/?from=a@b.c&to=d@e.f").unwrap(),
            Target::Smtp { tls: SmtpTls::Implicit, port: 465, .. }
        ));
    }

    #[test]
    fn bad_urls_are_refused_saying_what_to_write() {
        for (raw, words) in [
            ("hooks.example.com/x", "scheme://"),
            ("telegram://x@y", "is not a service"),
            ("slack://T0001/B0002", "slack://T…/B…/X…"),
            ("discord://123456", "discord://token@id"),
            ("ntfy://ntfy.example.com/", "names no topic"),
            ("smtp://mail.example.com/?to=a@b.c", "from="),
            ("smtp://mail.example.com/?from=a@b.c", "to="),
            ("smtp://mail.example.com/?from=a@b.c&to=d@e.f&encryption=None", "in the clear"),
            ("teams+https://x.example.com/", "not a format"),
        ] {
            let e = Target::parse(raw).unwrap_err();
            assert!(e.contains(words), "{raw}: {e}");
        }
        assert!(Target::parse("smtp://127.0.0.1:2525/?from=a@b.c&to=d@e.f&encryption=None").is_ok());
    }
}
