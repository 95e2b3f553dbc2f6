"""Helpers the task YAML files here name with `!function utils.NAME` (loaded by lm-eval)."""

HELD_OUT = 0.05  # the share of Tiny Shakespeare that recipes/shakespeare.yaml validates on


def held_out(dataset):
    """The last HELD_OUT of the paragraphs: text the model did not train on."""
    n = len(dataset)
    return dataset.select(range(n - max(1, int(n * HELD_OUT)), n))
