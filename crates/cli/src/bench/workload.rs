//! What the benchmarks move: one envelope shape (a 256-byte JSON payload by default), its
//! topic, and the exact bytes the broker stores for it (so the raw baseline writes the same rows).

use std::path::Path;

use eventyard::{Envelope, EventId, EventType, Message, TenantId};
use serde_json::{Map, Value};

/// Event type (and, topic-per-event-type, topic) of the benchmark messages.
pub const EVENT_TYPE: &str = "BenchMessageSent";

/// Subscription consuming the benchmark topic.
pub const SUBSCRIPTION: &str = "bench.noop";

/// Header carrying the intended send time of a latency-run message (ns since the run's origin).
pub const INTENDED_HEADER: &str = "bench-intended-ns";

/// A JSON object whose serialized form is exactly `bytes` long when `bytes >= 11`
/// (`{"data":"xx…x"}`); the smallest such object otherwise.
pub fn payload(bytes: usize) -> Value {
    const OVERHEAD: usize = r#"{"data":""}"#.len();
    let mut m = Map::new();
    m.insert(
        "data".into(),
        Value::String("x".repeat(bytes.saturating_sub(OVERHEAD))),
    );
    Value::Object(m)
}

/// The template every benchmark message is cloned from: a root envelope of [`EVENT_TYPE`] for
/// tenant `bench` with a payload of `payload_bytes`.
pub fn template(payload_bytes: usize) -> anyhow::Result<Envelope> {
    let env = Envelope::new(
        EventType::event(EVENT_TYPE)?,
        TenantId::parse("bench")?,
        payload(payload_bytes),
    );
    env.validate()?;
    Ok(env)
}

/// A fresh message from the template: same workflow ids, new event id.
pub fn next(template: &Envelope) -> Envelope {
    let mut e = template.clone();
    e.event_id = EventId::generate();
    e
}

/// The row contents the broker stores for one message: body (envelope JSON) and properties
/// (JSON text), as its `messages` table holds them.
pub fn row_bytes(template: &Envelope) -> (Vec<u8>, String) {
    let m = Message::from_envelope(&next(template));
    let props = serde_json::to_string(&m.properties).unwrap_or_else(|_| "{}".into());
    (m.body.to_vec(), props)
}

/// A fresh temporary directory for one run's data file, under `dir` or the system temp dir.
pub fn tempdir(dir: Option<&Path>) -> anyhow::Result<tempfile::TempDir> {
    let b = {
        let mut b = tempfile::Builder::new();
        b.prefix("yard-bench-");
        b
    };
    Ok(match dir {
        Some(d) => b.tempdir_in(d)?,
        None => b.tempdir()?,
    })
}

/// Latency of a durable 4 KiB append (`write` + `fdatasync`) in `dir`, in ms: (p50, p90) of
/// 25 tries. A context figure: on a shared disk it moves a lot, and every commit pays it.
pub fn fsync_probe(dir: &Path) -> anyhow::Result<(f64, f64)> {
    use std::io::Write;
    let path = dir.join("fsync-probe.bin");
    let mut f = std::fs::File::create(&path)?;
    let block = [0u8; 4096];
    let mut ms = Vec::with_capacity(25);
    for _ in 0..25 {
        f.write_all(&block)?;
        let t = std::time::Instant::now();
        f.sync_data()?;
        ms.push(t.elapsed().as_secs_f64() * 1_000.0);
    }
    drop(f);
    std::fs::remove_file(&path)?;
    ms.sort_by(f64::total_cmp);
    Ok((ms[12], ms[22]))
}

/// Median of `xs` (mean of the two middle values for an even count); 0 for none.
pub fn median(xs: &[f64]) -> f64 {
    let mut v: Vec<f64> = xs.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_has_the_requested_size() {
        for n in [11, 64, 256, 1000] {
            assert_eq!(serde_json::to_vec(&payload(n)).unwrap().len(), n);
        }
    }

    #[test]
    fn template_is_valid_and_messages_differ() {
        let t = template(256).unwrap();
        let (a, b) = (next(&t), next(&t));
        assert_ne!(a.event_id, b.event_id);
        let parsed = Envelope::from_json(&a.to_json()).unwrap();
        assert_eq!(parsed.event_type.as_str(), EVENT_TYPE);
        let (body, props) = row_bytes(&t);
        assert!(body.len() > 256 && props.len() > 50);
    }

    #[test]
    fn medians() {
        assert_eq!(median(&[]), 0.0);
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
    }
}
