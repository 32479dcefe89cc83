//! The one printer: results to stdout (human `Display` or one `--json` object), diagnostics to
//! stderr through tracing. Knows `--json` and `--quiet`.

use std::fmt::Display;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;
use slipway_jobs::adapters::desired::DesiredState;
use slipway_jobs::config::HostConfig;
use slipway_jobs::error::{Error, ExitKind};

use crate::cli::LogFormat;

/// Set up tracing to stderr; `SLIPWAY_LOG` sets the filter (default `info`).
pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SLIPWAY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,aws_config=error,aws_smithy_runtime=warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Human => builder.with_target(false).init(),
    }
}

/// Prints reports and errors.
pub struct Printer {
    json: bool,
    quiet: bool,
}

#[derive(Serialize)]
struct Envelope<'a, R: Serialize> {
    ok: bool,
    job: &'a str,
    run_id: Option<&'a str>,
    duration_ms: u64,
    exit_code: u8,
    outcome: ExitKind,
    report: &'a R,
}

impl Printer {
    /// A printer for these flags.
    pub fn new(json: bool, quiet: bool) -> Printer {
        Printer { json, quiet }
    }

    /// Print a job's report.
    pub fn report<R: Serialize + Display>(
        &self,
        job: &str,
        run_id: Option<String>,
        started: Instant,
        kind: ExitKind,
        report: &R,
    ) {
        if self.json {
            let env = Envelope {
                ok: kind == ExitKind::Success,
                job,
                run_id: run_id.as_deref(),
                duration_ms: started.elapsed().as_millis() as u64,
                exit_code: kind.code(),
                outcome: kind,
                report,
            };
            match serde_json::to_string(&env) {
                Ok(s) => println!("{s}"),
                Err(e) => eprintln!("error: cannot render the report as JSON: {e}"),
            }
        } else if !self.quiet || kind != ExitKind::Success {
            print!("{report}");
        }
    }

    /// Print an error that ended a job before it produced a report.
    pub fn error(&self, job: &str, e: &Error, started: Instant) {
        let kind = e.exit_kind();
        if self.json {
            let v = serde_json::json!({
                "ok": false,
                "job": job,
                "run_id": null,
                "duration_ms": started.elapsed().as_millis() as u64,
                "exit_code": kind.code(),
                "outcome": kind,
                "error": e.to_string(),
            });
            println!("{v}");
        }
        eprintln!("error: {e}");
    }
}

/// The report of `config check`.
#[derive(Serialize)]
pub struct ConfigCheck {
    config: PathBuf,
    desired_repo: String,
    commit: String,
    /// The head's signature, as checked against `[desired] allowed_signers`.
    signature: slipway_jobs::adapters::desired::Signature,
    apps: Vec<AppLine>,
}

#[derive(Serialize)]
struct AppLine {
    name: String,
    image: String,
    canary: Option<String>,
    hold: Vec<String>,
}

impl ConfigCheck {
    /// Summarise a valid config and fleet.
    pub fn new(path: &Path, cfg: &HostConfig, state: &DesiredState) -> ConfigCheck {
        ConfigCheck {
            config: path.to_path_buf(),
            desired_repo: cfg.desired.repo.clone(),
            commit: state.commit.clone(),
            signature: state.signature.clone(),
            apps: state
                .fleet
                .apps
                .iter()
                .map(|a| AppLine {
                    name: a.name.clone(),
                    image: a.image.to_string(),
                    canary: a.canary.as_ref().map(|c| c.to_string()),
                    hold: a.hold.iter().map(|h| h.to_string()).collect(),
                })
                .collect(),
        }
    }
}

impl Display for ConfigCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "{}: ok", self.config.display())?;
        writeln!(f, "desired state {} at commit {}: ok", self.desired_repo, &self.commit[..12.min(self.commit.len())])?;
        writeln!(f, "  signature: {}", self.signature)?;
        for a in &self.apps {
            writeln!(f, "  app {} -> {}", a.name, a.image)?;
        }
        Ok(())
    }
}

/// Progress on stderr: an indicatif bar or spinner on a terminal, log lines otherwise.
pub struct CliProgress {
    bar: std::sync::Mutex<Option<indicatif::ProgressBar>>,
    terminal: bool,
    current: std::sync::Mutex<(String, Instant)>,
}

impl CliProgress {
    /// Bars only when stderr is a terminal and output is not JSON.
    pub fn new(json: bool) -> CliProgress {
        use std::io::IsTerminal;
        CliProgress {
            bar: std::sync::Mutex::new(None),
            terminal: std::io::stderr().is_terminal() && !json,
            current: std::sync::Mutex::new((String::new(), Instant::now())),
        }
    }
}

impl slipway_jobs::progress::Progress for CliProgress {
    fn start(&self, what: &str, total: Option<u64>) {
        if let Ok(mut c) = self.current.lock() {
            *c = (what.to_string(), Instant::now());
        }
        if !self.terminal {
            tracing::info!("{what}…");
            return;
        }
        let bar = match total {
            Some(n) => {
                let b = indicatif::ProgressBar::new(n);
                if let Ok(style) =
                    indicatif::ProgressStyle::with_template("{msg} {bar:30} {bytes}/{total_bytes} {bytes_per_sec}")
                {
                    b.set_style(style);
                }
                b
            }
            None => indicatif::ProgressBar::new_spinner(),
        };
        bar.set_message(what.to_string());
        bar.enable_steady_tick(std::time::Duration::from_millis(120));
        if let Ok(mut b) = self.bar.lock() {
            *b = Some(bar);
        }
    }
    fn advance(&self, n: u64) {
        if let Ok(b) = self.bar.lock() {
            if let Some(b) = b.as_ref() {
                b.inc(n);
            }
        }
    }
    fn finish(&self) {
        if let Ok(mut b) = self.bar.lock() {
            if let Some(b) = b.take() {
                b.finish_and_clear();
            }
        }
        if !self.terminal {
            if let Ok(c) = self.current.lock() {
                tracing::info!("{} done in {} ms", c.0, c.1.elapsed().as_millis());
            }
        }
    }
}
