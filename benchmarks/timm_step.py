"""One ``BasePruner.step()`` on a timm ViT of growing depth: the step and the timm attention sync inside it.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/timm_step.py --depths 12 24 48
    OMP_NUM_THREADS=1 python benchmarks/timm_step.py --depths 12 --profile   # pyinstrument tree of the step

ViT-B/16 (embed 768, 12 heads, 224x224, random weights) with ``depth`` blocks; the pruner removes
half the head dims and a quarter of the heads of every block and half of each MLP (the residual
stream is kept). Reported: CPU seconds of the step (``time.thread_time``, 1 thread, best of
``--repeats`` fresh models), of the ``AttentionSync`` calls inside it (per-group calls plus the
step's flush), the number of calls, and a fingerprint (sha256 of the pruned ``state_dict`` and the
attention modules' size attributes) to compare runs of different code.
"""

from __future__ import annotations

import argparse
import hashlib
import time

import torch

import depgraph as tp
from depgraph.integrations import timm as timm_sync


def build(depth: int, seed: int = 0):
    import timm

    torch.manual_seed(seed)
    model = timm.create_model("vit_base_patch16_224", pretrained=False, depth=depth).eval()
    return model, torch.randn(1, 3, 224, 224)


def pruner_for(model, x, steps: int = 1) -> tp.pruner.BasePruner:
    return tp.pruner.BasePruner(
        model, x, tp.importance.GroupMagnitudeImportance(p=2), pruning_ratio=0.5, iterative_steps=steps,
        prune_num_heads=True, head_pruning_ratio=0.25, ignored_layers=[model.head, model.patch_embed],
    )


def fingerprint(model) -> str:
    h = hashlib.sha256()
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(str(tuple(v.shape)).encode())
        h.update(v.detach().contiguous().numpy().tobytes())
    for name, m in model.named_modules():
        if type(m).__name__ == "Attention":
            attrs = {k: vars(m)[k] for k in ("num_heads", "head_dim", "attn_dim", "scale") if k in vars(m)}
            h.update(f"{name}{sorted(attrs.items())}".encode())
    return h.hexdigest()[:16]


class _Timed:
    """Wraps AttentionSync.__call__ (and flush, where present) to sum their CPU time."""

    def __init__(self) -> None:
        self.seconds, self.calls = 0.0, 0
        self._orig = {}

    def __enter__(self):
        for name in ("__call__", "flush"):
            orig = getattr(timm_sync.AttentionSync, name, None)
            if orig is None:
                continue
            self._orig[name] = orig

            def timed(hook, *args, _orig=orig, **kwargs):
                t0 = time.thread_time()
                try:
                    return _orig(hook, *args, **kwargs)
                finally:
                    self.seconds += time.thread_time() - t0
                    self.calls += 1

            setattr(timm_sync.AttentionSync, name, timed)
        return self

    def __exit__(self, *exc):
        for name, orig in self._orig.items():
            setattr(timm_sync.AttentionSync, name, orig)


def run(depth: int, repeats: int, profile: bool) -> dict:
    best = None
    for _ in range(repeats):
        model, x = build(depth)
        pruner = pruner_for(model, x)
        with _Timed() as timed:
            if profile:
                from pyinstrument import Profiler

                prof = Profiler(interval=0.0005)
                prof.start()
            t0 = time.thread_time()
            pruner.step()
            step = time.thread_time() - t0
            if profile:
                prof.stop()
                print(prof.output_text(unicode=False, color=False, show_all=False))
        row = {"depth": depth, "step_s": step, "sync_s": timed.seconds, "sync_calls": timed.calls,
               "groups": len(pruner.pruning_history()), "fingerprint": fingerprint(model)}
        if best is None or row["step_s"] < best["step_s"]:
            best = row
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--depths", type=int, nargs="+", default=[12, 24, 48])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    print("| depth | groups | step s | sync s | sync calls | fingerprint |")
    print("|--:|--:|--:|--:|--:|---|")
    for d in args.depths:
        r = run(d, args.repeats, args.profile)
        print(f"| {r['depth']} | {r['groups']} | {r['step_s']:.3f} | {r['sync_s']:.3f} | {r['sync_calls']} | "
              f"{r['fingerprint']} |", flush=True)


if __name__ == "__main__":
    main()
