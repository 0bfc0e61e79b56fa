"""The reference for ``lorareg resize``: a bare numpy factor-space resize of a kohya LoRA, nothing else.

    python benchmarks/resize_sketch.py IN.safetensors OUT.safetensors RANK [--errors ERRORS.npy]

Per module, for dW = U D (U [out, r], D [r, in]): Cholesky of the small Gram matrices U^T U = Lu Lu^T and
D D^T = Ld Ld^T, so U Lu^-T and Ld^-1 D have orthonormal columns/rows and dW = (U Lu^-T) (Lu^T Ld) (Ld^-1 D);
one r x r SVD of the core gives the best rank-k factors (Eckart-Young), in float32. alpha is rescaled so
each module keeps its scale (alpha / r), as kohya's resize_lora.py and lorareg do. No checks, no record,
no hashes, no verify: the floor that benchmarks/ops.py measures lorareg against.
"""

import os
import sys

# benchmarks/inspect.py would shadow the standard library's inspect (numpy imports it): keep this folder off the path.
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(os.path.abspath(__file__))]

import numpy as np  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.numpy import save_file  # noqa: E402


def resize_module(up, down, rank):
    """(new_up, new_down, relative Frobenius error) of the best rank-``rank`` approximation of up @ down."""
    u = up.reshape(up.shape[0], -1).astype(np.float32)
    d = down.reshape(down.shape[0], -1).astype(np.float32)
    lu = np.linalg.cholesky(u.T @ u)
    ld = np.linalg.cholesky(d @ d.T)
    a, s, bt = np.linalg.svd(lu.T @ ld)
    root = np.sqrt(s[:rank])
    mix_up = np.linalg.solve(lu.T, a[:, :rank]) * root  # U @ mix_up = (U Lu^-T) A_k sqrt(S_k)
    mix_down = np.linalg.solve(ld.T, bt[:rank].T * root).T  # mix_down @ D = sqrt(S_k) B_k^T (Ld^-1 D)
    new_up = (u @ mix_up).reshape(up.shape[0], rank, *up.shape[2:])
    new_down = (mix_down @ d).reshape(rank, *down.shape[1:])
    error = float(np.sqrt(np.sum(s[rank:] ** 2) / np.sum(s**2)))
    return new_up.astype(up.dtype), new_down.astype(down.dtype), error


def main(argv):
    source, target, rank = argv[0], argv[1], int(argv[2])
    out, errors = {}, []
    with safe_open(source, "numpy") as f:
        metadata = f.metadata() or {}
        names = list(f.keys())
        for name in names:
            if not name.endswith(".lora_down.weight"):
                continue
            stem = name[: -len(".lora_down.weight")]
            down, up = f.get_tensor(name), f.get_tensor(stem + ".lora_up.weight")
            old = down.shape[0]
            new_up, new_down, error = resize_module(up, down, min(rank, old))
            out[stem + ".lora_up.weight"], out[name] = new_up, new_down
            if stem + ".alpha" in names:
                alpha = f.get_tensor(stem + ".alpha")
                out[stem + ".alpha"] = np.asarray(float(alpha) / old * new_down.shape[0], dtype=alpha.dtype)
            errors.append(error)
    save_file(out, target, metadata={**metadata, "ss_network_dim": str(rank)})
    if "--errors" in argv:
        np.save(argv[argv.index("--errors") + 1], np.array(errors))
    print(f"{len(errors)} modules, max relative error {max(errors):.6f}")


if __name__ == "__main__":
    main(sys.argv[1:])
