"""A Stable-Diffusion-shaped single-file checkpoint with random weights, for full-size memory and speed runs.

Every key and shape comes from test/fixtures/sd-keys/<sd1|sd2>.json.gz (made by instantiating the reference modules
at full size); each tensor is written in float16 straight to a .safetensors, one at a time, so the script itself
needs little memory (numpy only; the writer follows scripts/fixtures/safetensors_np.py's format). The values are
drawn so activations stay finite through the networks: weights N(0, 1/fan_in), biases 0, norm scales 1.

  /usr/bin/python3 scripts/make_sd_random_checkpoint.py sd1 /tmp/sd15-random.safetensors   # SD 1.5 shapes, 2.1 GB
  /usr/bin/python3 scripts/make_sd_random_checkpoint.py sd2 /tmp/sd21-random.safetensors   # SD 2.x shapes, 2.6 GB

The file is large: keep it out of the repository. An SD 2.1 768-v model has the SD 2 shapes; sample it with
`--prediction v` (or `--config v2-inference-v.yaml`).
"""
import gzip
import json
import math
import os
import struct
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def value(rng, name, shape):
    n = math.prod(shape)
    leaf = name.rsplit('.', 1)[-1]
    if len(shape) <= 1:
        # Norm scales (GroupNorm, LayerNorm: "norm", "ln_", "layer_norm") are 1; biases and other vectors 0.
        is_scale = leaf == 'weight' and any(s in name for s in ('norm', 'ln_', 'layer_norm'))
        if name.endswith('logit_scale'):
            return np.full(shape, math.log(1 / 0.07), dtype=np.float16)
        return np.full(shape, 1.0 if is_scale else 0.0, dtype=np.float16)
    fan_in = max(1, n // shape[0])
    if 'embedding' in name or 'embed' in leaf:
        fan_in = shape[-1]
    return (rng.standard_normal(n, dtype=np.float32) / math.sqrt(fan_in)).astype(np.float16).reshape(shape)


def main():
    if len(sys.argv) != 3 or sys.argv[1] not in ('sd1', 'sd2'):
        sys.exit('usage: make_sd_random_checkpoint.py sd1|sd2 OUT.safetensors')
    kind, out = sys.argv[1], sys.argv[2]
    with gzip.open(os.path.join(ROOT, 'test', 'fixtures', 'sd-keys', f'{kind}.json.gz'), 'rt') as f:
        keys = json.load(f)['keys']
    header = {'__metadata__': {'made_by': f'scripts/make_sd_random_checkpoint.py {kind} (random weights)'}}
    offset = 0
    names = sorted(keys)
    for name in names:
        size = 2 * math.prod(keys[name])
        header[name] = {'dtype': 'F16', 'shape': list(keys[name]), 'data_offsets': [offset, offset + size]}
        offset += size
    text = json.dumps(header, separators=(',', ':')).encode('utf-8')
    text += b' ' * (-len(text) % 8)
    rng = np.random.default_rng(0)
    tmp = out + '.part'
    with open(tmp, 'wb') as f:
        f.write(struct.pack('<Q', len(text)) + text)
        for name in names:
            f.write(value(rng, name, keys[name]).tobytes())
    os.replace(tmp, out)
    print(f'{out}: {len(names)} tensors, {offset / 1e9:.2f} GB of float16')


if __name__ == '__main__':
    main()
