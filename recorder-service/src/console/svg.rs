//! The usage chart as an SVG document: stacked bars, one per period, one colour per series,
//! with a legend and a `<title>` per segment (screen readers and hover read the figures).
//! Pure: figures in, markup out; every label is escaped.

use std::collections::BTreeMap;

/// One bar: its label and the value of each series in it.
pub struct Bar {
    pub label: String,
    pub parts: Vec<(String, u64)>,
}

const PALETTE: [&str; 8] = ["#2f6db5", "#d9822b", "#3a9a5b", "#b5452f", "#7d5bb5", "#2f9aa0", "#a08a2f", "#666666"];

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

pub fn stacked_bars(title: &str, bars: &[Bar]) -> String {
    let (w, h, left, bottom, top) = (720.0_f64, 320.0_f64, 70.0, 40.0, 30.0);
    let mut series: BTreeMap<&str, usize> = BTreeMap::new();
    for b in bars {
        for (name, _) in &b.parts {
            let next = series.len();
            series.entry(name.as_str()).or_insert(next);
        }
    }
    let max = bars.iter().map(|b| b.parts.iter().map(|(_, v)| *v).sum::<u64>()).max().unwrap_or(0).max(1);
    let plot_h = h - bottom - top;
    let slot = (w - left - 160.0) / bars.len().max(1) as f64;
    let mut out = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {w} {h}" width="{w}" height="{h}" role="img" aria-label="{t}" font-family="sans-serif" font-size="11"><title>{t}</title>"#,
        t = escape(title)
    );
    out.push_str(&format!(r#"<text x="{left}" y="18" font-size="13">{}</text>"#, escape(title)));
    for i in 0..=4 {
        let v = max as f64 * i as f64 / 4.0;
        let y = top + plot_h - plot_h * i as f64 / 4.0;
        out.push_str(&format!(
            r##"<line x1="{left}" x2="{x2}" y1="{y:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{tx}" y="{ty:.1}" text-anchor="end">{v:.0}</text>"##,
            x2 = w - 160.0,
            tx = left - 6.0,
            ty = y + 4.0
        ));
    }
    for (i, b) in bars.iter().enumerate() {
        let x = left + slot * i as f64 + slot * 0.15;
        let bw = slot * 0.7;
        let mut y = top + plot_h;
        for (name, v) in &b.parts {
            let bh = plot_h * *v as f64 / max as f64;
            y -= bh;
            let colour = PALETTE[series[name.as_str()] % PALETTE.len()];
            out.push_str(&format!(
                r#"<rect x="{x:.1}" y="{y:.1}" width="{bw:.1}" height="{bh:.1}" fill="{colour}"><title>{} {}: {v} tokens</title></rect>"#,
                escape(&b.label),
                escape(name)
            ));
        }
        out.push_str(&format!(
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            x + bw / 2.0,
            h - bottom + 16.0,
            escape(&b.label[b.label.len().saturating_sub(5)..])
        ));
    }
    for (name, i) in &series {
        let y = top + 14.0 * *i as f64;
        out.push_str(&format!(
            r#"<rect x="{x}" y="{y:.1}" width="10" height="10" fill="{c}"/><text x="{tx}" y="{ty:.1}">{n}</text>"#,
            x = w - 150.0,
            c = PALETTE[i % PALETTE.len()],
            tx = w - 135.0,
            ty = y + 9.0,
            n = escape(name)
        ));
    }
    if series.is_empty() {
        out.push_str(&format!(r#"<text x="{}" y="{}" text-anchor="middle">no usage in this period</text>"#, (w - 160.0) / 2.0 + left / 2.0, h / 2.0));
    }
    out.push_str("</svg>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_series_gets_a_segment_and_a_legend_entry_and_labels_are_escaped() {
        let bars = vec![
            Bar { label: "2026-12-01".into(), parts: vec![("alice".into(), 10), ("<bob>".into(), 30)] },
            Bar { label: "2026-12-02".into(), parts: vec![("alice".into(), 5)] },
        ];
        let svg = stacked_bars("Tokens", &bars);
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
        assert_eq!(svg.matches("<rect").count(), 3 + 2, "three segments, two legend swatches");
        assert!(svg.contains("&lt;bob&gt;") && !svg.contains("<bob>"));
        assert!(svg.contains("2026-12-01 alice: 10 tokens"));
    }
}
