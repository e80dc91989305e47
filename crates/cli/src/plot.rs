//! Small charts drawn in-process, once, onto two canvases: an SVG document
//! and an RGB raster encoded as PNG. The raster draws its text with a built-in
//! 8×8 bitmap font, so a PNG reads the same on a machine with no fonts.

use std::fmt::Write as _;

use anyhow::{Context, Result};
use font8x8::UnicodeFonts;

/// Width of every chart, in pixels.
pub const WIDTH: u32 = 900;
/// Height of every chart, in pixels.
pub const HEIGHT: u32 = 520;

type Rgb = [u8; 3];
const BLACK: Rgb = [0, 0, 0];
const GREY: Rgb = [150, 150, 150];
const LIGHT: Rgb = [225, 225, 225];
const BLUE: Rgb = [31, 119, 180];
const WHITE: Rgb = [255, 255, 255];

/// What a chart shows.
#[derive(Debug, Clone)]
enum Kind {
    /// `(x, y)` points joined in x order.
    Line(Vec<(usize, f64)>),
    /// `(row, column, value)` cells; rows are named.
    Heat {
        rows: Vec<String>,
        cells: Vec<(usize, usize, f64)>,
    },
}

/// A chart to write as `{file}.svg` and `{file}.png`.
#[derive(Debug, Clone)]
pub struct Chart {
    /// File stem.
    pub file: String,
    title: String,
    x_label: String,
    y_label: String,
    kind: Kind,
}

#[derive(Clone, Copy)]
enum Anchor {
    Start,
    Middle,
    End,
}

/// The drawing operations both canvases implement.
trait Canvas {
    fn line(&mut self, a: (f64, f64), b: (f64, f64), color: Rgb, width: f64, class: &str);
    fn rect(&mut self, x: f64, y: f64, w: f64, h: f64, color: Rgb, class: &str);
    fn dot(&mut self, c: (f64, f64), r: f64, color: Rgb, class: &str);
    /// Text with its baseline-middle at `(x, y)`; `scale` 1 or 2; `vertical`
    /// reads bottom to top.
    fn text(&mut self, x: f64, y: f64, s: &str, scale: u32, anchor: Anchor, vertical: bool);
}

impl Chart {
    /// Δ against a layer index: points joined by a line.
    pub fn line(
        file: &str,
        title: &str,
        x_label: &str,
        y_label: &str,
        points: Vec<(usize, f64)>,
    ) -> Chart {
        let mut points = points;
        points.sort_by_key(|p| p.0);
        Chart {
            file: file.into(),
            title: title.into(),
            x_label: x_label.into(),
            y_label: y_label.into(),
            kind: Kind::Line(points),
        }
    }

    /// A heatmap: one named row per merge or kind, one column per layer.
    pub fn heatmap(
        file: &str,
        title: &str,
        x_label: &str,
        value_label: &str,
        rows: Vec<String>,
        cells: Vec<(usize, usize, f64)>,
    ) -> Chart {
        Chart {
            file: file.into(),
            title: title.into(),
            x_label: x_label.into(),
            y_label: value_label.into(),
            kind: Kind::Heat { rows, cells },
        }
    }

    /// The chart as an SVG document.
    pub fn svg(&self) -> String {
        let mut c = Svg(String::new());
        let _ = writeln!(
            c.0,
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{HEIGHT}\" \
             viewBox=\"0 0 {WIDTH} {HEIGHT}\" font-family=\"DejaVu Sans, Arial, sans-serif\">"
        );
        c.rect(0.0, 0.0, WIDTH as f64, HEIGHT as f64, WHITE, "background");
        self.draw(&mut c);
        c.0.push_str("</svg>\n");
        c.0
    }

    /// The chart as a PNG file.
    pub fn png(&self) -> Result<Vec<u8>> {
        let mut c = Raster {
            px: vec![255; (WIDTH * HEIGHT * 3) as usize],
        };
        self.draw(&mut c);
        let mut out = Vec::new();
        {
            let mut enc = png::Encoder::new(&mut out, WIDTH, HEIGHT);
            enc.set_color(png::ColorType::Rgb);
            enc.set_depth(png::BitDepth::Eight);
            let mut w = enc.write_header().context("encoding a PNG")?;
            w.write_image_data(&c.px).context("encoding a PNG")?;
        }
        Ok(out)
    }

    fn draw(&self, c: &mut dyn Canvas) {
        let (left, right, top, bottom) = (90.0, WIDTH as f64 - 40.0, 60.0, HEIGHT as f64 - 70.0);
        c.text(
            WIDTH as f64 / 2.0,
            30.0,
            &self.title,
            2,
            Anchor::Middle,
            false,
        );
        match &self.kind {
            Kind::Line(points) => {
                let x = (left + right - 150.0) / 2.0;
                c.text(
                    x,
                    HEIGHT as f64 - 20.0,
                    &self.x_label,
                    1,
                    Anchor::Middle,
                    false,
                );
                self.draw_line(c, points, (left, right - 150.0, top, bottom))
            }
            Kind::Heat { rows, cells } => {
                self.draw_heat(c, rows, cells, (left, right - 120.0, top, bottom))
            }
        }
    }

    fn draw_line(&self, c: &mut dyn Canvas, points: &[(usize, f64)], frame: (f64, f64, f64, f64)) {
        let (l, r, t, b) = frame;
        c.text(24.0, (t + b) / 2.0, &self.y_label, 1, Anchor::Middle, true);
        let xs = points.iter().map(|p| p.0);
        let (x0, x1) = (xs.clone().min().unwrap_or(0), xs.max().unwrap_or(1).max(1));
        let finite = points.iter().map(|p| p.1).filter(|v| v.is_finite());
        let (mut y0, mut y1) = finite.fold((0f64, 0f64), |(a, b), v| (a.min(v), b.max(v)));
        if y1 - y0 < 1e-12 {
            y1 = y0 + 1.0;
        }
        let pad = (y1 - y0) * 0.05;
        (y0, y1) = (y0 - pad, y1 + pad);
        let span = (x1 - x0).max(1) as f64;
        let px = |x: usize| l + (x.saturating_sub(x0)) as f64 / span * (r - l);
        let py = |y: f64| b - (y.clamp(y0, y1) - y0) / (y1 - y0) * (b - t);
        // Grid, ticks, labels.
        for i in 0..=5 {
            let v = y0 + (y1 - y0) * i as f64 / 5.0;
            c.line((l, py(v)), (r, py(v)), LIGHT, 1.0, "grid");
            c.text(l - 8.0, py(v) + 4.0, &fmt_tick(v), 1, Anchor::End, false);
        }
        let step = (x1 - x0).div_ceil(15).max(1);
        for x in (x0..=x1).step_by(step) {
            c.line((px(x), b), (px(x), b + 5.0), BLACK, 1.0, "tick");
            c.text(px(x), b + 20.0, &x.to_string(), 1, Anchor::Middle, false);
        }
        if y0 < 0.0 && y1 > 0.0 {
            c.line((l, py(0.0)), (r, py(0.0)), GREY, 1.0, "zero");
        }
        c.line((l, t), (l, b), BLACK, 1.0, "axis");
        c.line((l, b), (r, b), BLACK, 1.0, "axis");
        for w in points.windows(2) {
            if w[0].1.is_finite() && w[1].1.is_finite() {
                c.line(
                    (px(w[0].0), py(w[0].1)),
                    (px(w[1].0), py(w[1].1)),
                    BLUE,
                    2.0,
                    "series",
                );
            }
        }
        for &(x, y) in points {
            if y.is_finite() {
                c.dot((px(x), py(y)), 4.0, BLUE, "point");
            }
        }
        // Legend.
        let (lx, ly) = (r + 20.0, t + 10.0);
        c.rect(lx - 6.0, ly - 14.0, 130.0, 26.0, LIGHT, "legend");
        c.line((lx, ly), (lx + 20.0, ly), BLUE, 2.0, "legend-line");
        c.dot((lx + 10.0, ly), 4.0, BLUE, "legend-mark");
        c.text(lx + 28.0, ly + 4.0, "variant", 1, Anchor::Start, false);
    }

    fn draw_heat(
        &self,
        c: &mut dyn Canvas,
        rows: &[String],
        cells: &[(usize, usize, f64)],
        frame: (f64, f64, f64, f64),
    ) {
        let (l, r, t, b) = frame;
        let n_cols = cells.iter().map(|c| c.1 + 1).max().unwrap_or(1);
        let n_rows = rows.len().max(1);
        let (cw, ch) = ((r - l) / n_cols as f64, ((b - t) / n_rows as f64).min(80.0));
        let finite = cells.iter().map(|c| c.2).filter(|v| v.is_finite());
        let (lo, hi) = finite.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
            (a.min(v), b.max(v))
        });
        let (lo, hi) = if lo.is_finite() {
            (lo, hi.max(lo + 1e-12))
        } else {
            (0.0, 1.0)
        };
        for (i, name) in rows.iter().enumerate() {
            c.text(
                l - 8.0,
                t + ch * (i as f64 + 0.5) + 4.0,
                name,
                1,
                Anchor::End,
                false,
            );
        }
        for &(row, col, v) in cells {
            let color = if v.is_finite() {
                heat((v - lo) / (hi - lo))
            } else {
                GREY
            };
            c.rect(
                l + cw * col as f64,
                t + ch * row as f64,
                cw,
                ch,
                color,
                "cell",
            );
        }
        let step = n_cols.div_ceil(15).max(1);
        let bottom = t + ch * n_rows as f64;
        for col in (0..n_cols).step_by(step) {
            let x = l + cw * (col as f64 + 0.5);
            c.text(x, bottom + 18.0, &col.to_string(), 1, Anchor::Middle, false);
        }
        c.text(
            (l + r) / 2.0,
            bottom + 45.0,
            &self.x_label,
            1,
            Anchor::Middle,
            false,
        );
        // Colour bar as the legend.
        let (bx, bw) = (r + 30.0, 20.0);
        for i in 0..50 {
            let f = i as f64 / 49.0;
            let y = bottom - (bottom - t) * (i as f64 + 1.0) / 50.0;
            c.rect(bx, y, bw, (bottom - t) / 50.0 + 0.5, heat(f), "bar");
        }
        c.text(
            bx + bw + 4.0,
            t + 8.0,
            &fmt_tick(hi),
            1,
            Anchor::Start,
            false,
        );
        c.text(
            bx + bw + 4.0,
            bottom,
            &fmt_tick(lo),
            1,
            Anchor::Start,
            false,
        );
        c.text(bx, t - 10.0, &self.y_label, 1, Anchor::Start, false);
    }
}

/// White to dark red.
fn heat(f: f64) -> Rgb {
    let f = f.clamp(0.0, 1.0);
    let mix = |a: f64, b: f64| (a + (b - a) * f).round() as u8;
    [mix(255.0, 165.0), mix(245.0, 15.0), mix(235.0, 21.0)]
}

fn fmt_tick(v: f64) -> String {
    let a = v.abs();
    if a != 0.0 && !(1e-3..1e5).contains(&a) {
        format!("{v:.2e}")
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.3}")
    }
}

struct Svg(String);

fn hex(c: Rgb) -> String {
    format!("#{:02x}{:02x}{:02x}", c[0], c[1], c[2])
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

impl Canvas for Svg {
    fn line(&mut self, a: (f64, f64), b: (f64, f64), color: Rgb, width: f64, class: &str) {
        let _ = writeln!(
            self.0,
            "<line class=\"{class}\" x1=\"{:.1}\" y1=\"{:.1}\" x2=\"{:.1}\" y2=\"{:.1}\" stroke=\"{}\" stroke-width=\"{width}\"/>",
            a.0, a.1, b.0, b.1, hex(color)
        );
    }
    fn rect(&mut self, x: f64, y: f64, w: f64, h: f64, color: Rgb, class: &str) {
        let _ = writeln!(
            self.0,
            "<rect class=\"{class}\" x=\"{x:.1}\" y=\"{y:.1}\" width=\"{w:.1}\" height=\"{h:.1}\" fill=\"{}\"/>",
            hex(color)
        );
    }
    fn dot(&mut self, c: (f64, f64), r: f64, color: Rgb, class: &str) {
        let _ = writeln!(
            self.0,
            "<circle class=\"{class}\" cx=\"{:.1}\" cy=\"{:.1}\" r=\"{r}\" fill=\"{}\"/>",
            c.0,
            c.1,
            hex(color)
        );
    }
    fn text(&mut self, x: f64, y: f64, s: &str, scale: u32, anchor: Anchor, vertical: bool) {
        let anchor = match anchor {
            Anchor::Start => "start",
            Anchor::Middle => "middle",
            Anchor::End => "end",
        };
        let rotate = if vertical {
            format!(" transform=\"rotate(-90 {x:.1} {y:.1})\"")
        } else {
            String::new()
        };
        let _ = writeln!(
            self.0,
            "<text x=\"{x:.1}\" y=\"{y:.1}\" font-size=\"{}\" text-anchor=\"{anchor}\"{rotate}>{}</text>",
            6 + 7 * scale,
            escape(s)
        );
    }
}

struct Raster {
    px: Vec<u8>,
}

impl Raster {
    fn set(&mut self, x: i64, y: i64, c: Rgb) {
        if x < 0 || y < 0 || x >= WIDTH as i64 || y >= HEIGHT as i64 {
            return;
        }
        let i = ((y as u32 * WIDTH + x as u32) * 3) as usize;
        self.px[i..i + 3].copy_from_slice(&c);
    }
}

fn glyph(ch: char) -> [u8; 8] {
    font8x8::BASIC_FONTS
        .get(ch)
        .or_else(|| font8x8::GREEK_FONTS.get(ch))
        .or_else(|| font8x8::LATIN_FONTS.get(ch))
        .unwrap_or(font8x8::BASIC_FONTS.get('?').unwrap_or([0; 8]))
}

impl Canvas for Raster {
    fn line(&mut self, a: (f64, f64), b: (f64, f64), color: Rgb, width: f64, _: &str) {
        let steps = (b.0 - a.0).abs().max((b.1 - a.1).abs()).ceil().max(1.0) as usize;
        let half = ((width - 1.0) / 2.0).round() as i64;
        for i in 0..=steps {
            let f = i as f64 / steps as f64;
            let (x, y) = (
                (a.0 + (b.0 - a.0) * f).round() as i64,
                (a.1 + (b.1 - a.1) * f).round() as i64,
            );
            for dx in -half..=half {
                for dy in -half..=half {
                    self.set(x + dx, y + dy, color);
                }
            }
        }
    }
    fn rect(&mut self, x: f64, y: f64, w: f64, h: f64, color: Rgb, _: &str) {
        let (x0, y0) = (x.round() as i64, y.round() as i64);
        let (x1, y1) = ((x + w).round() as i64, (y + h).round() as i64);
        for yy in y0..y1 {
            for xx in x0..x1 {
                self.set(xx, yy, color);
            }
        }
    }
    fn dot(&mut self, c: (f64, f64), r: f64, color: Rgb, _: &str) {
        let ri = r.ceil() as i64;
        let (cx, cy) = (c.0.round() as i64, c.1.round() as i64);
        for dy in -ri..=ri {
            for dx in -ri..=ri {
                if ((dx * dx + dy * dy) as f64) <= r * r {
                    self.set(cx + dx, cy + dy, color);
                }
            }
        }
    }
    fn text(&mut self, x: f64, y: f64, s: &str, scale: u32, anchor: Anchor, vertical: bool) {
        let scale = scale.max(1) as i64;
        let len = s.chars().count() as i64 * 8 * scale;
        let shift = match anchor {
            Anchor::Start => 0,
            Anchor::Middle => len / 2,
            Anchor::End => len,
        };
        // Along the text and across it, from the anchor point.
        let (x, y) = (x.round() as i64, y.round() as i64);
        for (k, ch) in s.chars().enumerate() {
            let g = glyph(ch);
            for (row, bits) in g.iter().enumerate() {
                for col in 0..8 {
                    if bits & (1 << col) == 0 {
                        continue;
                    }
                    for sy in 0..scale {
                        for sx in 0..scale {
                            let along = k as i64 * 8 * scale + col * scale + sx - shift;
                            let across = (row as i64 - 7) * scale + sy;
                            if vertical {
                                self.set(x + across, y - along, BLACK);
                            } else {
                                self.set(x + along, y + across, BLACK);
                            }
                        }
                    }
                }
            }
        }
    }
}
