"""medfoundry: make and use foundation models for medical imaging."""

__version__ = "0.1.0"
