//! Flags and environment variables, compatible with the original image-syncer.

use std::path::PathBuf;

use clap::Parser;
use image_syncer_cosign::KeyRef;

const AFTER_HELP: &str = "\
Boolean environment variables accept true/false/1/0.

Exit codes:
  0  all images are in sync (or, with --dry-run, the plan has no problem)
  1  a sync failure (registry, network) for at least one image
  2  invalid input (flags, definition file, key file) before anything is touched
  3  a safety stop: a target tag holds a different digest, or content does not
     match its digest; nothing more is written in the run
With --watch, runs repeat until SIGTERM or SIGINT, then the process exits 0
(2 if the definition does not validate at the start).";

/// `--version`: the version, then what a plugin library must match to be
/// loaded (the compiler that built this binary, the plugin ABI); `-V` gives
/// the first line only.
static LONG_VERSION: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "{}\nbuilt with {}\nplugin ABI {}",
        env!("CARGO_PKG_VERSION"),
        image_syncer_plugin::RUSTC_VERSION,
        image_syncer_plugin::ABI_VERSION
    )
});

#[derive(Debug, Parser)]
#[command(
    name = "image-syncer",
    version,
    long_version = LONG_VERSION.as_str(),
    about = "Safely copies container images from third-party registries into a registry you own",
    long_about = "Safely copies container images from third-party registries into a registry you own.\n\nA tag once synced never changes: if the target tag holds a different digest than the source, the run stops (exit 3). Every manifest and blob is verified against its digest. Multi-arch indexes are copied whole, digests preserved.",
    after_help = AFTER_HELP
)]
pub struct Args {
    /// Definition file (YAML) listing the images to sync
    #[arg(
        short = 'i',
        long,
        env = "SYNCER_IMAGES_FILE",
        value_name = "PATH",
        required_unless_present_any = ["list_stages", "completions", "man", "print_schema"]
    )]
    pub images_file: Option<PathBuf>,

    /// JSON key file for the target registry: `username`/`password` fields log in with those; any other JSON logs in as `_json_key` with the file's content as password (GCR/Artifact Registry). Without it, the credentials found for the target registry are used, else none
    #[arg(
        short = 't',
        long,
        env = "SYNCER_TARGET_REPO_AUTH_KEY",
        value_name = "PATH"
    )]
    pub target_repo_auth_key: Option<PathBuf>,

    /// Bearer token for the target registry (instead of a key file)
    #[arg(
        long,
        env = "SYNCER_ACCESS_TOKEN",
        value_name = "TOKEN",
        conflicts_with = "target_repo_auth_key",
        hide_env_values = true
    )]
    pub access_token: Option<String>,

    /// Read-only: compute and print the plan, write nothing anywhere
    #[arg(long, env = "SYNCER_DRY_RUN", value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false", value_parser = parse_bool)]
    pub dry_run: bool,

    /// Debug logging (secrets are never logged)
    #[arg(long, env = "SYNCER_DEBUG", value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false", value_parser = parse_bool)]
    pub debug: bool,

    /// Signing key reference (gcpkms://, awskms://, azurekms://, hashivault://, env://VAR, or a key file)
    #[arg(
        short = 'k',
        long,
        visible_alias = "key-ref",
        env = "SYNCER_KMS_KEY",
        value_name = "KEY_REF"
    )]
    pub kms_key: Option<KeyRef>,

    /// Registry reached over plain HTTP (repeatable; env: comma-separated)
    #[arg(long = "insecure-registry", env = "SYNCER_INSECURE_REGISTRIES", value_name = "HOST[:PORT]", value_delimiter = ',', value_parser = parse_host)]
    pub insecure_registries: Vec<String>,

    /// Also trust this CA certificate file (PEM) for registries over HTTPS (repeatable; env: comma-separated)
    #[arg(
        long = "ca-file",
        env = "SYNCER_CA_FILES",
        value_name = "PATH",
        value_delimiter = ','
    )]
    pub ca_files: Vec<PathBuf>,

    /// Summary format on stdout: `text`, or `json` (a machine-readable report)
    #[arg(long, env = "SYNCER_OUTPUT", value_name = "FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub output: String,

    /// Fixes how much runs at once: images planned and copied, blobs of an image, requests in flight per registry [default: the definition's `jobs:`, else adaptive: 8 to 32 requests in flight per registry, at most half of them transfers of blobs of 1 MiB or more, 32 images copied at once]
    #[arg(short = 'j', long, env = "SYNCER_JOBS", value_name = "N", value_parser = clap::value_parser!(u32).range(1..=256))]
    pub jobs: Option<u32>,

    /// Retries of a registry operation after a transient failure (5xx, 429, timeouts, dropped connections), with exponential backoff and jitter, never sooner than a registry's Retry-After [default: the definition's `retry.retries`, else 6]
    #[arg(long, env = "SYNCER_RETRIES", value_name = "N", value_parser = clap::value_parser!(u32).range(0..=20))]
    pub retries: Option<u32>,

    /// Sync only this shard of the images (by target), for splitting one definition across machines
    #[arg(
        long,
        env = "SYNCER_SHARD",
        value_name = "INDEX/COUNT",
        conflicts_with = "shard_count"
    )]
    pub shard: Option<image_syncer_core::shard::Shard>,

    /// Shard count, with the index taken from JOB_COMPLETION_INDEX (a Kubernetes Indexed Job)
    #[arg(long, env = "SYNCER_SHARD_COUNT", value_name = "COUNT", value_parser = clap::value_parser!(u32).range(1..))]
    pub shard_count: Option<u32>,

    /// Run continuously: sync, sleep DURATION (`30s`, `10m`, `1h`, `1h30m`), sync again, until SIGTERM or SIGINT (then exit 0). Each cycle reads the definition file again; one that no longer validates is logged and the last good one runs
    #[arg(long, env = "SYNCER_WATCH", value_name = "DURATION", value_parser = parse_duration)]
    pub watch: Option<std::time::Duration>,

    /// Serve /healthz, /readyz (once the first run has finished) and /metrics (Prometheus) on this address, e.g. `0.0.0.0:9090`
    #[arg(long, env = "SYNCER_LISTEN", value_name = "ADDR", value_parser = parse_listen)]
    pub listen: Option<std::net::SocketAddr>,

    /// Load a plugin library (repeatable); its stages can then be named in the definition's `pipeline:`
    #[arg(long = "plugin", value_name = "PATH")]
    pub plugins: Vec<PathBuf>,

    /// Print a shell completion script (bash, zsh, fish, powershell, elvish) and exit
    #[arg(long, value_name = "SHELL")]
    pub completions: Option<clap_complete::Shell>,

    /// Print the JSON Schema of the definition file (for editors) and exit
    #[arg(long)]
    pub print_schema: bool,

    /// Print the man page (roff) and exit
    #[arg(long)]
    pub man: bool,

    /// List the stage plugins this binary knows (kind, name, description, example config) and exit
    #[arg(long)]
    pub list_stages: bool,
}

fn parse_bool(s: &str) -> Result<bool, String> {
    match s.to_ascii_lowercase().as_str() {
        "true" | "1" => Ok(true),
        "false" | "0" => Ok(false),
        _ => Err(format!("`{s}` is not a boolean: use true, false, 1 or 0")),
    }
}

/// The longest `--watch` interval: a week (a longer sleep is a schedule,
/// better served by a CronJob).
const LONGEST_WATCH: u64 = 7 * 24 * 3600;

/// A duration of whole seconds, minutes, hours or days: `30s`, `10m`, `1h`,
/// `1h30m`, `1d`. At least one second, at most [`LONGEST_WATCH`].
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let bad = || {
        format!("`{s}` is not a duration: write a number and a unit (s, m, h, d), as in 30s, 10m, 1h or 1h30m")
    };
    let text = s.trim();
    if text.is_empty() {
        return Err(bad());
    }
    let mut total: u64 = 0;
    let mut digits = String::new();
    for c in text.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            _ => return Err(bad()),
        };
        let n: u64 = digits.parse().map_err(|_| bad())?;
        digits.clear();
        total = n
            .checked_mul(unit)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(bad)?;
    }
    if !digits.is_empty() {
        return Err(bad());
    }
    if total == 0 {
        return Err(format!("`{s}`: the interval must be at least 1s"));
    }
    if total > LONGEST_WATCH {
        return Err(format!(
            "`{s}`: the interval must be at most 7d (for longer, run on a schedule: a CronJob)"
        ));
    }
    Ok(std::time::Duration::from_secs(total))
}

fn parse_listen(s: &str) -> Result<std::net::SocketAddr, String> {
    s.trim().parse().map_err(|_| {
        format!("`{s}` is not an address to listen on: write IP:PORT, as in 0.0.0.0:9090, 127.0.0.1:9090 or [::]:9090")
    })
}

fn parse_host(s: &str) -> Result<String, String> {
    let s = s.trim();
    if image_syncer_core::reference::is_valid_host(s) {
        Ok(s.to_string())
    } else {
        Err(format!(
            "`{s}` is not a registry HOST[:PORT] (no scheme, no path)"
        ))
    }
}

/// Parses the process arguments; usage errors exit with code 2.
pub fn parse() -> Args {
    Args::parse()
}

/// The completion script for `shell`.
pub fn completions(shell: clap_complete::Shell) -> Vec<u8> {
    use clap::CommandFactory;
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut Args::command(), "image-syncer", &mut out);
    out
}

/// The man page, generated from the same definition as `--help`.
pub fn man_page() -> Vec<u8> {
    use clap::CommandFactory;
    let mut out = Vec::new();
    clap_mangen::Man::new(Args::command())
        .render(&mut out)
        .expect("rendering into memory");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn help_is_pinned() {
        // clap shows the values of set environment variables in the help:
        // the pinned text is the one for a clean environment.
        for (k, _) in std::env::vars() {
            if k.starts_with("SYNCER_") {
                std::env::remove_var(k);
            }
        }
        let help = Args::command()
            .term_width(100)
            .render_long_help()
            .to_string();
        insta::assert_snapshot!(help);
    }

    #[test]
    fn completions_and_man_page_come_from_the_same_flags() {
        let bash = String::from_utf8(completions(clap_complete::Shell::Bash)).unwrap();
        for flag in [
            "--images-file",
            "--target-repo-auth-key",
            "--kms-key",
            "--key-ref",
            "--shard",
            "--watch",
            "--listen",
        ] {
            assert!(bash.contains(flag), "bash completion lacks {flag}");
        }
        let zsh = String::from_utf8(completions(clap_complete::Shell::Zsh)).unwrap();
        assert!(zsh.starts_with("#compdef image-syncer"), "{}", &zsh[..40]);
        let man = String::from_utf8(man_page()).unwrap();
        assert!(man.contains(".TH image-syncer"), "{}", &man[..200]);
        for text in ["\\-\\-images\\-file", "\\-\\-kms\\-key", "Exit codes"] {
            assert!(man.contains(text), "man page lacks {text}");
        }
    }

    #[test]
    fn durations_parse_with_units_and_refuse_the_rest() {
        let secs = |s: &str| parse_duration(s).map(|d| d.as_secs());
        assert_eq!(secs("30s"), Ok(30));
        assert_eq!(secs("10m"), Ok(600));
        assert_eq!(secs("1h"), Ok(3600));
        assert_eq!(secs("1h30m"), Ok(5400));
        assert_eq!(secs(" 2d "), Ok(172_800));
        assert_eq!(secs("7d"), Ok(LONGEST_WATCH));
        for bad in [
            "",
            "10",
            "m",
            "10x",
            "1.5h",
            "-1m",
            "10 m",
            "99999999999999999999s",
        ] {
            let e = parse_duration(bad).unwrap_err();
            assert!(e.contains("is not a duration"), "{bad:?}: {e}");
        }
        assert!(parse_duration("0s").unwrap_err().contains("at least 1s"));
        assert!(parse_duration("8d").unwrap_err().contains("at most 7d"));
    }

    #[test]
    fn clap_definition_is_consistent() {
        Args::command().debug_assert();
    }
}
