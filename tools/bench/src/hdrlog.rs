//! `ordo bench --hdr-log`: every interval's histograms in the HdrHistogram interval log
//! format (version 1.3, as Java's `HistogramLogWriter` writes it), for HistogramLogAnalyzer,
//! `HistogramLogProcessor` and the other tools that read it, one tagged line per metric.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use hdrhistogram::serialization::interval_log::{IntervalLogWriterBuilder, Tag};
use hdrhistogram::serialization::V2DeflateSerializer;

use super::results::{Metric, Results};

/// Histogram values stay in nanoseconds, as recorded; only the informational max column is
/// scaled, by 10^6 so it reads in milliseconds. That is what Java's `HistogramLogWriter`
/// does by default, and what `HistogramLogProcessor` (`-outputValueUnitRatio 1e6`) and
/// HistogramLogAnalyzer assume of a log of nanosecond latencies.
pub const MAX_VALUE_DIVISOR: f64 = 1e6;

/// Writes `results`' intervals to `path`, each non-empty histogram tagged with its
/// metric's name (`ack`, `lag`, `read`). Timestamps count from BaseTime, the start of the
/// measured run (the header's `started` plus the ramp); StartTime is `started` itself.
pub fn write_log(results: &Results, path: &Path) -> Result<()> {
    let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut out = BufWriter::new(file);
    write_to(results, &mut out)?;
    out.flush()
        .with_context(|| format!("writing {}", path.display()))
}

fn write_to(results: &Results, out: &mut impl Write) -> Result<()> {
    let header = &results.header;
    let mut builder = IntervalLogWriterBuilder::new();
    builder
        .add_comment(&format!(
            "ordo bench: ordo {}, seed {}, started {}; values in ns, max column in ms",
            header.ordo_version, header.seed, header.started
        ))
        .add_comment("[Histogram log format version 1.3]")
        .with_max_value_divisor(MAX_VALUE_DIVISOR);
    let started = SystemTime::from(header.started);
    builder
        .with_start_time(started)
        .with_base_time(started + ramp(results));
    let mut serializer = V2DeflateSerializer::new();
    let mut log = builder.begin_log_with(out, &mut serializer)?;
    for (index, interval) in results.intervals.iter().enumerate() {
        let span = Duration::try_from_secs_f64(interval.start_s)
            .ok()
            .zip(Duration::try_from_secs_f64(interval.length_s).ok());
        let Some((start, length)) = span else {
            // Not a time: the interval cannot be placed, and is left out visibly.
            log.write_comment(&format!(
                "interval {index} left out: start {} s, length {} s",
                interval.start_s, interval.length_s
            ))?;
            continue;
        };
        for metric in Metric::ALL {
            let histogram = interval.histograms.get(metric);
            if histogram.is_empty() {
                continue;
            }
            let tag = Tag::new(metric.name());
            assert!(tag.is_some(), "metric names hold no ',', ' ' or newline");
            log.write_histogram(histogram, start, length, tag)
                .with_context(|| format!("interval {index}, {}", metric.name()))?;
        }
    }
    Ok(())
}

/// The ramp before the measured run, from the configuration the header records.
fn ramp(results: &Results) -> Duration {
    results
        .header
        .config
        .get("ramp_s")
        .and_then(|ramp_s| ramp_s.parse::<f64>().ok())
        .and_then(|ramp_s| Duration::try_from_secs_f64(ramp_s).ok())
        .unwrap_or(Duration::ZERO)
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;
    use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry};
    use hdrhistogram::serialization::Deserializer;
    use hdrhistogram::Histogram;

    use super::*;
    use crate::results::sample;

    /// What a log holds: its two times and its (tag, start, length, histogram) lines.
    type Read = (
        Vec<LogEntry<'static>>,
        Vec<(String, Duration, Duration, Histogram<u64>)>,
    );

    fn read_back(text: &str) -> Read {
        let (mut times, mut lines) = (Vec::new(), Vec::new());
        for entry in IntervalLogIterator::new(text.as_bytes()) {
            match entry.expect("the log parses") {
                LogEntry::Interval(line) => {
                    let bytes = base64::engine::general_purpose::STANDARD
                        .decode(line.encoded_histogram())
                        .expect("base64");
                    let histogram: Histogram<u64> = Deserializer::new()
                        .deserialize(&mut bytes.as_slice())
                        .expect("a V2 deflate histogram");
                    let tag = line.tag().expect("every line is tagged").to_string();
                    lines.push((tag, line.start_timestamp(), line.duration(), histogram));
                }
                LogEntry::StartTime(at) => times.push(LogEntry::StartTime(at)),
                LogEntry::BaseTime(at) => times.push(LogEntry::BaseTime(at)),
            }
        }
        (times, lines)
    }

    #[test]
    fn every_non_empty_interval_histogram_round_trips_tagged() {
        let results = sample();
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("bench.hlog");
        write_log(&results, &path).expect("written");
        let text = std::fs::read_to_string(&path).expect("read");
        assert!(text.starts_with("#ordo bench: ordo 0.1.0-test, seed 42, started 2024-02-29"));

        let (times, lines) = read_back(&text);
        // `date -u -d 2024-02-29T23:59:30Z +%s`, and one second of ramp after it.
        let started = Duration::from_secs(1_709_251_170);
        let measured = started + Duration::from_secs(1);
        assert_eq!(
            times,
            [LogEntry::StartTime(started), LogEntry::BaseTime(measured)]
        );

        let mut expected = Vec::new();
        for interval in &results.intervals {
            for metric in Metric::ALL {
                let histogram = interval.histograms.get(metric);
                if !histogram.is_empty() {
                    let start = Duration::from_secs_f64(interval.start_s);
                    let length = Duration::from_secs_f64(interval.length_s);
                    expected.push((metric.name().to_string(), start, length, histogram.clone()));
                }
            }
        }
        // The sample has no reads in its first interval: 5 × 3 − 1 lines.
        assert_eq!(expected.len(), 14);
        assert_eq!(lines.len(), expected.len());
        for (line, want) in lines.iter().zip(&expected) {
            assert_eq!((&line.0, line.1, line.2), (&want.0, want.1, want.2));
            assert_eq!(line.3.len(), want.3.len());
            assert_eq!(
                line.3.value_at_quantile(0.99),
                want.3.value_at_quantile(0.99)
            );
            assert_eq!(line.3, want.3, "{} at {:?}", line.0, line.1);
        }
    }

    #[test]
    fn odd_input_is_written_not_panicked_on() {
        let mut results = sample();
        results.intervals[1].start_s = f64::NAN;
        results.intervals[2].length_s = -1.0;
        results.intervals[3].length_s = 0.0;
        let mut out = Vec::new();
        write_to(&results, &mut out).expect("written");
        let text = String::from_utf8(out).expect("utf-8");
        assert!(text.contains("#interval 1 left out: start NaN s"));
        assert!(text.contains("#interval 2 left out"));
        let (_, lines) = read_back(&text);
        assert_eq!(lines.len(), 14 - 6);

        results.intervals.clear();
        let mut out = Vec::new();
        write_to(&results, &mut out).expect("written");
        assert_eq!(
            read_back(&String::from_utf8(out).expect("utf-8")).1.len(),
            0
        );
    }
}
