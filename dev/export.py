#!/usr/bin/python3
"""Exports a train_phd model checkpoint as a PyTorch file.

    /usr/bin/python3 dev/export.py out/kjv/model_00000300.bin kjv.pt

OUT.pt is one dict, read by torch.load (weights_only=True is enough: it holds only dicts,
strings, ints and tensors):

    {"config": {"variant": "phd-cswa-2-16-32", "kind": "phd-cswa", "K": 2, "W": 16, "C": 32,
                "V": 50257, "Vp": 50304, "L": 4, "D": 128, "H": 4, "Hkv": 4, "F": 341,
                "maxT": 64, "params": P},
     "state_dict": {"E": (Vp, D), "layer0.g_attn": (D,), "layer0.wq": (H*hd, D), ...,
                    "g_final": (D,), "wout": (Vp, D)}}

The tensors are the checkpoint's float32 values bit for bit, named, ordered and shaped as
param_tensors() in model.h (matrices (out, in), so y = x @ w.T; the norm gains as vectors).
E and wout keep all Vp rows, rows V..Vp-1 being zero as in the checkpoint, so that the state
dict is the file one to one; config["V"] says how many are real. Slice logits to [:V]
before a softmax or an argmax: the padded columns are 0, not -inf. What the weights compute
(row layout of the K copies, visibility, RoPE, RMSNorm, SwiGLU) is the method, model.h §2-§9;
dev/phd_reference.py's load_export() and forward() run it, and
`phd_reference.py generate OUT.pt` continues a prompt greedily.

The checkpoint format is data/checkpoint.h's: a header of 256 little-endian int32 (magic
20261124, version 1, the config block in header[2..15]) and then P float32. A file that is
not such a checkpoint gets one line `error: ...` and exit status 1; OUT.pt is written to
OUT.pt.tmp and renamed, so it is never left half-written.
"""
import math
import os
import struct
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from phd_config import make_config, param_shapes  # noqa: E402 (after the path)


def need_torch():
    """torch, imported once a checkpoint has passed its checks: a bad file is refused without it."""
    try:
        import torch
    except ImportError as e:
        sys.exit(f"error: {e} (run with /usr/bin/python3, Debian's python3-torch)")
    return torch

MAGIC, VERSION = 20261124, 1
# Other files of the engine that share the header, named in the error for a wrong magic.
OTHER_MAGICS = {20261125: "a training state (state_*.bin), not a model checkpoint",
                20261126: "a debug state (--dump-state), not a model checkpoint",
                20261127: "a tokenizer file, not a model checkpoint",
                20240520: "a token shard, not a model checkpoint", 20240801: "a token shard, not a model checkpoint"}
VARIANTS = {0: "vanilla", 1: "phd", 2: "phd-swa", 3: "phd-cswa", 4: "naive"}


class BadCheckpoint(Exception):
    pass


class CannotWrite(Exception):
    pass


def variant_name(kind, K, W, C):
    return {"vanilla": "vanilla", "phd": f"phd-{K}", "phd-swa": f"phd-swa-{K}-{W}",
            "phd-cswa": f"phd-cswa-{K}-{W}-{C}", "naive": f"naive-{K}"}[kind]


def z_loss_of(h):
    """The z-loss coefficient, header[34]'s float32 bits (model.h §10)."""
    return struct.unpack("<f", struct.pack("<i", h[34]))[0]


def read_config(h):
    """The config block of header h, checked as model.h's config_error checks it."""
    V, Vp, L, D, H, Hkv, F, maxT, vid, K, W, C = h[2:14]
    if vid not in VARIANTS:
        raise BadCheckpoint(f"unknown variant id {vid}")
    kind = VARIANTS[vid]
    why = ("K must be >= 1" if K < 1 else "vanilla has K = 1" if kind == "vanilla" and K != 1 else
           "W must be >= 0" if W < 0 else "C must be >= 1" if kind == "phd-cswa" and C < 1 else
           "V must be >= 2 and Vp = V rounded up to a multiple of 128" if V < 2 or Vp != (V + 127) // 128 * 128 else
           "L, D, H, Hkv, F and max T must be positive" if min(L, D, H, Hkv, F, maxT) < 1 or D < 2 else
           "D must be a multiple of H with an even head size" if D % H or (D // H) % 2 else
           "H must be a multiple of Hkv" if H % Hkv else
           "qk-norm must be 0 or 1" if h[32] not in (0, 1) else
           "unknown norm placement" if h[33] not in (0, 1) else
           "the z-loss coefficient must be in [0, 1]" if not 0 <= z_loss_of(h) <= 1 else None)
    if why:
        raise BadCheckpoint(f"invalid model config: {why}")
    # The name alone fixes K, W, C: variants that do not use W or C store 0 there.
    name = variant_name(kind, K, W, C)
    cfg = make_config(name, V=V, L=L, D=D, H=H, Hkv=Hkv, F=F, maxT=maxT, qk_norm=h[32], norm=h[33], z_loss=z_loss_of(h))
    if (cfg["K"], cfg["W"], cfg["C"]) != (K, W, C):
        raise BadCheckpoint(f"variant {name} with K={K} W={W} C={C} in its header")
    return cfg


def read_checkpoint(path):
    """(cfg, {name: float32 tensor}) of a model checkpoint; BadCheckpoint says what is wrong."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size < 1024:
            raise BadCheckpoint(f"truncated file ({size} bytes, shorter than its 1024-byte header)")
        h = struct.unpack("<256i", f.read(1024))
        if h[0] != MAGIC:
            raise BadCheckpoint(f"bad magic {h[0]} (want {MAGIC})" +
                                (f": this is {OTHER_MAGICS[h[0]]}" if h[0] in OTHER_MAGICS else ""))
        if h[1] != VERSION:
            raise BadCheckpoint(f"unsupported version {h[1]} (want {VERSION})")
        cfg = read_config(h)
        shapes = param_shapes(cfg)
        P = sum(math.prod(s) for _, s in shapes)
        stored = (h[14] & 0xFFFFFFFF) | (h[15] & 0xFFFFFFFF) << 32
        if stored != P:
            raise BadCheckpoint(f"parameter count {stored} does not match its config ({P})")
        if size != 1024 + 4 * P:
            raise BadCheckpoint(f"file has {size} bytes, its header implies {1024 + 4 * P}")
        # One buffer per tensor: each gets its own storage, so a user's state dict holds no
        # views into one big array (and torch.save writes each once).
        torch = need_torch()
        sd = {}
        for name, shape in shapes:
            buf = bytearray(4 * math.prod(shape))
            if f.readinto(buf) != len(buf):
                raise BadCheckpoint(f"short read in {name}")
            t = torch.frombuffer(buf, dtype=torch.float32)
            if sys.byteorder != "little":  # the file is little-endian whatever the machine
                t = torch.frombuffer(bytearray(t.numpy().byteswap().tobytes()), dtype=torch.float32)
            sd[name] = t.view(shape)
    return cfg, sd


def export(ckpt, out):
    cfg, sd = read_checkpoint(ckpt)
    torch = need_torch()
    config = {"variant": cfg["name"], "kind": cfg["kind"], "K": cfg["K"], "W": cfg["W"], "C": cfg["C"],
              **{k: cfg[k] for k in ("V", "Vp", "L", "D", "H", "Hkv", "F", "maxT", "qk_norm", "norm")},
              # a string: this torch's weights_only loader refuses a pickled float
              "z_loss": f"{cfg['z_loss']:.9g}",
              "params": sum(t.numel() for t in sd.values())}
    if os.path.isdir(out):
        raise CannotWrite(f"{out}: is a directory (give the file to write)")
    tmp = out + ".tmp"
    try:
        torch.save({"config": config, "state_dict": sd}, tmp)
        os.replace(tmp, out)
    except (OSError, RuntimeError) as e:  # torch.save reports a missing directory as RuntimeError
        raise CannotWrite(f"{out}: cannot write it ({str(e).splitlines()[0]})") from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    bad = [name for name, t in sd.items() if not torch.isfinite(t).all()]
    return config, bad


def main(argv):
    if len(argv) != 2 or argv[0].startswith("-"):
        print("usage: /usr/bin/python3 dev/export.py CKPT OUT.pt   (a train_phd model_*.bin -> PyTorch file)",
              file=sys.stderr)
        return 2
    ckpt, out = argv
    try:
        c, bad = export(ckpt, out)
    except BadCheckpoint as e:
        print(f"error: {ckpt}: {e}", file=sys.stderr)
        return 1
    except CannotWrite as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except OSError as e:  # a missing or unreadable checkpoint
        print(f"error: {e.filename or ckpt}: {e.strerror or e}", file=sys.stderr)
        return 1
    print(f"wrote {out}: {c['variant']} V={c['V']} (E, wout with Vp={c['Vp']} rows) L={c['L']} D={c['D']} H={c['H']} "
          f"Hkv={c['Hkv']} F={c['F']} maxT={c['maxT']}, {c['params']} float32 parameters in "
          f"{3 + (9 + 2 * c['qk_norm']) * c['L']} tensors, block qk-norm {c['qk_norm']} norm "
          f"{('pre', 'reordered')[c['norm']]} z-loss {float(c['z_loss']):g}" + (f"; warning: non-finite values in {', '.join(bad)}" if bad else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
