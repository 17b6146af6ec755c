//! Pictures of a compression [`Report`]: one self-contained, offline HTML page (inline SVG, a
//! little CSS, no scripts, nothing fetched), or the same figures as separate SVG files.
//!
//! The figures, drawn with [`plotters`] (SVG backend only, so no font or system libraries):
//!
//! 1. **Rank allocation across depth**: the rank of every layer, per block and layer type, with
//!    dense layers marked, and the same ranks as a fraction of each layer's largest useful rank
//!    (the largest rank whose factors are still cheaper than the dense weight).
//! 2. **Spectra**: for every layer, its activation-weighted singular values `σ_k / σ_1` on a log
//!    scale ([`LayerReport::spectrum`]) with a vertical line at the chosen rank; the values to the
//!    right of the line are the ones discarded, and their squares sum to the layer's error.
//! 3. **Parameters** per layer before and after.
//! 4. **Relative output error** per layer before and after compensation (log scale).
//!
//! ```no_run
//! # fn demo(report: &factorvit_compress::report::Report) -> std::io::Result<()> {
//! use factorvit_compress::report::html::{write_report, ReportInfo};
//! let info = ReportInfo { model: Some("fmnist-deit-tiny".into()), ..ReportInfo::default() };
//! // One HTML page ...
//! write_report(report, &info, std::path::Path::new("report.html"))?;
//! // ... or report-ranks.svg, report-spectra.svg, report-params.svg, report-errors.svg.
//! write_report(report, &info, std::path::Path::new("report.svg"))?;
//! # Ok(()) }
//! ```

use std::error::Error;
use std::fmt::Write as _;
use std::io;
use std::path::{Path, PathBuf};

use plotters::coord::Shift;
use plotters::prelude::*;

use super::units::{format_pow10, human_bytes, human_count, sci, thousands};
use super::{LayerReport, Report};
use crate::writer;

/// Colour of the vertical line at the chosen rank in the spectrum plots (`#D62728` in the SVG).
pub const CUT_COLOR: RGBColor = RGBColor(0xd6, 0x27, 0x28);
/// Colour of dense (uncompressed) layers in every figure.
pub const DENSE_COLOR: RGBColor = RGBColor(0x33, 0x33, 0x33);
/// Colours of the layer types, in order of first appearance (qkv, proj, fc1, fc2 for a ViT).
pub const TYPE_COLORS: [RGBColor; 6] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0x8c, 0x56, 0x4b),
    RGBColor(0xe3, 0x77, 0xc2),
];
/// Discarded part of a spectrum, and "before" bars.
const LIGHT: RGBColor = RGBColor(0xb8, 0xb8, 0xb8);
const LIGHTER: RGBColor = RGBColor(0xdd, 0xdd, 0xdd);
const FONT: &str = "sans-serif";

/// Width of the full-size figures, pixels.
const WIDTH: u32 = 960;
/// One cell of the spectrum grid, pixels.
const CELL: (u32, u32) = (240, 160);
/// Smallest value shown on a log axis.
const LOG_FLOOR: f64 = 1e-9;

/// Facts about a compression run that the [`Report`] does not hold (all optional).
#[derive(Debug, Clone, Default)]
pub struct ReportInfo {
    /// Page title (default: "factorvit compression report").
    pub title: Option<String>,
    /// The source model (path or name).
    pub model: Option<String>,
    /// The compressed model's file.
    pub output: Option<String>,
    /// Size of the compressed file in bytes.
    pub file_bytes: Option<u64>,
    /// Size of the source model file in bytes.
    pub source_file_bytes: Option<u64>,
    /// Whole-model parameters before and after (the report itself counts block linears only).
    pub model_params: Option<(usize, usize)>,
    /// Bytes of all weight tensors before and after.
    pub weight_bytes: Option<(usize, usize)>,
    /// Total wall time of the command, seconds (the report has the method's own time).
    pub total_seconds: Option<f64>,
    /// More rows for the summary table (label, value), e.g. method, dtype, calibration source.
    pub extra: Vec<(String, String)>,
}

/// What [`write_report`] writes, chosen by the file name's extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportFormat {
    /// `.html` / `.htm`: one self-contained page.
    Html,
    /// `.svg`: one SVG file per figure next to the given path, named `STEM-ranks.svg`,
    /// `STEM-spectra.svg`, `STEM-params.svg`, `STEM-errors.svg`.
    Svg,
}

impl ReportFormat {
    /// The format for a path, or an error naming the accepted extensions.
    pub fn from_path(path: &Path) -> io::Result<ReportFormat> {
        let ext = path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
        match ext.as_deref() {
            Some("html" | "htm") => Ok(ReportFormat::Html),
            Some("svg") => Ok(ReportFormat::Svg),
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "report {}: the file name must end in .html (one page) or .svg (one SVG file per figure)",
                    path.display()
                ),
            )),
        }
    }
}

/// One rendered figure.
#[derive(Debug, Clone)]
pub struct Figure {
    /// Short name (`ranks`, `fractions`, `spectra`, `params`, `errors`), used in file names.
    pub name: &'static str,
    /// The SVG document.
    pub svg: String,
}

/// Writes the report to `path`: an HTML page if it ends in `.html`/`.htm`, separate SVG files
/// next to it if it ends in `.svg` (see [`ReportFormat::Svg`]). Every file is written atomically
/// (temporary file + rename); a missing parent directory is created. Returns the paths written.
pub fn write_report(report: &Report, info: &ReportInfo, path: &Path) -> io::Result<Vec<PathBuf>> {
    let format = ReportFormat::from_path(path)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    match format {
        ReportFormat::Html => {
            let html = render_html(report, info)?;
            writer::write_atomic(path, html.as_bytes())?;
            Ok(vec![path.to_path_buf()])
        }
        ReportFormat::Svg => {
            let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("report");
            let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
            let mut written = Vec::new();
            for fig in render_svg_files(report)? {
                let p = dir.join(format!("{stem}-{}.svg", fig.name));
                writer::write_atomic(&p, fig.svg.as_bytes())?;
                written.push(p);
            }
            Ok(written)
        }
    }
}

/// The figures as standalone SVG documents (what [`ReportFormat::Svg`] writes): the two rank
/// charts in one file, all spectra in one grid, the parameters and the errors.
pub fn render_svg_files(report: &Report) -> io::Result<Vec<Figure>> {
    let lay = Layout::of(&report.layers);
    let ranks = svg(WIDTH, 2 * RANK_HEIGHT, |area| {
        let (top, bottom) = area.split_vertically(RANK_HEIGHT);
        draw_ranks(&top, report, &lay)?;
        draw_fractions(&bottom, report, &lay)
    })?;
    let (cols, rows) = lay.grid();
    let spectra = svg(CELL.0 * cols as u32, CELL.1 * rows as u32 + 40, |area| {
        let area = area.titled(SPECTRA_TITLE, (FONT, 18))?;
        let cells = area.split_evenly((rows, cols));
        let scale = SpectrumScale::of(report, &lay);
        for (i, l) in report.layers.iter().enumerate() {
            let slot = lay.slots[i];
            draw_spectrum(&cells[slot.row * cols + slot.kind], l, lay.color(i), &scale.for_kind(slot.kind))?;
        }
        Ok(())
    })?;
    Ok(vec![
        Figure { name: "ranks", svg: ranks },
        Figure { name: "spectra", svg: spectra },
        Figure { name: "params", svg: svg(WIDTH, PLOT_HEIGHT, |a| draw_params(a, report, &lay))? },
        Figure { name: "errors", svg: svg(WIDTH, PLOT_HEIGHT, |a| draw_errors(a, report, &lay))? },
    ])
}

const RANK_HEIGHT: u32 = 330;
const PLOT_HEIGHT: u32 = 360;
const SPECTRA_TITLE: &str = "Activation-weighted singular values σk/σ1 (log) with the chosen rank";

/// The report as one self-contained HTML page.
pub fn render_html(report: &Report, info: &ReportInfo) -> io::Result<String> {
    let title = info.title.clone().unwrap_or_else(|| "factorvit compression report".into());
    let mut h = String::with_capacity(1 << 20);
    write_header(&mut h, info, &title);
    write_summary(&mut h, report, info);
    write_figures(&mut h, report)?;
    write_layer_table(&mut h, report);
    let _ = writeln!(
        h,
        "<footer>\n<p>Generated by factorvit {} from the run's report (also written as JSON next to the \
         model). The method: <code>docs/ALGORITHM.md</code>.</p>\n<details><summary>options</summary><pre>{}</pre></details>\n\
         </footer>\n</body>\n</html>",
        env!("CARGO_PKG_VERSION"),
        esc(&report.options)
    );
    Ok(h)
}

/// The document's head and the page header (title, source → output).
fn write_header(h: &mut String, info: &ReportInfo, title: &str) {
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <meta name=\"generator\" content=\"factorvit {}\">\n<title>{}</title>\n<style>\n{CSS}</style>\n</head>\n<body>\n",
        env!("CARGO_PKG_VERSION"),
        esc(title)
    );
    let _ = writeln!(h, "<header>\n<h1>{}</h1>", esc(title));
    if let Some(m) = &info.model {
        let out = info.output.as_deref().map(|o| format!(" → <code>{}</code>", esc(o))).unwrap_or_default();
        let _ = writeln!(h, "<p class=\"sub\"><code>{}</code>{out}</p>", esc(m));
    }
    h.push_str("</header>\n");
}

/// The summary table: budget, parameters, sizes, calibration, distortion, time.
fn write_summary(h: &mut String, report: &Report, info: &ReportInfo) {
    let (before, after, cost) = report.totals();
    h.push_str("<section id=\"summary\">\n<h2>Summary</h2>\n<table class=\"summary\">\n");
    let mut row = |id: &str, label: &str, value: String, data: Option<String>| {
        let data = data.map(|d| format!(" data-value=\"{}\"", esc(&d))).unwrap_or_default();
        let _ = writeln!(h, "<tr><th>{}</th><td id=\"{id}\"{data}>{value}</td></tr>", esc(label));
    };
    if let Some(m) = &info.model {
        row("model", "model", format!("<code>{}</code>", esc(m)), None);
    }
    if let Some(o) = &info.output {
        row("output", "output", format!("<code>{}</code>", esc(o)), None);
    }
    row(
        "budget",
        "budget (block-linear parameters)",
        format!(
            "{} ({:.1}% of {})",
            thousands(report.budget_params),
            100.0 * report.budget_params as f64 / before.max(1) as f64,
            thousands(before)
        ),
        Some(report.budget_params.to_string()),
    );
    row("params-before", "block-linear parameters before", thousands(before), Some(before.to_string()));
    row(
        "params-after",
        "block-linear parameters after",
        format!("{} ({:.1}%)", thousands(after), 100.0 * after as f64 / before.max(1) as f64),
        Some(after.to_string()),
    );
    row("budget-charged", "budget charged", thousands(cost.round() as usize), Some(format!("{cost:.0}")));
    let factored = report.layers.iter().filter(|l| !l.is_dense()).count();
    row(
        "layers",
        "layers factored / dense",
        format!("{factored} / {}", report.layers.len() - factored),
        Some(factored.to_string()),
    );
    if let Some((b, a)) = info.model_params {
        row(
            "model-params",
            "model parameters",
            format!("{} → {} ({:.1}%)", thousands(b), thousands(a), 100.0 * a as f64 / b.max(1) as f64),
            Some(a.to_string()),
        );
    }
    if let Some((b, a)) = info.weight_bytes {
        row(
            "weight-bytes",
            "weight bytes",
            format!(
                "{} → {} ({:.1}%)",
                human_bytes(b as u64),
                human_bytes(a as u64),
                100.0 * a as f64 / b.max(1) as f64
            ),
            Some(a.to_string()),
        );
    }
    match (info.source_file_bytes, info.file_bytes) {
        (Some(s), Some(f)) => {
            row("file-bytes", "file size", format!("{} → {}", human_bytes(s), human_bytes(f)), Some(f.to_string()))
        }
        (None, Some(f)) => row("file-bytes", "file size", human_bytes(f), Some(f.to_string())),
        _ => {}
    }
    row(
        "calibration",
        "calibration images (fit / validation)",
        format!("{} ({} / {})", report.calibration_images, report.fit_images, report.validation_images),
        Some(report.calibration_images.to_string()),
    );
    if let (Some(summary), Some(kept)) = (report.compensation_summary(), report.kept_distortion()) {
        row(
            "distortion",
            &format!("validation output distortion, {}", report.distortion_measure),
            esc(&summary),
            Some(kept.to_string()),
        );
    }
    for (label, value) in &info.extra {
        row("", label, esc(value), None);
    }
    let timings: String =
        report.timings.iter().map(|(what, s)| format!("{}: {s:.1} s", esc(what))).collect::<Vec<_>>().join("; ");
    row(
        "seconds",
        "time",
        format!(
            "{:.1} s in the method ({timings}){}",
            report.seconds,
            info.total_seconds.map(|t| format!(", {t:.1} s in all")).unwrap_or_default()
        ),
        Some(format!("{:.3}", report.seconds)),
    );
    h.push_str("</table>\n</section>\n");
}

/// The four figure sections: ranks, spectra, parameters, errors.
fn write_figures(h: &mut String, report: &Report) -> io::Result<()> {
    let lay = Layout::of(&report.layers);
    let scale = SpectrumScale::of(report, &lay);
    // ---- 1. Ranks. ----
    let _ = writeln!(
        h,
        "<section id=\"ranks\">\n<h2>1. Rank allocation across depth</h2>\n<p>One global budget, shared by \
         the layers where a rank buys the largest drop in (sensitivity-weighted) error per parameter. \
         Black ticks mark each layer's largest useful rank: above it the factors <code>U·V</code> \
         would cost more than the dense weight, so such a layer stays dense (dark bars). The second \
         chart shows each rank as a fraction of that largest useful rank; the dashed line is the \
         budget's share, what a uniform allocation would give every layer.</p>"
    );
    let ranks = svg(WIDTH, RANK_HEIGHT, |a| draw_ranks(a, report, &lay))?;
    let fractions = svg(WIDTH, RANK_HEIGHT, |a| draw_fractions(a, report, &lay))?;
    let _ = writeln!(h, "<figure class=\"chart\" id=\"fig-ranks\">{ranks}</figure>");
    let _ = writeln!(h, "<figure class=\"chart\" id=\"fig-fractions\">{fractions}</figure>\n</section>");

    // ---- 2. Spectra. ----
    let _ = writeln!(
        h,
        "<section id=\"spectra\">\n<h2>2. Activation-weighted spectra</h2>\n<p>Singular values of \
         <code>W·C<sup>1/2</sup></code> (<code>C</code>: the covariance of the layer's inputs on the \
         calibration images), relative to the largest, on a log scale. The <span style=\"color:#D62728\">red \
         line</span> is the chosen rank: values to its right (grey) are discarded, and their squares \
         add up to the layer's output error. A flat spectrum is expensive to cut; a steep one is cheap. \
         Dense layers are drawn dark without a cut. One row per block, one column per layer type; the \
         x axis runs to the largest useful rank.</p>"
    );
    let (cols, _) = lay.grid();
    let _ = writeln!(h, "<div class=\"grid\" style=\"grid-template-columns: repeat({cols}, minmax(0, 1fr))\">");
    for (i, l) in report.layers.iter().enumerate() {
        let slot = lay.slots[i];
        let cell = svg(CELL.0, CELL.1, |a| draw_spectrum(a, l, lay.color(i), &scale.for_kind(slot.kind)))?;
        let _ = writeln!(
            h,
            "<figure class=\"spectrum\" data-layer=\"{}\" data-kind=\"{}\" data-rank=\"{}\" data-max-rank=\"{}\" \
             style=\"grid-column: {}; grid-row: {}\">{cell}</figure>",
            esc(&l.name),
            esc(l.kind.name()),
            l.rank,
            l.max_useful_rank(),
            slot.kind + 1,
            slot.row + 1
        );
    }
    h.push_str("</div>\n</section>\n");

    // ---- 3. Parameters. ----
    let _ = writeln!(
        h,
        "<section id=\"params\">\n<h2>3. Parameters per layer</h2>\n<p>Grey: the dense weight \
         <code>m·n</code>; coloured: the factors <code>r·(m+n)</code> (plus sparse entries, if any).</p>\n\
         <figure class=\"chart\" id=\"fig-params\">{}</figure>\n</section>",
        svg(WIDTH, PLOT_HEIGHT, |a| draw_params(a, report, &lay))?
    );

    // ---- 4. Errors. ----
    let (_, which) = error_points(report);
    let _ = writeln!(
        h,
        "<section id=\"errors\">\n<h2>4. Output error per layer</h2>\n<p>Relative output error \
         <code>E‖Δy‖² / Var(y)</code> of each layer on the compressed model's own inputs ({which}), \
         before (hollow) and after (filled) the layer-wise compensation refits it against the \
         original outputs. A cross means the validation gate rejected the refit and the \
         uncompensated factors were kept.</p>\n<figure class=\"chart\" id=\"fig-errors\">{}</figure>\n</section>",
        svg(WIDTH, PLOT_HEIGHT, |a| draw_errors(a, report, &lay))?
    );

    Ok(())
}

/// The per-layer numbers, folded.
fn write_layer_table(h: &mut String, report: &Report) {
    h.push_str(
        "<section id=\"table\">\n<h2>Per-layer numbers</h2>\n<details>\n<summary>table</summary>\n\
         <table class=\"layers\">\n<thead><tr><th>layer</th><th>shape</th><th>kind</th><th>rank</th>\
         <th>max useful</th><th>nnz</th><th>params</th><th>after</th><th>err fit</th><th>err val</th>\
         <th>comp before</th><th>comp after</th><th>kept</th><th>sensitivity</th><th>dtype</th><th>quant err</th>\
         </tr></thead>\n<tbody>\n",
    );
    let opt = |v: Option<f64>| v.map_or_else(|| "-".to_string(), sci);
    for l in &report.layers {
        let (cb, ca) = comp_pair(l);
        let _ = writeln!(
            h,
            "<tr><td>{}</td><td>{}×{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
             <td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&l.name),
            l.out_features,
            l.in_features,
            esc(l.kind.name()),
            l.rank,
            l.max_useful_rank(),
            l.nnz,
            thousands(l.params_before),
            thousands(l.params_after),
            if l.is_dense() { "-".into() } else { sci(l.error_fit) },
            opt(l.error_val),
            opt(cb),
            opt(ca),
            match l.compensation_kept {
                Some(true) => "yes",
                Some(false) => "no",
                None => "-",
            },
            opt(l.sensitivity),
            if l.dtype.is_empty() { "-".to_string() } else { esc(&l.dtype) },
            opt(l.quant_error)
        );
    }
    h.push_str("</tbody>\n</table>\n</details>\n</section>\n");
}

const CSS: &str = "\
body { font-family: system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif; color: #222; max-width: 1000px; margin: 1.5em auto; padding: 0 1em; line-height: 1.45; }
h1 { font-size: 1.6em; margin-bottom: 0.1em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ddd; }
.sub { color: #555; margin-top: 0; } code { font-size: 0.92em; }
table { border-collapse: collapse; font-size: 0.9em; } td, th { padding: 0.2em 0.7em; text-align: left; }
table.summary th { font-weight: normal; color: #555; } table.summary td { font-variant-numeric: tabular-nums; }
table.layers td, table.layers th { border-bottom: 1px solid #eee; text-align: right; font-variant-numeric: tabular-nums; }
table.layers td:first-child, table.layers th:first-child { text-align: left; }
figure { margin: 0.5em 0; } figure svg { max-width: 100%; height: auto; display: block; }
.grid { display: grid; gap: 2px; } .grid figure { margin: 0; }
footer { margin-top: 3em; color: #666; font-size: 0.85em; }
";

// ------------------------------------------------------------------------------------------------
// Layout: block and layer type of every layer.

/// Position of a layer in the figures.
#[derive(Debug, Clone, Copy)]
struct Slot {
    /// Row (block) index.
    row: usize,
    /// Layer type index.
    kind: usize,
}

/// Blocks and layer types of a report's layers (`blocks.3.mlp.fc1` → block `3`, type `fc1`;
/// names without a block number get a row of their own).
#[derive(Debug, Clone)]
struct Layout {
    rows: Vec<String>,
    kinds: Vec<String>,
    slots: Vec<Slot>,
}

impl Layout {
    fn of(layers: &[LayerReport]) -> Layout {
        let mut rows: Vec<String> = Vec::new();
        let mut kinds: Vec<String> = Vec::new();
        let mut slots = Vec::with_capacity(layers.len());
        for (i, l) in layers.iter().enumerate() {
            let parts: Vec<&str> = l.name.split('.').collect();
            let block = parts.iter().find(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
            let row_label = block.map_or_else(|| format!("#{i}"), |b| (*b).to_string());
            let kind_label = parts.last().copied().unwrap_or("").to_string();
            let row = rows.iter().position(|r| *r == row_label).unwrap_or_else(|| {
                rows.push(row_label);
                rows.len() - 1
            });
            let kind = kinds.iter().position(|k| *k == kind_label).unwrap_or_else(|| {
                kinds.push(kind_label);
                kinds.len() - 1
            });
            slots.push(Slot { row, kind });
        }
        Layout { rows, kinds, slots }
    }

    /// `(columns, rows)` of the spectrum grid.
    fn grid(&self) -> (usize, usize) {
        (self.kinds.len().max(1), self.rows.len().max(1))
    }

    /// X coordinate of layer `i` in the per-layer charts (block `b` spans `b ± 0.4`).
    fn x(&self, i: usize) -> f64 {
        let s = self.slots[i];
        s.row as f64 - 0.4 + (s.kind as f64 + 0.5) * self.slot_width()
    }

    fn slot_width(&self) -> f64 {
        0.8 / self.kinds.len().max(1) as f64
    }

    fn kind_color(&self, k: usize) -> RGBColor {
        TYPE_COLORS[k % TYPE_COLORS.len()]
    }

    fn color(&self, i: usize) -> RGBColor {
        self.kind_color(self.slots[i].kind)
    }

    /// X axis label at `x` (block labels at integers, nothing elsewhere).
    fn row_label(&self, x: f64) -> String {
        let r = x.round();
        if (x - r).abs() < 1e-6 && r >= 0.0 && (r as usize) < self.rows.len() {
            self.rows[r as usize].clone()
        } else {
            String::new()
        }
    }

    fn x_range(&self) -> std::ops::Range<f64> {
        -0.5..self.rows.len().max(1) as f64 - 0.5
    }
}

// ------------------------------------------------------------------------------------------------
// Drawing.

type DrawResult = Result<(), Box<dyn Error>>;
type Area<'a> = DrawingArea<SVGBackend<'a>, Shift>;

/// Renders one SVG document of `w × h` pixels.
fn svg(w: u32, h: u32, draw: impl FnOnce(&Area<'_>) -> DrawResult) -> io::Result<String> {
    let mut buf = String::new();
    {
        let root = SVGBackend::with_string(&mut buf, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(io_err)?;
        draw(&root).map_err(|e| io::Error::other(format!("cannot draw the report: {e}")))?;
        root.present().map_err(io_err)?;
    }
    Ok(buf)
}

fn io_err(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(format!("cannot draw the report: {e}"))
}

/// A legend entry's symbol.
#[derive(Debug, Clone, Copy)]
enum Mark {
    Bar(RGBColor),
    Line(RGBColor, bool),
    Circle(RGBColor, bool),
    Cross(RGBColor),
    Tick,
}

/// A horizontal legend along the top of `area`.
fn legend(area: &Area<'_>, entries: &[(String, Mark)]) -> DrawResult {
    let mut x = 60i32;
    let y = 12i32;
    for (label, mark) in entries {
        match *mark {
            Mark::Bar(c) => area.draw(&Rectangle::new([(x, y - 6), (x + 12, y + 6)], c.filled()))?,
            Mark::Line(c, dashed) => {
                if dashed {
                    for k in 0..3 {
                        area.draw(&PathElement::new(vec![(x + 5 * k, y), (x + 5 * k + 3, y)], c.stroke_width(2)))?;
                    }
                } else {
                    area.draw(&PathElement::new(vec![(x, y), (x + 14, y)], c.stroke_width(2)))?;
                }
            }
            Mark::Circle(c, filled) => {
                area.draw(&Circle::new((x + 6, y), 4, if filled { c.filled() } else { c.stroke_width(1) }))?
            }
            Mark::Cross(c) => area.draw(&Cross::new((x + 6, y), 4, c.stroke_width(2)))?,
            Mark::Tick => area.draw(&PathElement::new(vec![(x, y), (x + 14, y)], BLACK.stroke_width(2)))?,
        }
        area.draw(&Text::new(label.clone(), (x + 18, y - 7), (FONT, 13).into_font().color(&BLACK)))?;
        x += 18 + 6 * label.chars().count() as i32 + 22;
    }
    Ok(())
}

fn kind_entries(lay: &Layout, mark: impl Fn(RGBColor) -> Mark) -> Vec<(String, Mark)> {
    lay.kinds.iter().enumerate().map(|(k, name)| (name.clone(), mark(lay.kind_color(k)))).collect()
}

/// Chart 1: rank per layer, grouped by block, with the largest useful rank as a tick.
fn draw_ranks(area: &Area<'_>, report: &Report, lay: &Layout) -> DrawResult {
    let area = area.titled("Rank per layer across depth", (FONT, 18))?;
    let (top, plot) = area.split_vertically(26);
    let mut entries = kind_entries(lay, Mark::Bar);
    entries.push(("dense (not factored)".into(), Mark::Bar(DENSE_COLOR)));
    entries.push(("largest useful rank".into(), Mark::Tick));
    legend(&top, &entries)?;
    let ymax = report.layers.iter().map(LayerReport::max_useful_rank).max().unwrap_or(1).max(1) as f64 * 1.05;
    let mut chart = ChartBuilder::on(&plot)
        .margin_right(16)
        .x_label_area_size(36)
        .y_label_area_size(56)
        .build_cartesian_2d(lay.x_range(), 0.0..ymax)?;
    let fmt = |x: &f64| lay.row_label(*x);
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(lay.rows.len() + 1)
        .x_label_formatter(&fmt)
        .y_label_formatter(&|y: &f64| format!("{y:.0}"))
        .x_desc("block")
        .y_desc("rank")
        .light_line_style(WHITE)
        .draw()?;
    let hw = lay.slot_width() * 0.42;
    chart.draw_series(report.layers.iter().enumerate().map(|(i, l)| {
        let x = lay.x(i);
        let (top, color) =
            if l.is_dense() { (l.max_useful_rank() as f64, DENSE_COLOR) } else { (l.rank as f64, lay.color(i)) };
        Rectangle::new([(x - hw, 0.0), (x + hw, top)], color.filled())
    }))?;
    chart.draw_series(report.layers.iter().enumerate().filter(|(_, l)| !l.is_dense()).map(|(i, l)| {
        let x = lay.x(i);
        let mu = l.max_useful_rank() as f64;
        PathElement::new(vec![(x - hw, mu), (x + hw, mu)], BLACK.stroke_width(2))
    }))?;
    Ok(())
}

/// Chart 1b: rank as a fraction of the largest useful rank, one line per layer type.
fn draw_fractions(area: &Area<'_>, report: &Report, lay: &Layout) -> DrawResult {
    let area = area.titled("Rank as a fraction of the largest useful rank", (FONT, 18))?;
    let (top, plot) = area.split_vertically(26);
    let mut entries = kind_entries(lay, |c| Mark::Line(c, false));
    entries.push(("dense".into(), Mark::Bar(DENSE_COLOR)));
    entries.push(("budget share (uniform allocation)".into(), Mark::Line(LIGHT, true)));
    legend(&top, &entries)?;
    let mut chart = ChartBuilder::on(&plot)
        .margin_right(16)
        .x_label_area_size(36)
        .y_label_area_size(56)
        .build_cartesian_2d(lay.x_range(), 0.0..1.08)?;
    let fmt = |x: &f64| lay.row_label(*x);
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(lay.rows.len() + 1)
        .x_label_formatter(&fmt)
        .y_label_formatter(&|y: &f64| format!("{:.0}%", y * 100.0))
        .x_desc("block")
        .y_desc("of largest useful rank")
        .light_line_style(WHITE)
        .draw()?;
    let (before, _, _) = report.totals();
    let share = report.budget_params as f64 / before.max(1) as f64;
    let x0 = lay.x_range();
    chart.draw_series(DashedLineSeries::new(vec![(x0.start, share), (x0.end, share)], 6, 4, LIGHT.stroke_width(2)))?;
    let frac = |l: &LayerReport| {
        if l.is_dense() {
            1.0
        } else {
            l.rank as f64 / l.max_useful_rank().max(1) as f64
        }
    };
    for k in 0..lay.kinds.len() {
        let color = lay.kind_color(k);
        let pts: Vec<(f64, f64)> = report
            .layers
            .iter()
            .enumerate()
            .filter(|(i, _)| lay.slots[*i].kind == k)
            .map(|(i, l)| (lay.slots[i].row as f64, frac(l)))
            .collect();
        chart.draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))?;
        chart.draw_series(pts.iter().map(|&p| Circle::new(p, 3, color.filled())))?;
    }
    chart.draw_series(report.layers.iter().enumerate().filter(|(_, l)| l.is_dense()).map(|(i, _)| {
        let x = lay.slots[i].row as f64;
        let d = 0.08;
        Rectangle::new([(x - d, 1.0 - 0.025), (x + d, 1.0 + 0.025)], DENSE_COLOR.filled())
    }))?;
    Ok(())
}

/// Shared axes of the spectrum grid: x up to the longest spectrum of each layer type, y from the
/// smallest relative singular value of all layers (a power of ten) to 1.
#[derive(Debug, Clone)]
struct SpectrumScale {
    x_max: Vec<f64>,
    y_min: f64,
}

/// Axes of one spectrum plot.
#[derive(Debug, Clone, Copy)]
struct CellScale {
    x_max: f64,
    y_min: f64,
}

impl SpectrumScale {
    fn of(report: &Report, lay: &Layout) -> SpectrumScale {
        let mut x_max = vec![1.0f64; lay.kinds.len()];
        let mut y_min = 0.1f64;
        for (i, l) in report.layers.iter().enumerate() {
            let k = lay.slots[i].kind;
            x_max[k] = x_max[k].max(l.spectrum.len() as f64).max(l.max_useful_rank() as f64);
            if let Some(&s0) = l.spectrum.first() {
                for &s in &l.spectrum {
                    if s0 > 0.0 && s > 0.0 {
                        y_min = y_min.min(s / s0);
                    }
                }
            }
        }
        let y_min = 10f64.powf(y_min.max(1e-6).log10().floor());
        SpectrumScale { x_max, y_min }
    }

    fn for_kind(&self, k: usize) -> CellScale {
        CellScale { x_max: self.x_max.get(k).copied().unwrap_or(1.0), y_min: self.y_min }
    }
}

/// One spectrum with the cut at the chosen rank.
fn draw_spectrum(area: &Area<'_>, l: &LayerReport, color: RGBColor, scale: &CellScale) -> DrawResult {
    let caption = if l.is_dense() {
        format!("{} · dense", short_name(&l.name))
    } else {
        format!("{} · r={}/{}", short_name(&l.name), l.rank, l.max_useful_rank())
    };
    let y_min = scale.y_min;
    let mut chart = ChartBuilder::on(area)
        .margin(4)
        .margin_right(10)
        .caption(caption, (FONT, 12))
        .x_label_area_size(18)
        .y_label_area_size(38)
        .build_cartesian_2d(0.0..scale.x_max * 1.02, (y_min..1.0).log_scale())?;
    chart
        .configure_mesh()
        .x_labels(4)
        .y_labels(4)
        .label_style((FONT, 10))
        .x_label_formatter(&|x: &f64| format!("{x:.0}"))
        .y_label_formatter(&|y: &f64| format_pow10(*y))
        .light_line_style(WHITE)
        .bold_line_style(RGBColor(0xee, 0xee, 0xee))
        .draw()?;
    let s0 = l.spectrum.first().copied().unwrap_or(0.0);
    if s0 <= 0.0 {
        return Ok(());
    }
    let pts: Vec<(f64, f64)> =
        l.spectrum.iter().enumerate().map(|(k, &s)| ((k + 1) as f64, (s / s0).clamp(y_min, 1.0))).collect();
    if l.is_dense() || l.rank == 0 {
        chart.draw_series(LineSeries::new(pts, DENSE_COLOR.stroke_width(2)))?;
        return Ok(());
    }
    let r = l.rank.min(pts.len());
    chart.draw_series(LineSeries::new(pts[..r].to_vec(), color.stroke_width(2)))?;
    chart.draw_series(LineSeries::new(pts[r - 1..].to_vec(), LIGHT.stroke_width(2)))?;
    let xr = r as f64;
    chart.draw_series(LineSeries::new(vec![(xr, y_min), (xr, 1.0)], CUT_COLOR.stroke_width(2)))?;
    Ok(())
}

/// `blocks.3.mlp.fc1` → `3.fc1`.
fn short_name(name: &str) -> String {
    let parts: Vec<&str> = name.split('.').collect();
    match (parts.iter().find(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit())), parts.last()) {
        (Some(b), Some(k)) if parts.len() > 2 => format!("{b}.{k}"),
        _ => name.to_string(),
    }
}

/// Chart 3: parameters before and after, per layer.
fn draw_params(area: &Area<'_>, report: &Report, lay: &Layout) -> DrawResult {
    let area = area.titled("Parameters per layer, before and after", (FONT, 18))?;
    let (top, plot) = area.split_vertically(26);
    let mut entries = vec![("before (dense)".to_string(), Mark::Bar(LIGHTER))];
    entries.extend(kind_entries(lay, Mark::Bar));
    entries.push(("kept dense".into(), Mark::Bar(DENSE_COLOR)));
    legend(&top, &entries)?;
    let ymax =
        report.layers.iter().map(|l| l.params_before.max(l.params_after)).max().unwrap_or(1).max(1) as f64 * 1.05;
    let mut chart = ChartBuilder::on(&plot)
        .margin_right(16)
        .x_label_area_size(36)
        .y_label_area_size(64)
        .build_cartesian_2d(lay.x_range(), 0.0..ymax)?;
    let fmt = |x: &f64| lay.row_label(*x);
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(lay.rows.len() + 1)
        .x_label_formatter(&fmt)
        .y_label_formatter(&|y: &f64| human_count(*y))
        .x_desc("block")
        .y_desc("parameters")
        .light_line_style(WHITE)
        .draw()?;
    let hw = lay.slot_width() * 0.45;
    chart.draw_series(report.layers.iter().enumerate().map(|(i, l)| {
        let x = lay.x(i);
        Rectangle::new([(x - hw, 0.0), (x + hw, l.params_before as f64)], LIGHTER.filled())
    }))?;
    let hw = lay.slot_width() * 0.3;
    chart.draw_series(report.layers.iter().enumerate().map(|(i, l)| {
        let x = lay.x(i);
        let color = if l.is_dense() { DENSE_COLOR } else { lay.color(i) };
        Rectangle::new([(x - hw, 0.0), (x + hw, l.params_after as f64)], color.filled())
    }))?;
    Ok(())
}

/// Relative errors before and after compensation of one layer: validation split if measured,
/// else fit split; without compensation, the error on the dense model's inputs.
fn comp_pair(l: &LayerReport) -> (Option<f64>, Option<f64>) {
    match (l.compensation_val_before, l.compensation_val_after) {
        (Some(b), Some(a)) => (Some(b), Some(a)),
        _ => (l.compensation_fit_before, l.compensation_fit_after),
    }
}

/// Per factored layer: `(index, before, after, kept)`; and which data the errors are on.
type ErrorPoint = (usize, f64, Option<f64>, Option<bool>);

fn error_points(report: &Report) -> (Vec<ErrorPoint>, &'static str) {
    let compensated = report.layers.iter().any(|l| comp_pair(l).1.is_some());
    let on_val = report.layers.iter().any(|l| l.compensation_val_after.is_some() || l.error_val.is_some());
    let mut pts = Vec::new();
    for (i, l) in report.layers.iter().enumerate() {
        if l.is_dense() {
            continue;
        }
        let (b, a) = comp_pair(l);
        match (compensated, b) {
            (true, Some(b)) => pts.push((i, b, a, l.compensation_kept)),
            _ => pts.push((i, l.error_val.unwrap_or(l.error_fit), None, None)),
        }
    }
    let which = match (compensated, on_val) {
        (true, true) => "held-out validation images",
        (true, false) => "fit images",
        (false, true) => "validation images, dense inputs; no compensation was run",
        (false, false) => "fit images, dense inputs; no compensation was run",
    };
    (pts, which)
}

/// Chart 4: relative output error per layer before / after compensation (log scale).
fn draw_errors(area: &Area<'_>, report: &Report, lay: &Layout) -> DrawResult {
    let area = area.titled("Relative output error per layer, before and after compensation", (FONT, 18))?;
    let (top, plot) = area.split_vertically(26);
    let (pts, _) = error_points(report);
    let compensated = pts.iter().any(|p| p.2.is_some());
    let mut entries = if compensated {
        vec![
            ("before".to_string(), Mark::Circle(DENSE_COLOR, false)),
            ("after".to_string(), Mark::Circle(DENSE_COLOR, true)),
            ("refit rejected".to_string(), Mark::Cross(DENSE_COLOR)),
        ]
    } else {
        vec![("without compensation".to_string(), Mark::Circle(DENSE_COLOR, false))]
    };
    entries.extend(kind_entries(lay, |c| Mark::Circle(c, true)));
    legend(&top, &entries)?;
    let vals = pts.iter().flat_map(|p| [Some(p.1), p.2]).flatten().filter(|v| *v > 0.0 && v.is_finite());
    let (lo, hi) = vals.fold((f64::INFINITY, 0.0f64), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let (lo, hi) = if lo.is_finite() { (lo, hi) } else { (1e-3, 1.0) };
    let y_lo = 10f64.powf(lo.max(LOG_FLOOR).log10().floor());
    let y_hi = 10f64.powf(hi.max(y_lo * 10.0).log10().ceil());
    let mut chart = ChartBuilder::on(&plot)
        .margin_right(16)
        .x_label_area_size(36)
        .y_label_area_size(64)
        .build_cartesian_2d(lay.x_range(), (y_lo..y_hi).log_scale())?;
    let fmt = |x: &f64| lay.row_label(*x);
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(lay.rows.len() + 1)
        .x_label_formatter(&fmt)
        .y_label_formatter(&|y: &f64| format_pow10(*y))
        .x_desc("block")
        .y_desc("E‖Δy‖² / Var(y)")
        .light_line_style(RGBColor(0xf2, 0xf2, 0xf2))
        .draw()?;
    let clamp = |v: f64| v.clamp(y_lo, y_hi);
    for &(i, b, a, kept) in &pts {
        let x = lay.x(i);
        let color = lay.color(i);
        if let Some(a) = a {
            chart.draw_series(std::iter::once(PathElement::new(
                vec![(x, clamp(b)), (x, clamp(a))],
                color.stroke_width(1),
            )))?;
        }
        chart.draw_series(std::iter::once(Circle::new((x, clamp(b)), 4, color.stroke_width(2))))?;
        match (a, kept) {
            (Some(a), Some(false)) => {
                chart.draw_series(std::iter::once(Cross::new((x, clamp(a)), 4, color.stroke_width(2))))?;
            }
            (Some(a), _) => {
                chart.draw_series(std::iter::once(Circle::new((x, clamp(a)), 4, color.filled())))?;
            }
            _ => {}
        }
    }
    Ok(())
}

// ------------------------------------------------------------------------------------------------
// Formatting.

/// HTML escaping of text and attribute values.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_splits_block_and_type() {
        let layers: Vec<LayerReport> = ["blocks.0.attn.qkv", "blocks.0.mlp.fc1", "blocks.1.attn.qkv", "head"]
            .iter()
            .map(|n| LayerReport::new(n, 4, 4))
            .collect();
        let lay = Layout::of(&layers);
        assert_eq!(lay.rows, vec!["0", "1", "#3"]);
        assert_eq!(lay.kinds, vec!["qkv", "fc1", "head"]);
        assert_eq!((lay.slots[2].row, lay.slots[2].kind), (1, 0));
        assert_eq!(lay.row_label(1.0), "1");
        assert_eq!(lay.row_label(0.5), "");
        assert_eq!(short_name("blocks.11.mlp.fc2"), "11.fc2");
    }

    #[test]
    fn formats() {
        assert_eq!(esc("a<b & \"c\""), "a&lt;b &amp; &quot;c&quot;");
    }

    #[test]
    fn format_from_extension() {
        assert_eq!(ReportFormat::from_path(Path::new("a/r.HTML")).unwrap(), ReportFormat::Html);
        assert_eq!(ReportFormat::from_path(Path::new("r.svg")).unwrap(), ReportFormat::Svg);
        assert!(ReportFormat::from_path(Path::new("r.png")).is_err());
        assert!(ReportFormat::from_path(Path::new("report")).is_err());
    }
}
