//! Command-line front ends for the subcommands (argument types and runners);
//! `main.rs` only parses and dispatches.

use std::io::Write as _;
use std::ops::RangeInclusive;
use std::time::Duration;

use anyhow::Context as _;

use crate::mock::{MockProvider, DEFAULT_RECORD_CAPACITY};

/// `switchyard-loadtest mock`: run the mock LLM provider until SIGINT/SIGTERM.
#[derive(clap::Args, Debug, Clone)]
pub struct MockArgs {
    /// Address of the main listener (model endpoints and `/_mock/*`).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: String,
    /// Optional second listener serving only `/_mock/*` (survives the `refuse` fault).
    #[arg(long)]
    pub control_listen: Option<String>,
    /// Time to first token (humantime: `50ms`, `1s`).
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    pub ttft: Duration,
    /// Streaming pace in tokens per second (0 = as fast as possible).
    #[arg(long, default_value_t = 0.0)]
    pub tokens_per_sec: f64,
    /// Output length: `N`, `A..B` (end exclusive) or `A..=B`, uniform in range.
    #[arg(long, default_value = "16", value_parser = parse_token_range)]
    pub output_tokens: RangeInclusive<u32>,
    /// Seed for the output-length draw.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// How many recent requests to keep for `GET /_mock/requests` (0 = off).
    #[arg(long, default_value_t = DEFAULT_RECORD_CAPACITY)]
    pub record: usize,
}

/// Parse `N`, `A..B` (end exclusive, like Rust) or `A..=B`.
pub fn parse_token_range(s: &str) -> Result<RangeInclusive<u32>, String> {
    let s = s.trim();
    let num = |t: &str| {
        t.trim()
            .parse::<u32>()
            .map_err(|_| format!("invalid token count {t:?}"))
    };
    let range = if let Some((a, b)) = s.split_once("..=") {
        num(a)?..=num(b)?
    } else if let Some((a, b)) = s.split_once("..") {
        let (a, b) = (num(a)?, num(b)?);
        if b <= a {
            return Err(format!("empty range {s:?}"));
        }
        a..=b - 1
    } else {
        let n = num(s)?;
        n..=n
    };
    if range.start() > range.end() {
        return Err(format!("empty range {s:?}"));
    }
    Ok(range)
}

/// Run the mock until SIGINT or SIGTERM. Prints `mock listening on URL`
/// (and `mock control on URL`) to stdout once bound.
pub async fn run_mock(args: MockArgs) -> anyhow::Result<()> {
    let mut builder = MockProvider::builder()
        .ttft(args.ttft)
        .tokens_per_sec(args.tokens_per_sec)
        .output_tokens(args.output_tokens)
        .seed(args.seed)
        .record_capacity(args.record);
    if let Some(c) = &args.control_listen {
        builder = builder.control_listen(c.clone());
    }
    let mock = builder
        .spawn(args.listen.as_str())
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "mock listening on {}", mock.url())?;
        if let Some(url) = mock.control_url() {
            writeln!(out, "mock control on {url}")?;
        }
        out.flush()?;
    }
    wait_for_signal().await?;
    mock.shutdown().await;
    Ok(())
}

#[cfg(unix)]
async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.context("waiting for SIGINT")?,
        _ = term.recv() => {}
    }
    Ok(())
}

#[cfg(not(unix))]
async fn wait_for_signal() -> anyhow::Result<()> {
    tokio::signal::ctrl_c().await.context("waiting for Ctrl-C")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::parse_token_range;

    #[test]
    fn token_ranges() {
        assert_eq!(parse_token_range("20..200").unwrap(), 20..=199);
        assert_eq!(parse_token_range("20..=200").unwrap(), 20..=200);
        assert_eq!(parse_token_range("7").unwrap(), 7..=7);
        assert!(parse_token_range("5..5").is_err());
        assert!(parse_token_range("9..=3").is_err());
        assert!(parse_token_range("x").is_err());
    }
}
