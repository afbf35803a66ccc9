//! SVG charts of the results: one line per series (system), both axes on a log scale,
//! since the systems differ by orders of magnitude (100 µs next to seconds, 100k next
//! to 6M deliveries/s) and a linear axis flattens all but the largest.
//! plotters' SVG backend writes text as SVG `<text>`, so no font library is needed.

use std::path::Path;

use anyhow::{anyhow, Result};
use plotters::prelude::*;

use crate::results::Row;

/// What a chart plots on its y axis.
#[derive(Debug, Clone, Copy)]
pub enum Metric {
    Delivered,
    P99,
    RssPerConn,
}

impl Metric {
    /// The value to plot, if the row has one: a point that delivered nothing measured no
    /// latency, and drawing its zero would look like the best latency of all.
    fn value(self, r: &Row) -> Option<f64> {
        let v = match self {
            Metric::Delivered => r.delivered_per_s,
            Metric::P99 => r.p99_us / 1000.0,
            Metric::RssPerConn => r.rss_per_conn_kib?,
        };
        match self {
            Metric::P99 if r.delivered_per_s <= 0.0 => None,
            _ => Some(v),
        }
    }

    fn label(self) -> &'static str {
        match self {
            Metric::Delivered => "delivered per second",
            Metric::P99 => "p99 latency (ms)",
            Metric::RssPerConn => "server RSS per connection (KiB)",
        }
    }
}

const COLORS: [RGBColor; 6] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0x8c, 0x56, 0x4b),
];

/// Draws `rows` as `path`: a `<polyline>` 2 px wide (and dots) per series, in order
/// of first appearance; axes and grid lines are 1 px wide (tests count the series).
pub fn draw(path: &Path, title: &str, rows: &[&Row], metric: Metric) -> Result<()> {
    let mut series: Vec<&str> = Vec::new();
    for r in rows {
        if !series.contains(&r.series.as_str()) {
            series.push(&r.series);
        }
    }
    let xs = rows.iter().map(|r| r.x.max(1e-3));
    let (xmin, xmax) = xs.fold((f64::MAX, f64::MIN), |(a, b), x| (a.min(x), b.max(x)));
    let (xmin, xmax) = if rows.is_empty() {
        (1.0, 10.0)
    } else {
        (xmin / 1.5, xmax * 1.5)
    };
    let ys = rows
        .iter()
        .filter_map(|r| metric.value(r))
        .filter(|&y| y > 0.0);
    let (ymin, ymax) = ys.fold((f64::MAX, f64::MIN), |(a, b), y| (a.min(y), b.max(y)));
    // Zero (nothing delivered) sits on the bottom edge.
    let (ymin, ymax) = if ymin > ymax {
        (0.1, 10.0)
    } else {
        (ymin / 1.5, ymax * 1.5)
    };
    let x_label = rows.first().map_or("x", |r| r.x_label.as_str());

    let root = SVGBackend::new(path, (800, 480)).into_drawing_area();
    let e = |e: DrawingAreaErrorKind<_>| anyhow!("chart {}: {e:?}", path.display());
    root.fill(&WHITE).map_err(e)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d((xmin..xmax).log_scale(), (ymin..ymax).log_scale())
        .map_err(e)?;
    chart
        .configure_mesh()
        .x_desc(x_label)
        .y_desc(metric.label())
        .x_label_formatter(&|v| crate::results::short(*v))
        .y_label_formatter(&|v| match metric {
            Metric::Delivered => crate::results::short(*v),
            _ if *v < 10.0 => format!("{v:.2}"),
            _ => format!("{v:.0}"),
        })
        .draw()
        .map_err(e)?;
    for (i, name) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let mut points: Vec<(f64, f64)> = rows
            .iter()
            .filter(|r| r.series == *name)
            .filter_map(|r| Some((r.x.max(1e-3), metric.value(r)?.max(ymin))))
            .collect();
        points.sort_by(|a, b| a.0.total_cmp(&b.0));
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))
            .map_err(e)?
            .label(*name)
            .legend(move |(x, y)| Rectangle::new([(x, y - 2), (x + 16, y + 2)], color.filled()));
        chart
            .draw_series(
                points
                    .into_iter()
                    .map(|p| Circle::new(p, 3, color.filled())),
            )
            .map_err(e)?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(e)?;
    root.present().map_err(e)?;
    Ok(())
}
