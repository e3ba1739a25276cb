//! The PNG plot of `docs/benchmarks.md`: four panels against guest size (log scale), crashvmm
//! beside QEMU.

use std::path::Path;

use plotters::coord::ranged1d::{Ranged, ValueFormatter};
use plotters::prelude::*;

/// A named series of (guest GiB, value) points.
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
    pub color: RGBColor,
    pub dashed: bool,
}

pub struct Panel {
    pub title: String,
    pub y_label: String,
    pub series: Vec<Series>,
    /// A horizontal target line (value, label).
    pub target: Option<(f64, String)>,
    /// A logarithmic y axis (else linear from 0).
    pub log_y: bool,
    /// Where the legend goes.
    pub legend: SeriesLabelPosition,
}

/// The x range (guest GiB, log scale): room for a 768 MiB point left of 1 GiB.
const X_RANGE: std::ops::Range<f64> = 0.6..24.0;

pub const CRASHVMM: RGBColor = RGBColor(0x1f, 0x77, 0xb4);
pub const CRASHVMM_LIGHT: RGBColor = RGBColor(0x6b, 0xae, 0xd6);
pub const QEMU: RGBColor = RGBColor(0xd6, 0x27, 0x28);
pub const QEMU_LIGHT: RGBColor = RGBColor(0xff, 0x98, 0x96);
pub const COPY: RGBColor = RGBColor(0x2c, 0xa0, 0x2c);

/// Fonts plotters can use here: DejaVu Sans from Debian's fonts-dejavu-core.
pub const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

fn register_font() -> Result<(), String> {
    let bytes = std::fs::read(FONT).map_err(|e| format!("{FONT}: {e} (install fonts-dejavu-core)"))?;
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
        .map_err(|_| format!("{FONT} is not a usable TrueType font"))
}

/// Draws `panels` in a 2-column grid into `path` (PNG).
pub fn draw(path: &Path, title: &str, panels: &[Panel]) -> Result<(), String> {
    register_font()?;
    let rows = panels.len().div_ceil(2) as u32;
    let root = BitMapBackend::new(path, (1400, 80 + 460 * rows)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let root = root.titled(title, ("sans-serif", 26)).map_err(|e| e.to_string())?;
    let areas = root.split_evenly((rows as usize, 2));
    for (panel, area) in panels.iter().zip(areas.iter()) {
        draw_panel(area, panel).map_err(|e| format!("{}: {e}", panel.title))?;
    }
    root.present().map_err(|e| e.to_string())
}

fn draw_panel<DB: DrawingBackend>(area: &DrawingArea<DB, plotters::coord::Shift>, p: &Panel) -> Result<(), String>
where
    DB::ErrorType: 'static,
{
    let values: Vec<f64> = p
        .series
        .iter()
        .flat_map(|s| s.points.iter().map(|&(_, y)| y))
        .chain(p.target.iter().map(|(v, _)| *v))
        .filter(|y| y.is_finite() && *y > 0.0)
        .collect();
    let (lo, hi) = values.iter().fold((f64::MAX, f64::MIN), |(a, b), &v| (a.min(v), b.max(v)));
    let (lo, hi) = if values.is_empty() { (0.1, 10.0) } else { (lo, hi) };
    let mut builder = ChartBuilder::on(area);
    builder.caption(&p.title, ("sans-serif", 20)).margin(12).x_label_area_size(45).y_label_area_size(70);
    if p.log_y {
        let mut chart = builder
            .build_cartesian_2d(X_RANGE.log_scale(), (lo / 2.0..hi * 2.0).log_scale())
            .map_err(|e| e.to_string())?;
        mesh(&mut chart, p)?;
        series(&mut chart, p)
    } else {
        let mut chart = builder.build_cartesian_2d(X_RANGE.log_scale(), 0.0..hi * 1.25).map_err(|e| e.to_string())?;
        mesh(&mut chart, p)?;
        series(&mut chart, p)
    }
}

fn mesh<'a, DB: DrawingBackend + 'a, Y>(
    chart: &mut ChartContext<'a, DB, Cartesian2d<LogCoord<f64>, Y>>,
    p: &Panel,
) -> Result<(), String>
where
    DB::ErrorType: 'static,
    Y: Ranged<ValueType = f64> + ValueFormatter<f64>,
{
    chart
        .configure_mesh()
        .x_desc("guest memory (GiB)")
        .y_desc(&p.y_label)
        .x_label_formatter(&|x| if *x < 1.0 { format!("{x:.2}") } else { format!("{x:.0}") })
        .y_label_formatter(&|y| fmt_axis(*y))
        .light_line_style(WHITE.mix(0.0))
        .bold_line_style(BLACK.mix(0.12))
        .label_style(("sans-serif", 14))
        .axis_desc_style(("sans-serif", 15))
        .draw()
        .map_err(|e| e.to_string())
}

fn series<'a, DB: DrawingBackend + 'a, Y>(
    chart: &mut ChartContext<'a, DB, Cartesian2d<LogCoord<f64>, Y>>,
    p: &Panel,
) -> Result<(), String>
where
    DB::ErrorType: 'static,
    Y: Ranged<ValueType = f64> + ValueFormatter<f64>,
{
    if let Some((v, label)) = &p.target {
        let style = ShapeStyle::from(&BLACK.mix(0.6)).stroke_width(1);
        chart
            .draw_series(DashedLineSeries::new(vec![(X_RANGE.start, *v), (X_RANGE.end, *v)], 6, 4, style))
            .map_err(|e| e.to_string())?
            .label(label.clone())
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK.mix(0.6)));
    }
    for s in &p.series {
        let pts: Vec<(f64, f64)> = s.points.iter().copied().filter(|(_, y)| y.is_finite() && *y > 0.0).collect();
        if pts.is_empty() {
            continue;
        }
        let color = s.color;
        let style = ShapeStyle::from(&color).stroke_width(2);
        if s.dashed {
            chart.draw_series(DashedLineSeries::new(pts.clone(), 8, 5, style)).map_err(|e| e.to_string())?;
        } else {
            chart.draw_series(LineSeries::new(pts.clone(), style)).map_err(|e| e.to_string())?;
        }
        chart
            .draw_series(pts.iter().map(|&(x, y)| Circle::new((x, y), 4, color.filled())))
            .map_err(|e| e.to_string())?
            .label(s.name.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], ShapeStyle::from(&color).stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .position(p.legend.clone())
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.3))
        .label_font(("sans-serif", 14))
        .draw()
        .map_err(|e| e.to_string())?;
    Ok(())
}

fn fmt_axis(y: f64) -> String {
    if y >= 100.0 {
        format!("{y:.0}")
    } else if y >= 1.0 {
        format!("{y:.1}")
    } else {
        format!("{y:.2}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_a_png() {
        if !Path::new(FONT).exists() {
            eprintln!("skipped: {FONT} missing (fonts-dejavu-core)");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.png");
        let panel = |t: &str| Panel {
            title: t.into(),
            y_label: "s".into(),
            series: vec![
                Series {
                    name: "a".into(),
                    points: vec![(1.0, 0.5), (4.0, 1.0), (16.0, 3.0)],
                    color: CRASHVMM,
                    dashed: false,
                },
                Series { name: "b".into(), points: vec![(1.0, f64::NAN), (16.0, 30.0)], color: QEMU, dashed: true },
            ],
            target: Some((2.0, "target".into())),
            log_y: t != "two",
            legend: SeriesLabelPosition::UpperLeft,
        };
        draw(&path, "test", &[panel("one"), panel("two"), panel("three")]).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert!(bytes.starts_with(b"\x89PNG"), "not a PNG");
    }
}
