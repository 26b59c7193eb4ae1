//! Loss-curve plots for the training examples (needs the `plot` feature, on by default).

use plotters::prelude::*;

/// Training loss curves (exponential moving average over ~20 steps), log scale, one line per
/// run, written to a PNG at `path`.
pub fn losses(
    curves: &[(&str, Vec<f32>)],
    title: &str,
    path: &str,
) -> Result<(), Box<dyn std::error::Error>> {
    let text = wgpu_optim::lr_finder::register_plot_font();
    let root = BitMapBackend::new(path, (1000, 600)).into_drawing_area();
    root.fill(&WHITE)?;
    let smooth: Vec<Vec<f32>> = curves
        .iter()
        .map(|(_, c)| {
            let mut m = c[0];
            c.iter()
                .map(|&v| {
                    m = 0.95 * m + 0.05 * v;
                    m
                })
                .collect()
        })
        .collect();
    let n = smooth.iter().map(|c| c.len()).max().unwrap_or(1);
    let lo = smooth
        .iter()
        .flatten()
        .cloned()
        .fold(f32::INFINITY, f32::min)
        .max(1e-4);
    let hi = smooth.iter().map(|c| c[0]).fold(0.0, f32::max);
    let mut chart = ChartBuilder::on(&root);
    chart
        .margin(15)
        .x_label_area_size(if text { 40 } else { 5 })
        .y_label_area_size(if text { 60 } else { 5 });
    if text {
        chart.caption(title, ("sans-serif", 24));
    }
    let mut chart = chart.build_cartesian_2d(0..n, (lo..hi).log_scale())?;
    let mut mesh = chart.configure_mesh();
    mesh.x_desc("step").y_desc("loss (smoothed)");
    if !text {
        mesh.disable_x_mesh()
            .disable_y_mesh()
            .x_labels(0)
            .y_labels(0);
    }
    mesh.draw()?;
    for (k, ((name, _), c)) in curves.iter().zip(&smooth).enumerate() {
        let color = Palette99::pick(k).stroke_width(2);
        let s = chart.draw_series(LineSeries::new(
            c.iter().enumerate().map(|(i, &v)| (i, v)),
            color,
        ))?;
        if text {
            s.label(*name).legend(move |(x, y)| {
                PathElement::new(
                    vec![(x, y), (x + 20, y)],
                    Palette99::pick(k).stroke_width(2),
                )
            });
        }
    }
    if text {
        chart
            .configure_series_labels()
            .border_style(BLACK)
            .background_style(WHITE.mix(0.8))
            .draw()?;
    }
    root.present()?;
    Ok(())
}
