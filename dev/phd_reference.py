#!/usr/bin/python3
"""An independent PyTorch reference of the PHD-Transformer.

It implements the method as written at the top of model.h ("The method", model.h §1-§9),
independently of the C++ code: dense attention over the K*T logical sequence with a mask
built rule by rule from model.h §4, autograd for gradients, torch.optim.AdamW for the
optimizer. Everything runs in float64.

    /usr/bin/python3 dev/phd_reference.py write test/fixtures   # `make fixtures`
    /usr/bin/python3 dev/phd_reference.py selftest              # `make test-reference`
    /usr/bin/python3 dev/phd_reference.py generate OUT.pt --prompt-ids '1 2 3' --generate 20

`generate` loads a model that dev/export.py wrote from a train_phd checkpoint (load_export)
and continues each prompt greedily (generate_greedy; --prompt-ids may be repeated), one line
per prompt in the form train_phd --generate prints without a tokenizer (" 1 2 3 | 7 7 9").

selftest also regenerates the fixtures into a temporary directory and compares them with
test/fixtures/ (see "Committed fixtures against a fresh `write`" below).

Needs Debian's PyTorch (apt-get install python3-torch); the pyenv python3 cannot import it.
Fixture files per variant (formats in dev/README.md):
    NAME.ckpt    model checkpoint (float32 weights)
    NAME.state   debug state: tokens, targets, last-copy logits, loss, every gradient
    NAME.adamw   text: the schedule of 10 AdamW steps on that batch and the loss before each
"""
import math
import os
import pickle
import struct
import sys
import tempfile

import torch

from phd_config import VARIANT_IDS, make_config, param_shapes

F64 = torch.float64


# ---------------------------------------------------------------------------------------
# Visibility: model.h §4, rule by rule

def visible(cfg, n, c, m, d):
    K, kind = cfg["K"], cfg["kind"]
    if kind == "naive":
        return m * K + d <= n * K + c
    if d == 0:
        return m <= n
    if c == 0:
        return False
    if m == n:
        return d <= c
    if kind in ("phd-swa", "phd-cswa"):
        gap = (n * (K - 1) + c - 1) - (m * (K - 1) + d - 1)
        if not (0 < gap <= cfg["W"]):
            return False
        return kind == "phd-swa" or m // cfg["C"] == n // cfg["C"]
    return False


def build_mask(cfg, T):
    """(T*K, T*K) bool, True where query i = n*K+c may see key j = m*K+d."""
    K = cfg["K"]
    N = T * K
    mask = torch.zeros(N, N, dtype=torch.bool)
    for i in range(N):
        for j in range(N):
            mask[i, j] = visible(cfg, i // K, i % K, j // K, j % K)
    return mask


# ---------------------------------------------------------------------------------------
# Parameters in checkpoint order (param_shapes: phd_config.py)

def init_params(cfg, gen):
    """model.h §9, drawn with torch's generator (the fixture stores the result)."""
    out = {}
    std_out = 0.02 / math.sqrt(2 * cfg["L"])
    for name, shape in param_shapes(cfg):
        if len(shape) == 1:
            t = torch.ones(shape, dtype=F64)
        else:
            std = std_out if name.endswith(("wo", "w2")) else 0.02
            t = torch.randn(shape, generator=gen, dtype=F64) * std
            if name in ("E", "wout"):
                t[cfg["V"]:] = 0
        # the C++ side reads float32 weights: start from exactly those values
        out[name] = t.float().double().requires_grad_(True)
    return out


# ---------------------------------------------------------------------------------------
# The model: model.h §9

def rmsnorm(x, g):
    return x / torch.sqrt((x * x).mean(-1, keepdim=True) + 1e-5) * g


def rope(x, pos):
    """x (B, N, heads, hd), pos (N): rotate-half pairs (z_i, z_{i+hd/2})."""
    hd = x.shape[-1]
    i = torch.arange(hd // 2, dtype=F64)
    ang = pos.to(F64)[:, None] * torch.pow(torch.tensor(10000.0, dtype=F64), -2.0 * i / hd)[None, :]
    cos, sin = torch.cos(ang)[None, :, None, :], torch.sin(ang)[None, :, None, :]
    a, b = x[..., : hd // 2], x[..., hd // 2:]
    return torch.cat([a * cos - b * sin, a * sin + b * cos], dim=-1)


def forward(cfg, P, tokens, targets=None, with_z=False):
    """tokens (B, T) -> last-copy logits (B, T, Vp) and the mean loss (the cross-entropy; with_z:
    plus the z-loss, z * mean(logsumexp^2), what training differentiates: model.h §10)."""
    B, T = tokens.shape
    K, D, H, Hkv = cfg["K"], cfg["D"], cfg["H"], cfg["Hkv"]
    hd = D // H
    N = T * K
    x = P["E"][tokens].repeat_interleave(K, dim=1)              # (B, N, D): copy c of n at n*K+c
    pos = torch.arange(T).repeat_interleave(K)                   # every copy at position n
    mask = build_mask(cfg, T)
    reordered = cfg.get("norm", 0) == 1                          # model.h §10
    for l in range(cfg["L"]):
        p = lambda s: P[f"layer{l}.{s}"]
        a = x if reordered else rmsnorm(x, p("g_attn"))
        q, k = a @ p("wq").T, a @ p("wk").T
        if cfg.get("qk_norm"):                                   # over the whole projection, before RoPE
            q, k = rmsnorm(q, p("g_q")), rmsnorm(k, p("g_k"))
        q = rope(q.view(B, N, H, hd), pos)
        k = rope(k.view(B, N, Hkv, hd), pos)
        v = (a @ p("wv").T).view(B, N, Hkv, hd)
        k = k.repeat_interleave(H // Hkv, dim=2)                 # GQA: head h uses kv head h // (H/Hkv)
        v = v.repeat_interleave(H // Hkv, dim=2)
        s = torch.einsum("bihe,bjhe->bhij", q, k) / math.sqrt(hd)
        s = s.masked_fill(~mask, float("-inf"))
        o = torch.einsum("bhij,bjhe->bihe", torch.softmax(s, dim=-1), v).reshape(B, N, H * hd)
        if reordered:
            x = x + rmsnorm(o @ p("wo").T, p("g_attn"))
            x = x + rmsnorm((torch.nn.functional.silu(x @ p("w1").T) * (x @ p("w3").T)) @ p("w2").T, p("g_ffn"))
        else:
            x = x + o @ p("wo").T
            f = rmsnorm(x, p("g_ffn"))
            x = x + (torch.nn.functional.silu(f @ p("w1").T) * (f @ p("w3").T)) @ p("w2").T
    last = x[:, K - 1::K]                                        # (B, T, D): the last copies
    logits = rmsnorm(last, P["g_final"]) @ P["wout"].T           # (B, T, Vp)
    loss = None
    if targets is not None:
        real = logits[..., : cfg["V"]].reshape(B * T, -1)
        loss = torch.nn.functional.cross_entropy(real, targets.reshape(-1))
        if with_z and cfg.get("z_loss", 0):
            loss = loss + cfg["z_loss"] * (torch.logsumexp(real, dim=-1) ** 2).mean()
    return logits, loss


def lr_at(step, lr, warmup, steps, final_frac):
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / (steps - warmup - 1)) if steps > warmup + 1 else 1.0
    lo = lr * final_frac
    return lo + 0.5 * (1 + math.cos(math.pi * progress)) * (lr - lo)


def adamw_losses(cfg, P, tokens, targets, lr, warmup, steps, final_frac, wd):
    """Loss before each of `steps` AdamW updates on one batch (decay on matrices only)."""
    decay = [t for name, t in P.items() if t.dim() == 2]
    no_decay = [t for name, t in P.items() if t.dim() == 1]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=lr, betas=(0.9, 0.95), eps=1e-8)
    losses = []
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, lr, warmup, steps, final_frac)
        opt.zero_grad()
        _, loss = forward(cfg, P, tokens, targets)
        _, objective = forward(cfg, P, tokens, targets, with_z=True)
        objective.backward()
        torch.nn.utils.clip_grad_norm_(list(P.values()), 1.0)
        opt.step()
        losses.append(loss.item())
    return losses


# ---------------------------------------------------------------------------------------
# Files (dev/README.md, "File formats")

def header(magic, cfg, extra=()):
    P = sum(math.prod(s) for _, s in param_shapes(cfg))
    h = [magic, 1, cfg["V"], cfg["Vp"], cfg["L"], cfg["D"], cfg["H"], cfg["Hkv"], cfg["F"], cfg["maxT"],
         VARIANT_IDS[cfg["kind"]], cfg["K"], cfg["W"], cfg["C"], P & 0xFFFFFFFF, P >> 32, *extra]
    h += [0] * (32 - len(h))
    h += [cfg.get("qk_norm", 0), cfg.get("norm", 0), struct.unpack("<i", struct.pack("<f", cfg.get("z_loss", 0.0)))[0]]
    return struct.pack("<256i", *(h + [0] * (256 - len(h))))


def f32(t):
    return struct.pack(f"<{t.numel()}f", *t.detach().reshape(-1).tolist())


FIXTURE_B, FIXTURE_T = 2, 7  # the batch of every fixture


def fixture_config(name):
    """A fixture's name is its variant, or olmo2-VARIANT: model.h §10's three options, with a
    z-loss of 0.05 (OLMo 2's 1e-5 would hide a wrong z gradient under the tolerances)."""
    if name.startswith("olmo2-"):
        return make_config(name[len("olmo2-"):], qk_norm=1, norm=1, z_loss=0.05)
    return make_config(name)


def write_fixture(outdir, variant, seed):
    """Writes the three files of one variant; returns the loss before and after the AdamW steps."""
    cfg = fixture_config(variant)
    gen = torch.Generator().manual_seed(seed)
    P = init_params(cfg, gen)
    B, T = FIXTURE_B, FIXTURE_T
    tokens = torch.randint(0, cfg["V"], (B, T), generator=gen)
    targets = torch.randint(0, cfg["V"], (B, T), generator=gen)
    logits, loss = forward(cfg, P, tokens, targets)
    forward(cfg, P, tokens, targets, with_z=True)[1].backward()
    with open(os.path.join(outdir, variant + ".ckpt"), "wb") as f:
        f.write(header(20261124, cfg))
        for name, _ in param_shapes(cfg):
            f.write(f32(P[name]))
    with open(os.path.join(outdir, variant + ".state"), "wb") as f:
        f.write(header(20261126, cfg, (B, T)))
        f.write(struct.pack(f"<{B * T}i", *tokens.reshape(-1).tolist()))
        f.write(struct.pack(f"<{B * T}i", *targets.reshape(-1).tolist()))
        f.write(f32(logits[..., : cfg["V"]]))
        f.write(struct.pack("<f", loss.item()))
        for name, _ in param_shapes(cfg):
            f.write(f32(P[name].grad))
    sched = dict(lr=3e-3, warmup=3, steps=10, final_frac=0.1, wd=0.1)
    for t in P.values():
        t.grad = None
    losses = adamw_losses(cfg, P, tokens, targets, **sched)
    with open(os.path.join(outdir, variant + ".adamw"), "w") as f:
        f.write("# lr warmup steps final_frac weight_decay, then the loss before each AdamW step\n")
        f.write(f"{sched['lr']!r} {sched['warmup']} {sched['steps']} {sched['final_frac']!r} {sched['wd']!r}\n")
        for x in losses:
            f.write(f"{x!r}\n")
    return loss.item(), losses[-1]


FIXTURE_VARIANTS = ["vanilla", "phd-3", "phd-swa-3-2", "phd-cswa-3-2-2", "naive-2", "olmo2-vanilla", "olmo2-phd-cswa-3-2-2"]
FIXTURE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "test", "fixtures")


def write_fixtures(outdir, log=print):
    os.makedirs(outdir, exist_ok=True)
    for i, v in enumerate(FIXTURE_VARIANTS):
        loss, final = write_fixture(outdir, v, seed=100 + i)
        log(f"{v}: loss {loss:.6f}, after 10 AdamW steps {final:.6f}")


# ---------------------------------------------------------------------------------------
# Committed fixtures against a fresh `write`
#
# The files hold no platform-dependent formatting: binaries are explicit little-endian
# int32/float32 (struct rounds float64 to float32 correctly), and the text losses are
# Python's repr, the shortest string that round-trips a double. What may differ between
# machines is the float64 math itself (BLAS reduction order, torch's vectorized exp per CPU
# capability), by ulps that the rounding to float32 usually hides but can show as one
# float32 ulp; here ATEN_CPU_CAPABILITY=default or avx512 changes no float32 bit but the
# losses' last digits, by up to 4e-16 relative. So headers, tokens, targets and the
# schedule lines must be equal byte for byte; float32 sections within F32_TOL of their
# tensor's largest |value| (two float32 ulps at that scale); the float64 losses within
# LOSS_TOL relative. Both are far inside the C++ fixture tests' tolerances (1e-5 of the
# scale; the .state loss 1e-6 relative), so what can slip through is below what those
# tests resolve.
F32_TOL = 2.5e-7
LOSS_TOL = 1e-12


def fixture_layout(variant, ext):
    """(section, count, struct format) of a binary fixture, in the order write_fixture writes it."""
    cfg = fixture_config(variant)
    BT = FIXTURE_B * FIXTURE_T
    params = [(name, math.prod(shape), "f") for name, shape in param_shapes(cfg)]
    if ext == "ckpt":
        return [("header", 256, "i")] + params
    return ([("header", 256, "i"), ("tokens", BT, "i"), ("targets", BT, "i"), ("logits", BT * cfg["V"], "f"),
             ("loss", 1, "f")] + [("grad " + name, n, fmt) for name, n, fmt in params])


def first_outside(name, want, got, tol, scales):
    """None when every |got - want| <= tol * scale, else the first element that is not (NaN is not)."""
    for i, (w, g, s) in enumerate(zip(want, got, scales)):
        if not abs(g - w) <= tol * s:
            return f"{name}[{i}] is {g!r}, a fresh write gives {w!r} (tolerance {tol} of {s:.3g})"
    return None


def compare_fixture(fname, want, got):
    """Why the committed bytes `got` differ from the regenerated `want` beyond the tolerances, or None."""
    variant, ext = fname.rsplit(".", 1)
    if ext == "adamw":
        w, g = want.decode().splitlines(), got.decode(errors="replace").splitlines()
        if w[:2] != g[:2] or len(w) != len(g):
            return "the comment or schedule line or the number of losses differs"
        try:
            lw, lg = [float(x) for x in w[2:]], [float(x) for x in g[2:]]
        except ValueError as e:
            return str(e)
        return first_outside("loss", lw, lg, LOSS_TOL, [abs(x) for x in lw])
    if len(got) != len(want):
        return f"{len(got)} bytes, a fresh write gives {len(want)}"
    off = 0
    for name, n, fmt in fixture_layout(variant, ext):
        w, g = struct.unpack_from(f"<{n}{fmt}", want, off), struct.unpack_from(f"<{n}{fmt}", got, off)
        off += 4 * n
        if fmt == "i" and w != g:
            return f"{name} not byte-identical"
        if fmt == "f":
            scale = max(abs(x) for x in w)
            why = first_outside(name, w, g, F32_TOL, [scale] * n)
            if why:
                return why
    return None if off == len(want) else "fixture_layout does not match write_fixture"


# ---------------------------------------------------------------------------------------
# Exported models (dev/export.py) and greedy generation

def load_export(path):
    """dev/export.py's OUT.pt -> (cfg, P): cfg as make_config builds it, P the float64
    parameters by name, as forward() takes them. Raises ValueError naming what is wrong."""
    # weights_only: the file holds only dicts, strings, ints and tensors, so nothing in it
    # can run code while it loads.
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError) as e:  # e.g. a train_phd .bin given by mistake
        why = str(e).split(".")[0]
        raise ValueError(f"{path}: torch.load cannot read it as a dev/export.py file ({why})") from None
    if not isinstance(obj, dict) or set(obj) != {"config", "state_dict"}:
        raise ValueError(f"{path}: not a dev/export.py file (want a dict with 'config' and 'state_dict')")
    c, sd = obj["config"], obj["state_dict"]
    try:
        cfg = make_config(c["variant"], V=c["V"], L=c["L"], D=c["D"], H=c["H"], Hkv=c["Hkv"], F=c["F"],
                          maxT=c["maxT"], qk_norm=c.get("qk_norm", 0), norm=c.get("norm", 0), z_loss=float(c.get("z_loss", "0")))
    except (KeyError, AttributeError, AssertionError) as e:
        raise ValueError(f"{path}: bad config {c!r} ({type(e).__name__}: {e})") from None
    # The redundant fields must agree with what the variant name and V imply.
    for key in ("Vp", "K", "W", "C"):
        if c.get(key) != cfg[key]:
            raise ValueError(f"{path}: config {key}={c.get(key)} disagrees with {c['variant']}, V={c['V']} ({cfg[key]})")
    shapes = param_shapes(cfg)
    if set(sd) != {name for name, _ in shapes}:
        raise ValueError(f"{path}: state_dict tensors {sorted(set(sd) ^ {n for n, _ in shapes})} missing or unexpected")
    P = {}
    for name, shape in shapes:
        if tuple(sd[name].shape) != shape:
            raise ValueError(f"{path}: {name} has shape {tuple(sd[name].shape)}, the config implies {shape}")
        P[name] = sd[name].to(F64)
    return cfg, P


@torch.no_grad()
def generate_greedy(cfg, P, prompt, n):
    """Greedy continuation: n tokens after the prompt, and the smallest gap between the best
    and the second-best logit seen (how close a choice came to a tie).

    Each step runs the whole forward over prompt + tokens so far and takes the argmax of the
    last position's last-copy logits: by model.h §6 a KV-cache decoder must give the
    same logits, so this is the definition the engine's decoder is held to. The columns
    V..Vp-1 of the padded LM head are dropped: their logits are 0, not -inf, and could win."""
    if not prompt or n < 1:
        raise ValueError("the prompt is empty" if not prompt else f"--generate {n}: must be >= 1")
    if len(prompt) + n > cfg["maxT"]:  # as train_phd: RoPE and the engine's buffers stop at max T
        raise ValueError(f"prompt ({len(prompt)} tokens) + {n} new tokens exceed the model's max sequence "
                         f"length {cfg['maxT']}")
    bad = [t for t in prompt if not 0 <= t < cfg["V"]]
    if bad:
        raise ValueError(f"--prompt-ids: token {bad[0]} is out of range for vocabulary size {cfg['V']}")
    tokens, gap = list(prompt), math.inf
    for _ in range(n):
        logits, _ = forward(cfg, P, torch.tensor([tokens]))
        top = torch.topk(logits[0, -1, : cfg["V"]], 2)
        gap = min(gap, (top.values[0] - top.values[1]).item())
        tokens.append(int(torch.argmax(logits[0, -1, : cfg["V"]])))  # the first of equal maxima, as the engine
    return tokens[len(prompt):], gap


def generate_main(argv):
    import argparse
    ap = argparse.ArgumentParser(prog="phd_reference.py generate",
                                 description="Greedy generation from a dev/export.py file (float64, full forward per token).")
    ap.add_argument("model", help="OUT.pt written by dev/export.py")
    ap.add_argument("--prompt-ids", required=True, action="append",
                    help="a prompt as token ids, 'I J K' or 'I,J,K'; repeat it for several prompts")
    ap.add_argument("--generate", type=int, default=20, metavar="N", help="tokens to generate per prompt (20)")
    a = ap.parse_args(argv)
    try:
        try:
            prompts = [[int(w) for w in ids.replace(",", " ").split()] for ids in a.prompt_ids]
        except ValueError as e:
            raise ValueError(f"--prompt-ids: {e}") from None
        cfg, P = load_export(a.model)
        outs = [generate_greedy(cfg, P, prompt, a.generate) for prompt in prompts]
    except (OSError, RuntimeError, ValueError, pickle.UnpicklingError) as e:
        print(f"error: {e}".splitlines()[0], file=sys.stderr)
        return 1
    for prompt, (out, _) in zip(prompts, outs):
        print("".join(f" {t}" for t in prompt) + " |" + "".join(f" {t}" for t in out))
    print(f"{len(prompts)} prompt(s) x {a.generate} tokens greedily from {a.model} ({cfg['name']}); "
          f"smallest top-2 logit gap {min(gap for _, gap in outs):.3g}")
    return 0


# ---------------------------------------------------------------------------------------
# Self-tests of the reference

HAND_MASKS = {  # K = 3, T = 4, written out by hand from model.h §4
    "phd-3": ["100000000000", "110000000000", "111000000000", "100100000000", "100110000000", "100111000000",
              "100100100000", "100100110000", "100100111000", "100100100100", "100100100110", "100100100111"],
    "phd-swa-3-2": ["100000000000", "110000000000", "111000000000", "100100000000", "111110000000", "101111000000",
                    "100100100000", "100111110000", "100101111000", "100100100100", "100100111110", "100100101111"],
    "phd-cswa-3-2-2": ["100000000000", "110000000000", "111000000000", "100100000000", "111110000000",
                       "101111000000", "100100100000", "100100110000", "100100111000", "100100100100",
                       "100100111110", "100100101111"],
    "naive-3": ["1" * (i + 1) + "0" * (11 - i) for i in range(12)],
}


def selftest():
    results = []

    def check(name, ok):
        results.append(ok)
        print(f"{'ok  ' if ok else 'FAIL'} {name}")

    for variant, rows in HAND_MASKS.items():
        m = build_mask(make_config(variant), 4)
        want = torch.tensor([[ch == "1" for ch in r] for r in rows])
        check(f"mask {variant} equals the hand-written K=3, T=4 matrix", bool(torch.equal(m, want)))

    small = dict(V=11, L=1, D=8, H=2, Hkv=1, F=12, maxT=5)
    for variant in FIXTURE_VARIANTS:
        olmo2 = variant.startswith("olmo2-")
        cfg = make_config(variant.removeprefix("olmo2-"), **small, qk_norm=int(olmo2), norm=int(olmo2), z_loss=0.05 * olmo2)
        gen = torch.Generator().manual_seed(1)
        P = init_params(cfg, gen)
        for t in P.values():  # larger weights: a sharper test
            t.data.mul_(10)
        tokens = torch.randint(0, 11, (2, 5), generator=gen)
        targets = torch.randint(0, 11, (2, 5), generator=gen)
        names = list(P.keys())
        V = cfg["V"]

        # Finite differences over every weight but E's and wout's padding rows (held fixed: 80 %
        # of the elements at this size, and no token reaches them); their gradient is checked zero.
        def loss_of(*tensors):
            p = dict(zip(names, tensors))
            for n in ("E", "wout"):
                p[n] = torch.cat([p[n], P[n][V:].detach()])
            return forward(cfg, p, tokens, targets, with_z=True)[1]
        inputs = tuple(t[:V].detach().clone().requires_grad_() if n in ("E", "wout") else t for n, t in P.items())
        ok = torch.autograd.gradcheck(loss_of, inputs, eps=1e-6, atol=1e-7, rtol=1e-5, raise_exception=False)
        check(f"gradcheck (float64) of the whole model, {variant}", ok)
        grads = torch.autograd.grad(forward(cfg, P, tokens, targets, with_z=True)[1], (P["E"], P["wout"]))
        check(f"padding rows of E and wout get no gradient, {variant}", all(not g[V:].any() for g in grads))

    cfg_v = make_config("vanilla", **small)
    P = init_params(cfg_v, torch.Generator().manual_seed(2))
    tokens = torch.randint(0, 11, (2, 5), generator=torch.Generator().manual_seed(3))
    lv, _ = forward(cfg_v, P, tokens)
    for variant in ["phd-1", "phd-swa-1-3", "phd-cswa-1-2-2", "naive-1"]:
        l1, _ = forward(make_config(variant, **small), P, tokens)
        check(f"K=1: {variant} equals vanilla", bool(torch.equal(l1, lv)))
    lk, _ = forward(make_config("phd-3", **small), P, tokens)
    check("phd-3 differs from vanilla (the K=1 check can fail)", not torch.allclose(lk, lv))

    with tempfile.TemporaryDirectory() as fresh:
        write_fixtures(fresh, log=lambda line: None)
        names = sorted(os.listdir(fresh))
        check(f"test/fixtures/ holds exactly the {len(names)} files `write` produces",
              sorted(os.listdir(FIXTURE_DIR)) == names)
        for name in names:
            with open(os.path.join(fresh, name), "rb") as f:
                want = f.read()
            path = os.path.join(FIXTURE_DIR, name)
            got = open(path, "rb").read() if os.path.exists(path) else None
            why = compare_fixture(name, want, got) if got is not None else "missing"
            how = "bit-identical" if got == want else why or "within tolerance, not bit-identical"
            check(f"test/fixtures/{name} is what `write` produces now ({how})", why is None)

    failed = results.count(False)
    print(f"reference: {len(results) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "write":
        write_fixtures(sys.argv[2])
    elif len(sys.argv) == 2 and sys.argv[1] == "selftest":
        sys.exit(selftest())
    elif len(sys.argv) >= 3 and sys.argv[1] == "generate":
        sys.exit(generate_main(sys.argv[2:]))
    else:
        sys.exit(__doc__)
