//! The benchmark chart as a standalone SVG file a browser opens: throughput by concurrency
//! (bars) beside end-to-end latency p50/p95/p99 by concurrency (lines). Hand-written SVG
//! text: the format is small and a chart crate would be a large dependency for two panels.
//! Builds a string only; the command writes the file.

use std::fmt::Write;

use super::report::Report;

const WIDTH: f64 = 960.0;
const HEIGHT: f64 = 420.0;
/// Each panel's plot area.
const PLOT_W: f64 = 360.0;
const PLOT_H: f64 = 260.0;
const TOP: f64 = 80.0;
const LEFT_PANEL_X: f64 = 80.0;
const RIGHT_PANEL_X: f64 = 560.0;
const SERIES: [(&str, &str); 3] = [("p50", "#1b9e77"), ("p95", "#d95f02"), ("p99", "#7570b3")];

/// Text as XML character data or an attribute value.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // XML 1.0 forbids most control characters even escaped.
            c if c.is_control() && !matches!(c, '\t' | '\n' | '\r') => {}
            c => out.push(c),
        }
    }
    out
}

/// The smallest 1, 2 or 5 times a power of ten at or above `v` (an axis maximum).
pub fn nice_max(v: f64) -> f64 {
    if !v.is_finite() || v <= 0.0 {
        return 1.0;
    }
    let magnitude = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 5.0, 10.0].iter().map(|m| m * magnitude).find(|&m| m >= v).unwrap_or(10.0 * magnitude)
}

fn number(v: f64) -> String {
    if v >= 100.0 || v == v.trunc() {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// The chart for a report.
pub fn chart(report: &Report) -> String {
    let mut s = String::new();
    // Writing to a String cannot fail.
    let _ = write_chart(&mut s, report);
    s
}

fn write_chart(s: &mut String, report: &Report) -> std::fmt::Result {
    writeln!(s, r#"<?xml version="1.0" encoding="UTF-8"?>"#)?;
    writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"#
    )?;
    writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#)?;
    let title = format!(
        "hearth bench {} ({}, {} API): prefill {:.0} tok/s, decode {:.1} tok/s",
        report.model, report.target, report.api, report.prefill.tokens_per_second, report.decode.tokens_per_second
    );
    writeln!(s, r#"<text x="{}" y="28" text-anchor="middle" font-size="16">{}</text>"#, WIDTH / 2.0, escape(&title))?;
    let levels = &report.concurrency;
    let slot = PLOT_W / levels.len().max(1) as f64;
    let x_of = |i: usize, x0: f64| x0 + slot * (i as f64 + 0.5);

    // Throughput bars.
    let max_tps = nice_max(levels.iter().map(|l| l.tokens_per_second).fold(0.0, f64::max));
    axes(s, LEFT_PANEL_X, max_tps, "generated tokens/s (all clients)")?;
    writeln!(s, r##"<g class="series" data-series="throughput" fill="#4477aa">"##)?;
    for (i, l) in levels.iter().enumerate() {
        let h = PLOT_H * (l.tokens_per_second / max_tps).clamp(0.0, 1.0);
        let x = x_of(i, LEFT_PANEL_X) - slot * 0.3;
        writeln!(
            s,
            r#"<rect x="{x:.1}" y="{:.1}" width="{:.1}" height="{h:.1}"><title>concurrency {}: {:.1} tok/s</title></rect>"#,
            TOP + PLOT_H - h,
            slot * 0.6,
            l.concurrency,
            l.tokens_per_second
        )?;
        writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle" fill="black">{}</text>"#,
            x_of(i, LEFT_PANEL_X),
            TOP + PLOT_H - h - 4.0,
            number(l.tokens_per_second)
        )?;
    }
    writeln!(s, "</g>")?;
    x_labels(s, LEFT_PANEL_X, levels.iter().map(|l| l.concurrency), slot)?;

    // Latency percentiles.
    let value = |l: &super::LevelResult, k: &str| {
        l.e2e_ms.map(|e| match k {
            "p50" => e.p50,
            "p95" => e.p95,
            _ => e.p99,
        })
    };
    let max_ms = nice_max(levels.iter().filter_map(|l| value(l, "p99")).fold(0.0, f64::max));
    axes(s, RIGHT_PANEL_X, max_ms, "end-to-end latency (ms)")?;
    for (k, colour) in SERIES {
        let points: Vec<(f64, f64, f64)> = levels
            .iter()
            .enumerate()
            .filter_map(|(i, l)| value(l, k).map(|v| (x_of(i, RIGHT_PANEL_X), TOP + PLOT_H - PLOT_H * (v / max_ms).clamp(0.0, 1.0), v)))
            .collect();
        writeln!(s, r#"<g class="series" data-series="{k}" stroke="{colour}" fill="{colour}">"#)?;
        let path: Vec<String> = points.iter().map(|(x, y, _)| format!("{x:.1},{y:.1}")).collect();
        writeln!(s, r#"<polyline fill="none" stroke-width="2" points="{}"/>"#, path.join(" "))?;
        for (x, y, v) in &points {
            writeln!(s, r#"<circle cx="{x:.1}" cy="{y:.1}" r="3"><title>{k}: {v:.0} ms</title></circle>"#)?;
        }
        writeln!(s, "</g>")?;
    }
    x_labels(s, RIGHT_PANEL_X, levels.iter().map(|l| l.concurrency), slot)?;
    for (i, (k, colour)) in SERIES.iter().enumerate() {
        let y = TOP + 8.0 + 16.0 * i as f64;
        let x = RIGHT_PANEL_X + 12.0;
        writeln!(s, r#"<line x1="{x}" y1="{y}" x2="{}" y2="{y}" stroke="{colour}" stroke-width="2"/>"#, x + 18.0)?;
        writeln!(s, r#"<text x="{}" y="{}">{k}</text>"#, x + 24.0, y + 4.0)?;
    }
    writeln!(s, "</svg>")
}

/// A panel's frame, its y ticks up to `max`, and its title.
fn axes(s: &mut String, x0: f64, max: f64, title: &str) -> std::fmt::Result {
    let bottom = TOP + PLOT_H;
    writeln!(s, r#"<text x="{}" y="{}" text-anchor="middle" font-size="14">{}</text>"#, x0 + PLOT_W / 2.0, TOP - 16.0, escape(title))?;
    for t in 0..=5 {
        let v = max * f64::from(t) / 5.0;
        let y = bottom - PLOT_H * f64::from(t) / 5.0;
        writeln!(s, r##"<line x1="{x0}" y1="{y:.1}" x2="{}" y2="{y:.1}" stroke="#dddddd"/>"##, x0 + PLOT_W)?;
        writeln!(s, r#"<text x="{}" y="{:.1}" text-anchor="end">{}</text>"#, x0 - 6.0, y + 4.0, number(v))?;
    }
    writeln!(s, r#"<line x1="{x0}" y1="{TOP}" x2="{x0}" y2="{bottom}" stroke="black"/>"#)?;
    writeln!(s, r#"<line x1="{x0}" y1="{bottom}" x2="{}" y2="{bottom}" stroke="black"/>"#, x0 + PLOT_W)
}

fn x_labels(s: &mut String, x0: f64, levels: impl Iterator<Item = u32>, slot: f64) -> std::fmt::Result {
    let bottom = TOP + PLOT_H;
    for (i, c) in levels.enumerate() {
        writeln!(s, r#"<text x="{:.1}" y="{}" text-anchor="middle">{c}</text>"#, x0 + slot * (i as f64 + 0.5), bottom + 16.0)?;
    }
    writeln!(s, r#"<text x="{}" y="{}" text-anchor="middle">concurrent clients</text>"#, x0 + PLOT_W / 2.0, bottom + 36.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small well-formedness check: every tag closes in order, attributes are quoted, and
    /// every `&` starts one of XML's five entities. (The integration test also parses the file
    /// with Python's XML parser.)
    fn well_formed(xml: &str) -> Result<(), String> {
        let mut stack: Vec<String> = Vec::new();
        let mut rest = xml;
        let mut seen_root = false;
        while let Some(open) = rest.find('<') {
            check_text(&rest[..open])?;
            let close = rest[open..].find('>').ok_or("unclosed tag")? + open;
            let tag = &rest[open + 1..close];
            rest = &rest[close + 1..];
            if tag.starts_with('?') || tag.starts_with("!--") {
                continue;
            }
            if let Some(name) = tag.strip_prefix('/') {
                let top = stack.pop().ok_or(format!("</{name}> closes nothing"))?;
                if top != name.trim() {
                    return Err(format!("</{name}> closes <{top}>"));
                }
                continue;
            }
            let self_closing = tag.ends_with('/');
            let body = tag.trim_end_matches('/');
            let name = body.split_whitespace().next().ok_or("empty tag")?.to_string();
            if !body.matches('"').count().is_multiple_of(2) {
                return Err(format!("unbalanced quotes in <{body}>"));
            }
            check_text(body)?;
            if stack.is_empty() {
                if seen_root {
                    return Err("two root elements".into());
                }
                seen_root = true;
            }
            if !self_closing {
                stack.push(name);
            }
        }
        check_text(rest)?;
        match stack.pop() {
            Some(open) => Err(format!("<{open}> never closed")),
            None if seen_root => Ok(()),
            None => Err("no root element".into()),
        }
    }

    fn check_text(text: &str) -> Result<(), String> {
        for (i, _) in text.match_indices('&') {
            if !["&amp;", "&lt;", "&gt;", "&quot;", "&apos;"].iter().any(|e| text[i..].starts_with(e)) {
                return Err(format!("bare & in {text:?}"));
            }
        }
        if text.contains('<') {
            return Err(format!("bare < in {text:?}"));
        }
        Ok(())
    }

    #[test]
    fn the_checker_catches_broken_xml() {
        assert!(well_formed("<a><b/></a>").is_ok());
        assert!(well_formed("<a><b></a>").is_err());
        assert!(well_formed("<a>x & y</a>").is_err());
        assert!(well_formed("<a></a><b/>").is_err());
        assert!(well_formed(r#"<a x="1></a>"#).is_err());
    }

    #[test]
    fn chart_is_well_formed_and_holds_every_series() {
        let mut report = crate::bench::report::tests::example();
        report.model = "odd <name> & 'quotes'".into();
        let svg = chart(&report);
        well_formed(&svg).unwrap_or_else(|e| panic!("{e}\n{svg}"));
        assert!(svg.contains("odd &lt;name&gt; &amp; &apos;quotes&apos;"));
        for series in ["throughput", "p50", "p95", "p99"] {
            assert!(svg.contains(&format!(r#"data-series="{series}""#)), "missing {series}");
        }
        // One bar per level, and each level's throughput written on it.
        assert_eq!(svg.matches("<title>concurrency").count(), report.concurrency.len());
        assert!(svg.contains(">280<"), "bar label for 280 tok/s");
        // Three points per latency series.
        assert_eq!(svg.matches("<circle").count(), 3 * report.concurrency.len());
    }

    #[test]
    fn chart_survives_missing_latencies_and_no_levels() {
        let mut report = crate::bench::report::tests::example();
        report.concurrency[0].e2e_ms = None;
        let svg = chart(&report);
        well_formed(&svg).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(svg.matches("<circle").count(), 3 * (report.concurrency.len() - 1));
        report.concurrency.clear();
        well_formed(&chart(&report)).unwrap_or_else(|e| panic!("{e}"));
    }

    #[test]
    fn axis_maxima_are_round() {
        assert_eq!(nice_max(0.0), 1.0);
        assert_eq!(nice_max(1.0), 1.0);
        assert_eq!(nice_max(1.2), 2.0);
        assert_eq!(nice_max(280.0), 500.0);
        assert_eq!(nice_max(4999.0), 5000.0);
        assert_eq!(nice_max(5001.0), 10000.0);
    }
}
