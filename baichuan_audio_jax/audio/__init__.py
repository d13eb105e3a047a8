"""Audio I/O, resampling and spectral front ends."""
