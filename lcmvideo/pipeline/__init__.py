"""From settings and loaded models to frames: text conditioning, the one denoiser and its sampler
loop (denoise), VAE decoding, and the modes built on them: text-to-video, img2img (restyle's
frames mode and live), restyle, with ControlNet conditioning and OpenPose skeletons."""
