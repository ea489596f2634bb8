"""A full-size checkpoint of one of the paper's released models with random weights, for memory and speed runs.

  /usr/bin/python3 scripts/make_released_random_checkpoint.py REF_DIR CONFIG OUT.safetensors

REF_DIR is a checkout of CompVis/latent-diffusion (never committed here); CONFIG one of its released YAMLs
(models/ldm/<name>/config.yaml, e.g. test/fixtures/reference-configs/models/ldm/semantic_synthesis512/config.yaml).
The reference's own LatentDiffusion is built from it (stubs as scripts/fixtures/make_semantic_fixture.py; use_ema off)
and every parameter is drawn so activations stay finite: weights N(0, 1/fan_in), norm scales 1, biases 0, the UNet's
zero-initialised output layers as well. Written as F16 under the reference's names with the F32 schedule buffers, as
a released model.ckpt's state_dict holds them. Needs Debian's python3-torch, numpy and yaml; the file is large (the
semantic models: about 0.5 GB): keep it out of the repository. Sample it with `ldm sample --ckpt OUT --config CONFIG`.
"""
import copy
import math
import os
import sys

import torch
import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, 'fixtures'))
import make_semantic_fixture as sem  # noqa: E402
from safetensors_np import save_file  # noqa: E402


def randomize(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            shape = tuple(p.shape)
            if len(shape) >= 2:
                p.copy_(torch.randn(shape, generator=g) / math.sqrt(math.prod(shape[1:])))
            elif 'norm' in name and name.endswith('weight'):
                p.fill_(1.0)
            else:
                p.zero_()


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    ref, config, out = os.path.abspath(sys.argv[1]), sys.argv[2], sys.argv[3]
    with open(config) as f:
        cfg = yaml.safe_load(f)
    params = cfg['model']['params']
    params['use_ema'] = False
    params.pop('ckpt_path', None)
    if isinstance(params.get('first_stage_config'), dict):
        params['first_stage_config']['params'].pop('ckpt_path', None)
    sem.install_stubs()
    _, _, util = sem.use_reference(ref)
    model = util.instantiate_from_config(copy.deepcopy(cfg['model'])).eval()
    randomize(model, 1)
    tensors = sem.checkpoint_tensors(model)
    save_file(out, tensors)
    n = sum(v.size for k, v in tensors.items() if '.' in k)
    print(f'{out}: {len(tensors)} tensors, {n / 1e6:.1f}M parameters, {os.path.getsize(out) / 2 ** 20:.0f} MiB')


if __name__ == '__main__':
    main()
