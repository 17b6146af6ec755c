"""The Python example of docs/FORMAT.md, verbatim except for the sizes and output path, which
come from the command line. It proves the format can be written with numpy + safetensors alone;
the runtime's tests load its output.

    python3 tests/python/write_fvit.py OUT [--tiny]
"""
import sys
import json, numpy as np
from safetensors.numpy import save_file

D, C, P, M, K, L, heads, grid = (8, 3, 4, 16, 3, 1, 2, (2, 2)) if "--tiny" in sys.argv else (64, 3, 8, 256, 10, 2, 4, (4, 4))
rng = np.random.default_rng(0)
f16 = lambda *s: (rng.standard_normal(s) / np.sqrt(s[-1])).astype(np.float16)
t = {"patch_embed.weight": f16(D, C, P, P), "patch_embed.bias": np.zeros(D, np.float32),
     "cls_token": f16(1, 1, D), "pos_embed": f16(1, 1 + grid[0] * grid[1], D),
     "norm.weight": np.ones(D, np.float32), "norm.bias": np.zeros(D, np.float32),
     "head.weight": f16(K, D), "head.bias": np.zeros(K, np.float32)}
layers = {"head": {"kind": "dense"}}
for i in range(L):
    b = f"blocks.{i}."
    for n in ("norm1", "norm2"):
        t[b + n + ".weight"], t[b + n + ".bias"] = np.ones(D, np.float32), np.zeros(D, np.float32)
    t[b + "attn.qkv.weight"], t[b + "attn.qkv.bias"] = f16(3 * D, D), np.zeros(3 * D, np.float32)
    t[b + "attn.proj.weight"] = f16(D, D)
    r = 4 if D < 16 else 16                                  # fc1 as a rank-16 product
    t[b + "mlp.fc1.u"], t[b + "mlp.fc1.v"] = f16(M, r), f16(r, D)
    layers.update({b + "attn.qkv": {"kind": "dense"}, b + "attn.proj": {"kind": "dense"},
                   b + "mlp.fc1": {"kind": "low_rank", "rank": r}, b + "mlp.fc2": {"kind": "dense"}})
    if i == 0:                               # fc2 as a rank-8 product plus a CSR sparse term
        r2, per_row = (2 if D < 16 else 8), 3
        t[b + "mlp.fc2.u"], t[b + "mlp.fc2.v"] = f16(D, r2), f16(r2, M)
        cols = np.sort(np.stack([rng.choice(M, per_row, replace=False) for _ in range(D)]), 1)
        t[b + "mlp.fc2.sparse.row_ptr"] = np.arange(D + 1, dtype=np.uint32) * per_row
        t[b + "mlp.fc2.sparse.col_idx"] = cols.ravel().astype(np.uint16)   # M <= 65536
        t[b + "mlp.fc2.sparse.values"] = rng.standard_normal(D * per_row).astype(np.float16)
        layers[b + "mlp.fc2"] = {"kind": "low_rank_sparse", "rank": r2, "nnz": D * per_row}
    else:
        t[b + "mlp.fc2.weight"] = f16(D, M)
config = dict(architecture="example", image_size=[grid[0] * P, grid[1] * P], patch_size=P, in_chans=C, embed_dim=D,
              depth=L, num_heads=heads, mlp_hidden=M, layer_norm_eps=1e-6, class_token=True,
              dist_token=False, pos_embed_prefix=1, pos_embed_grid=list(grid),
              pos_interpolation="bicubic", layer_scale=False, final_norm=True, global_pool="token",
              fc_norm=False, head="linear", num_classes=K)
pre = dict(input_size=[C, grid[0] * P, grid[1] * P], mean=[0.5] * 3, std=[0.5] * 3, interpolation="bicubic",
           crop_pct=1.0, crop_mode="center")
meta = {"format": "factorvit", "format_version": "1", "config": json.dumps(config),
        "preprocess": json.dumps(pre), "labels": json.dumps([f"class {i}" for i in range(K)]),
        "layers": json.dumps(layers)}
# Optional integrity entry: CRC-32 (zlib) of every tensor's bytes and of the other metadata.
import zlib, struct
def meta_crc(meta):
    c = 0
    for k in sorted(meta):   # code-point order = UTF-8 byte order
        kb, vb = k.encode(), meta[k].encode()
        c = zlib.crc32(struct.pack("<Q", len(kb)) + kb + struct.pack("<Q", len(vb)) + vb, c)
    return c
meta["checksums"] = json.dumps({"algorithm": "crc32", "metadata": f"{meta_crc(meta):08x}",
    "tensors": {n: f"{zlib.crc32(np.ascontiguousarray(a).astype(a.dtype.newbyteorder('<')).tobytes()):08x}"
                for n, a in t.items()}})
save_file(t, sys.argv[1], metadata=meta)
