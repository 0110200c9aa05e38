"""fluxhost: a self-hosted FLUX text-to-image service speaking the Wiro task protocol."""

__version__ = "0.1.0"

DEFAULT_MODEL = "black-forest-labs/flux-pro-1.1"
"""The hosted tool this server reproduces (the seed's), served by default."""
