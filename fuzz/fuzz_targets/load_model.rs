//! Loads arbitrary bytes as a factorvit model; when they validate and the model is small, runs
//! it. Any panic, out-of-bounds access or abort is a bug: bad files must give typed errors.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(model) = factorvit::Model::from_bytes(data) else { return };
    let c = model.config();
    let [h, w] = c.image_size;
    let tokens = c.tokens_for(h, w);
    // Keep each execution cheap: a valid model must carry its weights, so sizes are bounded by
    // the input, but the image can still be large for a tiny patch.
    if tokens * c.embed_dim.max(c.mlp_hidden) > 1 << 16 || c.in_chans * h * w > 1 << 16 {
        return;
    }
    let Ok(mut session) = model.session(factorvit::SessionOptions::default()) else { return };
    let pixels = vec![0.5f32; c.in_chans * h * w];
    let _ = session.run(&pixels);
});
