//! `ordo bench --hdr-log`: every interval's histograms in the HdrHistogram interval log
//! format (version 1.3, as Java's `HistogramLogWriter` writes it), for HistogramLogAnalyzer,
//! `HistogramLogProcessor` and the other tools that read it, one tagged line per metric.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::time::{Duration, UNIX_EPOCH};

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
    let started = unix_seconds(&header.started).map(|s| UNIX_EPOCH + Duration::from_secs(s));
    if let Some(started) = started {
        builder
            .with_start_time(started)
            .with_base_time(started + ramp(results));
    }
    let mut serializer = V2DeflateSerializer::new();
    let mut log = builder.begin_log_with(out, &mut serializer)?;
    if started.is_none() {
        // Without a BaseTime readers take the timestamps for seconds since the epoch: say so.
        log.write_comment(&format!(
            "no StartTime or BaseTime: started {:?} is not RFC 3339 UTC to the second",
            header.started
        ))?;
    }
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

/// Seconds since the epoch of an RFC 3339 UTC time to the second, as the header's
/// `started` is written (`2024-02-29T23:59:30Z`), or None for anything else.
fn unix_seconds(rfc3339: &str) -> Option<u64> {
    let (date, time) = rfc3339.strip_suffix('Z')?.split_once('T')?;
    let fields = |text: &str, separator| -> Option<[u64; 3]> {
        let mut parts = text.split(separator).map(|part| part.parse::<u64>().ok());
        let fields = [parts.next()??, parts.next()??, parts.next()??];
        parts.next().is_none().then_some(fields)
    };
    let [year, month, day] = fields(date, '-')?;
    let [hour, minute, second] = fields(time, ':')?;
    let valid = (1970..=9999).contains(&year)
        && (1..=12).contains(&month)
        && (1..=31).contains(&day)
        && hour < 24
        && minute < 60
        && second <= 60;
    if !valid {
        return None;
    }
    // Days since 1970-01-01 (Howard Hinnant's days_from_civil, with March as month 0 so
    // that the leap day ends the year); year >= 1970 keeps it non-negative.
    let (year, month) = if month <= 2 {
        (year - 1, month + 9)
    } else {
        (year, month - 3)
    };
    let year_of_era = year % 400;
    let day_of_year = (153 * month + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    let days = (year / 400) * 146_097 + day_of_era - 719_468;
    Some(days * 86_400 + hour * 3_600 + minute * 60 + second)
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
        results.header.started = "yesterday".into();
        results.intervals[1].start_s = f64::NAN;
        results.intervals[2].length_s = -1.0;
        results.intervals[3].length_s = 0.0;
        let mut out = Vec::new();
        write_to(&results, &mut out).expect("written");
        let text = String::from_utf8(out).expect("utf-8");
        assert!(text.contains("#interval 1 left out: start NaN s"));
        assert!(text.contains("#interval 2 left out"));
        let (times, lines) = read_back(&text);
        assert!(times.is_empty(), "no BaseTime without a start");
        assert_eq!(lines.len(), 14 - 6);

        results.intervals.clear();
        let mut out = Vec::new();
        write_to(&results, &mut out).expect("written");
        assert_eq!(
            read_back(&String::from_utf8(out).expect("utf-8")).1.len(),
            0
        );
    }

    #[test]
    fn started_is_read_as_utc_seconds() {
        assert_eq!(unix_seconds("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(unix_seconds("2000-03-01T00:00:00Z"), Some(951_868_800));
        assert_eq!(unix_seconds("2024-02-29T23:59:30Z"), Some(1_709_251_170));
        for odd in [
            "",
            "2024-02-29",
            "2024-02-29T23:59:30",
            "2024-13-01T00:00:00Z",
            "1969-12-31T23:59:59Z",
            "2024-02-29T23:59:30.5Z",
            "2024-02-29T23:59:30:00Z",
        ] {
            assert_eq!(unix_seconds(odd), None, "{odd:?}");
        }
    }
}
