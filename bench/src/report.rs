//! The run's outputs: results.json (everything measured), results.md (the
//! tables and the setup a reader needs to reproduce them) and two SVG plots,
//! latency.svg (p50 and p99 against offered rate, a line per proxy) and
//! throughput.svg (requests/s and CPU per request, a bar per proxy).

use crate::compare::{Comparison, Point};
use crate::BenchError;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use std::fmt::Write as _;
use std::path::Path;

pub fn write_all(c: &Comparison, out: &Path) -> Result<(), BenchError> {
    let write = |name: &str, text: String| {
        let path = out.join(name);
        std::fs::write(&path, text).map_err(BenchError::io(path.display().to_string()))
    };
    let json = serde_json::to_string_pretty(c).map_err(|e| BenchError::Setup(e.to_string()))?;
    write("results.json", json)?;
    write("results.md", markdown(c))?;
    let plot_err = |e: String| BenchError::Setup(format!("plotting: {e}"));
    throughput_svg(c, &out.join("throughput.svg")).map_err(plot_err)?;
    if c.runs.iter().any(|r| !r.ladder.is_empty()) {
        latency_svg(c, &out.join("latency.svg")).map_err(plot_err)?;
    } else {
        let _ = std::fs::remove_file(out.join("latency.svg"));
    }
    Ok(())
}

fn fmt_opt(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "–".to_owned(), |v| format!("{v:.digits$}"))
}

fn row(out: &mut String, name: &str, p: &Point) {
    let l = &p.load.latency_us;
    let _ = writeln!(
        out,
        "| {name} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {} | {} | {} |",
        fmt_opt(p.offered_rps, 0),
        p.rps,
        l.p50,
        l.p99,
        l.p999,
        l.max,
        p.load.errors,
        p.load.non_2xx,
        fmt_opt(p.cpu_us_per_request, 2),
    );
}

const TABLE_HEAD: &str = "| proxy | offered req/s | requests/s | p50 µs | p99 µs | p99.9 µs | max µs | errors | non-2xx | CPU µs/request |\n\
                          |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n";

pub fn markdown(c: &Comparison) -> String {
    let mut s = String::new();
    let m = &c.machine;
    let cpus = |v: &[usize]| v.iter().map(usize::to_string).collect::<Vec<_>>().join(",");
    let _ = writeln!(s, "Command: `{}`\n", c.command);
    let _ = writeln!(
        s,
        "- Machine: {} CPUs ({}), kernel {}",
        m.cpus, m.cpu_model, m.kernel
    );
    let _ = writeln!(
        s,
        "- Placement: proxy on CPU {}; backend ({}) and load on CPU {}",
        cpus(&c.placement.proxy),
        serde_json::to_value(c.backend)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default(),
        cpus(&c.placement.others)
    );
    let _ = writeln!(
        s,
        "- Load: {}, {} connections, {} s per point{}",
        c.load_tool,
        c.connections,
        c.duration_s,
        if c.quick { " (--quick)" } else { "" }
    );
    if !c.ladder_percent.is_empty() {
        let pcts: Vec<String> = c.ladder_percent.iter().map(|p| format!("{p}%")).collect();
        let _ = writeln!(
            s,
            "- Ladder: offered rates {} of the best closed-loop maximum ({:.0} req/s); \
             latency there is corrected for coordinated omission",
            pcts.join(", "),
            c.best_max_rps
        );
    }
    let _ = writeln!(
        s,
        "- CPU µs/request: user+sys of the proxy's process tree (/proc/PID/stat) over the \
         run, divided by the requests completed"
    );
    for note in &c.notes {
        let _ = writeln!(s, "- Note: {note}");
    }
    let _ = writeln!(s, "\n### Closed-loop maximum\n");
    s.push_str(TABLE_HEAD);
    if let Some(direct) = &c.backend_direct {
        row(&mut s, "backend, direct", direct);
    }
    for r in &c.runs {
        row(&mut s, r.proxy.name(), &r.max);
    }
    if c.runs.iter().any(|r| !r.ladder.is_empty()) {
        let _ = writeln!(s, "\n### Fixed offered rates\n");
        s.push_str(TABLE_HEAD);
        for r in &c.runs {
            for p in &r.ladder {
                row(&mut s, r.proxy.name(), p);
            }
        }
    }
    let _ = writeln!(s, "\nVersions:");
    for r in &c.runs {
        let _ = writeln!(s, "- {}: {}", r.proxy.name(), r.version);
    }
    s
}

const PLOT_SIZE: (u32, u32) = (1000, 420);

fn proxy_color(i: usize) -> RGBColor {
    // ringgate first in its own colour; then distinct, colour-blind-safe ones.
    const COLORS: [RGBColor; 4] = [
        RGBColor(0xd6, 0x27, 0x28),
        RGBColor(0x1f, 0x77, 0xb4),
        RGBColor(0x2c, 0xa0, 0x2c),
        RGBColor(0x94, 0x67, 0xbd),
    ];
    COLORS[i % COLORS.len()]
}

fn latency_svg(c: &Comparison, path: &Path) -> Result<(), String> {
    let root = SVGBackend::new(path, PLOT_SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let panels = root.split_evenly((1, 2));
    let points = || c.runs.iter().flat_map(|r| r.ladder.iter());
    let x_max = points().filter_map(|p| p.offered_rps).fold(1.0, f64::max) * 1.05;
    let lat = |p: &Point, q: usize| {
        if q == 0 {
            p.load.latency_us.p50
        } else {
            p.load.latency_us.p99
        }
    };
    for (q, (panel, title)) in panels
        .iter()
        .zip(["p50 latency", "p99 latency"])
        .enumerate()
    {
        let ys = || points().map(|p| lat(p, q).max(1.0));
        let y_min = ys().fold(f64::INFINITY, f64::min) * 0.8;
        let y_max = ys().fold(1.0, f64::max) * 1.25;
        let mut chart = ChartBuilder::on(panel)
            .caption(format!("{title} vs offered rate"), ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(0.0..x_max, (y_min..y_max).log_scale())
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .x_desc("offered requests/s")
            .y_desc("µs (log)")
            .y_label_formatter(&|y| format!("{y:.0}"))
            .light_line_style(WHITE)
            .x_label_formatter(&|x| format!("{:.0}k", x / 1000.0))
            .draw()
            .map_err(|e| e.to_string())?;
        for (i, r) in c.runs.iter().enumerate() {
            let color = proxy_color(i);
            let series: Vec<(f64, f64)> = r
                .ladder
                .iter()
                .filter_map(|p| Some((p.offered_rps?, lat(p, q).max(1.0))))
                .collect();
            chart
                .draw_series(LineSeries::new(series.clone(), color.stroke_width(2)))
                .map_err(|e| e.to_string())?
                .label(r.proxy.name())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                });
            chart
                .draw_series(PointSeries::of_element(
                    series,
                    3,
                    color.filled(),
                    &|c, s, st| Circle::new(c, s, st),
                ))
                .map_err(|e| e.to_string())?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| e.to_string())?;
    }
    root.present().map_err(|e| e.to_string())
}

fn throughput_svg(c: &Comparison, path: &Path) -> Result<(), String> {
    let root = SVGBackend::new(path, PLOT_SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let panels = root.split_evenly((1, 2));
    let names: Vec<&str> = c.runs.iter().map(|r| r.proxy.name()).collect();
    let rps: Vec<f64> = c.runs.iter().map(|r| r.max.rps).collect();
    let cpu: Vec<f64> = c
        .runs
        .iter()
        .map(|r| r.max.cpu_us_per_request.unwrap_or(0.0))
        .collect();
    let specs = [
        ("closed-loop requests/s", "requests/s", &rps, 0usize),
        ("CPU per request (proxy, user+sys)", "µs/request", &cpu, 2),
    ];
    for (panel, (title, unit, values, digits)) in panels.iter().zip(specs) {
        bars(panel, title, unit, &names, values, digits)?;
    }
    root.present().map_err(|e| e.to_string())
}

fn bars<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    title: &str,
    unit: &str,
    names: &[&str],
    values: &[f64],
    digits: usize,
) -> Result<(), String> {
    // A segmented range `0..k` has k + 1 slots; `0..n - 1` gives one per bar.
    let last = u32::try_from(names.len().max(2) - 1).map_err(|e| e.to_string())?;
    let y_max = values.iter().copied().fold(0.0, f64::max).max(1e-9) * 1.2;
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(30)
        .y_label_area_size(70)
        .build_cartesian_2d((0u32..last).into_segmented(), 0.0..y_max)
        .map_err(|e| format!("{e:?}"))?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .light_line_style(WHITE)
        .y_desc(unit)
        .y_label_formatter(&|y| format!("{y:.0}"))
        .x_label_formatter(&|x| match x {
            SegmentValue::CenterOf(i) => names
                .get(*i as usize)
                .map_or(String::new(), |s| (*s).to_owned()),
            _ => String::new(),
        })
        .draw()
        .map_err(|e| format!("{e:?}"))?;
    for (i, &v) in values.iter().enumerate() {
        let i32_ = u32::try_from(i).map_err(|e| e.to_string())?;
        let color = proxy_color(i);
        chart
            .draw_series(
                Histogram::vertical(&chart)
                    .style(color.filled())
                    .margin(20)
                    .data([(i32_, v)]),
            )
            .map_err(|e| format!("{e:?}"))?;
        chart
            .draw_series(std::iter::once(Text::new(
                format!("{v:.digits$}"),
                (SegmentValue::CenterOf(i32_), v + y_max * 0.01),
                ("sans-serif", 15)
                    .into_font()
                    .color(&BLACK)
                    .pos(Pos::new(HPos::Center, VPos::Bottom)),
            )))
            .map_err(|e| format!("{e:?}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::BackendKind;
    use crate::compare::{Machine, ProxyRun};
    use crate::load::{LoadReport, Percentiles};
    use crate::proxy::ProxyKind;
    use crate::Placement;

    fn point(offered: Option<f64>, rps: f64, p50: f64) -> Point {
        Point {
            offered_rps: offered,
            rps,
            load: LoadReport {
                requests: (rps * 10.0) as u64,
                duration_s: 10.0,
                non_2xx: 0,
                errors: 0,
                latency_us: Percentiles {
                    p50,
                    p99: p50 * 3.0,
                    p999: p50 * 6.0,
                    max: p50 * 20.0,
                },
                corrected: offered.is_some(),
            },
            cpu_us_per_request: Some(1e6 / rps),
        }
    }

    fn sample() -> Comparison {
        let runs = [
            (ProxyKind::Ringgate, 60_000.0),
            (ProxyKind::Nginx, 50_000.0),
        ]
        .into_iter()
        .map(|(proxy, max)| ProxyRun {
            proxy,
            version: format!("{} 1.0", proxy.name()),
            max: point(None, max, 500.0),
            ladder: (1..=9)
                .map(|k| {
                    let offered = 6_000.0 * f64::from(k);
                    point(
                        Some(offered),
                        offered.min(max),
                        40.0 + 1e9 / (max - offered * 0.99).powi(2),
                    )
                })
                .collect(),
        })
        .collect();
        Comparison {
            command: "cargo run -p ringgate-bench --release -- compare".into(),
            machine: Machine {
                cpus: 2,
                cpu_model: "Test CPU".into(),
                kernel: "6.0.0".into(),
            },
            placement: Placement::from_cpus(&[0, 1], true),
            load_tool: "ringload".into(),
            backend: BackendKind::Nginx,
            duration_s: 10.0,
            connections: 64,
            quick: false,
            best_max_rps: 60_000.0,
            ladder_percent: (1..=9).map(|k| k * 10).collect(),
            notes: vec!["haproxy skipped: not installed".into()],
            backend_direct: Some(point(None, 80_000.0, 300.0)),
            runs,
        }
    }

    #[test]
    fn markdown_has_setup_both_tables_and_a_row_per_point() {
        let md = markdown(&sample());
        assert!(md.contains("2 CPUs (Test CPU), kernel 6.0.0"), "{md}");
        assert!(
            md.contains("proxy on CPU 0; backend (nginx) and load on CPU 1"),
            "{md}"
        );
        assert!(md.contains("- Note: haproxy skipped"), "{md}");
        assert!(md.contains("### Fixed offered rates"), "{md}");
        assert_eq!(md.matches("| ringgate |").count(), 10, "{md}");
        assert!(md.contains("| backend, direct | – | 80000 |"), "{md}");
    }

    #[test]
    fn plots_name_every_proxy() {
        let out =
            std::env::temp_dir().join(format!("ringgate-bench-report.{}", std::process::id()));
        std::fs::create_dir_all(&out).expect("mkdir");
        write_all(&sample(), &out).expect("writes");
        for svg in ["latency.svg", "throughput.svg"] {
            let text = std::fs::read_to_string(out.join(svg)).expect(svg);
            assert!(text.contains("ringgate") && text.contains("nginx"), "{svg}");
        }
        if std::env::var_os("RINGGATE_BENCH_KEEP_PLOTS").is_none() {
            let _ = std::fs::remove_dir_all(&out);
        }
    }
}
