"""FreeInit (Wu et al. 2023, "FreeInit: Bridging Initialization Gap in Video Diffusion Models").

A clip's layout comes from the low frequencies of its starting noise, and sampled noise has
spatio-temporal low frequencies a trained video model never saw at t = T. FreeInit samples, noises
the result back to the first timestep with the run's own starting noise, keeps that latent's low
frequencies (3D FFT over frames, height, width), takes the high ones from fresh noise, and samples
again. diffusers' semantics (FreeInitMixin): the same filters and mix; `box` is the official
repository's approximation of `ideal`. The masks here are computed at once rather than point by
point (tests/test_free_init.py checks them against diffusers' `_get_free_init_freq_filter`).
"""

from __future__ import annotations


def low_pass(shape, filter: str = "butterworth", spatial_stop: float = 0.25, temporal_stop: float = 0.25,
             order: int = 4, device="cpu"):
    """The (…, T, H, W) low-pass mask in fftshift order (the centre is frequency 0)."""
    import torch

    t_, h_, w_ = shape[-3], shape[-2], shape[-1]
    if spatial_stop == 0 or temporal_stop == 0:
        return torch.zeros(shape, device=device)
    if filter == "box":
        mask = torch.zeros(shape)
        rs, rt = round(int(h_ // 2) * spatial_stop), round(t_ // 2 * temporal_stop)
        ct, ch, cw = t_ // 2, h_ // 2, w_ // 2
        mask[..., ct - rt:ct + rt, ch - rs:ch + rs, cw - rs:cw + rs] = 1.0
        return mask.to(device)
    # squared normalised distance from frequency 0, the time axis stretched by spatial/temporal stop
    # (float64 like diffusers' Python arithmetic, so the masks agree to rounding)
    t = (spatial_stop / temporal_stop) * (2 * torch.arange(t_, dtype=torch.float64) / t_ - 1)
    h = 2 * torch.arange(h_, dtype=torch.float64) / h_ - 1
    w = 2 * torch.arange(w_, dtype=torch.float64) / w_ - 1
    d = t.view(-1, 1, 1) ** 2 + h.view(1, -1, 1) ** 2 + w.view(1, 1, -1) ** 2
    if filter == "butterworth":
        m = 1 / (1 + (d / spatial_stop**2) ** order)
    elif filter == "gaussian":
        m = torch.exp(-1 / (2 * spatial_stop**2) * d)
    elif filter == "ideal":
        m = (d <= spatial_stop * 2).to(torch.float64)
    else:
        raise ValueError(f"unknown FreeInit filter {filter!r}")
    return m.to(torch.float32).expand(shape).clone().to(device)


def mix(x, noise, lpf):
    """x's low frequencies (the mask `lpf`) with noise's high ones, over (frames, height, width)."""
    import torch.fft as fft

    dims = (-3, -2, -1)
    xf = fft.fftshift(fft.fftn(x, dim=dims), dim=dims)
    nf = fft.fftshift(fft.fftn(noise, dim=dims), dim=dims)
    mixed = xf * lpf + nf * (1 - lpf)
    return fft.ifftn(fft.ifftshift(mixed, dim=dims), dim=dims).real


def reinit(result, initial_noise, scheduler, t, settings, generator, share: float = 0.0):
    """The next run's starting latents (1, C, T, h, w): `result` noised to timestep t with the first
    run's noise, its low frequencies kept, fresh noise's high ones. The fresh noise is drawn as the
    first run's was (denoise.frame_noise: `share` of it common to the frames); with share 0 that is
    diffusers' draw (float32, the clip's shape, from `generator`)."""
    import torch

    from .denoise import frame_noise

    dtype, device = result.dtype, result.device
    lpf = low_pass((1, *result.shape[1:]), settings.filter, settings.spatial_stop, settings.temporal_stop,
                   settings.order, device)
    z_t = scheduler.add_noise(result, initial_noise, torch.full((result.shape[0],), int(t), device=device).long())
    fresh = frame_noise(result.shape, share, generator, device, torch.float32)
    return mix(z_t.to(torch.float32), fresh, lpf).to(dtype)
