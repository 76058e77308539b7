//! The results plot: one bar per measurement, its ratio to the baseline, green when the goal
//! is met.

use std::path::Path;

use plotters::prelude::*;

pub fn ratios(path: &Path, bars: Vec<(&str, f64, bool)>) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, (900, 60 + 40 * bars.len() as u32)).into_drawing_area();
    root.fill(&WHITE)?;
    let max = bars.iter().map(|(_, r, _)| *r).fold(1.2_f64, f64::max) * 1.1;
    let mut chart = ChartBuilder::on(&root)
        .caption("genrt / baseline (same run)", ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(330)
        .build_cartesian_2d(0.0..max, 0..bars.len())?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(bars.len())
        .y_label_formatter(&|i| bars.get(*i).map(|b| b.0.to_owned()).unwrap_or_default())
        .draw()?;
    chart.draw_series(bars.iter().enumerate().map(|(i, (_, ratio, met))| {
        let colour = if *met { GREEN.mix(0.7) } else { RED.mix(0.7) };
        Rectangle::new([(0.0, i), (*ratio, i + 1)], colour.filled())
    }))?;
    chart.draw_series(LineSeries::new(
        [(1.0, 0), (1.0, bars.len())],
        BLACK.stroke_width(1),
    ))?;
    root.present()?;
    Ok(())
}
