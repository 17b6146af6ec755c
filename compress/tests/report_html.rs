//! The HTML / SVG report of a real compression of a small random ViT calibrated with the bundled
//! Fashion-MNIST images: well-formed, offline, one spectrum per layer with the cut at the
//! allocated rank, summary numbers equal to the report's.

mod common;

use std::path::Path;

use common::TempDir;
use factorvit::Model;
use factorvit_compress::data::{load_dataset, LoadOptions, Split};
use factorvit_compress::method::pipeline::{compress_model, Calibration, Compressed, PipelineOptions};
use factorvit_compress::method::synthetic::{random_vit_spec, SyntheticVit};
use factorvit_compress::report::html::{render_html, write_report, ReportInfo, CUT_COLOR};
use factorvit_compress::report::Report;
use factorvit_compress::writer;

/// Compresses the micro model at `keep` with compensation (and its validation split).
fn compress(keep: f64) -> Compressed {
    let spec = random_vit_spec(&SyntheticVit::micro(), 7).unwrap();
    let model = Model::from_vec(writer::to_bytes(&spec).unwrap()).unwrap();
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/fmnist-calib.safetensors");
    let opts = LoadOptions { split: Split::Train, limit: Some(40), ..LoadOptions::default() };
    let data = load_dataset(&path, model.preprocess(), &opts).expect("bundled calibration data loads");
    let calib = Calibration::from_dataset(&data);
    let opts = PipelineOptions {
        budget_params: (keep * model.block_linear_params() as f64) as usize,
        sensitivity_images: 8,
        batch: 8,
        threads: 1,
        ..PipelineOptions::default()
    };
    compress_model(&model, &calib, &opts).expect("compression succeeds")
}

/// Checks that every non-void element is closed in order (HTML with inline SVG).
fn assert_well_formed(doc: &str) {
    const VOID: [&str; 6] = ["meta", "br", "img", "link", "input", "hr"];
    let mut stack: Vec<String> = Vec::new();
    let mut rest = doc;
    while let Some(start) = rest.find('<') {
        let end = rest[start..].find('>').map(|e| start + e).expect("unterminated tag");
        let tag = &rest[start + 1..end];
        rest = &rest[end + 1..];
        if tag.starts_with('!') || tag.starts_with('?') {
            continue;
        }
        let name: String = tag.trim_start_matches('/').chars().take_while(|c| c.is_ascii_alphanumeric()).collect();
        assert!(!name.is_empty(), "empty tag <{tag}>");
        if let Some(closing) = tag.strip_prefix('/') {
            let open = stack.pop().unwrap_or_else(|| panic!("</{closing}> closes nothing"));
            assert_eq!(open, name, "<{open}> closed by </{name}>");
        } else if !tag.ends_with('/') && !VOID.contains(&name.as_str()) {
            stack.push(name);
        }
    }
    assert!(stack.is_empty(), "unclosed elements: {stack:?}");
}

/// Value of attribute `name` in the tag text `tag`.
fn attr<'a>(tag: &'a str, name: &str) -> Option<&'a str> {
    let key = format!(" {name}=\"");
    let start = tag.find(&key)? + key.len();
    Some(&tag[start..start + tag[start..].find('"')?])
}

/// Every `<polyline>` of an SVG fragment: `(stroke colour, points)`.
fn polylines(svg: &str) -> Vec<(String, Vec<(i32, i32)>)> {
    svg.split("<polyline")
        .skip(1)
        .map(|p| {
            let tag = &p[..p.find("/>").expect("polyline is self-closing")];
            let points = attr(tag, "points")
                .unwrap()
                .split_whitespace()
                .map(|xy| {
                    let (x, y) = xy.split_once(',').unwrap();
                    (x.parse().unwrap(), y.parse().unwrap())
                })
                .collect();
            (attr(tag, "stroke").unwrap().to_string(), points)
        })
        .collect()
}

fn hex(c: plotters::style::RGBColor) -> String {
    format!("#{:02X}{:02X}{:02X}", c.0, c.1, c.2)
}

/// The `<figure class="spectrum" ...>` elements: `(opening tag, content)`.
fn spectrum_figures(html: &str) -> Vec<(&str, &str)> {
    html.split("<figure class=\"spectrum\"")
        .skip(1)
        .map(|f| {
            let open_end = f.find('>').unwrap();
            (&f[..open_end], &f[open_end + 1..f.find("</figure>").unwrap()])
        })
        .collect()
}

/// The cut line of a factored layer is vertical, at the x of the last kept singular value: some
/// polyline has exactly `rank` points and ends on it; the discarded part starts on it.
fn assert_cut_at_rank(name: &str, rank: usize, lines: &[(String, Vec<(i32, i32)>)]) {
    let cut_color = hex(CUT_COLOR);
    let cuts: Vec<_> = lines.iter().filter(|(c, _)| *c == cut_color).collect();
    assert_eq!(cuts.len(), 1, "{name}: one cut line");
    let pts = &cuts[0].1;
    assert_eq!(pts.len(), 2, "{name}: the cut is a segment");
    assert_eq!(pts[0].0, pts[1].0, "{name}: the cut is vertical");
    assert_ne!(pts[0].1, pts[1].1, "{name}: the cut has a height");
    let x = pts[0].0;
    let kept: Vec<_> = lines.iter().filter(|(c, p)| *c != cut_color && p.len() == rank).collect();
    assert!(
        kept.iter().any(|(_, p)| p.last().unwrap().0 == x),
        "{name}: no curve of {rank} kept singular values ends at the cut x = {x}"
    );
    assert!(
        lines.iter().any(|(c, p)| *c != cut_color && p.len() > 1 && p[0].0 == x && p.len() != rank),
        "{name}: the discarded part does not start at the cut"
    );
    // The cut is inside the plot: strictly right of the first singular value unless rank 1.
    let first_x = kept.iter().find(|(_, p)| p.last().unwrap().0 == x).unwrap().1[0].0;
    assert_eq!(rank == 1, first_x == x, "{name}: rank {rank} but the cut is at the first value's x");
}

/// Summary cell `id`'s `data-value`.
fn summary_value<'a>(html: &'a str, id: &str) -> &'a str {
    let at = html.find(&format!("<td id=\"{id}\"")).unwrap_or_else(|| panic!("summary has no {id}"));
    attr(&html[at..at + html[at..].find('>').unwrap()], "data-value").unwrap()
}

fn check_html(report: &Report, html: &str) {
    assert!(html.starts_with("<!DOCTYPE html>"));
    assert_well_formed(html);
    // Offline: nothing loaded from anywhere (the only URL is the SVG namespace).
    assert!(!html.contains("<script"), "no scripts");
    for needle in [" src=", " href=", "url(", "@import"] {
        assert!(!html.contains(needle), "the page refers to an external resource ({needle})");
    }
    assert_eq!(html.replace("xmlns=\"http://www.w3.org/2000/svg\"", "").matches("http").count(), 0);

    // One spectrum per layer, in model order, with the cut at the allocated rank.
    let figures = spectrum_figures(html);
    assert_eq!(figures.len(), report.layers.len());
    let cut_color = hex(CUT_COLOR);
    for ((open, content), l) in figures.iter().zip(&report.layers) {
        assert_eq!(attr(open, "data-layer"), Some(l.name.as_str()));
        assert_eq!(attr(open, "data-rank"), Some(l.rank.to_string().as_str()), "{}", l.name);
        assert!(content.starts_with("<svg"), "{}: inline SVG", l.name);
        let lines = polylines(content);
        if l.is_dense() {
            assert!(lines.iter().all(|(c, _)| *c != cut_color), "{}: dense layer with a cut", l.name);
            assert!(lines.iter().any(|(_, p)| p.len() == l.spectrum.len()), "{}: whole spectrum drawn", l.name);
        } else {
            assert!(l.rank >= 1 && l.rank <= l.spectrum.len(), "{}: rank {} within the spectrum", l.name, l.rank);
            assert_cut_at_rank(&l.name, l.rank, &lines);
        }
    }

    // Summary numbers are the report's.
    let (before, after, cost) = report.totals();
    assert_eq!(summary_value(html, "params-before"), before.to_string());
    assert_eq!(summary_value(html, "params-after"), after.to_string());
    assert_eq!(summary_value(html, "budget"), report.budget_params.to_string());
    assert_eq!(summary_value(html, "budget-charged"), format!("{cost:.0}"));
    assert_eq!(summary_value(html, "calibration"), report.calibration_images.to_string());
    let factored = report.layers.iter().filter(|l| !l.is_dense()).count();
    assert_eq!(summary_value(html, "layers"), factored.to_string());
    assert_eq!(summary_value(html, "file-bytes"), "12345");
    assert_eq!(summary_value(html, "seconds"), format!("{:.3}", report.seconds));
    // The four figures and the per-layer table.
    for id in ["fig-ranks", "fig-fractions", "fig-params", "fig-errors"] {
        assert_eq!(html.matches(&format!("id=\"{id}\"")).count(), 1, "{id}");
    }
    assert_eq!(html.matches("<tr><td>blocks.").count(), report.layers.len());
    // Model name from the info, escaped.
    assert!(html.contains("<code>micro &lt;random&gt;</code>"));
}

#[test]
fn html_report_of_a_real_compression() {
    let out = compress(0.3);
    let report = &out.report;
    assert!(report.layers.iter().any(|l| !l.is_dense()), "the budget factors some layers");
    assert!(report.compensation_kept.is_some(), "compensation ran (validation split)");
    for l in &report.layers {
        assert!(!l.spectrum.is_empty(), "{}: spectrum kept", l.name);
        assert!(l.spectrum.windows(2).all(|w| w[0] >= w[1]), "{}: spectrum descending", l.name);
        assert!(l.spectrum.len() > l.max_useful_rank(), "{}: spectrum reaches the largest useful rank", l.name);
    }
    // The JSON report carries the spectra.
    let json: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
    for (j, l) in json["layers"].as_array().unwrap().iter().zip(&report.layers) {
        let s: Vec<f64> = j["spectrum"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        assert_eq!(s.len(), l.spectrum.len(), "{}", l.name);
        // serde_json's default float parsing may differ from the value in the last bit.
        assert!(s.iter().zip(&l.spectrum).all(|(a, b)| (a - b).abs() <= 1e-14 * b.abs()), "{}", l.name);
    }

    let info = ReportInfo { model: Some("micro <random>".into()), file_bytes: Some(12345), ..ReportInfo::default() };
    let html = render_html(report, &info).unwrap();
    check_html(report, &html);

    // write_report writes the same page atomically, and nothing else.
    let tmp = TempDir::new("report-html");
    let path = tmp.join("r.html");
    assert_eq!(write_report(report, &info, &path).unwrap(), vec![path.clone()]);
    assert_eq!(std::fs::read_to_string(&path).unwrap(), html);
    assert_eq!(tmp.entries(), vec!["r.html"]);
}

#[test]
fn html_report_marks_dense_layers() {
    // A generous budget leaves some layers dense (cheaper to keep than to factor at high rank).
    let out = compress(0.9);
    let report = &out.report;
    assert!(report.layers.iter().any(|l| l.is_dense()), "keep 0.9 leaves a layer dense");
    let info = ReportInfo { model: Some("micro <random>".into()), file_bytes: Some(12345), ..ReportInfo::default() };
    check_html(report, &render_html(report, &info).unwrap());
}

#[test]
fn svg_report_writes_one_file_per_figure() {
    let out = compress(0.3);
    let tmp = TempDir::new("report-svg");
    let written = write_report(&out.report, &ReportInfo::default(), &tmp.join("plots.svg")).unwrap();
    let names = ["plots-errors.svg", "plots-params.svg", "plots-ranks.svg", "plots-spectra.svg"];
    assert_eq!(tmp.entries(), names);
    assert_eq!(written.len(), 4);
    for p in &written {
        let svg = std::fs::read_to_string(p).unwrap();
        assert!(svg.starts_with("<svg"), "{}", p.display());
        assert_well_formed(&svg);
    }
    let spectra = std::fs::read_to_string(tmp.join("plots-spectra.svg")).unwrap();
    let cuts = polylines(&spectra).iter().filter(|(c, _)| *c == hex(CUT_COLOR)).count();
    assert_eq!(cuts, out.report.layers.iter().filter(|l| !l.is_dense()).count());
}

#[test]
fn unknown_report_extension_is_refused_before_writing() {
    let out = compress(0.3);
    let tmp = TempDir::new("report-png");
    let err = write_report(&out.report, &ReportInfo::default(), &tmp.join("r.png")).unwrap_err();
    assert!(err.to_string().contains(".html"), "{err}");
    assert!(tmp.entries().is_empty());
}

/// `factorvit compress --report` end to end on the micro model saved as a .fvit file.
#[test]
fn cli_compress_writes_the_report_and_refuses_other_extensions() {
    let tmp = TempDir::new("report-cli");
    let model = tmp.join("micro.fvit");
    std::fs::write(&model, writer::to_bytes(&random_vit_spec(&SyntheticVit::micro(), 7).unwrap()).unwrap()).unwrap();
    let calib = Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/fmnist-calib.safetensors");
    let out = tmp.join("out.fvit");
    let run = |report: &Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_factorvit"))
            .args(["compress", "--model", model.to_str().unwrap(), "--calib", calib.to_str().unwrap()])
            .args(["--calib-count", "32", "--sensitivity-images", "8", "--keep", "0.3", "--threads", "1"])
            .args(["-o", out.to_str().unwrap(), "--report", report.to_str().unwrap()])
            .output()
            .expect("run factorvit")
    };

    // A usage error before any work: exit 2, nothing written.
    let refused = run(&tmp.join("r.png"));
    assert_eq!(refused.status.code(), Some(2), "{}", String::from_utf8_lossy(&refused.stderr));
    assert!(String::from_utf8_lossy(&refused.stderr).contains(".html"));
    assert_eq!(tmp.entries(), vec!["micro.fvit"]);

    // The page goes into a directory that does not exist yet.
    let page = tmp.join("pictures/r.html");
    let o = run(&page);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains(&format!("wrote {}", page.display())));
    let html = std::fs::read_to_string(&page).unwrap();
    assert_well_formed(&html);
    let file_bytes = std::fs::metadata(&out).unwrap().len();
    assert_eq!(summary_value(&html, "file-bytes"), file_bytes.to_string());
    let params = Model::from_vec(std::fs::read(&out).unwrap()).unwrap().params();
    assert_eq!(summary_value(&html, "model-params"), params.to_string());
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(tmp.join("out.fvit.report.json")).unwrap()).unwrap();
    assert_eq!(summary_value(&html, "params-after"), json["params_after"].to_string());
    assert_eq!(spectrum_figures(&html).len(), json["layers"].as_array().unwrap().len());
}
