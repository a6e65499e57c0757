"""Benchmark the networks: CPU forward-pass throughput (patches/s) and FLOPs per patch, plus the graph builder's rate.

    python benchmarks/nets.py                                  # every network, batch 256, 3 timed batches
    python benchmarks/nets.py --networks msmla18 sen2lcz --batches 5 --json nets.json

Throughput: `model.predict_on_batch` on random inputs at the network's default (paper) input shape, one
warm-up batch (tracing/compilation) then --batches timed batches, on whatever Keras backend is configured.
FLOPs are counted analytically from the built model's layer shapes: 2 x multiply-accumulates of every
convolution, dense layer and graph-convolution matmul (padded to 50 nodes); batch norm, activations, pooling and
attention products are elementwise and left out (they add well under 1 %).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time

import numpy as np


def layer_flops(layer, node) -> int:
    """FLOPs of one call of a layer (one patch), from its input/output shapes."""
    import keras

    from lczmap.nets.layers import GCSConv

    inputs = [t.shape for t in node.input_tensors]
    output = node.output_tensors[0].shape
    if isinstance(layer, keras.layers.Conv2D | keras.layers.Conv3D):
        return 2 * math.prod(layer.kernel_size) * inputs[0][-1] * layer.filters * math.prod(output[1:-1])
    if isinstance(layer, keras.layers.Dense):
        return 2 * inputs[0][-1] * layer.units * math.prod(inputs[0][1:-1])
    if isinstance(layer, GCSConv):
        nodes, features = inputs[0][1], inputs[0][2]
        # X W1 and X W2, then the (N x N) normalised adjacency times X W1.
        return 2 * (2 * nodes * features * layer.units + nodes * nodes * layer.units)
    return 0


def model_flops(model) -> int:
    """FLOPs per patch of a functional model, nested stream models included (each layer call counted)."""
    import keras

    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            total += model_flops(layer)
        else:
            total += sum(layer_flops(layer, node) for node in layer._inbound_nodes)
    return total


def random_inputs(name: str, shape: tuple[int, ...], batch: int, rng: np.random.Generator):
    graphs = {
        "x": rng.random((batch, 50, 5), dtype=np.float32),
        "a": np.broadcast_to(1 - np.eye(50, dtype=np.float32), (batch, 50, 50)).copy(),
        "mask": (np.arange(50)[None] < rng.integers(5, 51, (batch, 1))).astype(np.float32),
    }
    if name == "df4lcz_gcn":
        return graphs
    patches = rng.normal(size=(batch, *shape)).astype(np.float32)
    return {"s2": patches, **graphs} if name == "df4lcz" else patches


def time_network(name: str, batch: int, batches: int) -> dict:
    from lczmap.nets import NETWORKS, build

    shape = NETWORKS[name].default_shape
    model = build(name, shape)
    inputs = random_inputs(name, shape, batch, np.random.default_rng(0))
    model.predict_on_batch(inputs)  # warm-up: traces and compiles
    t0 = time.perf_counter()
    for _ in range(batches):
        probs = model.predict_on_batch(inputs)
    seconds = time.perf_counter() - t0
    assert np.allclose(probs.sum(axis=1), 1, atol=1e-4)
    return {"network": name, "input_shape": list(shape), "params": int(model.count_params()),
            "gflops_per_patch": model_flops(model) / 1e9, "patches_per_s": batch * batches / seconds}


def time_graphs(n_patches: int, size: int = 160) -> dict:
    """build_graphs (default segmenter) on drawn 160 px RGB patches with 9-25 coloured blocks."""
    from lczmap.nets.graphs import build_graphs

    rng = np.random.default_rng(0)
    patches = np.full((n_patches, size, size, 3), 200.0)
    for p in patches:
        for _ in range(rng.integers(9, 26)):
            r, c = rng.integers(0, size - 20, 2)
            p[r:r + rng.integers(10, 40), c:c + rng.integers(10, 40)] = rng.integers(0, 255, 3)
    patches = np.clip(patches + rng.normal(0, 6, patches.shape), 0, 255).astype(np.uint8)
    t0 = time.perf_counter()
    graphs = build_graphs(patches)
    seconds = time.perf_counter() - t0
    return {"patches_per_s": n_patches / seconds, "mean_nodes": float(graphs.n_nodes.mean())}


def main() -> None:
    from lczmap.nets import NETWORKS

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--networks", nargs="+", default=list(NETWORKS), choices=list(NETWORKS))
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--batches", type=int, default=3, help="timed batches after one warm-up batch")
    parser.add_argument("--graph-patches", type=int, default=64, help="patches for the graph builder timing (0: skip)")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()

    import keras

    rows = [time_network(name, args.batch_size, args.batches) for name in args.networks]
    graphs = time_graphs(args.graph_patches) if args.graph_patches else None
    print(f"Keras {keras.__version__}, backend {keras.backend.backend()}, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}, batch {args.batch_size}, {args.batches} timed batches")
    print("| network | input | params | GFLOPs/patch | patches/s |\n|---|---|---:|---:|---:|")
    for r in rows:
        shape = "x".join(map(str, r["input_shape"]))
        print(f"| {r['network']} | {shape} | {r['params']:,} | {r['gflops_per_patch']:.3f} | {r['patches_per_s']:.1f} |")
    if graphs:
        print(f"\nSegment graphs (160 px RGB -> 320 px, merged SLIC): {graphs['patches_per_s']:.1f} patches/s, "
              f"{graphs['mean_nodes']:.1f} nodes on average")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"networks": rows, "graphs": graphs, "batch_size": args.batch_size, "batches": args.batches,
                       "backend": keras.backend.backend()}, f, indent=2)


if __name__ == "__main__":
    main()
