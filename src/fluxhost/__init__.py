"""fluxhost: a self-hosted FLUX text-to-image service speaking the Wiro task protocol."""

__version__ = "0.1.0"
