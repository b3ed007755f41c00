//! The soak's chart: memory per process (top) and p99 per route family (bottom)
//! over the run, as a PNG. plotters draws the axes, grid and lines; the text is
//! drawn here from an 8×8 bitmap font compiled into the binary (`font8x8`), so the
//! chart reads the same on a machine without any font installed (plotters' own text
//! needs a system font through fontconfig or a TrueType file).

use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;

use super::report::process_labels;
use super::sample::Sample;
use super::stats::Family;

const WIDTH: u32 = 1500;
const HEIGHT: u32 = 1000;
/// Room for the legend, right of each panel.
const LEGEND: u32 = 330;
/// Text is drawn at twice the font's size.
const SCALE: i32 = 2;

const PALETTE: [RGBColor; 12] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
    RGBColor(0, 0, 0),
    RGBColor(120, 40, 140),
];

type Area<'a> = DrawingArea<BitMapBackend<'a>, Shift>;
type Error = Box<dyn std::error::Error>;

/// Draws `text` with its top left corner at `(x, y)` of `area` (pixels).
fn text(area: &Area, x: i32, y: i32, text: &str, color: &RGBColor) -> Result<(), Error> {
    use font8x8::UnicodeFonts;
    for (i, c) in text.chars().enumerate() {
        let glyph = font8x8::BASIC_FONTS.get(c).or_else(|| font8x8::BASIC_FONTS.get('?')).unwrap_or([0; 8]);
        let left = x + i as i32 * 8 * SCALE;
        for (row, bits) in glyph.iter().enumerate() {
            for col in 0..8 {
                if bits >> col & 1 == 1 {
                    let (px, py) = (left + col * SCALE, y + row as i32 * SCALE);
                    area.draw(&Rectangle::new([(px, py), (px + SCALE - 1, py + SCALE - 1)], color.filled()))?;
                }
            }
        }
    }
    Ok(())
}

fn text_width(s: &str) -> i32 {
    s.chars().count() as i32 * 8 * SCALE
}

/// Round steps (1, 2 or 5 times a power of ten) for about `n` ticks up to `max`.
fn ticks(max: f64, n: usize) -> Vec<f64> {
    if max <= 0.0 || !max.is_finite() {
        return vec![0.0];
    }
    let raw = max / n as f64;
    let power = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0].iter().map(|m| m * power).find(|s| *s >= raw).unwrap_or(10.0 * power);
    (0..).map(|i| i as f64 * step).take_while(|v| *v <= max * 1.0001).collect()
}

fn label(v: f64) -> String {
    if v >= 100.0 || v == v.round() {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// One panel: `series` (name, points in minutes and value) over `minutes`, on a
/// linear axis from 0 (or log from 1 when `log`).
fn panel(area: &Area, title: &str, unit: &str, series: &[(String, Vec<(f64, f64)>)], log: bool) -> Result<(), Error> {
    let (w, h) = area.dim_in_pixel();
    let minutes = series.iter().flat_map(|(_, p)| p.iter().map(|(x, _)| *x)).fold(0.0f64, f64::max).max(0.5);
    let top = series.iter().flat_map(|(_, p)| p.iter().map(|(_, y)| *y)).fold(0.0f64, f64::max).max(1.0) * 1.1;
    let (left, right, above, below) = (90, LEGEND as i32, 40, 40);
    let plot = area.margin(above as u32, below as u32, left as u32, right as u32);
    text(area, left, 10, title, &BLACK)?;
    let x_ticks = ticks(minutes, 10);
    let draw = |chart: &mut dyn FnMut(f64, f64) -> (i32, i32), y_ticks: &[f64]| -> Result<(), Error> {
        for t in &x_ticks {
            let (px, py) = chart(*t, y_ticks[0]);
            let s = label(*t);
            text(area, px - text_width(&s) / 2, py + 8, &s, &BLACK)?;
        }
        for t in y_ticks {
            let (px, py) = chart(0.0, *t);
            let s = label(*t);
            text(area, px - text_width(&s) - 8, py - 8, &s, &BLACK)?;
        }
        Ok(())
    };
    if log {
        let mut chart = ChartBuilder::on(&plot).build_cartesian_2d(0f64..minutes, (1f64..top).log_scale())?;
        chart.configure_mesh().x_labels(10).y_labels(0).disable_y_mesh().draw()?;
        let decades: Vec<f64> = (0..7).map(|k| 10f64.powi(k)).filter(|v| *v <= top).collect();
        let y_ticks: Vec<f64> =
            decades.iter().flat_map(|d| [*d, 2.0 * d, 5.0 * d]).filter(|v| *v >= 1.0 && *v <= top).collect();
        for t in &y_ticks {
            chart.draw_series(LineSeries::new([(0.0, *t), (minutes, *t)], RGBColor(225, 225, 225)))?;
        }
        for (i, (_, points)) in series.iter().enumerate() {
            let color = PALETTE[i % PALETTE.len()];
            chart.draw_series(LineSeries::new(points.iter().map(|(x, y)| (*x, y.max(1.0))), color.stroke_width(2)))?;
        }
        let offset = area.get_base_pixel();
        let mut at = |x: f64, y: f64| {
            let (px, py) = chart.backend_coord(&(x, y));
            (px - offset.0, py - offset.1)
        };
        draw(&mut at, &y_ticks)?;
    } else {
        let mut chart = ChartBuilder::on(&plot).build_cartesian_2d(0f64..minutes, 0f64..top)?;
        chart.configure_mesh().x_labels(10).y_labels(8).draw()?;
        for (i, (_, points)) in series.iter().enumerate() {
            let color = PALETTE[i % PALETTE.len()];
            chart.draw_series(LineSeries::new(points.iter().copied(), color.stroke_width(2)))?;
        }
        let y_ticks = ticks(top, 8);
        let offset = area.get_base_pixel();
        let mut at = |x: f64, y: f64| {
            let (px, py) = chart.backend_coord(&(x, y));
            (px - offset.0, py - offset.1)
        };
        draw(&mut at, &y_ticks)?;
    }
    text(area, left - 80, above - 30 + 14, unit, &RGBColor(90, 90, 90))?;
    let axis = "minutes";
    text(area, w as i32 - right - text_width(axis), h as i32 - 18, axis, &RGBColor(90, 90, 90))?;
    for (i, (name, _)) in series.iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        let (x, y) = (w as i32 - right + 20, above + i as i32 * 24);
        area.draw(&Rectangle::new([(x, y + 4), (x + 18, y + 12)], color.filled()))?;
        text(area, x + 26, y, name, &BLACK)?;
    }
    Ok(())
}

/// Draws the chart of `samples` to `path`.
pub fn draw(path: &Path, title: &str, samples: &[Sample]) -> Result<(), Error> {
    let root = BitMapBackend::new(path, (WIDTH, HEIGHT)).into_drawing_area();
    root.fill(&WHITE)?;
    let (memory, latency) = root.split_vertically(HEIGHT / 2);
    let minutes = |s: &Sample| s.at_secs / 60.0;
    let mut mem: Vec<(String, Vec<(f64, f64)>)> = process_labels(samples)
        .into_iter()
        .map(|label| {
            let points = samples.iter().filter_map(|s| Some((minutes(s), s.proc(&label)?.rss_mib))).collect();
            (label, points)
        })
        .collect();
    let wasm = |name: &str, f: fn(&Sample) -> Option<f64>| {
        (name.to_owned(), samples.iter().filter_map(|s| Some((minutes(s), f(s)?))).collect::<Vec<_>>())
    };
    mem.push(wasm("edge wasm memory", |s| s.edge_wasm_mib));
    mem.push(wasm("ceiling wasm memory", |s| s.ceiling_wasm_mib));
    mem.push(("PG backends (sum)".into(), samples.iter().map(|s| (minutes(s), s.pg_backends_rss_mib)).collect()));
    mem.retain(|(_, points)| !points.is_empty());
    panel(&memory, &format!("{title}: memory"), "MiB", &mem, false)?;
    let p99: Vec<(String, Vec<(f64, f64)>)> = Family::ALL
        .iter()
        .map(|f| {
            let points = samples
                .iter()
                .filter_map(|s| s.window.get(f).filter(|w| w.count > 0).map(|w| (minutes(s), w.p99_ms)))
                .collect();
            (f.name().to_owned(), points)
        })
        .filter(|(_, points): &(String, Vec<(f64, f64)>)| !points.is_empty())
        .collect();
    panel(&latency, "p99 per route family (log)", "ms", &p99, true)?;
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round_and_cover_the_range() {
        assert_eq!(ticks(30.0, 10), vec![0.0, 5.0, 10.0, 15.0, 20.0, 25.0, 30.0]);
        // 900 / 8 = 112.5 a step, rounded up to the next 1-2-5 step: 200.
        assert_eq!(ticks(900.0, 8), vec![0.0, 200.0, 400.0, 600.0, 800.0]);
        assert_eq!(ticks(1000.0, 10), (0..=10).map(|i| i as f64 * 100.0).collect::<Vec<_>>());
        assert_eq!(ticks(0.0, 8), vec![0.0]);
    }
}
