"""The PHD-Transformer's configuration and parameter layout, without torch: what
dev/phd_reference.py builds its model from and dev/export.py checks a checkpoint against
(export.py imports torch only once a file has passed, so that a bad file is refused quickly).
"""
import re

VARIANT_IDS = {"vanilla": 0, "phd": 1, "phd-swa": 2, "phd-cswa": 3, "naive": 4}


# ---------------------------------------------------------------------------------------
# Configuration

def parse_variant(name):
    """'phd-cswa-3-2-2' -> dict(kind='phd-cswa', K=3, W=2, C=2)."""
    if name == "vanilla":
        return dict(kind="vanilla", K=1, W=0, C=0)
    m = re.fullmatch(r"(phd-cswa|phd-swa|phd|naive)((?:-\d+)+)", name)
    nums = [int(x) for x in m.group(2)[1:].split("-")]
    kind = m.group(1)
    want = {"phd": 1, "naive": 1, "phd-swa": 2, "phd-cswa": 3}[kind]
    assert len(nums) == want, name
    nums += [0] * (3 - len(nums))
    return dict(kind=kind, K=nums[0], W=nums[1], C=nums[2])


def make_config(variant, V=97, L=2, D=32, H=4, Hkv=2, F=64, maxT=7, qk_norm=0, norm=0, z_loss=0.0):
    """norm: 0 pre-norm, 1 reordered (model.h §10, as the checkpoint header stores them)."""
    cfg = dict(V=V, Vp=(V + 127) // 128 * 128, L=L, D=D, H=H, Hkv=Hkv, F=F, maxT=maxT, name=variant,
               qk_norm=qk_norm, norm=norm, z_loss=z_loss)
    cfg.update(parse_variant(variant))
    return cfg


# Parameters in checkpoint order

def param_shapes(cfg):
    D, H, Hkv, F, Vp = cfg["D"], cfg["H"], cfg["Hkv"], cfg["F"], cfg["Vp"]
    hd = D // H
    shapes = [("E", (Vp, D))]
    for l in range(cfg["L"]):
        p = f"layer{l}."
        shapes += [(p + "g_attn", (D,)), (p + "wq", (H * hd, D)), (p + "wk", (Hkv * hd, D)),
                   (p + "wv", (Hkv * hd, D)), (p + "wo", (D, H * hd)), (p + "g_ffn", (D,)),
                   (p + "w1", (F, D)), (p + "w3", (F, D)), (p + "w2", (D, F))]
        if cfg.get("qk_norm"):
            shapes += [(p + "g_q", (H * hd,)), (p + "g_k", (Hkv * hd,))]
    shapes += [("g_final", (D,)), ("wout", (Vp, D))]
    return shapes
