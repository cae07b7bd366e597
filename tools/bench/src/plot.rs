//! `ordo bench --plot`: one SVG of three stacked panels, the latency spectrum of each
//! measured metric, throughput over time and replication lag over time. Text is emitted as
//! SVG `<text>` for the viewer's fonts: plotters without a font feature only estimates
//! text extents for layout, which is all an SVG needs (no TTF, no system font library).

use std::ops::Range;
use std::path::Path;

use anyhow::{Context, Result};
use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint};
use plotters::coord::{CoordTranslate, Shift};
use plotters::prelude::*;

use super::results::{per_second, Counts, Interval, Metric, Results};

type Area<'a> = DrawingArea<SVGBackend<'a>, Shift>;

const WIDTH: u32 = 1000;
const PANEL_HEIGHT: u32 = 380;
const TITLE_FONT: (&str, u32) = ("sans-serif", 20);
const CAPTION_FONT: (&str, u32) = ("sans-serif", 18);

/// The percentile axis is x = log10(1 / (1 − p)), "the number of nines", up to five.
const PERCENTILE_TICKS: [(f64, &str); 6] = [
    (50.0, "50%"),
    (90.0, "90%"),
    (99.0, "99%"),
    (99.9, "99.9%"),
    (99.99, "99.99%"),
    (99.999, "99.999%"),
];
const NINES_MAX: f64 = 5.0;
const STEPS_PER_NINE: u32 = 20;

const BYTES_PER_MB: f64 = 1e6;
const BYTES_PER_MIB: f64 = (1u64 << 20) as f64;

/// Draws the panels to `path`. An empty run draws its axes and titles with no lines.
pub fn write_svg(results: &Results, path: &Path) -> Result<()> {
    let root = SVGBackend::new(path, (WIDTH, 40 + 3 * PANEL_HEIGHT)).into_drawing_area();
    root.fill(&WHITE)?;
    let header = &results.header;
    let title = format!(
        "ordo bench: ordo {}, seed {}, started {}",
        header.ordo_version, header.seed, header.started
    );
    let body = root.titled(&title, TITLE_FONT)?;
    let panels = body.split_evenly((3, 1));
    spectrum(&panels[0], results).context("the latency panel")?;
    throughput(&panels[1], results).context("the throughput panel")?;
    lag(&panels[2], results).context("the lag panel")?;
    root.present()
        .with_context(|| format!("writing {}", path.display()))
}

/// The percentile axis: linear in the number of nines, ticks only at `PERCENTILE_TICKS`.
struct NinesAxis;

impl Ranged for NinesAxis {
    type FormatOption = DefaultFormatting;
    type ValueType = f64;

    fn map(&self, nines: &f64, limit: (i32, i32)) -> i32 {
        let span = f64::from(limit.1 - limit.0);
        limit.0 + (span * nines / NINES_MAX).round() as i32
    }

    fn key_points<Hint: KeyPointHint>(&self, hint: Hint) -> Vec<f64> {
        if hint.weight().allow_light_points() {
            return Vec::new(); // no minor grid
        }
        PERCENTILE_TICKS.iter().map(|tick| nines(tick.0)).collect()
    }

    fn range(&self) -> Range<f64> {
        0.0..NINES_MAX
    }
}

fn nines(percentile: f64) -> f64 {
    -(1.0 - percentile / 100.0).log10()
}

fn percentile_label(x: f64) -> String {
    let nearest = PERCENTILE_TICKS
        .iter()
        .min_by(|a, b| (nines(a.0) - x).abs().total_cmp(&(nines(b.0) - x).abs()));
    nearest.map_or_else(String::new, |tick| tick.1.to_string())
}

fn metric_color(metric: Metric) -> RGBColor {
    match metric {
        Metric::Ack => RGBColor(31, 119, 180),
        Metric::Lag => RGBColor(214, 39, 40),
        Metric::Read => RGBColor(44, 160, 44),
    }
}

/// Latency (µs) against the number of nines, sampled evenly along the axis.
fn spectrum_points(histogram: &hdrhistogram::Histogram<u64>) -> Vec<(f64, f64)> {
    let steps = (NINES_MAX * f64::from(STEPS_PER_NINE)) as u32;
    (0..=steps)
        .map(|step| {
            let x = f64::from(step) / f64::from(STEPS_PER_NINE);
            let latency_ns = histogram.value_at_quantile(1.0 - 10f64.powf(-x));
            (x, (latency_ns as f64 / 1e3).max(1e-3))
        })
        .collect()
}

/// Whole decades around the finite positive values, for a log axis.
fn decades(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values
        .filter(|v| v.is_finite() && *v > 0.0)
        .fold((f64::INFINITY, 0.0f64), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
    if hi == 0.0 {
        return (1.0, 1000.0);
    }
    let lo = 10f64.powf(lo.log10().floor());
    let hi = 10f64.powf(hi.log10().ceil());
    (lo, if hi > lo { hi } else { lo * 10.0 })
}

fn number_label(value: f64) -> String {
    if value.abs() >= 10.0 || value == 0.0 {
        format!("{value:.0}")
    } else {
        let text = format!("{value:.3}");
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

/// A panel's chart: its caption, margins and room for the axis labels.
fn panel<'a, 'b>(area: &'a Area<'b>, caption: &str) -> ChartBuilder<'a, 'b, SVGBackend<'b>> {
    let mut builder = ChartBuilder::on(area);
    builder
        .caption(caption, CAPTION_FONT)
        .margin(12)
        .margin_right(36) // room for a tick label centred on the right edge
        .x_label_area_size(40)
        .y_label_area_size(70);
    builder
}

fn line_style(color: RGBColor) -> ShapeStyle {
    color.stroke_width(2)
}

/// A legend entry's sample of a line.
fn swatch(color: RGBColor) -> impl Fn((i32, i32)) -> PathElement<(i32, i32)> {
    move |(x, y)| PathElement::new([(x, y), (x + 20, y)], line_style(color))
}

fn draw_legend<'a, CT: CoordTranslate>(
    chart: &mut ChartContext<'a, SVGBackend<'a>, CT>,
    position: SeriesLabelPosition,
) -> Result<()> {
    chart
        .configure_series_labels()
        .position(position)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}

fn spectrum(area: &Area, results: &Results) -> Result<()> {
    let curves: Vec<_> = Metric::ALL
        .into_iter()
        .map(|metric| (metric, results.histograms.get(metric)))
        .filter(|(_, histogram)| !histogram.is_empty())
        .collect();
    let points: Vec<_> = curves.iter().map(|c| spectrum_points(c.1)).collect();
    let (lo, hi) = decades(points.iter().flatten().map(|p| p.1));
    let mut chart =
        panel(area, "Latency by percentile").build_cartesian_2d(NinesAxis, (lo..hi).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("latency (µs)")
        .x_label_formatter(&|x| percentile_label(*x))
        .y_label_formatter(&|y| number_label(*y))
        .draw()?;
    for ((metric, histogram), points) in curves.iter().zip(points) {
        let p99_us = number_label(histogram.value_at_quantile(0.99) as f64 / 1e3);
        let color = metric_color(*metric);
        chart
            .draw_series(LineSeries::new(points, line_style(color)))?
            .label(format!(
                "{} (n={}, p99 {p99_us} µs)",
                metric.name(),
                histogram.len()
            ))
            .legend(swatch(color));
    }
    if !curves.is_empty() {
        draw_legend(&mut chart, SeriesLabelPosition::UpperLeft)?;
    }
    Ok(())
}

/// One point per interval at its end, where both the time and the value are numbers.
fn over_time(results: &Results, value: impl Fn(&Interval) -> f64) -> Vec<(f64, f64)> {
    results
        .intervals
        .iter()
        .map(|interval| (interval.start_s + interval.length_s, value(interval)))
        .filter(|(t, v)| t.is_finite() && *t >= 0.0 && v.is_finite())
        .collect()
}

/// The top of a zero-based axis holding `values` with a tenth to spare, at least 1.
fn axis_max(values: impl Iterator<Item = f64>) -> f64 {
    values.fold(1.0, |max, value| max.max(value * 1.1))
}

/// Which bytes of an interval's counts a throughput line shows.
type CountedBytes = fn(&Counts) -> u64;

/// The throughput lines: name, the metric whose colour they take, and their bytes.
const THROUGHPUT: [(&str, Metric, CountedBytes); 3] = [
    ("write acked", Metric::Ack, |c| c.write_bytes),
    ("write applied", Metric::Lag, |c| c.applied_bytes),
    ("read", Metric::Read, |c| c.read_bytes),
];

fn throughput(area: &Area, results: &Results) -> Result<()> {
    let reads = results.intervals.iter().any(|i| i.counts.read_bytes > 0);
    let lines: Vec<_> = THROUGHPUT
        .into_iter()
        .filter(|line| line.1 != Metric::Read || reads)
        .map(|(name, metric, bytes)| {
            let mb_per_s = |i: &Interval| per_second(bytes(&i.counts), i.length_s) / BYTES_PER_MB;
            (name, metric_color(metric), over_time(results, mb_per_s))
        })
        .collect();
    let points = || lines.iter().flat_map(|line| line.2.iter());
    let x_max = points().map(|p| p.0).fold(1.0, f64::max);
    let mut chart = panel(area, "Throughput")
        .build_cartesian_2d(0.0..x_max, 0.0..axis_max(points().map(|p| p.1)))?;
    chart
        .configure_mesh()
        .x_desc("seconds")
        .y_desc("MB/s")
        .draw()?;
    for (name, color, points) in lines {
        chart
            .draw_series(LineSeries::new(points, line_style(color)))?
            .label(name)
            .legend(swatch(color));
    }
    draw_legend(&mut chart, SeriesLabelPosition::LowerRight)
}

fn lag(area: &Area, results: &Results) -> Result<()> {
    let behind = over_time(results, |i| i.lag_data_sets as f64);
    let retention = over_time(results, |i| i.retention_bytes as f64 / BYTES_PER_MIB);
    let x_max = behind.iter().map(|p| p.0).fold(1.0, f64::max);
    let caption = if results.replicated {
        "Replication lag"
    } else {
        "Replication lag (replication off)"
    };
    let mut chart = panel(area, caption)
        .right_y_label_area_size(70)
        .build_cartesian_2d(0.0..x_max, 0.0..axis_max(behind.iter().map(|p| p.1)))?
        .set_secondary_coord(0.0..x_max, 0.0..axis_max(retention.iter().map(|p| p.1)));
    chart
        .configure_mesh()
        .x_desc("seconds")
        .y_desc("data sets not yet applied")
        .draw()?;
    chart
        .configure_secondary_axes()
        .y_desc("retention window (MiB)")
        .draw()?;
    let (lag_color, retention_color) = (metric_color(Metric::Lag), metric_color(Metric::Ack));
    chart
        .draw_series(LineSeries::new(behind, line_style(lag_color)))?
        .label("data sets behind (left)")
        .legend(swatch(lag_color));
    chart
        .draw_secondary_series(LineSeries::new(retention, line_style(retention_color)))?
        .label("retention MiB (right)")
        .legend(swatch(retention_color));
    draw_legend(&mut chart, SeriesLabelPosition::UpperLeft)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::results::{sample, Histograms};

    const TITLES: [&str; 3] = ["Latency by percentile", "Throughput", "Replication lag"];

    fn draw(results: &Results) -> String {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("bench.svg");
        write_svg(results, &path).expect("drawn");
        std::fs::read_to_string(&path).expect("read back")
    }

    /// The text of every `<text>` element, in order.
    fn texts(svg: &str) -> Vec<&str> {
        svg.split("<text")
            .skip(1)
            .filter_map(|rest| rest.split_once('>'))
            .filter_map(|(_, rest)| rest.split_once("</text>"))
            .map(|(text, _)| text.trim())
            .collect()
    }

    #[test]
    fn a_run_draws_titled_labelled_panels_with_a_line_per_series() {
        let svg = draw(&sample());
        assert!(svg.starts_with("<svg"), "{}", &svg[..80]);
        assert!(svg.trim_end().ends_with("</svg>"));
        let texts = texts(&svg);
        let wanted = [
            "ordo bench: ordo 0.1.0-test, seed 42, started 2024-02-29T23:59:30Z",
            "50%",
            "99.999%",
            "percentile",
            "latency (µs)",
            "MB/s",
            "seconds",
            "write acked",
            "write applied",
            "read",
            "data sets not yet applied",
            "retention window (MiB)",
        ];
        for text in TITLES.iter().chain(&wanted) {
            assert!(texts.contains(text), "{text:?} not among {texts:?}");
        }
        for metric in ["ack (n=3500", "lag (n=3500", "read (n=2400"] {
            assert!(texts.iter().any(|t| t.starts_with(metric)), "{metric}");
        }
        // Three spectra, three throughput lines, lag and retention.
        assert!(svg.matches("<polyline").count() >= 8);
    }

    #[test]
    fn an_empty_run_draws_its_titled_axes() {
        let mut results = sample();
        results.intervals.clear();
        results.histograms = Histograms::default();
        results.counts = Counts::default();
        results.runtime_s = 0.0;
        results.replicated = false;
        let svg = draw(&results);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        let texts = texts(&svg);
        for title in [
            "Latency by percentile",
            "Throughput",
            "Replication lag (replication off)",
        ] {
            assert!(texts.contains(&title), "{title:?}");
        }
    }

    #[test]
    fn odd_intervals_are_left_out_not_panicked_on() {
        let mut results = sample();
        results.intervals[1].start_s = f64::NAN;
        results.intervals[2].length_s = 0.0;
        results.intervals[3].length_s = -1.0;
        results.intervals[4].length_s = f64::INFINITY;
        results.intervals[4].retention_bytes = u64::MAX;
        let svg = draw(&results);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(!svg.contains("NaN") && !svg.contains("inf"));
    }

    #[test]
    fn an_unwritable_path_is_an_error_naming_it() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("missing").join("bench.svg");
        let error = write_svg(&sample(), &path).expect_err("no such directory");
        assert!(
            format!("{error:#}").contains("missing/bench.svg"),
            "{error:#}"
        );
    }
}
