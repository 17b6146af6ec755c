#!/usr/bin/env python3
"""Writes a DeiT perf checkpoint (timm layout) and its ONNX export for the speed comparison with
ONNX Runtime (`scripts/bench-vs-onnxruntime.sh`), under target/perf/ by default.

    python3 scripts/make_perf_checkpoint.py [--arch deit_small_patch16_224] [--out target/perf] [--batch 8]

Writes OUT/ARCH/{config.json, model.safetensors, model.onnx, model_b8.onnx (with --batch 8),
input.safetensors, expected.safetensors, README.txt}, the same files as ../shared/perf/deit_tiny_*.

With torch + timm installed (`pip install torch timm onnx onnxruntime`) the model is
`timm.create_model(ARCH, pretrained=False)` after `torch.manual_seed(0)`, exported by
`torch.onnx.export` (opset 17). Without them (the default here: torch is a multi-GB install)
the weights are drawn with numpy (seed 0, timm's init: N(0, 0.02) weights, zero biases, unit
norms) and the ONNX graph is written op by op with the `onnx` package in the pattern
torch.onnx.export produces for timm's ViT (Conv, LayerNormalization, MatMul + Add, Reshape /
Transpose per head, Softmax, Erf GELU), so ONNX Runtime applies the same fusions. Either way
expected.safetensors holds the logits of a float64 numpy reference forward pass, and the script
checks ONNX Runtime against it (max abs diff <= 1e-4).
"""
import argparse, json, os, sys

import numpy as np

ARCHS = {
    # name: (embed_dim, depth, heads)
    "deit_tiny_patch16_224": (192, 12, 3),
    "deit_small_patch16_224": (384, 12, 6),
    "deit_base_patch16_224": (768, 12, 12),
}
PATCH, IMG, CLASSES, EPS = 16, 224, 1000, 1e-6


def numpy_weights(arch, seed=0):
    d, depth, _ = ARCHS[arch]
    rng = np.random.default_rng(seed)
    w = lambda *s: (rng.standard_normal(s) * 0.02).astype(np.float32)
    z = lambda n: np.zeros(n, np.float32)
    t = (IMG // PATCH) ** 2 + 1
    sd = {
        "cls_token": (rng.standard_normal((1, 1, d)) * 1e-6).astype(np.float32),
        "pos_embed": w(1, t, d),
        "patch_embed.proj.weight": w(d, 3, PATCH, PATCH),
        "patch_embed.proj.bias": (rng.uniform(-0.036, 0.036, d)).astype(np.float32),
        "norm.weight": np.ones(d, np.float32),
        "norm.bias": z(d),
        "head.weight": w(CLASSES, d),
        "head.bias": z(CLASSES),
    }
    for i in range(depth):
        p = f"blocks.{i}."
        sd.update({
            p + "norm1.weight": np.ones(d, np.float32), p + "norm1.bias": z(d),
            p + "attn.qkv.weight": w(3 * d, d), p + "attn.qkv.bias": z(3 * d),
            p + "attn.proj.weight": w(d, d), p + "attn.proj.bias": z(d),
            p + "norm2.weight": np.ones(d, np.float32), p + "norm2.bias": z(d),
            p + "mlp.fc1.weight": w(4 * d, d), p + "mlp.fc1.bias": z(4 * d),
            p + "mlp.fc2.weight": w(d, 4 * d), p + "mlp.fc2.bias": z(d),
        })
    return sd


def reference_logits(arch, sd, x):
    """float64 forward pass of timm's VisionTransformer (class token, pre-norm blocks)."""
    from math import erf, sqrt
    d, depth, heads = ARCHS[arch]
    g = {k: v.astype(np.float64) for k, v in sd.items()}
    x = x.astype(np.float64)
    b = x.shape[0]
    n = IMG // PATCH
    patches = x.reshape(b, 3, n, PATCH, n, PATCH).transpose(0, 2, 4, 1, 3, 5).reshape(b, n * n, -1)
    h = patches @ g["patch_embed.proj.weight"].reshape(d, -1).T + g["patch_embed.proj.bias"]
    h = np.concatenate([np.broadcast_to(g["cls_token"], (b, 1, d)), h], 1) + g["pos_embed"]
    verf = np.vectorize(erf)

    def ln(v, p):
        mu = v.mean(-1, keepdims=True)
        var = ((v - mu) ** 2).mean(-1, keepdims=True)
        return (v - mu) / np.sqrt(var + EPS) * g[p + ".weight"] + g[p + ".bias"]

    dh = d // heads
    for i in range(depth):
        p = f"blocks.{i}."
        y = ln(h, p + "norm1")
        qkv = (y @ g[p + "attn.qkv.weight"].T + g[p + "attn.qkv.bias"]).reshape(b, -1, 3, heads, dh)
        q, k, v = qkv.transpose(2, 0, 3, 1, 4)
        s = q @ k.transpose(0, 1, 3, 2) / sqrt(dh)
        s = np.exp(s - s.max(-1, keepdims=True))
        s /= s.sum(-1, keepdims=True)
        o = (s @ v).transpose(0, 2, 1, 3).reshape(b, -1, d)
        h = h + o @ g[p + "attn.proj.weight"].T + g[p + "attn.proj.bias"]
        y = ln(h, p + "norm2")
        y = y @ g[p + "mlp.fc1.weight"].T + g[p + "mlp.fc1.bias"]
        y = 0.5 * y * (1 + verf(y / sqrt(2)))
        h = h + y @ g[p + "mlp.fc2.weight"].T + g[p + "mlp.fc2.bias"]
    h = ln(h, "norm")
    return (h[:, 0] @ g["head.weight"].T + g["head.bias"]).astype(np.float32)


def onnx_graph(arch, sd, batch):
    """The ONNX graph torch.onnx.export writes for timm's ViT, op for op (static batch)."""
    import onnx
    from onnx import helper as oh, numpy_helper as nh, TensorProto
    d, depth, heads = ARCHS[arch]
    dh, t = d // heads, (IMG // PATCH) ** 2 + 1
    nodes, inits = [], []
    counter = [0]

    def name(base):
        counter[0] += 1
        return f"{base}_{counter[0]}"

    def const(arr, base="c"):
        nm = name(base)
        inits.append(nh.from_array(np.asarray(arr), nm))
        return nm

    def op(kind, inputs, **attrs):
        out = name(kind.lower())
        nodes.append(oh.make_node(kind, inputs, [out], **attrs))
        return out

    def linear(x, p):
        y = op("MatMul", [x, const(sd[p + ".weight"].T.copy(), p + ".wT")])
        return op("Add", [const(sd[p + ".bias"], p + ".b"), y])

    x = op("Conv", ["pixel_values", const(sd["patch_embed.proj.weight"]), const(sd["patch_embed.proj.bias"])],
           kernel_shape=[PATCH, PATCH], strides=[PATCH, PATCH])
    x = op("Reshape", [x, const(np.array([batch, d, -1], np.int64))])
    x = op("Transpose", [x], perm=[0, 2, 1])
    cls = op("Expand", [const(sd["cls_token"]), const(np.array([batch, 1, d], np.int64))])
    x = op("Concat", [cls, x], axis=1)
    x = op("Add", [x, const(sd["pos_embed"])])
    scale = const(np.array(dh ** -0.25, np.float32))  # SDPA export: q and k each scaled by scale^1/2
    for i in range(depth):
        p = f"blocks.{i}."
        y = op("LayerNormalization", [x, const(sd[p + "norm1.weight"]), const(sd[p + "norm1.bias"])], axis=-1, epsilon=EPS)
        qkv = linear(y, p + "attn.qkv")
        qkv = op("Reshape", [qkv, const(np.array([batch, t, 3, heads, dh], np.int64))])
        qkv = op("Transpose", [qkv], perm=[2, 0, 3, 1, 4])
        q, k, v = (op("Gather", [qkv, const(np.array(j, np.int64))], axis=0) for j in range(3))
        q = op("Mul", [q, scale])
        kt = op("Transpose", [k], perm=[0, 1, 3, 2])
        kt = op("Mul", [kt, scale])
        s = op("Softmax", [op("MatMul", [q, kt])], axis=-1)
        o = op("MatMul", [s, v])
        o = op("Transpose", [o], perm=[0, 2, 1, 3])
        o = op("Reshape", [o, const(np.array([batch, t, d], np.int64))])
        x = op("Add", [x, linear(o, p + "attn.proj")])
        y = op("LayerNormalization", [x, const(sd[p + "norm2.weight"]), const(sd[p + "norm2.bias"])], axis=-1, epsilon=EPS)
        y = linear(y, p + "mlp.fc1")
        e = op("Erf", [op("Div", [y, const(np.array(np.sqrt(2.0), np.float32))])])
        y = op("Mul", [op("Mul", [y, op("Add", [e, const(np.array(1.0, np.float32))])]), const(np.array(0.5, np.float32))])
        x = op("Add", [x, linear(y, p + "mlp.fc2")])
    x = op("LayerNormalization", [x, const(sd["norm.weight"]), const(sd["norm.bias"])], axis=-1, epsilon=EPS)
    x = op("Gather", [x, const(np.array(0, np.int64))], axis=1)
    nodes.append(oh.make_node("Gemm", [x, const(sd["head.weight"]), const(sd["head.bias"])], ["logits"], transB=1))
    graph = oh.make_graph(
        nodes, arch, [oh.make_tensor_value_info("pixel_values", TensorProto.FLOAT, [batch, 3, IMG, IMG])],
        [oh.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, CLASSES])], inits)
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)], producer_name="factorvit make_perf_checkpoint.py")
    onnx.checker.check_model(model)
    return model


def config(arch):
    d = ARCHS[arch][0]
    return {
        "architecture": arch, "num_classes": CLASSES, "num_features": d, "global_pool": "token",
        "model_args": {"in_chans": 3, "num_classes": CLASSES, "global_pool": "token", "img_size": [IMG, IMG]},
        "pretrained_cfg": {
            "tag": "fb_in1k", "custom_load": False, "input_size": [3, IMG, IMG], "fixed_input_size": True,
            "interpolation": "bicubic", "crop_pct": 0.9, "crop_mode": "center",
            "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "num_classes": CLASSES,
            "pool_size": None, "first_conv": "patch_embed.proj", "classifier": "head", "license": "apache-2.0",
        },
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="deit_small_patch16_224", choices=sorted(ARCHS))
    ap.add_argument("--out", default="target/perf")
    ap.add_argument("--batch", type=int, default=8, help="also export a static batch-N ONNX (0: none)")
    a = ap.parse_args()
    import onnx
    import onnxruntime as ort
    from safetensors.numpy import save_file, load_file

    out = os.path.join(a.out, a.arch)
    os.makedirs(out, exist_ok=True)
    try:
        import torch, timm  # noqa: F401
        have_torch = True
    except ImportError:
        have_torch = False
    if have_torch:
        torch.manual_seed(0)
        model = timm.create_model(a.arch, pretrained=False).eval()
        sd = {k: v.detach().numpy().astype(np.float32) for k, v in model.state_dict().items()}
        how = f"timm {timm.__version__} create_model('{a.arch}', pretrained=False) after torch.manual_seed(0); ONNX by torch.onnx.export (opset 17)"
    else:
        sd = numpy_weights(a.arch)
        how = "numpy weights (seed 0, timm init: N(0, 0.02) weights, zero biases, unit norms); ONNX graph written op by op (torch.onnx.export's pattern, opset 17)"
    save_file(sd, os.path.join(out, "model.safetensors"))
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(config(a.arch), f, indent=2)
    x = np.random.default_rng(1).standard_normal((1, 3, IMG, IMG)).astype(np.float32)
    save_file({"pixel_values": x}, os.path.join(out, "input.safetensors"))
    ref = reference_logits(a.arch, sd, x)
    save_file({"logits": ref}, os.path.join(out, "expected.safetensors"))
    exports = [(1, "model.onnx")] + ([(a.batch, f"model_b{a.batch}.onnx")] if a.batch > 1 else [])
    diffs = []
    for batch, fname in exports:
        path = os.path.join(out, fname)
        if have_torch:
            torch.onnx.export(model, (torch.zeros(batch, 3, IMG, IMG),), path, opset_version=17, dynamo=False,
                              input_names=["pixel_values"], output_names=["logits"])
        else:
            onnx.save(onnx_graph(a.arch, sd, batch), path)
        s = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        xb = np.repeat(x, batch, 0)
        o = s.run(None, {"pixel_values": xb})[0]
        diff = float(np.abs(o - ref).max())
        diffs.append(f"{fname}: onnxruntime {ort.__version__} max abs diff vs reference {diff:.2e}")
        if diff > 1e-4:
            sys.exit(f"{fname}: onnxruntime differs from the reference by {diff:.2e} (> 1e-4)")
    with open(os.path.join(out, "README.txt"), "w") as f:
        f.write(f"Written by scripts/make_perf_checkpoint.py --arch {a.arch}: {how}.\n"
                f"input.safetensors: pixel_values [1,3,{IMG},{IMG}] = numpy default_rng(1) standard normal; "
                f"expected.safetensors: logits of a float64 numpy forward pass.\n" + "\n".join(diffs) + "\n")
    print(f"wrote {out}: " + "; ".join(diffs))


if __name__ == "__main__":
    main()
