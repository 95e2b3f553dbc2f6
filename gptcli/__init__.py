"""gptcli: from raw text to a trained GPT-style model and back to text."""

__version__ = "0.1.0"
