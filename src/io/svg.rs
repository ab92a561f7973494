//! Small, dependency-free SVG charts for reports: line charts (metric against fraction kept, one
//! line per method) and heat maps (layer × component). Plain SVG 1.1 that any browser shows.

use std::fmt::Write;

const PALETTE: [&str; 6] = [
    "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b",
];

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
    /// A highlighted point (e.g. the circuit found).
    pub mark: Option<(f64, f64)>,
}

pub struct LineChart<'a> {
    pub title: &'a str,
    pub x_label: &'a str,
    pub y_label: &'a str,
    pub log_x: bool,
    /// Log-scaled y axis (e.g. perplexity, which explodes at high sparsity).
    pub log_y: bool,
    /// A dashed horizontal reference line and its label.
    pub hline: Option<(f64, String)>,
    pub series: Vec<Series>,
}

fn nice_ticks(lo: f64, hi: f64) -> Vec<f64> {
    let span = (hi - lo).max(1e-12);
    let raw = span / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| span / s <= 6.0)
        .unwrap_or(10.0 * mag);
    let mut t = (lo / step).ceil() * step;
    let mut v = Vec::new();
    while t <= hi + step * 1e-9 {
        v.push(t);
        t += step;
    }
    v
}

fn fmt_tick(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else if v.abs() >= 0.01 {
        let s = format!("{v:.3}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        format!("{v:.0e}")
    }
}

pub fn line_chart(c: &LineChart) -> String {
    let f = Frame::new(c);
    let mut s = String::new();
    f.header(&mut s, c.title);
    f.x_grid(&mut s);
    f.y_grid(&mut s);
    f.axis_labels(&mut s, c.x_label, c.y_label);
    if let Some((yv, label)) = &c.hline {
        f.hline(&mut s, *yv, label);
    }
    for (i, se) in c.series.iter().enumerate() {
        f.series(&mut s, i, se);
    }
    s.push_str("</svg>\n");
    s
}

/// A line chart's geometry: the canvas, the plot area's margins and size, and the axis ranges
/// (in log10 units on a log axis).
struct Frame {
    w: f64,
    h: f64,
    l: f64,
    t: f64,
    pw: f64,
    ph: f64,
    log_x: bool,
    log_y: bool,
    x0: f64,
    x1: f64,
    y0: f64,
    y1: f64,
}

impl Frame {
    fn new(c: &LineChart) -> Self {
        let (w, h) = (720.0, 440.0);
        let (l, r, t, b) = (70.0, 170.0, 40.0, 55.0);
        let (pw, ph) = (w - l - r, h - t - b);
        let mut f = Frame {
            w,
            h,
            l,
            t,
            pw,
            ph,
            log_x: c.log_x,
            log_y: c.log_y,
            x0: 0.0,
            x1: 0.0,
            y0: 0.0,
            y1: 0.0,
        };
        (f.x0, f.x1, f.y0, f.y1) = f.ranges(c);
        f
    }

    /// The axis ranges: the data's (and the reference line's), widened to whole decades on a
    /// log axis, from 0 and with 5% headroom on a linear y axis, never empty.
    fn ranges(&self, c: &LineChart) -> (f64, f64, f64, f64) {
        let all: Vec<(f64, f64)> = c
            .series
            .iter()
            .flat_map(|s| s.points.iter().copied())
            .collect();
        let (mut x0, mut x1) = all
            .iter()
            .map(|p| self.tx(p.0))
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), x| {
                (a.min(x), b.max(x))
            });
        let (mut y0, mut y1) = all
            .iter()
            .map(|p| self.ty(p.1))
            .chain(c.hline.as_ref().map(|h| self.ty(h.0)))
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), y| {
                (a.min(y), b.max(y))
            });
        if !x0.is_finite() {
            (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
        }
        if c.log_x {
            x0 = x0.floor();
            x1 = x1.ceil();
        }
        if x1 <= x0 {
            x1 = x0 + 1.0;
        }
        if c.log_y {
            y0 = y0.floor();
            y1 = y1.ceil();
        } else {
            y0 = y0.min(0.0);
        }
        if y1 <= y0 {
            y1 = y0 + 1.0;
        }
        if !c.log_y {
            y1 += (y1 - y0) * 0.05;
        }
        (x0, x1, y0, y1)
    }

    fn tx(&self, x: f64) -> f64 {
        if self.log_x {
            x.max(1e-12).log10()
        } else {
            x
        }
    }

    fn ty(&self, y: f64) -> f64 {
        if self.log_y {
            y.max(1e-12).log10()
        } else {
            y
        }
    }

    fn px(&self, x: f64) -> f64 {
        self.l + (self.tx(x) - self.x0) / (self.x1 - self.x0) * self.pw
    }

    fn py(&self, y: f64) -> f64 {
        self.t + self.ph - (self.ty(y) - self.y0) / (self.y1 - self.y0) * self.ph
    }

    fn header(&self, s: &mut String, title: &str) {
        let (w, h, l, t, pw, ph) = (self.w, self.h, self.l, self.t, self.pw, self.ph);
        let _ = write!(
            s,
            r##"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{}" y="22" text-anchor="middle" font-size="15">{}</text>
<rect x="{l}" y="{t}" width="{pw}" height="{ph}" fill="none" stroke="#333"/>
"##,
            l + pw / 2.0,
            esc(title)
        );
    }

    /// Vertical grid lines and their labels: decades on a log axis.
    fn x_grid(&self, s: &mut String) {
        let (t, ph) = (self.t, self.ph);
        let xticks: Vec<f64> = if self.log_x {
            (self.x0 as i32..=self.x1 as i32)
                .map(|e| 10f64.powi(e))
                .collect()
        } else {
            nice_ticks(self.x0, self.x1)
        };
        for xv in xticks {
            let x = self.px(xv);
            let _ = writeln!(
                s,
                r##"<line x1="{x:.1}" y1="{t}" x2="{x:.1}" y2="{:.1}" stroke="#ddd"/><text x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
                t + ph,
                t + ph + 16.0,
                fmt_tick(xv)
            );
        }
    }

    /// Horizontal grid lines and their labels: 1, 2, 5 per decade on a log axis.
    fn y_grid(&self, s: &mut String) {
        let (l, pw, y1) = (self.l, self.pw, self.y1);
        let yticks: Vec<f64> = if self.log_y {
            (self.y0 as i32..=self.y1 as i32)
                .flat_map(|e| [1.0, 2.0, 5.0].map(|m| m * 10f64.powi(e)))
                .filter(|v| v.log10() <= y1 + 1e-9)
                .collect()
        } else {
            nice_ticks(self.y0, self.y1)
        };
        for yv in yticks {
            let y = self.py(yv);
            let _ = writeln!(
                s,
                r##"<line x1="{l}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
                l + pw,
                l - 6.0,
                y + 4.0,
                fmt_tick(yv)
            );
        }
    }

    fn axis_labels(&self, s: &mut String, x_label: &str, y_label: &str) {
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text><text transform="translate(18 {:.1}) rotate(-90)" text-anchor="middle">{}</text>"#,
            self.l + self.pw / 2.0,
            self.h - 14.0,
            esc(x_label),
            self.t + self.ph / 2.0,
            esc(y_label)
        );
    }

    /// The dashed reference line at `yv`, labelled on the right.
    fn hline(&self, s: &mut String, yv: f64, label: &str) {
        let (l, pw) = (self.l, self.pw);
        let y = self.py(yv);
        let _ = writeln!(
            s,
            r##"<line x1="{l}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#555" stroke-dasharray="6 4"/><text x="{:.1}" y="{:.1}" fill="#555">{}</text>"##,
            l + pw,
            l + pw + 6.0,
            y + 4.0,
            esc(label)
        );
    }

    /// Series `i`: its line, points, highlighted point and legend entry.
    fn series(&self, s: &mut String, i: usize, se: &Series) {
        let (l, t, pw) = (self.l, self.t, self.pw);
        let col = PALETTE[i % PALETTE.len()];
        let mut pts = se.points.clone();
        pts.sort_by(|a, b| a.0.total_cmp(&b.0));
        let path: Vec<String> = pts
            .iter()
            .map(|p| format!("{:.1},{:.1}", self.px(p.0), self.py(p.1)))
            .collect();
        let _ = writeln!(
            s,
            r#"<polyline fill="none" stroke="{col}" stroke-width="2" points="{}"/>"#,
            path.join(" ")
        );
        for p in &pts {
            let _ = writeln!(
                s,
                r#"<circle cx="{:.1}" cy="{:.1}" r="2.5" fill="{col}"/>"#,
                self.px(p.0),
                self.py(p.1)
            );
        }
        if let Some(m) = se.mark {
            let _ = writeln!(
                s,
                r#"<circle cx="{:.1}" cy="{:.1}" r="6" fill="none" stroke="{col}" stroke-width="2"/>"#,
                self.px(m.0),
                self.py(m.1)
            );
        }
        let ly = t + 14.0 + 20.0 * i as f64;
        let _ = writeln!(
            s,
            r#"<line x1="{:.1}" y1="{ly:.1}" x2="{:.1}" y2="{ly:.1}" stroke="{col}" stroke-width="3"/><text x="{:.1}" y="{:.1}">{}</text>"#,
            l + pw + 10.0,
            l + pw + 34.0,
            l + pw + 40.0,
            ly + 4.0,
            esc(&se.name)
        );
    }
}

pub struct HeatMap<'a> {
    pub title: &'a str,
    pub rows: Vec<String>,
    pub cols: Vec<String>,
    /// `values[row][col]` in [0, 1].
    pub values: Vec<Vec<f64>>,
    pub legend: &'a str,
}

/// White (0) to dark blue (1).
fn shade(v: f64) -> String {
    let v = v.clamp(0.0, 1.0);
    let lerp = |a: f64, b: f64| (a + (b - a) * v).round() as u8;
    format!(
        "#{:02x}{:02x}{:02x}",
        lerp(255.0, 8.0),
        lerp(255.0, 48.0),
        lerp(255.0, 107.0)
    )
}

pub fn heatmap(m: &HeatMap) -> String {
    let cell_w = (560.0 / m.cols.len().max(1) as f64).clamp(4.0, 48.0);
    let cell_h = (520.0 / m.rows.len().max(1) as f64).clamp(8.0, 22.0);
    let (l, t) = (80.0, 60.0);
    let w = l + cell_w * m.cols.len() as f64 + 120.0;
    let h = t + cell_h * m.rows.len() as f64 + 50.0;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w:.0}" height="{h:.0}" viewBox="0 0 {w:.0} {h:.0}" font-family="sans-serif" font-size="11">
<rect width="100%" height="100%" fill="white"/>
<text x="{:.1}" y="22" text-anchor="middle" font-size="15">{}</text>"#,
        w / 2.0,
        esc(m.title)
    );
    let label_every = (m.cols.len() / 24).max(1);
    for (j, c) in m.cols.iter().enumerate() {
        if j % label_every == 0 {
            let _ = writeln!(
                s,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
                l + cell_w * (j as f64 + 0.5),
                t - 6.0,
                esc(c)
            );
        }
    }
    for (i, r) in m.rows.iter().enumerate() {
        let y = t + cell_h * i as f64;
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
            l - 6.0,
            y + cell_h * 0.75,
            esc(r)
        );
        for (j, v) in m.values[i].iter().enumerate() {
            let _ = writeln!(
                s,
                r#"<rect x="{:.1}" y="{y:.1}" width="{cell_w:.1}" height="{cell_h:.1}" fill="{}"><title>{} {}: {:.4}</title></rect>"#,
                l + cell_w * j as f64,
                shade(*v),
                esc(r),
                esc(&m.cols[j]),
                v
            );
        }
    }
    // Legend.
    let lx = l + cell_w * m.cols.len() as f64 + 20.0;
    for k in 0..=10 {
        let v = k as f64 / 10.0;
        let _ = writeln!(
            s,
            r##"<rect x="{lx:.1}" y="{:.1}" width="16" height="14" fill="{}" stroke="#999" stroke-width="0.3"/>"##,
            t + 14.0 * (10 - k) as f64,
            shade(v)
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{:.1}">1</text><text x="{:.1}" y="{:.1}">0</text><text x="{lx:.1}" y="{:.1}">{}</text>"#,
        lx + 20.0,
        t + 11.0,
        lx + 20.0,
        t + 151.0,
        t + 172.0,
        esc(m.legend)
    );
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charts_are_well_formed_svg() {
        let c = LineChart {
            title: "IOI <test>",
            x_label: "kept",
            y_label: "acc",
            log_x: true,
            log_y: false,
            hline: Some((0.8, "90% of dense".into())),
            series: vec![Series {
                name: "lrp".into(),
                points: vec![(1.0, 0.9), (0.1, 0.85), (0.01, 0.3)],
                mark: Some((0.1, 0.85)),
            }],
        };
        let s = line_chart(&c);
        assert!(s.starts_with("<svg") && s.trim_end().ends_with("</svg>"));
        assert!(s.contains("IOI &lt;test&gt;") && s.contains("<polyline"));
        // Log y: every point inside the plot area.
        let ly = line_chart(&LineChart {
            log_y: true,
            log_x: false,
            hline: None,
            ..c
        });
        for cap in ly.split("<circle cx=\"").skip(1) {
            let y: f64 = cap
                .split("cy=\"")
                .nth(1)
                .unwrap()
                .split('"')
                .next()
                .unwrap()
                .parse()
                .unwrap();
            assert!((40.0..=385.0).contains(&y), "{y}");
        }
        let m = heatmap(&HeatMap {
            title: "map",
            rows: vec!["0".into(), "1".into()],
            cols: vec!["q".into(), "k".into()],
            values: vec![vec![0.0, 1.0], vec![0.5, 0.25]],
            legend: "kept",
        });
        assert_eq!(m.matches("<rect x=").count(), 4 + 11);
    }
}
