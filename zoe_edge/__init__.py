"""zoe-edge: a private LLM appliance daemon for NVIDIA Jetson boards."""

__version__ = "0.1.0"
