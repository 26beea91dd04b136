//! PNG bar charts for the benchmark reports, drawn with plotters and Debian's DejaVu font.

use anyhow::{anyhow, Context};
use plotters::prelude::*;
use std::path::Path;

const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

fn register_font() -> anyhow::Result<()> {
    static LOADED: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    LOADED
        .get_or_init(|| {
            let bytes = std::fs::read(FONT)
                .map_err(|e| format!("{FONT}: {e} (apt-get install fonts-dejavu-core)"))?;
            plotters::style::register_font(
                "sans-serif",
                FontStyle::Normal,
                Box::leak(bytes.into_boxed_slice()),
            )
            .map_err(|_| format!("{FONT}: not a usable font"))
        })
        .clone()
        .map_err(|e| anyhow!(e))
}

/// One panel: a title, a unit for the axis, and `(label, value)` bars.
pub struct Panel<'a> {
    pub title: &'a str,
    pub unit: &'a str,
    pub bars: Vec<(String, f64)>,
}

/// Draws the panels side by side into one PNG.
pub fn bar_panels(path: &Path, panels: &[Panel<'_>]) -> anyhow::Result<()> {
    register_font()?;
    let width = 560 * panels.len() as u32;
    let root = BitMapBackend::new(path, (width, 420)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
    let areas = root.split_evenly((1, panels.len()));
    let palette = [
        RGBColor(0xd9, 0x6c, 0x1f),
        RGBColor(0x7f, 0x7f, 0x7f),
        RGBColor(0x2b, 0x8a, 0x3e),
        RGBColor(0x1f, 0x5f, 0xa8),
        RGBColor(0x8e, 0x44, 0xad),
    ];
    for (area, panel) in areas.iter().zip(panels) {
        let max = panel
            .bars
            .iter()
            .map(|(_, v)| *v)
            .fold(0.0, f64::max)
            .max(1.0)
            * 1.15;
        let n = panel.bars.len();
        let mut chart = ChartBuilder::on(area)
            .caption(panel.title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(70)
            .build_cartesian_2d((0..n.saturating_sub(1)).into_segmented(), 0.0..max)
            .map_err(|e| anyhow!("{e}"))?;
        let labels: Vec<String> = panel.bars.iter().map(|(l, _)| l.clone()).collect();
        chart
            .configure_mesh()
            .disable_x_mesh()
            .y_desc(panel.unit)
            .y_label_formatter(&|v| format!("{v:.0}"))
            .x_label_formatter(&|x| match x {
                SegmentValue::CenterOf(i) => labels.get(*i).cloned().unwrap_or_default(),
                _ => String::new(),
            })
            .label_style(("sans-serif", 13))
            .draw()
            .map_err(|e| anyhow!("{e}"))?;
        chart
            .draw_series(panel.bars.iter().enumerate().map(|(i, (_, v))| {
                let color = palette[i % palette.len()];
                let mut bar = Rectangle::new(
                    [
                        (SegmentValue::Exact(i), 0.0),
                        (SegmentValue::Exact(i + 1), *v),
                    ],
                    color.filled(),
                );
                bar.set_margin(0, 0, 14, 14);
                bar
            }))
            .map_err(|e| anyhow!("{e}"))?;
        chart
            .draw_series(panel.bars.iter().enumerate().map(|(i, (_, v))| {
                Text::new(
                    format!("{v:.0}"),
                    (SegmentValue::CenterOf(i), *v + max * 0.02),
                    ("sans-serif", 13).into_font(),
                )
            }))
            .map_err(|e| anyhow!("{e}"))?;
    }
    root.present()
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
