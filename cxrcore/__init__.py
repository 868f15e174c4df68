"""cxrcore: chest X-ray classification, fine-tuning and explanation, without a UI."""

__version__ = "0.1.0"
