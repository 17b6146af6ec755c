//! The smallest embedding of the runtime: open a model, run one image, print the top class.
//!
//! ```text
//! cargo run --release -p factorvit --example classify -- MODEL.fvit IMAGE.pgm
//! ```
//!
//! `IMAGE` is a binary PGM (P5, grey) or PPM (P6, RGB) of exactly the model's input size (for
//! example a 28×28 Fashion-MNIST image from `examples/c/images/`); pixels are normalised with
//! the model's own mean and std. The C equivalent is `examples/c/classify.c`.

use factorvit::{Model, SessionOptions};

fn main() -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [model_path, image_path] = &args[..] else {
        return Err("usage: classify MODEL.fvit IMAGE.pgm".into());
    };
    // Memory-maps the file (zero copy); without the `std` feature, read it into a Vec instead.
    #[cfg(feature = "std")]
    let model = Model::open(model_path).map_err(|e| e.to_string())?;
    #[cfg(not(feature = "std"))]
    let model = Model::from_vec(std::fs::read(model_path).map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;

    let p = model.preprocess();
    let [c, h, w] = p.input_size;
    let raw = std::fs::read(image_path).map_err(|e| format!("{image_path}: {e}"))?;
    let header = format!("P{}\n{w} {h}\n255\n", if c == 1 { 5 } else { 6 });
    let pixels = raw
        .strip_prefix(header.as_bytes())
        .filter(|px| px.len() == c * h * w)
        .ok_or_else(|| format!("{image_path}: expected a {w}x{h} {c}-channel binary PNM with a plain header"))?;
    // Interleaved HWC bytes to normalised planar CHW floats.
    let mut input = vec![0.0f32; c * h * w];
    for (i, &v) in pixels.iter().enumerate() {
        let ch = i % c;
        input[ch * h * w + i / c] = (f32::from(v) / 255.0 - p.mean[ch]) / p.std[ch];
    }

    let mut session = model.session(SessionOptions::default()).map_err(|e| e.to_string())?;
    let out = session.run(&input).map_err(|e| e.to_string())?;
    let logits = out.logits.ok_or("the model has no classifier head")?;
    let best = (0..logits.len()).fold(0, |b, k| if logits[k] > logits[b] { k } else { b });
    let label = model.labels().get(best).map_or("", String::as_str);
    println!("{image_path}: class {best} \"{label}\" logit {:.4}", logits[best]);
    Ok(())
}
