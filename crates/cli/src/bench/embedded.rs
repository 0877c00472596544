//! `yard bench embedded` (R7): the embedded SQLite broker's publish → consume → ack rate as a
//! ratio of a bare SQLite queue loop measured in the same process with the same pragmas, plus
//! open-loop latency.
//!
//! Two baselines run beside the broker, both through the same loop ([`baseline`]):
//! - **R7 baseline** (`baseline_rate`, the one `ratio` uses): rows carrying the same bytes the
//!   broker stores for a message — the envelope JSON (with its 256-byte payload) as body and its
//!   properties JSON — as the transport benchmarks send the same bytes on the wire from the raw
//!   client. The ratio is then the cost of the broker's machinery (writer thread, channels,
//!   parsing, consumer, group commit) over the bare loop, less what the broker's storage layout
//!   saves: the loop's claim rewrites the whole stored message, the broker's (schema version 3)
//!   a narrow row beside the bytes;
//! - **bare-payload baseline** (`baseline_bare_rate`, `ratio_bare`): rows carrying only the
//!   256-byte payload (properties `{}`), for reference: what the envelope and the stored
//!   properties cost on top.
//!
//! Each of `--runs` rounds runs both baselines then the broker, each on a fresh data file, so
//! drift of a shared machine hits every side alike; the report gives medians. The latency run
//! comes last, on its own fresh file.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::ExitCode;

use serde::Serialize;

use super::EmbeddedArgs;
use super::baseline::{self, BaselineRun};
use super::broker::{self, BrokerParams, BrokerRun};
use super::latency::{self, LatencyParams, LatencyRun};
use super::workload::{self, median};

/// R7 bar: broker rate / baseline rate.
pub const TARGET_RATIO: f64 = 0.7;
/// R7 bar: broker rate in msg/s on a 2-core machine.
pub const TARGET_RATE: f64 = 50_000.0;

/// Properties text of the bare-payload baseline's rows (the column is NOT NULL).
const BARE_PROPS: &str = "{}";

/// Everything the benchmark held fixed, recorded beside every number.
#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    /// Durability, load shape, machine.
    #[serde(flatten)]
    pub load: super::LoadSettings,
    /// Stored body per message of the broker and of the R7 baseline (the envelope JSON).
    pub body_bytes: usize,
    /// Stored properties JSON per message of the broker and of the R7 baseline.
    pub props_bytes: usize,
    /// What one baseline cycle does.
    pub baseline_cycle: &'static str,
    /// How the broker is driven.
    pub broker_path: &'static str,
    /// Latency of a 4 KiB write + fdatasync in the data directory before the runs, ms (p50, p90).
    pub fsync_ms_start: (f64, f64),
    /// The same after the runs.
    pub fsync_ms_end: (f64, f64),
}

/// The report, printed as a table or (with `--json`) as one JSON object.
#[derive(Debug, Clone, Serialize)]
pub struct EmbeddedReport {
    /// `embedded` (R7).
    pub benchmark: &'static str,
    /// Median rate of the R7 baseline (bare loop over the rows the broker stores), msg/s.
    pub baseline_rate: f64,
    /// Median broker rate (publish → consume → ack), msg/s.
    pub rate: f64,
    /// `rate / baseline_rate`: the R7 figure.
    pub ratio: f64,
    /// Median rate of the same loop over bare 256-byte payload rows, msg/s (reference).
    pub baseline_bare_rate: f64,
    /// `rate / baseline_bare_rate`: also charging the envelope and stored properties.
    pub ratio_bare: f64,
    /// Median rate at which publishers got their batches acknowledged (durable), msg/s.
    pub publish_rate: f64,
    /// Latency p50, ms (intended send → handler start).
    pub p50_ms: f64,
    /// Latency p99, ms.
    pub p99_ms: f64,
    /// Latency p99.9, ms.
    pub p999_ms: f64,
    /// Messages per throughput run.
    pub messages: u64,
    /// Envelope payload size, bytes.
    pub payload_bytes: usize,
    /// Throughput runs of each side.
    pub runs: u32,
    /// The ratio bar (0.7).
    pub target_ratio: f64,
    /// The rate bar (50k msg/s).
    pub target_rate: f64,
    /// Both bars met.
    pub meets_target: bool,
    /// Broker runs: CPU µs per message by thread group (median of runs): where the time goes.
    pub cpu_us_per_msg: BTreeMap<String, f64>,
    /// Broker runs: µs per message the threads waited for a CPU (median of runs).
    pub runq_wait_us_per_msg: BTreeMap<String, f64>,
    /// R7 baseline runs: CPU µs per message of the loop's thread (median of runs).
    pub baseline_cpu_us_per_msg: f64,
    /// Bare-payload baseline runs: CPU µs per message of the loop's thread (median of runs).
    pub baseline_bare_cpu_us_per_msg: f64,
    /// What was held fixed.
    pub settings: Settings,
    /// Every R7 baseline run.
    pub baseline_runs: Vec<BaselineRun>,
    /// Every bare-payload baseline run.
    pub baseline_bare_runs: Vec<BaselineRun>,
    /// Every broker run.
    pub broker_runs: Vec<BrokerRun>,
    /// The latency run.
    pub latency: LatencyRun,
}

impl EmbeddedReport {
    /// Human notes on missed targets (empty when both are met).
    pub fn shortfalls(&self) -> Vec<String> {
        let mut v = Vec::new();
        if self.ratio < self.target_ratio {
            v.push(format!(
                "ratio {:.3} is below the target {:.2}",
                self.ratio, self.target_ratio
            ));
        }
        if self.rate < self.target_rate {
            v.push(format!(
                "broker rate {} msg/s is below the target {} msg/s",
                thousands(self.rate),
                thousands(self.target_rate)
            ));
        }
        v
    }
}

fn rates(runs: &[BaselineRun]) -> f64 {
    median(&runs.iter().map(|r| r.rate).collect::<Vec<_>>())
}

fn baseline_cpu(runs: &[BaselineRun]) -> f64 {
    median(&runs.iter().map(|r| r.cpu_us_per_msg).collect::<Vec<_>>())
}

/// Medians over runs of a per-thread map.
pub fn by_thread(
    runs: &[BrokerRun],
    pick: fn(&BrokerRun) -> &BTreeMap<String, f64>,
) -> BTreeMap<String, f64> {
    let mut all: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for r in runs {
        for (name, us) in pick(r) {
            all.entry(name.clone()).or_default().push(*us);
        }
    }
    all.into_iter().map(|(n, v)| (n, median(&v))).collect()
}

/// `rate / baseline`, 0 without a baseline.
pub fn ratio(rate: f64, baseline: f64) -> f64 {
    if baseline > 0.0 { rate / baseline } else { 0.0 }
}

/// One baseline run on a fresh file under `dir`, on a blocking thread.
async fn baseline_once(a: &EmbeddedArgs, body: &[u8], props: &str) -> anyhow::Result<BaselineRun> {
    let tmp = workload::tempdir(a.load.dir.as_deref())?;
    let path = tmp.path().join("baseline.db");
    let (sync, n, b) = (a.load.synchronous, a.messages, a.load.batch);
    let (body, props) = (body.to_vec(), props.to_owned());
    let run = tokio::task::spawn_blocking(move || baseline::run(&path, sync, n, b, &body, &props))
        .await??;
    drop(tmp);
    Ok(run)
}

fn fsync_probe(dir: Option<&Path>) -> anyhow::Result<(f64, f64)> {
    let tmp = workload::tempdir(dir)?;
    workload::fsync_probe(tmp.path())
}

/// Runs the whole benchmark and returns the report (no printing).
pub async fn run_embedded(a: &EmbeddedArgs) -> anyhow::Result<EmbeddedReport> {
    let loadavg_start = loadavg();
    let fsync_ms_start = fsync_probe(a.load.dir.as_deref())?;
    let template = workload::template(a.load.payload_bytes)?;
    let (body, props) = workload::row_bytes(&template);
    let bare_body = vec![b'x'; a.load.payload_bytes];
    let bp = BrokerParams {
        messages: a.messages,
        batch: a.load.batch,
        publishers: a.load.publishers,
        concurrency: a.load.concurrency,
        synchronous: a.load.synchronous,
        max_backlog: a.load.backlog_bound(),
    };
    let mut baseline_runs = Vec::new();
    let mut bare_runs = Vec::new();
    let mut broker_runs = Vec::new();
    for _ in 0..a.runs {
        baseline_runs.push(baseline_once(a, &body, &props).await?);
        bare_runs.push(baseline_once(a, &bare_body, BARE_PROPS).await?);
        let tmp = workload::tempdir(a.load.dir.as_deref())?;
        broker_runs.push(broker::run(&tmp.path().join("broker.db"), &bp, &template).await?);
        drop(tmp);
    }
    let tmp = workload::tempdir(a.load.dir.as_deref())?;
    let lp = LatencyParams {
        rate: a.load.rate,
        duration: a.load.seconds,
        concurrency: a.load.concurrency,
        synchronous: a.load.synchronous,
    };
    let lat = latency::run(&tmp.path().join("latency.db"), &lp, &template).await?;
    drop(tmp);

    let baseline_rate = rates(&baseline_runs);
    let baseline_bare_rate = rates(&bare_runs);
    let rate = median(&broker_runs.iter().map(|r| r.rate).collect::<Vec<_>>());
    let publish_rate = median(
        &broker_runs
            .iter()
            .map(|r| r.publish_rate)
            .collect::<Vec<_>>(),
    );
    let ratio_r7 = ratio(rate, baseline_rate);
    Ok(EmbeddedReport {
        benchmark: "embedded",
        baseline_rate,
        rate,
        ratio: ratio_r7,
        baseline_bare_rate,
        ratio_bare: ratio(rate, baseline_bare_rate),
        publish_rate,
        p50_ms: lat.p50_ms,
        p99_ms: lat.p99_ms,
        p999_ms: lat.p999_ms,
        messages: a.messages,
        payload_bytes: a.load.payload_bytes,
        runs: a.runs,
        target_ratio: TARGET_RATIO,
        target_rate: TARGET_RATE,
        meets_target: ratio_r7 >= TARGET_RATIO && rate >= TARGET_RATE,
        cpu_us_per_msg: by_thread(&broker_runs, |r| &r.cpu_us_per_msg),
        runq_wait_us_per_msg: by_thread(&broker_runs, |r| &r.runq_wait_us_per_msg),
        baseline_cpu_us_per_msg: baseline_cpu(&baseline_runs),
        baseline_bare_cpu_us_per_msg: baseline_cpu(&bare_runs),
        settings: Settings {
            load: a.load.settings(loadavg_start),
            body_bytes: body.len(),
            props_bytes: props.len(),
            baseline_cycle: "rusqlite on one thread, one queue table with the bytes in the \
                             claimed row (the broker's layout up to schema version 2); per cycle 3 \
                             transactions: INSERT batch rows (prepared, per row); claim them \
                             (UPDATE … RETURNING, rows read out); DELETE each (prepared, per row)",
            broker_path: "Bus::publish_batch from the publisher tasks; runtime consumer via \
                          handle_envelopes (parse + validate envelope, no-op handler, ack after \
                          handler); clock stops when the consumer's acked counter reaches N",
            fsync_ms_start,
            fsync_ms_end: fsync_probe(a.load.dir.as_deref())?,
        },
        baseline_runs,
        baseline_bare_runs: bare_runs,
        broker_runs,
        latency: lat,
    })
}

/// The three load averages of `/proc/loadavg`, or an empty string.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// `12,345` for 12345.4.
pub fn thousands(x: f64) -> String {
    let n = x.round().max(0.0) as u64;
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The human table.
pub fn table(r: &EmbeddedReport) -> String {
    use std::fmt::Write as _;
    let s = &r.settings;
    let mut o = String::new();
    let _ = writeln!(
        o,
        "yard bench embedded (R7): embedded SQLite broker publish → consume → ack vs a bare SQLite loop"
    );
    let _ = writeln!(
        o,
        "durability: journal_mode={} synchronous={} on every side; data files in {}",
        s.load.journal_mode, s.load.synchronous, s.load.data_dir
    );
    let _ = writeln!(
        o,
        "messages: {} per run, payload {} B; stored per message: {} B body (envelope) + {} B properties; {} runs, medians",
        thousands(r.messages as f64),
        r.payload_bytes,
        s.body_bytes,
        s.props_bytes,
        r.runs
    );
    let _ = writeln!(o);
    let width = 34;
    let _ = write!(o, "{:<width$}", "msg/s");
    for i in 1..=r.runs {
        let _ = write!(o, "{:>10}", format!("run {i}"));
    }
    let _ = writeln!(o, "{:>10}", "median");
    let row = |o: &mut String, name: &str, xs: Vec<f64>, med: f64| {
        let _ = write!(o, "{name:<width$}");
        for x in xs {
            let _ = write!(o, "{:>10}", thousands(x));
        }
        let _ = writeln!(o, "{:>10}", thousands(med));
    };
    row(
        &mut o,
        "baseline, the broker's rows (R7)",
        r.baseline_runs.iter().map(|x| x.rate).collect(),
        r.baseline_rate,
    );
    row(
        &mut o,
        &format!("baseline, bare {} B rows", r.payload_bytes),
        r.baseline_bare_runs.iter().map(|x| x.rate).collect(),
        r.baseline_bare_rate,
    );
    row(
        &mut o,
        "broker, publish → consume → ack",
        r.broker_runs.iter().map(|x| x.rate).collect(),
        r.rate,
    );
    row(
        &mut o,
        "  (publishes acknowledged)",
        r.broker_runs.iter().map(|x| x.publish_rate).collect(),
        r.publish_rate,
    );
    let _ = writeln!(o);
    let mark = |ok: bool| if ok { "ok" } else { "BELOW TARGET" };
    let _ = writeln!(
        o,
        "ratio (R7)  {:>9.3}   target >= {:.2}          {}",
        r.ratio,
        r.target_ratio,
        mark(r.ratio >= r.target_ratio)
    );
    let _ = writeln!(
        o,
        "rate        {:>9}   target >= {} msg/s   {}",
        thousands(r.rate),
        thousands(r.target_rate),
        mark(r.rate >= r.target_rate)
    );
    let _ = writeln!(
        o,
        "ratio vs bare {} B rows {:.3} (reference: also charges the envelope and stored properties)",
        r.payload_bytes, r.ratio_bare
    );
    let l = &r.latency;
    let _ = writeln!(
        o,
        "latency (open loop, {} msg/s for {} s, intended send → handler): p50 {:.2} ms  p99 {:.2} ms  p999 {:.2} ms  max {:.2} ms  ({} of {} handled{})",
        s.load.latency_rate,
        s.load.latency_seconds,
        l.p50_ms,
        l.p99_ms,
        l.p999_ms,
        l.max_ms,
        l.received,
        l.sent,
        if l.publish_errors > 0 {
            format!(", {} publish errors", l.publish_errors)
        } else {
            String::new()
        }
    );
    let _ = writeln!(o);
    let _ = writeln!(
        o,
        "settings: publishers {} × batch {}, consumer concurrency {}, backlog bound {}, runtime workers {} on {} CPUs",
        s.load.publishers,
        s.load.batch,
        s.load.consumer_concurrency,
        if s.load.max_backlog == 0 {
            "none".to_owned()
        } else {
            thousands(s.load.max_backlog as f64)
        },
        s.load.runtime_workers,
        s.load.cpus
    );
    if let Some(b) = r.broker_runs.iter().max_by_key(|b| b.max_backlog_seen) {
        let _ = writeln!(
            o,
            "broker backlog (published, not yet acked): up to {} messages",
            thousands(b.max_backlog_seen as f64)
        );
    }
    if let Some(b) = r.broker_runs.first() {
        let _ = writeln!(
            o,
            "broker writer: {} transactions for {} messages, {:.1} commands per transaction, {} log \
             flushes (run 1)",
            thousands(b.writer_transactions as f64),
            thousands(b.messages as f64),
            b.commands_per_transaction,
            thousands(b.wal_syncs as f64)
        );
    }
    if !r.cpu_us_per_msg.is_empty() {
        let fmt = |m: &BTreeMap<String, f64>| {
            m.iter()
                .map(|(n, us)| format!("{n} {us:.1}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let _ = writeln!(
            o,
            "CPU µs per message (medians): baseline loop {:.1} (bare rows {:.1}); broker {} (total {:.1}); broker threads waiting for a CPU: {}",
            r.baseline_cpu_us_per_msg,
            r.baseline_bare_cpu_us_per_msg,
            fmt(&r.cpu_us_per_msg),
            r.cpu_us_per_msg.values().sum::<f64>(),
            fmt(&r.runq_wait_us_per_msg)
        );
    }
    let _ = writeln!(
        o,
        "machine: load average {} at start, {} at end; 4 KiB write+fdatasync p50/p90 {:.2}/{:.2} ms at start, {:.2}/{:.2} ms at end",
        s.load.loadavg_start,
        s.load.loadavg_end,
        s.fsync_ms_start.0,
        s.fsync_ms_start.1,
        s.fsync_ms_end.0,
        s.fsync_ms_end.1
    );
    let _ = writeln!(o, "baseline: {}", s.baseline_cycle);
    let _ = writeln!(o, "broker:   {}", s.broker_path);
    let anomalies: u64 = r.broker_runs.iter().map(|x| x.anomalies).sum();
    if anomalies > 0 {
        let _ = writeln!(
            o,
            "warning: {anomalies} settle errors / retries / dead-letters during the broker runs"
        );
    }
    if !s.load.synchronous.eq_ignore_ascii_case("FULL") {
        let _ = writeln!(
            o,
            "note: the R7 targets are defined for synchronous=FULL; this run used {}",
            s.load.synchronous
        );
    }
    let short = r.shortfalls();
    if short.is_empty() {
        let _ = writeln!(o, "R7 targets met.");
    } else {
        let _ = writeln!(o, "below target: {}.", short.join("; "));
    }
    o
}

/// `yard bench embedded`: runs, prints, exits 0 whether or not the targets are met.
pub async fn run(a: EmbeddedArgs) -> anyhow::Result<ExitCode> {
    if !a.json {
        eprintln!(
            "running {} rounds (2 baselines + broker) of {} messages, then {} s of latency at {} msg/s…",
            a.runs,
            a.messages,
            a.load.seconds.as_secs_f64(),
            a.load.rate
        );
    }
    let report = run_embedded(&a).await?;
    super::emit("embedded", a.json, &report, table, &report.shortfalls())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_groups_digits() {
        assert_eq!(thousands(0.0), "0");
        assert_eq!(thousands(999.4), "999");
        assert_eq!(thousands(1000.0), "1,000");
        assert_eq!(thousands(1234567.0), "1,234,567");
    }

    #[test]
    fn ratio_of_nothing_is_zero() {
        assert_eq!(ratio(10.0, 0.0), 0.0);
        assert_eq!(ratio(10.0, 20.0), 0.5);
    }
}
