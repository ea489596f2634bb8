"""Peer benchmark for bench/sd.ts (issue 40): Stable Diffusion 1.5's UNet and VAE decoder in the reference code.

Builds the unmodified CompVis/stable-diffusion modules (openaimodel.UNetModel with v1-inference.yaml's unet_config,
ldm.models.autoencoder.AutoencoderKL with its first_stage_config) with the reference's own random initialisation, and
times, under torch.no_grad on the CPU:
- one guided UNet call: x [2, 4, L, L] (the conditional and unconditional halves), t [2], context [2, 77, context_dim];
- one VAE decode: z [1, 4, L, L] -> [1, 3, 8L, 8L].
Each is run once to warm up, then REPS times; the median is reported. Prints one JSON line.

usage: torch_sd_step.py --ref DIR [--threads N] [--reps N] [--model-channels C] [--context-dim D] [--vae-ch C] [--latent L]
  --ref DIR   a checkout of CompVis/stable-diffusion (default: $LDM_SD_REF); it is imported, never modified
  the size flags override the YAML's (bench/sd.ts --quick passes reduced widths; the defaults are SD 1.5's).
use_checkpoint is turned off: it only trades memory for recomputation in training and does nothing under no_grad.
Needs Debian's python3-torch, python3-yaml and python3-pil (ldm.util imports PIL); einops, pytorch_lightning and the
other imports the reference makes without using them here are stubbed by scripts/fixtures/make_sd_unet_fixture.py.
"""
import argparse
import json
import os
import statistics
import sys
import time

import torch
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def timed(fn, reps):
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--ref', default=os.environ.get('LDM_SD_REF'))
    ap.add_argument('--threads', type=int, default=2)
    ap.add_argument('--reps', type=int, default=2)
    ap.add_argument('--model-channels', type=int)
    ap.add_argument('--context-dim', type=int)
    ap.add_argument('--vae-ch', type=int)
    ap.add_argument('--latent', type=int, default=64)
    a = ap.parse_args()
    openaimodel_py = os.path.join(a.ref or '', 'ldm', 'modules', 'diffusionmodules', 'openaimodel.py')
    if not a.ref or not os.path.isfile(openaimodel_py):
        sys.exit(f'no CompVis/stable-diffusion checkout at {a.ref or "(none given)"}: pass --ref DIR or set LDM_SD_REF')

    # The fixture script holds the stand-ins for einops and the unused imports; importing it sets its own torch settings.
    sys.path.insert(0, os.path.join(ROOT, 'scripts', 'fixtures'))
    import make_sd_unet_fixture as fixture
    fixture.install_stubs()
    torch.use_deterministic_algorithms(False)
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    sys.path.insert(0, os.path.abspath(a.ref))
    from ldm.modules.diffusionmodules.openaimodel import UNetModel
    from ldm.models.autoencoder import AutoencoderKL

    with open(os.path.join(a.ref, 'configs', 'stable-diffusion', 'v1-inference.yaml')) as f:
        params = yaml.safe_load(f)['model']['params']
    unet_cfg = dict(params['unet_config']['params'], use_checkpoint=False)
    if a.model_channels:
        unet_cfg['model_channels'] = a.model_channels
    if a.context_dim:
        unet_cfg['context_dim'] = a.context_dim
    first = params['first_stage_config']['params']
    ddconfig = dict(first['ddconfig'])
    if a.vae_ch:
        ddconfig['ch'] = a.vae_ch

    unet = UNetModel(**unet_cfg).eval()
    ae = AutoencoderKL(ddconfig=ddconfig, lossconfig=first['lossconfig'], embed_dim=first['embed_dim']).eval()
    L = a.latent
    x = torch.randn(2, unet_cfg['in_channels'], L, L)
    t = torch.tensor([500, 500])
    ctx = torch.randn(2, 77, unet_cfg['context_dim'])
    z = torch.randn(1, first['embed_dim'], L, L)
    with torch.no_grad():
        unet_s, unet_runs = timed(lambda: unet(x, t, context=ctx), a.reps)
        image = ae.decode(z)
        vae_s, vae_runs = timed(lambda: ae.decode(z), a.reps)
    print(json.dumps({
        'peer': 'pytorch-' + torch.__version__, 'threads': a.threads, 'reps': a.reps,
        'unet_config': unet_cfg, 'ddconfig': ddconfig,
        'unet_params': sum(p.numel() for p in unet.parameters()),
        'decoder_params': sum(p.numel() for n, p in ae.named_parameters() if n.startswith(('decoder.', 'post_quant_conv.'))),
        'unet_input': list(x.shape), 'context': list(ctx.shape), 'image': list(image.shape),
        'unet_step_s': round(unet_s, 4), 'unet_runs_s': [round(v, 4) for v in unet_runs],
        'vae_decode_s': round(vae_s, 4), 'vae_runs_s': [round(v, 4) for v in vae_runs],
    }))


if __name__ == '__main__':
    main()
