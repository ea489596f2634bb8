"""Peer benchmark for bench/sr.ts's LDSR row (issue 41): the reference's LDSR sampling loop in PyTorch.

Builds the unmodified CompVis/latent-diffusion LatentDiffusion from an LDSR YAML (bsr_sr's config.yaml, or the one
scripts/fixtures/make_ldsr_fixture.py writes), loads the checkpoint's state_dict when one is given (else keeps the
reference's own random initialisation), and upscales one LR image x4 as notebook_helpers.py `run` does: its
split_input_params when the output is 128 pixels or more, get_cond's LR image in [-1, 1], make_convolutional_sample
(get_input, DDIMSampler with eta 1 inside ema_scope, decode_first_stage). Runs once to warm up, then REPS times under
torch.no_grad on the CPU; the median is reported, of the whole call (seconds_per_image) and of the sampling loop with
one decode of its sample (sampling_s: what bench/sr.ts compares with). Prints one JSON line.

usage: torch_ldsr.py --ref DIR --config YAML [--ckpt CKPT] [--side N] [--steps N] [--threads N] [--reps N]
  --ref DIR    a checkout of CompVis/latent-diffusion (default: $LDM_LDSR_REF); imported, never modified
  --side N     the LR image's side (default 128: a 512x512 output, one 128-cell tile as the reference cuts it). The
               reference's apply_model does not shrink its 128-cell tiles to the latent, so sides from 32 to 127 fail
               there (AUTOMATIC1111's LDSR pads inputs to 128 pixels at least for this reason).
Needs Debian's python3-torch, python3-yaml, python3-numpy and python3-pil; the imports the reference makes without
using them here (pytorch_lightning, taming's VectorQuantizer2, notebook_helpers' colab and torchvision) are stood in
for by scripts/fixtures/make_ldsr_fixture.py, which documents each.
"""
import argparse
import json
import os
import statistics
import sys
import time

import numpy as np
import torch
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def split_input_params(height, width):
    """notebook_helpers.run's tiling: on for outputs of 128 pixels or more a side, 128-cell tiles at stride 64."""
    if not (height >= 128 and width >= 128):
        return None
    return {'ks': (128, 128), 'stride': (64, 64), 'vqf': 4, 'patch_distributed_vq': True, 'tie_braker': False,
            'clip_max_weight': 0.5, 'clip_min_weight': 0.01, 'clip_max_tie_weight': 0.5, 'clip_min_tie_weight': 0.01}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--ref', default=os.environ.get('LDM_LDSR_REF'))
    ap.add_argument('--config', required=True)
    ap.add_argument('--ckpt')
    ap.add_argument('--side', type=int, default=128)
    ap.add_argument('--steps', type=int, default=10)
    ap.add_argument('--threads', type=int, default=2)
    ap.add_argument('--reps', type=int, default=1)
    a = ap.parse_args()
    if not a.ref or not os.path.isfile(os.path.join(a.ref, 'notebook_helpers.py')):
        sys.exit(f'no CompVis/latent-diffusion checkout at {a.ref or "(none given)"}: pass --ref DIR or set LDM_LDSR_REF')

    sys.path.insert(0, os.path.join(ROOT, 'scripts', 'fixtures'))
    import make_ldsr_fixture as fx
    fx.REF = os.path.abspath(a.ref)
    fx.install_stubs()
    torch.use_deterministic_algorithms(False)
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    import notebook_helpers as nh
    from ldm.models.diffusion import ddim
    from ldm.models.diffusion.ddpm import LatentDiffusion

    def register_buffer(self, name, attr):  # the reference's moves its buffers to "cuda"
        setattr(self, name, attr)
    ddim.DDIMSampler.register_buffer = register_buffer

    with open(a.config) as f:
        cfg = yaml.safe_load(f)['model']
    model = LatentDiffusion(**cfg['params']).eval()
    if a.ckpt:
        sd = torch.load(a.ckpt, map_location='cpu')['state_dict']
        model.load_state_dict({k: v.float() for k, v in sd.items()}, strict=False)
        del sd

    side = a.side
    g = torch.Generator().manual_seed(1)
    lr = torch.rand((1, side, side, 3), generator=g)  # get_cond's layout: [1, h, w, c] in [0, 1]
    batch = {'LR_image': 2. * lr - 1., 'image': torch.nn.functional.interpolate(
        lr.permute(0, 3, 1, 2), size=[4 * side, 4 * side], mode='bilinear').permute(0, 2, 3, 1)}
    split = split_input_params(4 * side, 4 * side)
    if split is not None:
        model.split_input_params = split

    # The sampling loop alone (convsample_ddim, and one decode_first_stage of its sample) is timed too: the notebook's
    # make_convolutional_sample also encodes and decodes the bicubic target and decodes the sample twice, for its logs.
    convsample = nh.convsample_ddim
    loop = []

    def timed_convsample(*args, **kwargs):
        t0 = time.perf_counter()
        samples, inter = convsample(*args, **kwargs)
        model.decode_first_stage(samples)
        loop.append(time.perf_counter() - t0)
        return samples, inter
    nh.convsample_ddim = timed_convsample

    def once():
        return nh.make_convolutional_sample(batch, model, mode='ddim', custom_steps=a.steps, eta=1.0, swap_mode=False,
                                            masked=False, invert_mask=False, quantize_x0=False, custom_schedule=None,
                                            decode_interval=10, resize_enabled=False, custom_shape=None,
                                            temperature=1., noise_dropout=0., corrector=None, corrector_kwargs=None,
                                            x_T=None, save_intermediate_vid=False, make_progrow=True,
                                            ddim_use_x0_pred=False)

    stdout = sys.stdout
    sys.stdout = sys.stderr  # the reference prints as it samples; the JSON line stays alone on stdout
    try:
        with torch.no_grad():
            out = once()
            times = []
            for _ in range(a.reps):
                t0 = time.perf_counter()
                once()
                times.append(time.perf_counter() - t0)
    finally:
        sys.stdout = stdout
    s = statistics.median(times)
    sampling = statistics.median(loop[1:])
    print(json.dumps({
        'peer': 'pytorch-' + torch.__version__, 'threads': a.threads, 'reps': a.reps, 'steps': a.steps, 'eta': 1.0,
        'input': [side, side], 'output': list(out['sample'].shape[2:]), 'split_input': split is not None,
        'unet_params': sum(p.numel() for p in model.model.diffusion_model.parameters()),
        'first_stage_params': sum(p.numel() for p in model.first_stage_model.parameters()),
        'seconds_per_image': round(s, 4), 'runs_s': [round(v, 4) for v in times],
        'images_per_s': round(1 / s, 5),
        'sampling_s': round(sampling, 4), 'sampling_images_per_s': round(1 / sampling, 5),
        'finite': bool(np.isfinite(out['sample'].numpy()).all()),
    }))


if __name__ == '__main__':
    main()
