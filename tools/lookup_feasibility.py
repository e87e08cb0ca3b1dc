"""Feasibility measurement behind issue #13's world redesign (not part of the package; the notebook version replaces it).

Can a from-scratch LLaVA this small learn to look image content up by a word? A 4x4 grid of 16-px cells (one visual
token per cell), 3-5 objects with distinct colours and shapes, several one-token questions per image:
  col    "colour <shape> ?"        -> the colour of that shape        (one hop: find the named object)
  shape  "shape <colour> ?"        -> the shape of that colour        (one hop)
  rel    "colour <rel> <shape> ?"  -> colour of the neighbouring cell (two hops: find the object, then its neighbour)
  ryn    "<col> <shape> <rel> <col> <shape> ?" -> yes/no: is the first object <rel> the second (anywhere on the grid)?
  ryn1   "<col> <rel> <col> ?"     -> the same, each object named by its colour alone
  lr2    "<col> <col> ?"           -> left/right: is the first object left or right of the second (columns differ)
  wh     "<col> where ?"           -> left/right: which half of the grid that object is in (position read out directly)
  abs    "<col> <side> ?"          -> yes/no: is that object in the left/right/top/bottom half of the grid?
Accuracy is measured on 192 fixed held-out scenes every 250 steps.

  python tools/lookup_feasibility.py THREADS KINDS STEPS LR LAYERS ATT_WEIGHT VISION_STEPS [pos|ord]
  python tools/lookup_feasibility.py 1 col,shape,rel 1500 1e-3 4 0 0     # everything from scratch
  python tools/lookup_feasibility.py 1 col,shape,rel 1500 1e-3 4 0 300   # tower + projector pre-trained per patch first
  python tools/lookup_feasibility.py 1 col,shape,rel 1500 1e-3 4 1.0 300 # ... and attention supervised onto the objects
ATT_WEIGHT > 0 adds -log(share of the middle layers' attention, from the token before each answer, on the cells of the
objects the question is about). VISION_STEPS > 0 first trains tower + projector to classify each patch's colour and
shape (the vision stage's idea), then freezes the tower; `pos` adds per-patch row/column classification heads to
that pre-training, `ord` adds regression heads for the patch's x and y (an ordinal code for where it is).
The sequence format: by default the image's 16 tokens come first and each question is followed by its answer. The
environment variables PREFIX=N (N constant tokens before the image, as LLaVA's system prompt puts ~40 there) and CHAT=1
("user :" before and "assistant :" after each question, as LLaVA's chat template) measure what the package's chat
template costs a model trained from scratch:
  PREFIX=41 CHAT=1 python tools/lookup_feasibility.py 1 col,shape 500 1e-3 4 0 300
"""
import math, os, random, sys, time, torch, numpy as np, torch.nn.functional as F
from transformers import LlavaConfig, LlavaForConditionalGeneration, SiglipVisionConfig, Qwen2Config
G, CELL = 4, 16; IMG = G * CELL
COLS = {"red": (230, 40, 40), "green": (40, 180, 60), "blue": (40, 90, 245), "yellow": (245, 215, 30), "purple": (165, 60, 215), "orange": (250, 140, 20)}
SH = ["circle", "square", "triangle", "diamond", "cross"]
yy, xx = np.mgrid[0:CELL, 0:CELL] + .5 - CELL / 2; r = CELL * .4
MASK = {"circle": xx**2 + yy**2 <= r*r, "square": np.maximum(abs(xx), abs(yy)) <= r * .8, "diamond": abs(xx) + abs(yy) <= r,
        "triangle": (yy <= r*.8) & (yy >= -r) & (abs(xx) <= (yy + r) / 1.8 * 1.0), "cross": (np.minimum(abs(xx), abs(yy)) <= r*.33) & (np.maximum(abs(xx), abs(yy)) <= r)}
REL = {"left": (-1, 0), "right": (1, 0), "above": (0, -1), "below": (0, 1)}
WORDS = ["<pad>", "<img>", "colour", "shape", "?", "none", "is", "yes", "no", "where", "sys", "user", "assistant", ":"] + list(COLS) + SH + list(REL)
V = {w: i for i, w in enumerate(WORDS)}
def scene(rng):
    "3-5 objects with distinct colours, shapes and cells: (colour, shape, col, row) tuples."
    n = rng.randint(3, 5)
    cols = rng.sample(list(COLS), n); shs = rng.sample(SH, n); cells = rng.sample(range(G*G), n)
    return [(c, s, k % G, k // G) for c, s, k in zip(cols, shs, cells)]
def render(sc):
    "The scene as a normalised 3 x 64 x 64 image."
    im = np.full((IMG, IMG, 3), 40, np.float32)
    for c, s, x, y in sc:
        m = MASK[s]; patch = im[y*CELL:(y+1)*CELL, x*CELL:(x+1)*CELL]; patch[m] = COLS[c]
    return torch.tensor(im / 127.5 - 1).permute(2, 0, 1)
def at(sc, x, y):
    for o in sc:
        if o[2] == x and o[3] == y: return o
def questions(sc, rng, kinds):
    qs = []
    for c, s, x, y in sc:
        me = [y * G + x]
        if "col" in kinds: qs.append(("col", ["colour", s], c, me))
        if "shape" in kinds: qs.append(("shape", ["shape", c], s, me))
        for rel, (dx, dy) in REL.items():
            o = at(sc, x + dx, y + dy)
            if o and "rel" in kinds: qs.append(("rel", ["colour", rel, s], o[0], me + [o[3] * G + o[2]]))
        for o in sc:
            if o[2:] == (x, y) or not {"ryn", "ryn1", "lr2"} & set(kinds): continue
            holds = [r for r, (dx, dy) in REL.items() if (dx and (o[2] - x) * dx > 0) or (dy and (o[3] - y) * dy > 0)]
            ans = rng.choice(["yes", "no"]); rel = rng.choice(holds if ans == "yes" else [r for r in REL if r not in holds])
            if "ryn" in kinds: qs.append(("ryn", [o[0], o[1], rel, c, s], ans, me + [o[3] * G + o[2]]))
            if "lr2" in kinds and o[2] != x: qs.append(("lr2", [o[0], c], "left" if o[2] < x else "right", me + [o[3] * G + o[2]]))
            if "ryn1" in kinds: qs.append(("ryn1", [o[0], rel, c], ans, me + [o[3] * G + o[2]]))
        if "wh" in kinds: qs.append(("wh", [c, "where"], "left" if x < G // 2 else "right", me))
        if "abs" in kinds:
            side = {"left": x < G // 2, "right": x >= G // 2, "above": y < G // 2, "below": y >= G // 2}
            ans = rng.choice(["yes", "no"]); rel = rng.choice([r for r, ok in side.items() if ok == (ans == "yes")])
            qs.append(("abs", [c, rel], ans, me))
    rng.shuffle(qs); return qs
def batch(rng, B, kinds, nq=6):
    "Token ids, answer labels, images, each token's question kind, and (query position, object cells) per question."
    ids, labs, pix, kind, tgt = [], [], [], [], []
    for _ in range(B):
        sc = scene(rng); qs = questions(sc, rng, kinds)[:nq]
        P0 = int(os.environ.get("PREFIX", "0")); CH = os.environ.get("CHAT", "0") == "1"
        t = [V["sys"]] * P0 + [V["<img>"]] * 16; l = [-100] * (16 + P0); k = [None]*(16 + P0)
        tg = []
        for kd, q, a, cells in qs:
            pre = [V["user"], V[":"]] if CH else []; post = [V["assistant"], V[":"]] if CH else []
            t += pre + [V[w] for w in q] + [V["?"]] + post + [V[a]]; l += [-100] * (len(pre) + len(q) + 1 + len(post)) + [V[a]]; k += [None]*(len(pre) + len(q)+1+len(post)) + [kd]
            tg.append((len(t) - 2, cells))
        tgt.append(tg); ids.append(t); labs.append(l); pix.append(render(sc)); kind.append(k)
    L = max(map(len, ids))
    # labels here are for the *current* token; shift ourselves
    I = torch.tensor([t + [0] * (L - len(t)) for t in ids]); Lb = torch.tensor([t + [-100] * (L - len(t)) for t in labs])
    return I, Lb, torch.stack(pix), [k + [None]*(L-len(k)) for k in kind], tgt
def model(layers=8, hidden=128, seed=0):
    torch.manual_seed(seed)
    vc = SiglipVisionConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=2, image_size=IMG, patch_size=CELL)
    tc = Qwen2Config(hidden_size=hidden, intermediate_size=3*hidden, num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2, vocab_size=len(WORDS), max_position_embeddings=256, rope_theta=1e4, tie_word_embeddings=False)
    cfg = LlavaConfig(vision_config=vc, text_config=tc, image_token_id=V["<img>"], image_seq_length=16, vision_feature_layer=-2, vision_feature_select_strategy="full", projector_hidden_act="gelu")
    return LlavaForConditionalGeneration(cfg)
def feats(m, P):
    "Projected visual tokens of a batch of images (B x 16 x hidden)."
    f = m.model.get_image_features(pixel_values=P)
    f = getattr(f, "pooler_output", f)
    return torch.stack(list(f)) if isinstance(f, (list, tuple)) else f
def pretrain_vision(m, rng, steps, B=64, pos=""):
    "Train tower + projector to classify each patch's colour and shape (`pos`: also its row and column; `ord`: regress its x and y), print the accuracy on the last batch, freeze the tower."
    CI = {c: i + 1 for i, c in enumerate(COLS)}; SI = {s: i + 1 for i, s in enumerate(SH)}
    H = m.config.text_config.hidden_size; head = torch.nn.Linear(H, 7 + 6 + 2 * G + 2)
    where = torch.arange(G * G); xy = torch.stack([where % G, where // G]).float() / (G - 1) * 2 - 1
    ps = list(m.model.vision_tower.parameters()) + list(m.model.multi_modal_projector.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(ps, lr=3e-3)
    for s in range(steps):
        scs = [scene(rng) for _ in range(B)]; P = torch.stack([render(sc) for sc in scs])
        yc = torch.zeros(B, 16, dtype=torch.long); ys = torch.zeros(B, 16, dtype=torch.long)
        for b, sc in enumerate(scs):
            for c, sh, x, y in sc: yc[b, y * G + x] = CI[c]; ys[b, y * G + x] = SI[sh]
        f = feats(m, P)
        o = head(f.reshape(B, 16, H))
        loss = F.cross_entropy(o[..., :7].reshape(-1, 7), yc.reshape(-1)) + F.cross_entropy(o[..., 7:13].reshape(-1, 6), ys.reshape(-1))
        if pos == "pos": loss = loss + F.cross_entropy(o[..., 13:13+G].reshape(-1, G), (where % G).repeat(B)) + F.cross_entropy(o[..., 13+G:13+2*G].reshape(-1, G), (where // G).repeat(B))
        if pos == "ord": loss = loss + F.mse_loss(o[..., -2], xy[0].expand(B, -1)) + F.mse_loss(o[..., -1], xy[1].expand(B, -1))
        opt.zero_grad(); loss.backward(); opt.step()
    acc_c = (o[..., :7].argmax(-1) == yc).float().mean().item(); acc_s = (o[..., 7:13].argmax(-1) == ys).float().mean().item()
    acc_p = ((o[..., 13:13+G].argmax(-1) == where % G) & (o[..., 13+G:13+2*G].argmax(-1) == where // G)).float().mean().item()
    err = (o[..., -2:] - xy.T).abs().mean().item()
    print(f"vision pretrain {steps} steps: loss {loss.item():.3f} colour acc {acc_c:.3f} shape acc {acc_s:.3f}" + {"pos": f" cell acc {acc_p:.3f}", "ord": f" |xy error| {err:.3f}"}.get(pos, ""), flush=True)
    for p in m.model.vision_tower.parameters(): p.requires_grad_(False)
def run(kinds, steps, lr, layers=8, hidden=128, B=32, seed=0, nq=6, log=250, aw=0.0, band=(1, 2), vis=0, pos=""):
    m = model(layers, hidden, seed)
    rng = random.Random(seed); erng = random.Random(1234)
    if aw > 0: m.set_attn_implementation('eager')
    if vis: pretrain_vision(m, rng, vis, pos=pos)
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1, (s+1) / (0.05*steps)) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    ev = [batch(erng, 64, kinds, nq) for _ in range(3)]
    t0 = time.time()
    for s in range(1, steps + 1):
        I, Lb, P, _, T = batch(rng, B, kinds, nq)
        out = m(input_ids=I, pixel_values=P, attention_mask=I != 0, output_attentions=aw > 0)
        lg = out.logits[:, :-1]; loss = F.cross_entropy(lg.reshape(-1, lg.shape[-1]), Lb[:, 1:].reshape(-1), ignore_index=-100)
        if aw > 0:
            A = torch.stack([out.attentions[i] for i in band]).mean((0, 2))[:, :, :16]  # B x q x 16
            al = []
            for b, tg in enumerate(T):
                for q, cells in tg:
                    a = A[b, q]; al.append(-torch.log(a[cells].sum() / a.sum() + 1e-6))
            aloss = torch.stack(al).mean(); loss = loss + aw * aloss
        opt.zero_grad(); loss.backward(); torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0); opt.step(); sched.step()
        if s % log == 0 or s == steps:
            acc = {}
            with torch.no_grad():
                for I, Lb, P, K, _ in ev:
                    pr = m(input_ids=I, pixel_values=P, attention_mask=I != 0).logits[:, :-1].argmax(-1)
                    for b in range(I.shape[0]):
                        for j in range(1, I.shape[1]):
                            if K[b][j]: acc.setdefault(K[b][j], []).append(int(pr[b, j-1] == I[b, j]))
            print(f"step {s} loss {loss.item():.3f} " + (f"att {aloss.item():.2f} " if aw > 0 else "") + " ".join(f"{k} {np.mean(v):.2f}" for k, v in acc.items()) + f" t {time.time()-t0:.0f}s", flush=True)
    return m
if __name__ == "__main__":
    torch.set_num_threads(int(sys.argv[1]))
    kinds = sys.argv[2].split(","); steps = int(sys.argv[3]); lr = float(sys.argv[4]); layers = int(sys.argv[5]) if len(sys.argv) > 5 else 8
    run(kinds, steps, lr, layers, aw=float(sys.argv[6]) if len(sys.argv) > 6 else 0.0, band=tuple(range(layers//4, 3*layers//4)), vis=int(sys.argv[7]) if len(sys.argv) > 7 else 0,
        pos=sys.argv[8] if len(sys.argv) > 8 else "")
