"""Offline sweep: Diffusion-DPO settings on digB's round-1 pairs -> mean marginal of new samples."""
import sys, json, copy, time
from pathlib import Path
import numpy as np, torch
from utilgen.config import load_config
from utilgen.loop.run import prepare, build_model, round_dir
from utilgen.loop.generation_round import stage1_judge
from utilgen.generate.factory import static_requests
from utilgen.feedback.model_level import _image_pairs
from utilgen.feedback.pairs import read_pairs, build_pairs
from utilgen.feedback.diffusion_dpo import train_builtin_diffusion_dpo
from utilgen.pool import PoolStore
from utilgen.pool.payload import decode_image
from utilgen.data import LabelledData
from utilgen.progress import set_quiet
set_quiet(True)
torch.set_num_threads(1)
RUN = Path("/tmp/exp/digB")
cfg = load_config(RUN / "config.yaml")
prep = prepare(cfg)
judge, _ = stage1_judge(build_model(cfg, prep.splits), RUN / "rounds/000/checkpoints")
store = PoolStore(RUN)
pairs = read_pairs(RUN / "rounds/001/pairs.parquet")
ipairs = _image_pairs(store, pairs)
reqs = static_requests(cfg.generator, splits=prep.splits, seed=cfg.seed, round_index=2)
names = prep.splits.train.class_names

def marginal_of(gen, g=None):
    import dataclasses
    rq = reqs if g is None else [dataclasses.replace(r, guidance_scale=g) for r in reqs]
    samples = list(gen.generate(rq, round_index=2, progress=False))
    items = [decode_image(s.payload) for s in samples]
    labels = np.array([s.label for s in samples])
    probs = judge.predict_proba(items)
    return probs, labels

base_state = copy.deepcopy(prep.generator.model.state_dict())
for spec in sys.argv[1:]:
    kv = dict(x.split("=") for x in spec.split(",")) if spec != "base" else {}
    gen = prep.generator
    gen.model.load_state_dict(base_state)
    g = kv.pop("g", None); g = float(g) if g is not None else None
    t = time.time()
    use = ipairs
    if kv.pop("swap", None):
        import dataclasses
        use = [dataclasses.replace(p, chosen=p.rejected, rejected=p.chosen) for p in ipairs]
    if kv:
        dcfg = cfg.feedback.diffusion_dpo.model_copy(update={k: (float(v) if k in ("guidance_scale","learning_rate","beta_dpo") else type(getattr(cfg.feedback.diffusion_dpo, k))(v)) for k, v in kv.items()})
        train_builtin_diffusion_dpo(gen, use, dcfg, out_dir=Path(f"/tmp/exp/sweep/{spec}"), seed=1)
    probs, labels = marginal_of(gen, g)
    m = probs[np.arange(len(labels)), labels]
    fid = (probs.argmax(1) == labels).mean()
    print(f"{spec}: marginal {m.mean():.4f} fidelity {fid:.3f} ({time.time()-t:.0f}s)", flush=True)
